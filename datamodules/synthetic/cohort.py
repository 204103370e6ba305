"""Orchestration: simulate every subject, render their files (in parallel), write the tables.

Output layout under ``out_dir`` (the input format of ``omnimodal-shard``)::

    subjects.csv      subject_id, birth_date, sex, split, consent
    events.csv        subject_id, time, modality, path, code, numeric_value (one row per measurement)
    labels.csv        subject_id, name, time, value ("disease": onset or censoring)
    ground_truth.csv  per subject: latent risk parameters, onset_days, end_days, ...
    states.csv        per visit: the hidden state vector
    cohort.json       seed, version, counts, native rendering parameters (and the long recordings' knobs), specs
    files/<subject_id>/vNN_<modality>.<ext>   (a wearable visit: a wear period of days; some ECGs: Holters)

With ``interventions`` (:mod:`.interventions`) the events table also holds treatment START/STOP rows, and
``interventions.csv`` (truth, never read by ``omnimodal-shard``) has per subject and intervention: arm, assignment,
what was given, and the counterfactual onset risks with and without it (:func:`.oracle.assignment_risks`).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..modalities import registry
from ..schema import default_specs, specs_to_json
from .interventions import InterventionConfig
from .render import EventRow, render_task
from .render_tables import iso
from .state import (
    DEFAULT_RECORDINGS,
    GENERATOR_VERSION,
    STATE_NAMES,
    Recordings,
    Subject,
    simulate_subject,
    visit_rates,
)

TABLES = ("subjects.csv", "events.csv", "labels.csv", "ground_truth.csv", "states.csv", "cohort.json")
#: the truth of a cohort with interventions (beside the tables, not an input of the shard builder)
INTERVENTIONS_TABLE = "interventions.csv"
#: the horizons (years) of the counterfactual risks in :data:`INTERVENTIONS_TABLE`
TRUTH_HORIZONS = (1.0, 5.0)
EVENT_COLUMNS = ("subject_id", "time", "modality", "path", "code", "numeric_value")


@dataclass(frozen=True)
class CohortInfo:
    """What :func:`synthesize_cohort` wrote."""

    out_dir: Path
    seed: int
    n_subjects: int
    generator_version: str
    counts: dict[str, int]  # measurements per modality (clinical: code/lab rows)
    n_visits: int
    n_events: int  # rows of events.csv
    n_cases: int  # subjects with disease onset during follow-up
    n_withdrawn: int  # subjects with consent = false
    splits: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    size_bytes: int = 0

    def path(self, table: str) -> Path:
        """Path of one output table, e.g. ``info.path("events.csv")``."""
        return self.out_dir / table

    def summary(self) -> str:
        counts = " ".join(f"{m}={n}" for m, n in self.counts.items())
        plural = "" if self.n_subjects == 1 else "s"
        return (
            f"{self.n_subjects} subject{plural} ({self.n_cases} develop the disease, {self.n_withdrawn} withdrew "
            f"consent), {self.n_visits} visits, {self.n_events} events, "
            f"{self.size_bytes / 2**20:.1f} MiB in {self.elapsed_s:.1f} s\n  {counts}"
        )


def _prepare(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out_dir / "files", ignore_errors=True)
        for name in (*TABLES, INTERVENTIONS_TABLE):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _ensure_coverage(subjects: list[Subject], modalities: Sequence[str]) -> None:
    """Every modality appears at least once (added at the last visit of a consenting subject)."""
    pool = [s for s in subjects if s.consent] or subjects
    present = {m for s in subjects for v in s.visits for m in v.modalities}
    order = list(registry())
    for k, modality in enumerate(m for m in order if m in modalities):
        if modality not in present:
            visit = pool[(k * 7) % len(pool)].visits[-1]
            visit.modalities = [m for m in order if m == modality or m in visit.modalities]


def _ensure_splits(subjects: list[Subject]) -> None:
    """Cohorts of 10+ subjects get at least one val and one test subject (taken from the end)."""
    if len(subjects) < 10:
        return
    for split in ("val", "test"):
        if not any(s.split == split for s in subjects):
            donor = next(s for s in reversed(subjects) if s.split == "train")
            donor.split = split


def _render_all(
    seed: int, subjects: list[Subject], root: Path, workers: int, recordings: Recordings
) -> list[list[EventRow]]:
    tasks = [(seed, s, str(root), recordings) for s in subjects]
    if workers <= 1 or len(subjects) <= 1:
        return [render_task(t) for t in tasks]
    # biggest subjects first keeps the workers busy to the end; results are put back in order.
    # A process pool executor (not multiprocessing.Pool) so that a worker that cannot start fails
    # the run instead of being respawned forever.
    order = sorted(range(len(tasks)), key=lambda i: -len(subjects[i].visits))
    out: list[list[EventRow]] = [[] for _ in tasks]
    try:
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=mp.get_context("spawn")) as pool:
            for i, rows in zip(order, pool.map(render_task, [tasks[i] for i in order])):
                out[i] = rows
    except BrokenProcessPool as exc:
        raise RuntimeError(
            "a rendering worker died (out of memory, or it could not start: spawned workers "
            "re-import the main script, so call synthesize_cohort from a file guarded by "
            "`if __name__ == '__main__':`, or pass workers=1)"
        ) from exc
    return out


def _subjects_table(subjects: list[Subject]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject_id": [s.subject_id for s in subjects],
            "birth_date": [s.birth_date.isoformat() for s in subjects],
            "sex": [s.sex for s in subjects],
            "split": [s.split for s in subjects],
            "consent": ["true" if s.consent else "false" for s in subjects],
        }
    )


def _labels_table(subjects: list[Subject]) -> pd.DataFrame:
    rows = []
    for s in subjects:
        case = s.onset_days == s.onset_days
        rows.append((s.subject_id, "disease", iso(s.when(s.onset_days if case else s.end_days)), float(case)))
    return pd.DataFrame(rows, columns=["subject_id", "name", "time", "value"])


def _ground_truth_table(subjects: list[Subject]) -> pd.DataFrame:
    rows = []
    for s in subjects:
        row: dict[str, object] = {
            "subject_id": s.subject_id,
            "sex": s.sex,
            "age_at_first_visit": s.visits[0].age_years,
            "prs": s.prs,
            "onset_days": s.onset_days,
            "end_days": s.end_days,
            "disease": int(s.onset_days == s.onset_days),
            "n_visits": len(s.visits),
            "split": s.split,
            "consent": "true" if s.consent else "false",
        }
        row.update({f"baseline_{n}": float(v) for n, v in zip(STATE_NAMES, s.baseline)})
        row.update({f"drift_{n}": float(v) for n, v in zip(STATE_NAMES, s.drift)})
        rows.append(row)
    return pd.DataFrame(rows)


def _states_table(subjects: list[Subject]) -> pd.DataFrame:
    rows = [
        {
            "subject_id": s.subject_id,
            "visit": v.index,
            "time": iso(v.time),
            "days": v.days,
            "age_years": v.age_years,
            "diseased": int(v.diseased),
            **{n: float(x) for n, x in zip(STATE_NAMES, v.state)},
        }
        for s in subjects
        for v in s.visits
    ]
    return pd.DataFrame(rows)


def _interventions_table(subjects: list[Subject], cfg: InterventionConfig) -> pd.DataFrame:
    """Per subject and intervention code: arm, assignment, what was given (days since the first visit; a dose
    change lists both doses), and the counterfactual truth at ``at_days`` (:func:`.oracle.assignment_risks`)."""
    from .oracle import assignment_risks  # noqa: PLC0415

    rows = []
    for s in subjects:
        t = s.treatment
        for code in cfg.codes:
            own = [sp for sp in t.spans if sp.code == code]
            truth = assignment_risks(s, code, TRUTH_HORIZONS, cfg)
            row: dict[str, object] = {
                "subject_id": s.subject_id,
                "code": code,
                "arm": t.arm,
                "enrolled_days": t.enrolled_days,
                "assigned": int(t.assigned[code]),
                "treated": int(bool(own)),
                "start_days": own[0].start_days if own else float("nan"),
                "stop_days": own[-1].stop_days if own and own[-1].stop_days is not None else float("nan"),
                "doses": ";".join("" if sp.dose is None else f"{sp.dose:g}" for sp in own),
                "at_days": truth.at_days if truth else float("nan"),
            }
            for k, h in enumerate(TRUTH_HORIZONS):
                row[f"risk_{h:g}y_with"] = truth.with_[k] if truth else float("nan")
                row[f"risk_{h:g}y_without"] = truth.without[k] if truth else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def render_parameters(recordings: Recordings = DEFAULT_RECORDINGS) -> dict[str, object]:
    """The native formats and parameters the renderers use (recorded in cohort.json): each modality's
    declaration says its own; ``recordings``: the size knobs of long recordings."""
    mods = registry()
    return {
        "visit_rates": visit_rates(),
        "recordings": dataclasses.asdict(recordings),
        **{m: d.render_params() for m, d in mods.items() if d.render_params is not None},
    }


def synthesize_cohort(
    out_dir: str | Path,
    n_subjects: int = 128,
    seed: int = 0,
    workers: int = 2,
    overwrite: bool = False,
    modalities: Sequence[str] | None = None,
    recordings: Recordings | None = None,
    interventions: InterventionConfig | None = None,
) -> CohortInfo:
    """Generate a synthetic omnimodal cohort in ``out_dir`` (see the module docstring for the layout).

    The output depends only on ``seed`` and ``n_subjects`` (not on ``workers``); subject ``i`` is the
    same in every cohort of the same seed, except for forced modality coverage and splits.
    ``modalities``: a cohort that measures only these (e.g. a cardiology clinic: clinical, ecg, wearable);
    the people, their health and every kept file are those of the full cohort of the same seed (and of any
    cohort of the same seed and modalities, whatever other modalities are declared).
    ``recordings``: the size knobs of long recordings (wear period, Holter share and length; default
    :class:`~.state.Recordings`); they change those files only.
    ``interventions``: an :class:`~.interventions.InterventionConfig` (default None: no interventions, every
    output as without this argument): treatments with known effects, their START/STOP rows in the events table,
    their truth in ``interventions.csv`` and the config in ``cohort.json``.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    order = list(registry())
    keep = order if modalities is None else list(modalities)
    unknown = sorted(set(keep) - set(order))
    if unknown or not keep:
        raise ValueError(f"modalities: {unknown or 'none given'}; choose from {order}")
    recordings = (recordings or DEFAULT_RECORDINGS).check()
    if interventions is not None:
        interventions = interventions.check()
    start = time.perf_counter()
    out = Path(out_dir)
    _prepare(out, overwrite)
    if interventions is None:
        subjects = [simulate_subject(seed, i) for i in range(n_subjects)]
    else:
        subjects = [simulate_subject(seed, i, interventions=interventions) for i in range(n_subjects)]
    for s in subjects:
        for v in s.visits:
            v.modalities = [m for m in v.modalities if m in keep]
        if s.treatment is not None:
            s.treatment.recorded = "clinical" in keep
    _ensure_coverage(subjects, keep)
    _ensure_splits(subjects)
    rows = [r for subject_rows in _render_all(seed, subjects, out.resolve(), workers, recordings) for r in subject_rows]
    events = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    _subjects_table(subjects).to_csv(out / "subjects.csv", index=False)
    events.to_csv(out / "events.csv", index=False)
    _labels_table(subjects).to_csv(out / "labels.csv", index=False)
    _ground_truth_table(subjects).to_csv(out / "ground_truth.csv", index=False, float_format="%.10g")
    _states_table(subjects).to_csv(out / "states.csv", index=False, float_format="%.10g")
    if interventions is not None:
        truth = _interventions_table(subjects, interventions)
        truth.to_csv(out / INTERVENTIONS_TABLE, index=False, float_format="%.10g")
    counts = events["modality"].value_counts()
    info = CohortInfo(
        out_dir=out,
        seed=seed,
        n_subjects=n_subjects,
        generator_version=GENERATOR_VERSION,
        counts={m: int(counts.get(m, 0)) for m in order},
        n_visits=sum(len(s.visits) for s in subjects),
        n_events=len(events),
        n_cases=sum(int(s.onset_days == s.onset_days) for s in subjects),
        n_withdrawn=sum(not s.consent for s in subjects),
        splits={k: sum(s.split == k for s in subjects) for k in ("train", "val", "test")},
    )
    meta = {k: v for k, v in dataclasses.asdict(info).items() if k not in ("out_dir", "elapsed_s", "size_bytes")}
    meta.update(
        generator="omnimodal.synthetic",
        state_names=STATE_NAMES,
        modalities=keep,
        render=render_parameters(recordings),
        specs=specs_to_json(default_specs()),
    )
    if interventions is not None:  # only then: a cohort without them has the cohort.json it always had
        meta["interventions"] = interventions.to_json()
        meta["treated"] = {
            code: {
                arm: int(((truth["code"] == code) & (truth["arm"] == arm) & (truth["treated"] == 1)).sum())
                for arm in ("trial", "care")
            }
            for code in interventions.codes
        }
    (out / "cohort.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return dataclasses.replace(info, elapsed_s=time.perf_counter() - start, size_bytes=size)
