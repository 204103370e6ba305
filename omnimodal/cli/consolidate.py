"""``omnimodal-consolidate CKPT OUT``: any training checkpoint (DeepSpeed ZeRO folder, FSDP folder, Lightning
file) -> one file of fp32 weights + hyper-parameters (:mod:`omnimodal.pretraining.consolidate`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from ..pretraining.consolidate import consolidate


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="omnimodal-consolidate",
        description="Turn a training checkpoint (DeepSpeed ZeRO folder, FSDP folder or Lightning file) into one "
        "file of fp32 weights + hyper-parameters, the input of omnimodal-export and init_from=.",
    )
    ap.add_argument("checkpoint", help="e.g. outputs/<date>/<time>/checkpoints/last.ckpt (a file or a folder)")
    ap.add_argument("out", help="single-file checkpoint to write, e.g. weights.ckpt")
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        res = consolidate(args.checkpoint, args.out)
    except (FileNotFoundError, ValueError) as exc:  # CheckpointError is a ValueError
        print(f"omnimodal-consolidate: {exc}", file=sys.stderr)
        return 2
    n = sum(v.numel() for v in res["state_dict"].values())
    print(f"{args.out}: {n:,} parameters from a {res['consolidated_from']} checkpoint at step {res['global_step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
