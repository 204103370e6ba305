"""The golden-loss run: ten steps of the tiny model on the CPU, from a fixed synthetic cohort, whose per-step
losses are checked in (``tests/assets/losses/tiny_cpu.json``) and compared by tests/test_golden.py.

A change that is meant to alter training (initialisation, an objective, the synthetic cohort's renderers,
the collation) regenerates the file on purpose, and its commit says so:

    .venv/bin/python tests/golden_run.py --write

The cohort lists its modalities explicitly, so declaring a new modality does not move these numbers (each
modality draws from its own random stream).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

FILE = Path(__file__).resolve().parent / "assets" / "losses" / "tiny_cpu.json"
MODALITIES = ["mri", "ecg", "voice", "breath", "gait", "face", "medical_video", "wearable", "omics", "clinical"]
COHORT = {"n_subjects": 8, "seed": 0}
OVERRIDES = [
    "experiment=quick",
    "model/backbone=tiny",
    "data.batch_size=4",
    "data.max_events=4",
    "model.row_len=null",
    "trainer.max_steps=10",
    "trainer.max_epochs=-1",
    "trainer.limit_val_batches=0",
    "trainer.log_every_n_steps=1",
    "optim.warmup_steps=2",
    "trainer.precision=32-true",
    "seed=0",
    "~callbacks.checkpoint",
    "~callbacks.lr_monitor",
]
COMPONENTS = ("loss", "masked", "contrastive", "forecast")


def losses(work: Path) -> dict[str, Any]:
    """Build the cohort and its shards under ``work``, train, and return every step's losses."""
    import lightning as L
    import torch
    from conftest import build as build_shards
    from conftest import train_config

    from datamodules.synthetic import synthesize_cohort
    from omnimodal.pretraining.run import build

    cohort = synthesize_cohort(work / "cohort", workers=1, modalities=MODALITIES, **COHORT).out_dir
    build_shards(cohort, work / "shards", workers=1, max_samples_per_shard=4)
    cfg = train_config(work / "shards", work / "run", "resume=null", *OVERRIDES)

    steps: list[dict[str, float]] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            m = trainer.callback_metrics
            steps.append({k: float(m[f"train/{k}"]) for k in COMPONENTS if f"train/{k}" in m})

    torch.set_num_threads(2)
    task, dm, trainer = build(cfg)
    trainer.callbacks.append(Record())
    trainer.fit(task, datamodule=dm)
    return {
        "cohort": {**COHORT, "modalities": MODALITIES},
        "overrides": OVERRIDES,
        "torch": torch.__version__,
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help=f"write {FILE.relative_to(FILE.parents[2])}")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = losses(Path(tmp))
    text = json.dumps(out, indent=1) + "\n"
    if a.write:
        FILE.parent.mkdir(parents=True, exist_ok=True)
        FILE.write_text(text)
        print(f"wrote {FILE}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
