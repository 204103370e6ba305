"""Per-person inference: embed one person's timeline, forecast risk over the head's horizon, and show
how the forecast moves as events are added (predict -> intervene -> feedback, as in N-of-1 care).

    from omnimodal.downstream.forecaster import Forecaster
    f = Forecaster.from_checkpoint("finetuned.ckpt")
    f.forecast(timeline)            # risk within the horizon, seen after the last event
    f.trajectory(timeline)          # [(time_days, risk)] after each event in turn
    f.plot(timeline, "person.png")  # modalities over time, the forecast beneath

    omnimodal-forecast finetuned.ckpt --data /data/shards --split test --person 3 --out person.png   # the command

People are addressed by position in a split or by their pseudonymous shard key; no raw identifier
is ever read or printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datamodules.loader import CropConfig, ShardDataset
from datamodules.schema import MODALITIES, Timeline

from ..evaluation.plots import plot_person
from ..release import ReleaseError
from .landmarks import bounded_history
from .task import FinetuneTask, load_finetuned


@dataclass
class Forecaster:
    task: FinetuneTask

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Forecaster:
        return cls(load_finetuned(path))

    @property
    def horizon_days(self) -> float:
        return self.task.head_cfg.horizon_days

    def _history(self, tl: Timeline, upto: int | None = None) -> Timeline:
        """The events up to ``upto`` (all by default), bounded as in fine-tuning: the checkpoint's landmark
        design (``max_events``, ``select``, ``max_instances``), so the head reads the histories it learned on."""
        events = tl.events[: None if upto is None else upto + 1]
        if not events:
            raise ValueError("the timeline has no events: nothing to forecast from")
        return bounded_history(tl, events, self.task.landmark)

    @torch.no_grad()
    def _risks(self, histories: list[Timeline], batch_size: int = 16) -> np.ndarray:
        self.task.eval()
        collate = self.task.prep.collator()
        out = [
            self.task.predict_risk(collate(histories[i : i + batch_size])).float().numpy()
            for i in range(0, len(histories), batch_size)
        ]
        return np.concatenate(out)

    @torch.no_grad()
    def embed(self, tl: Timeline) -> torch.Tensor:
        """The person's embedding after their last event: ``[d]``."""
        self.task.eval()
        return self.task.model.embed(self.task.prep.collator()([self._history(tl)]))[0]

    def forecast(self, tl: Timeline) -> float:
        """Risk within the horizon (probability, or cumulative incidence of cause 1) after the last event."""
        return float(self._risks([self._history(tl)])[0])

    def trajectory(self, tl: Timeline) -> list[tuple[float, float]]:
        """The forecast after each event in turn: ``[(time_days, risk)]``."""
        risks = self._risks([self._history(tl, i) for i in range(len(tl.events))])
        return [(ev.time_days, float(r)) for ev, r in zip(tl.events, risks)]

    def plot(self, tl: Timeline, path: str | Path, title: str | None = None, onset_days: float | None = None) -> Path:
        traj = self.trajectory(tl)
        events = [(ev.time_days, m.modality) for ev in tl.events for m in ev.measurements]
        mods = [m for m in MODALITIES if any(e[1] == m for e in events)]
        kind = "risk" if self.task.head_cfg.kind != "regression" else "prediction"
        return plot_person(
            events,
            mods,
            traj,
            self.horizon_days,
            path,
            title or f"Timeline and forecast {kind} within {self.horizon_days / 365.25:.1f} years",
            onset_days=onset_days,
        )


def find_person(
    root: str | Path, split: str, person: int | None = None, key: str | None = None, modalities: list[str] | None = None
) -> Timeline:
    ds = ShardDataset(root, split, shuffle=False, crop=CropConfig(random=False), modalities=modalities)
    for i, tl in enumerate(ds):
        if (key is not None and tl.key == key) or (key is None and i == person):
            return tl
    which = f"key {key}" if key is not None else f"position {person}"
    raise ReleaseError(f"{root} split {split!r}: no person at {which} ({len(ds)} people in the split)")


__all__ = ["Forecaster", "find_person"]
