"""A fine-tuned model's predictions for the people of a split at their landmark (for reports and baselines)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from datamodules.loader import CropConfig, ShardDataset
from datamodules.schema import Event, Timeline

from .landmarks import LandmarkConfig, LandmarkDataset
from .task import FinetuneTask


@dataclass
class Predictions:
    """Per person at the landmark: targets and the model's risk (and, for survival, the cumulative
    incidence of cause 1 at each bin end)."""

    target: dict[str, np.ndarray]
    risk: np.ndarray
    cif: np.ndarray | None = None
    excluded: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.risk)


def without(tl: Timeline, modality: str) -> Timeline:
    """The history with one modality's measurements removed (events left empty are dropped)."""
    events = []
    for ev in tl.events:
        ms = [m for m in ev.measurements if m.modality != modality]
        if ms:
            events.append(Event(ev.time_days, ev.age_days, ms))
    return Timeline(tl.key, tl.static, events, tl.labels)


def landmark_items(
    task: FinetuneTask, root: str | Path, split: str, lm: LandmarkConfig
) -> tuple[list[tuple[Timeline, dict[str, float]]], dict[str, int]]:
    shards = ShardDataset(
        root, split, shuffle=False, crop=CropConfig(random=False), modalities=task.hparams.get("modalities")
    )
    ds = LandmarkDataset(shards, task.head_cfg, lm, random_landmark=False)
    items = list(ds)
    return items, dict(ds.excluded)


@torch.no_grad()
def predict(
    task: FinetuneTask,
    items: Sequence[tuple[Timeline, dict[str, float]]],
    withhold: str | None = None,
    batch_size: int = 16,
) -> Predictions:
    task.eval()
    collate = task.prep.collator()
    kept, risks, cifs, skipped = [], [], [], 0
    for i in range(0, len(items), batch_size):
        chunk = [(without(h, withhold) if withhold else h, t) for h, t in items[i : i + batch_size]]
        chunk2 = [(h, t) for h, t in chunk if h.events]
        skipped += len(chunk) - len(chunk2)
        if not chunk2:
            continue
        out = task(collate([h for h, _ in chunk2]))
        risks.append(task.head.risk(out).float().numpy())
        if task.head_cfg.kind == "survival":
            cifs.append(task.head.predict(out)[..., 0].float().numpy())
        kept += [t for _, t in chunk2]
    target = {k: np.array([t[k] for t in kept]) for k in (kept[0] if kept else {})}
    excluded = {f"no measurement left without {withhold}": skipped} if skipped else {}
    return Predictions(
        target, np.concatenate(risks) if risks else np.zeros(0), np.concatenate(cifs) if cifs else None, excluded
    )


__all__ = ["Predictions", "landmark_items", "predict", "without"]
