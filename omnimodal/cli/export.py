"""``omnimodal-export CKPT OUT``: a training checkpoint -> a release folder (:mod:`omnimodal.release.export`)."""

from __future__ import annotations

import argparse

from ..infra.console import closing, command, override, quiet_third_party, shown
from ..release import ReleaseError, export


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="omnimodal-export",
        description="Turn a training checkpoint into a release "
        "folder (config.json, model.safetensors, preprocessing.json, README.md model card).",
    )
    p.add_argument("checkpoint", help="single-file checkpoint (e.g. outputs/.../checkpoints/last.ckpt)")
    p.add_argument("out", help="release folder to write")
    p.add_argument(
        "--shards",
        help="shard folder the model was trained on (only for checkpoints that do not record their preprocessing)",
    )
    p.add_argument("--name", help="model name in the card (default: the folder name)")
    p.add_argument("--data-note", default="", help="one line on the training data for the model card")
    a = p.parse_args(argv)
    quiet_third_party(transformers=True)
    prep = None
    if a.shards:
        from datamodules.shards.format import load_index

        index = load_index(a.shards)
        prep = {"specs": index["specs"], "clinical_codes": index["clinical_codes"]}
    try:
        out = export(a.checkpoint, a.out, preprocessing=prep, name=a.name, data_note=a.data_note)
    except ReleaseError as err:
        raise SystemExit(f"omnimodal-export: {err}") from None
    data = a.shards or "/path/to/shards"  # the downstream cohort's shards (omnimodal-shard)
    finetune = override("release", shown(out)), override("data.root", shown(data) if a.shards else data)
    print(
        closing(
            f"release written to {shown(out)}",
            [", ".join(sorted(p.name for p in out.iterdir()))],
            [(command("omnimodal-finetune", *finetune), "fine-tune it on a cohort's outcome (data.root: its shards)")],
        )
    )


if __name__ == "__main__":
    main()
