"""Per-person inference: embed one person's timeline, forecast risk over the head's horizon, and show
how the forecast moves as events are added (predict -> intervene -> feedback, as in N-of-1 care).

    from omnimodal.downstream.forecaster import Forecaster
    f = Forecaster.from_checkpoint("finetuned.ckpt")
    f.forecast(timeline)            # risk within the horizon, seen after the last event
    f.trajectory(timeline)          # [(time_days, risk)] after each event in turn
    f.plot(timeline, "person.png")  # modalities over time, the forecast beneath
    f.what_if(timeline, "RX:C08CA01", dose=5.0)   # the forecast with and without starting it now

    omnimodal-forecast finetuned.ckpt --data /data/shards --split test --person 3 --out person.png   # the command
    omnimodal-forecast finetuned.ckpt --data /data/shards --person 3 --what-if RX:C08CA01@now --dose 5

What-if forecasts (:meth:`Forecaster.what_if`) insert a hypothetical intervention, a ``<CODE>//START`` row
(:mod:`datamodules.interventions`) with its dose, into the history at ``at_days`` and forecast again; nothing is
special-cased in the model: the head reads the START token as it learned to from the intervention rows of its
training data. The rules:

- the code must be in the release's clinical vocabulary as ``<CODE>//START`` (a model that never saw an
  intervention cannot say what it does): otherwise a ``ValueError`` naming ``code`` and the interventions it knows;
- ``at_days`` (days since the first event; default: the last event, "start it now") must lie at or after the last
  event of the history and before the last event plus the horizon: otherwise a ``ValueError`` naming ``at_days``.
  At the last event the START joins that event and both forecasts cover the same window; later, it is its own event
  and the forecast with it starts there (``WhatIf.gap_days`` says by how much the windows differ);
- starting a code that is already active is a dose change (the contract's rule);
- a planned stop is not part of the question: at the start, what the record can show is the START and its dose.

The interval is the model's own uncertainty: Monte Carlo dropout in the head (``samples`` paired draws, the same
dropout mask with and without the intervention), not a confidence interval of the causal effect; a head trained
without dropout gives a zero-width interval (``WhatIf.samples`` is 0 then).

People are addressed by position in a split or by their pseudonymous shard key; no raw identifier
is ever read or printed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datamodules.interventions import parse, start_code
from datamodules.loader import CropConfig, ShardDataset
from datamodules.schema import MODALITIES, Event, Measurement, Timeline

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

    def with_intervention(self, tl: Timeline, code: str, at_days: float | None = None, dose: float | None = None):
        """``(history with the START row inserted, at_days, the START code)`` by the rules of the module docstring."""
        if not tl.events:
            raise ValueError("the timeline has no events: nothing to forecast from")
        parsed = parse(code)
        if parsed is not None and parsed[1] == "stop":
            raise ValueError(f"code {code!r}: a what-if starts an intervention; give the code without //STOP")
        base = parsed[0] if parsed is not None else code.strip()
        start = start_code(base)
        vocab = self.task.prep.clinical_codes
        if start not in vocab:
            known = sorted(c.removesuffix("//START") for c in vocab if (p := parse(c)) is not None and p[1] == "start")
            raise ValueError(
                f"code {base!r}: {start} is not in the release's clinical vocabulary ({len(vocab)} codes), so the "
                "model never saw this intervention and cannot forecast its effect; interventions it knows: "
                f"{known or 'none'}"
            )
        last = tl.events[-1]
        at = last.time_days if at_days is None else float(at_days)
        if not math.isfinite(at) or at < last.time_days - 1e-6:
            raise ValueError(
                f"at_days {at_days}: before the history ends (last event at {last.time_days:.1f} days); a what-if "
                "starts at or after the last event (to ask at an earlier time, cut the history there first: "
                "--upto-days)"
            )
        if at >= last.time_days + self.horizon_days:
            raise ValueError(
                f"at_days {at_days}: past the horizon ({self.horizon_days:.0f} days after the last event at "
                f"{last.time_days:.1f}); the forecast could not see its effect"
            )
        if dose is not None and not (math.isfinite(dose) and dose >= 0):
            raise ValueError(f"dose {dose}: give a dose >= 0, or none")
        row = Measurement("clinical", code=start, value=float("nan") if dose is None else float(dose))
        events = list(tl.events)
        if at - last.time_days <= 1e-6:
            events[-1] = Event(last.time_days, last.age_days, [*last.measurements, row])
        else:
            events.append(Event(at, last.age_days + (at - last.time_days), [row]))
        return Timeline(tl.key, tl.static, events, {}), at, base

    @torch.no_grad()
    def what_if(
        self,
        tl: Timeline,
        code: str,
        at_days: float | None = None,
        dose: float | None = None,
        samples: int = 200,
        seed: int = 0,
    ) -> WhatIf:
        """The forecast without and with ``code`` (at ``dose``) started at ``at_days`` (module docstring)."""
        treated_tl, at, base = self.with_intervention(tl, code, at_days, dose)
        self.task.eval()
        batch = self.task.prep.collator()([self._history(tl), self._history(treated_tl)])
        emb, cov = self.task.head_inputs(batch)
        head = self.task.head
        point = head.risk(head(emb, cov)).float().numpy()
        diffs: list[float] = []
        if samples > 0 and head.cfg.dropout > 0:
            head.train()  # dropout on: the same mask for both rows of a draw (the same seed, one row at a time)
            try:
                with torch.random.fork_rng(devices=[]):
                    for s in range(samples):
                        pair = []
                        for i in range(2):
                            torch.manual_seed(seed * 100_003 + s)
                            pair.append(float(head.risk(head(emb[i : i + 1], None if cov is None else cov[i : i + 1]))))
                        diffs.append(pair[1] - pair[0])
            finally:
                head.eval()
        d = float(point[1] - point[0])
        lo, hi = (float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))) if diffs else (d, d)
        gap = at - tl.events[-1].time_days
        return WhatIf(base, at, dose, float(point[0]), float(point[1]), (lo, hi), len(diffs), gap)

    def plot(
        self,
        tl: Timeline,
        path: str | Path,
        title: str | None = None,
        onset_days: float | None = None,
        what_if: WhatIf | None = None,
    ) -> Path:
        """The timeline and the forecast after each event; with ``what_if``, the forecast with the intervention
        from its start beside the one without."""
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
            what_if=None if what_if is None else (what_if.at_days, what_if.treated, what_if.code),
        )


@dataclass(frozen=True)
class WhatIf:
    """A what-if forecast: the risk within the horizon without and with ``code`` started at ``at_days``."""

    code: str
    at_days: float
    dose: float | None
    without: float
    treated: float
    interval: tuple[float, float]  # of ``difference``: 2.5 and 97.5 percentiles of the paired dropout draws
    samples: int
    gap_days: float  # at_days - the last event's time: how much later the forecast with it starts

    @property
    def difference(self) -> float:
        return self.treated - self.without

    def line(self) -> str:
        dose = "" if self.dose is None else f" at dose {self.dose:g}"
        lo, hi = self.interval
        return (
            f"what if {self.code}{dose} starts at {self.at_days / 365.25:.2f} years: risk {self.without:.3f} -> "
            f"{self.treated:.3f} ({self.difference:+.3f}; dropout interval {lo:+.3f} to {hi:+.3f}, "
            f"{self.samples} draws)"
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


__all__ = ["Forecaster", "WhatIf", "find_person"]
