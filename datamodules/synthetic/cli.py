"""``omnimodal-synth``: write the built-in synthetic cohort to a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="omnimodal-synth",
        description="Generate a synthetic omnimodal health cohort (native files + subjects/events/labels "
        "tables + ground truth) in the input format of omnimodal-shard.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (must be empty or absent)")
    p.add_argument("--subjects", type=int, default=128, help="number of subjects (default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    p.add_argument(
        "--modalities",
        nargs="+",
        metavar="M",
        default=None,
        help="measure only these modalities (e.g. clinical ecg wearable; default: all)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier cohort in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .cohort import synthesize_cohort  # here, so spawned workers re-importing __main__ stay light

    if args.subjects < 1 or args.workers < 1 or args.seed < 0:
        print("omnimodal-synth: --subjects and --workers must be >= 1, --seed >= 0", file=sys.stderr)
        return 2
    try:
        info = synthesize_cohort(
            args.out,
            n_subjects=args.subjects,
            seed=args.seed,
            workers=args.workers,
            overwrite=args.overwrite,
            modalities=args.modalities,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"omnimodal-synth: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {info.out_dir}: {info.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
