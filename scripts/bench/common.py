"""Shared set-up of the model benchmarks (``packing.py``, ``train_step.py``, ``memory.py``).

The built-in synthetic cohort's shards, batches of it as the training loader makes them, a model config
for its layouts (the one ``omnimodal-train`` builds), a :class:`PretrainTask` from a seed, and each
batch's per-token metadata in the order :meth:`OmniModel.forward` lays tokens out. Not a benchmark.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from datamodules.builtin_cohort import demo_build_config, demo_shards
from datamodules.datamodule import ShardLoader
from datamodules.loader import CropConfig, ShardDataset
from datamodules.schema import MODALITIES, DataWarning, OmniBatch
from datamodules.shards.builder import build_shards
from datamodules.shards.format import INDEX_NAME, load_index
from omnimodal.infra.optim import OptimConfig
from omnimodal.pretraining.objectives import ObjectiveConfig
from omnimodal.pretraining.run import model_dict
from omnimodal.pretraining.task import PretrainTask

RESULTS = Path(__file__).resolve().parent / "results"


def cohort(n_subjects: int = 128, seed: int = 0) -> Path:
    """Shard folder of the built-in synthetic cohort (synthesized and cached under $OMNIMODAL_CACHE)."""
    warnings.simplefilter("ignore", DataWarning)  # off-panel omics features: reported by the builder already
    return demo_shards(n_subjects, seed)


#: the build settings of the shards before ECG and wearable were stored as float16
FLOAT32 = {"ecg": {"storage": "float32"}, "wearable": {"storage": "float32"}}


def float32_shards(root: Path) -> Path:
    """The demo cohort at ``root`` (its shards) built again with ECG and wearable stored as float32 (cached beside)."""
    out = root.parent / "shards-float32"
    if not (out / INDEX_NAME).is_file():
        shutil.rmtree(out, ignore_errors=True)
        build_shards(demo_build_config(root.parent / "cohort", out, workers=2, specs=FLOAT32))
    return out


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float]:
    """``fn()`` and its CPU seconds in this process: the least of ``repeats`` runs (the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return out, best


def model_config(
    root: Path,
    size: str = "tiny",
    *,
    activation_checkpointing: bool = False,
    row_len: int | None = 512,
    modalities: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Plain-data model config with the default encoders, laid out for ``root``'s shards, exactly as
    ``omnimodal-train model/backbone=<size> model.row_len=<row_len>`` builds it."""
    cfg = OmegaConf.create(
        {
            "model": {
                "backbone": {
                    "size": size,
                    "dropout": 0.0,
                    "activation_checkpointing": activation_checkpointing,
                    "attention": "auto",
                },
                "row_len": row_len,
                "modalities": list(modalities) if modalities else None,
            }
        }
    )
    return model_dict(cfg, load_index(root))


def build_task(model: dict[str, Any], seed: int = 0) -> PretrainTask:
    """A :class:`PretrainTask` with default objectives and optimiser; same ``seed`` -> same weights."""
    torch.manual_seed(seed)
    return PretrainTask(model, dataclasses.asdict(ObjectiveConfig()), dataclasses.asdict(OptimConfig()), seed=seed)


def load_batches(
    root: Path,
    batch_size: int = 8,
    max_events: int | None = 16,
    n_batches: int | None = None,
    split: str = "train",
    seed: int = 0,
    modalities: Sequence[str] | None = None,
) -> list[OmniBatch]:
    """Batches of ``split`` as the training loader yields them (seeded shuffle, random crop to
    ``max_events``), held in memory; ``n_batches=None``: one whole epoch."""
    ds = ShardDataset(
        root,
        split,
        shuffle=split == "train",
        seed=seed,
        modalities=modalities,
        crop=CropConfig(max_events=max_events, random=split == "train"),
    )
    return list(itertools.islice(ShardLoader(ds, batch_size=batch_size), n_batches))


def tokens_per_instance(task: PretrainTask) -> dict[str, int]:
    """Modality -> its encoder's ``num_tokens`` (k)."""
    return {m: int(e.num_tokens) for m, e in task.model.encoders.items()}


def token_metadata(batch: OmniBatch, k: dict[str, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token ``subject``, ``event``, ``time_days`` ``[T]`` of a batch, each instance repeated ``k``
    times, modalities in ``MODALITIES`` order: the token order of ``OmniModel.forward`` (no encoders run)."""
    mods = [batch.modalities[m] for m in MODALITIES if m in batch.modalities]
    subject, event, time = (
        torch.cat([getattr(mb, f).repeat_interleave(k[mb.modality]) for mb in mods])
        for f in ("subject", "event", "time_days")
    )
    return subject, event, time


def write_results(out: str | Path, results: dict[str, Any]) -> None:
    """Figures of a benchmark as JSON (``scripts/bench/results/<name>.json`` by default)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=1))
    print(f"figures written to {out}")
