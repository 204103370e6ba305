"""``omnimodal-benchmark``: every contender on the same people, splits and tasks, beside two ceilings computed
from the synthetic cohort's truth (:mod:`datamodules.synthetic.oracle`).

Steps (each cached under ``cache`` and reused when its inputs are the same):

1. **Cohort**: a seeded synthetic cohort (``cohort.n_subjects`` people measured with ``cohort.modalities``), its
   own split dropped and re-split by keyed hash (``cohort.split_fractions``), sharded.
2. **Release**: ``pretrain.steps`` steps of self-supervised pretraining on the train split, exported.
3. **Contenders**, all fine-tuned with the same settings (``finetune``; a survival head over 5 years with age
   beside the embedding, trained at random landmarks) and differing only as ``contenders`` says: the last
   event only, each single modality's timeline, the full timeline from scratch, the pretrained release frozen
   (a probe), fine-tuned in full, with LoRA; beside them logistic regressions on age alone and on every
   modality's summaries at the last visit, fitted for each landmark and horizon.
4. **Tasks** on the test split: for each landmark (years after the first event) the people still at risk there;
   for each horizon "onset within it" (AUROC, people whose status then is known) and the time to onset after
   the landmark (Harrell's C-index of the 5-year risk).
5. **Ceilings**: the snapshot oracle (the true state at the landmark, age, sex) and the trajectory oracle (state,
   personal drift, genetic risk) for the same people.

Every interval is a 95% percentile bootstrap over people with the same resamples for every contender, so the
difference to the last-visit regression has its own interval. A model contender with no history for a person
(a single modality the person never had before the landmark) predicts its mean risk for them; how many is
counted per contender.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from datamodules.builtin_cohort import cache_dir, cohort_fingerprint
from datamodules.loader import CropConfig, ShardDataset
from datamodules.shards.builder import BuildConfig, build_shards
from datamodules.shards.format import INDEX_NAME, subject_key
from datamodules.synthetic import synthesize_cohort
from datamodules.synthetic.interventions import InterventionConfig
from datamodules.synthetic.oracle import OracleConfig, SnapshotOracle, trajectory_risks
from datamodules.synthetic.state import YEAR_DAYS, Recordings, simulate_subject, subject_id

from ..evaluation import metrics as M
from ..infra.config_check import ConfigError
from ..infra.config_store import compose

#: public on purpose: the synthetic cohort has no real identifiers (as the demo cohort's secret)
BENCH_SECRET = "omnimodal-synthetic-benchmark-cohort"
#: what every in-process training run leaves out: bars, loggers, SLURM requeue
QUIET = [
    "trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "~logger",
    "~callbacks.lr_monitor",
    "~callbacks.requeue",
]
ORACLES = ("snapshot oracle", "trajectory oracle")
BASELINES = ("age alone", "last visit, logistic")
REFERENCE = "last visit, logistic"  # the differences' reference


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _say(msg: str) -> None:
    print(f"[benchmark] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- cohort
@dataclass(frozen=True)
class Cohort:
    cohort: Path  # the synthetic cohort's tables and files
    shards: Path
    seed: int
    n_subjects: int


def cohort_interventions(cfg: DictConfig) -> InterventionConfig | None:
    """``cohort.interventions`` (absent or null: none; a mapping: :class:`InterventionConfig`'s ``trial_share``,
    ``treat_share`` and ``indicate_on``, its default interventions); ``cohort.placebo: true``: the same with every
    effect 0 (the same people, assignments and draws: only the treatment's effect is gone)."""
    iv = cfg.cohort.get("interventions")
    if iv is None:
        return None
    try:
        out = InterventionConfig(**OmegaConf.to_container(iv, resolve=True)).check()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key cohort.interventions: {err}") from None
    return out.zero() if cfg.cohort.get("placebo") else out


def build_cohort(cfg: DictConfig, cache: Path) -> Cohort:
    c = cfg.cohort
    interventions = cohort_interventions(cfg)
    spec = {
        "n": int(c.n_subjects),
        "seed": int(c.seed),
        "modalities": list(c.modalities),
        "split": [float(f) for f in c.split_fractions],
        "fingerprint": cohort_fingerprint(interventions),
    }
    if c.get("recordings"):  # only when set: a default cohort keeps its cache key
        spec["recordings"] = OmegaConf.to_container(c.recordings, resolve=True)
    base = cache / f"cohort-{_digest(spec)}"
    out = Cohort(base / "cohort", base / "shards", spec["seed"], spec["n"])
    if (out.shards / INDEX_NAME).is_file():
        _say(f"cohort: reusing {base}")
        return out
    t0 = time.perf_counter()
    if not (out.cohort / "cohort.json").is_file():
        shutil.rmtree(out.cohort, ignore_errors=True)
        synthesize_cohort(
            out.cohort,
            n_subjects=spec["n"],
            seed=spec["seed"],
            workers=int(c.workers),
            modalities=spec["modalities"],
            recordings=Recordings(**spec["recordings"]) if "recordings" in spec else None,
            interventions=interventions,
        )
    subjects = pd.read_csv(out.cohort / "subjects.csv").drop(columns=["split"])
    subjects.to_csv(out.cohort / "subjects_resplit.csv", index=False)
    tmp = base / "shards.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    build_shards(
        BuildConfig(
            subjects=str(out.cohort / "subjects_resplit.csv"),
            events=str(out.cohort / "events.csv"),
            labels=str(out.cohort / "labels.csv"),
            out=str(tmp),
            secret=BENCH_SECRET,
            workers=int(c.workers),
            max_samples_per_shard=32,
            split_fractions=tuple(spec["split"]),
        )
    )
    shutil.rmtree(out.shards, ignore_errors=True)
    tmp.rename(out.shards)
    _say(f"cohort: {spec['n']} people synthesized and sharded in {time.perf_counter() - t0:.0f} s ({base})")
    return out


# ----------------------------------------------------------------------------------------------- training


def pretrain(cfg: DictConfig, cohort: Cohort, cache: Path) -> Path:
    """The release: ``pretrain.steps`` steps on the benchmark's train split, exported (cached by its config)."""
    from ..pretraining import run as T  # noqa: PLC0415
    from ..release import export  # noqa: PLC0415

    overrides = [
        *cfg.pretrain.overrides,
        "data=shards",
        "data.synthetic=null",  # an experiment's demo-cohort size does not apply: the data is the benchmark's
        f"data.root={cohort.shards}",
        "data.num_workers=0",
        f"trainer.max_steps={int(cfg.pretrain.steps)}",
        "trainer.max_epochs=-1",
        "trainer.accelerator=cpu",
        "resume=null",
        "callbacks.checkpoint.every_n_train_steps=100000",
        "+trainer.limit_val_batches=0",
        f"seed={int(cfg.seed)}",
        *QUIET,
    ]
    index = (cohort.shards / INDEX_NAME).read_bytes()
    base = cache / f"release-{_digest([overrides, hashlib.sha256(index).hexdigest()])}"
    if (base / "release" / "config.json").is_file():
        _say(f"release: reusing {base / 'release'}")
        return base / "release"
    t0 = time.perf_counter()
    tc = compose("train", overrides)
    with open_dict(tc):
        tc.run_dir = str(base / "run")
    task, dm, trainer = T.build(tc)
    trainer.fit(task, datamodule=dm)
    trainer.save_checkpoint(base / "final.ckpt", weights_only=False)  # the full state (export reads it safely)
    release = export(base / "final.ckpt", base / "release.tmp")
    shutil.rmtree(base / "release", ignore_errors=True)
    release.rename(base / "release")
    (base / "final.ckpt").unlink()
    _say(f"release: pretrained {int(cfg.pretrain.steps)} steps in {time.perf_counter() - t0:.0f} s")
    return base / "release"


def finetune(cfg: DictConfig, release: Path, cohort: Cohort, run_dir: Path, extra: Sequence[str]):
    """One model contender, fine-tuned in this process; returns the task (its last weights)."""
    from ..downstream import run as FT  # noqa: PLC0415

    fc = compose(
        "finetune",
        [
            f"release={release}",
            f"data.root={cohort.shards}",
            *cfg.finetune.overrides,
            *extra,
            f"trainer.max_epochs={int(cfg.finetune.epochs)}",
            "trainer.accelerator=cpu",
            "~callbacks.best",  # the last weights are evaluated: no best.ckpt
            f"seed={int(cfg.seed)}",
            *QUIET,
        ],
    )
    with open_dict(fc):
        fc.run_dir = str(run_dir)
    task, dm, trainer = FT.build(fc)
    trainer.fit(task, datamodule=dm)
    return task


# ----------------------------------------------------------------------------------------------- tasks
@dataclass
class People:
    """The test people at risk at one landmark: their shard keys and outcome after it (days, 0/1)."""

    landmark_years: float
    keys: list[str]
    time: np.ndarray
    event: np.ndarray
    excluded: dict[str, int] = field(default_factory=dict)

    def status(self, horizon_years: float) -> tuple[np.ndarray, np.ndarray]:
        """Who has a known status ``horizon_years`` after the landmark, and whether onset came by then."""
        return M.status_at(self.time, self.event, horizon_years * YEAR_DAYS)


def _landmark_items(shards: Path, split: str, landmark_years: float, modalities=None):
    """``(history, target)`` at a landmark for every person of a split at risk there (a survival target)."""
    from ..downstream.heads import HeadConfig  # noqa: PLC0415
    from ..downstream.landmarks import LandmarkConfig, LandmarkDataset  # noqa: PLC0415

    ds = ShardDataset(shards, split, shuffle=False, crop=CropConfig(random=False), modalities=modalities)
    lm = LandmarkConfig(eval_days=landmark_years * YEAR_DAYS, max_events=8, max_instances={"wearable": 4})
    items = LandmarkDataset(ds, HeadConfig(kind="survival"), lm, random_landmark=False)
    return list(items), dict(items.excluded)


def people_at(shards: Path, landmark_years: float) -> People:
    items, excluded = _landmark_items(shards, "test", landmark_years)
    return People(
        landmark_years,
        [h.key for h, _ in items],
        np.array([t["time"] for _, t in items]),
        np.array([t["event"] for _, t in items]).astype(int),
        excluded,
    )


# ----------------------------------------------------------------------------------------------- scores
#: a contender's risks for the people of one landmark: ``[n_people, n_horizons]`` and how many were filled in
Scores = tuple[np.ndarray, int]


def _by_key(people: People, keys: Sequence[str], risk: np.ndarray) -> Scores:
    """Risks in ``people``'s order; people the contender had no history for get its mean risk."""
    pos = {k: i for i, k in enumerate(keys)}
    mean = risk.mean(0) if len(risk) else np.zeros(risk.shape[1])
    out = np.array([risk[pos[k]] if k in pos else mean for k in people.keys])
    return out, sum(k not in pos for k in people.keys)


def model_scores(task, shards: Path, people: People, horizons: Sequence[float]) -> Scores:
    """A fine-tuned model's cumulative incidence at each horizon for the people of a landmark."""
    from ..downstream.predict import landmark_items, predict  # noqa: PLC0415

    lm = replace(task.landmark, eval_days=people.landmark_years * YEAR_DAYS)
    items, _ = landmark_items(task, shards, "test", lm)
    pred = predict(task, items)
    width = task.head_cfg.horizon_days / task.head_cfg.bins
    cols = [min(int(round(h * YEAR_DAYS / width)) - 1, task.head_cfg.bins - 1) for h in horizons]
    return _by_key(people, [h.key for h, _ in items], pred.cif[:, cols])


def baseline_scores(prep, shards: Path, people: People, horizons: Sequence[float], seed: int) -> dict[str, Scores]:
    """Logistic regressions fitted on the train split at the same landmark, one per horizon: on age alone, and
    on every modality's summaries at the last visit (:class:`~omnimodal.downstream.baselines.LastVisitFeatures`)."""
    from ..downstream.baselines import LastVisitFeatures, fit_logistic  # noqa: PLC0415

    feats = LastVisitFeatures(prep.specs, prep.clinical_codes)
    train, _ = _landmark_items(shards, "train", people.landmark_years)
    test, _ = _landmark_items(shards, "test", people.landmark_years)
    x_tr, x_te = feats.matrix([h for h, _ in train]), feats.matrix([h for h, _ in test])
    t = np.array([d["time"] for _, d in train])
    e = np.array([d["event"] for _, d in train]).astype(int)
    keys = [h.key for h, _ in test]
    out = {}
    for name, cols in (("age alone", slice(0, 1)), ("last visit, logistic", slice(None))):
        risk = np.zeros((len(test), len(horizons)))
        for k, h in enumerate(horizons):
            known, y = M.status_at(t, e, h * YEAR_DAYS)
            model = fit_logistic(x_tr[known][:, cols], y[known], seed)
            risk[:, k] = model.predict_proba(x_te[:, cols])[:, 1]
        out[name] = _by_key(people, keys, risk)
    return out


def first_event_times(cohort_dir: Path) -> pd.Series:
    """Each simulated person's first event in the cohort's events table (by raw id: never leaves the benchmark)."""
    events = pd.read_csv(cohort_dir / "events.csv", usecols=["subject_id", "time"])
    return pd.to_datetime(events["time"]).groupby(events["subject_id"]).min()


def first_event_offset(first: pd.Series, subject) -> float:
    """Days from a simulated person's first visit to their first event (the shards' day 0): a visit that measured
    nothing leaves no event."""
    return (first[subject.subject_id].to_pydatetime() - subject.first_time).total_seconds() / 86400.0


def oracle_scores(cohort: Cohort, people: People, horizons: Sequence[float], cfg: OracleConfig) -> dict[str, Scores]:
    """Both ceilings for the people of a landmark: each key is traced back to its simulated person (the keyed hash
    of the benchmark's public secret), and the landmark to days since that person's first visit."""
    secret = BENCH_SECRET.encode()
    index = {subject_key(subject_id(i), secret): i for i in range(cohort.n_subjects)}
    missing = [k for k in people.keys if k not in index]
    if missing:
        raise RuntimeError(f"{len(missing)} shard keys are not people of the benchmark cohort (seed {cohort.seed})")
    first = first_event_times(cohort.cohort)
    subjects, at = [], []
    for k in people.keys:
        s = simulate_subject(cohort.seed, index[k])
        subjects.append(s)
        at.append(first_event_offset(first, s) + people.landmark_years * YEAR_DAYS)
    snapshot = SnapshotOracle(people.landmark_years * YEAR_DAYS, horizons, cfg)
    return {
        "snapshot oracle": (snapshot.predict(subjects, at), 0),
        "trajectory oracle": (trajectory_risks(subjects, at, horizons, cfg), 0),
    }


# ----------------------------------------------------------------------------------------------- metrics
def _auroc_diff(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return M.auroc(y, a) - M.auroc(y, b)


def _c_diff(t: np.ndarray, e: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return M.concordance_index(t, e, a) - M.concordance_index(t, e, b)


def _est(e: M.Estimate) -> dict[str, float]:
    return {"value": e.value, "lo": e.lo, "hi": e.hi}


def score_tasks(
    people: People, scores: dict[str, Scores], horizons: Sequence[float], n_boot: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Per task of this landmark (``L1 H3``: onset within 3 years of the 1-year landmark; ``L1 survival``) and
    contender: the metric and the difference to the last-visit regression, each with its interval (the same
    resamples for every contender: one seed, one stratification)."""
    out: dict[str, dict[str, Any]] = {}
    ref = scores[REFERENCE][0]
    lname = f"L{people.landmark_years:g}"
    for k, h in enumerate(horizons):
        known, y = people.status(h)
        y = y[known].astype(float)
        task: dict[str, Any] = {"metric": "AUROC", "n": int(known.sum()), "cases": int(y.sum()), "contenders": {}}
        for name, (risk, filled) in scores.items():
            s = risk[known, k]
            row = {"filled": filled, **_est(M.bootstrap_ci(M.auroc, y, s, n_boot=n_boot, seed=seed, stratify=y))}
            if name != REFERENCE:
                d = M.bootstrap_ci(_auroc_diff, y, s, ref[known, k], n_boot=n_boot, seed=seed, stratify=y)
                row["vs_last_visit"] = _est(d)
            task["contenders"][name] = row
        out[f"{lname} H{h:g}"] = task
    t, e = people.time, people.event
    task = {"metric": "C-index", "n": len(t), "cases": int((e > 0).sum()), "contenders": {}}
    for name, (risk, filled) in scores.items():
        s = risk[:, -1]
        row = {"filled": filled, **_est(M.bootstrap_ci(M.concordance_index, t, e, s, n_boot=n_boot, seed=seed))}
        if name != REFERENCE:
            row["vs_last_visit"] = _est(M.bootstrap_ci(_c_diff, t, e, s, ref[:, -1], n_boot=n_boot, seed=seed))
        task["contenders"][name] = row
    out[f"{lname} survival"] = task
    return out


FULL = "pretrained, full fine-tune"  # "the full timeline" of the targets (fixed before any run, not the best one)


def checks(tasks: dict[str, dict[str, Any]], single: Sequence[str]) -> list[dict[str, Any]]:
    """The issue's targets, each per task: measured, never assumed."""
    out: list[dict[str, Any]] = []

    def add(what: str, task: str, ok: bool, detail: str) -> None:
        out.append({"target": what, "task": task, "holds": bool(ok), "measured": detail})

    for name, t in tasks.items():
        c = t["contenders"]
        v = {k: r["value"] for k, r in c.items()}
        if t["metric"] == "AUROC" and "pretrained, frozen probe" in v:
            ratio = v["pretrained, frozen probe"] / v["trajectory oracle"]
            add("frozen probe >= 0.90 x trajectory oracle", name, ratio >= 0.90, f"{ratio:.3f}")
        if FULL in c:
            d = c[FULL]["vs_last_visit"]
            add(
                f"{FULL} beats the last visit (95% CI of the difference > 0)",
                name,
                d["lo"] > 0,
                M.format_ci(*d.values()),
            )
        best_single = max((v[s] for s in single if s in v), default=float("nan"))
        chain = [v.get(FULL, np.nan), v.get("last event only", np.nan), best_single, v["age alone"]]
        add(
            "full timeline > last event only > best single modality > age alone",
            name,
            all(a > b for a, b in zip(chain, chain[1:])),
            " > ".join(f"{x:.3f}" for x in chain),
        )
    return out


# ----------------------------------------------------------------------------------------------- the run
def contender_runs(cfg: DictConfig) -> tuple[dict[str, list[str]], list[str]]:
    """Model contenders by name and their overrides, and the names of the single-modality ones:
    ``single_modality`` becomes one run per cohort modality (its name's ``{modality}`` filled in)."""
    runs: dict[str, list[str]] = {}
    single: list[str] = []
    for key, c in OmegaConf.to_container(cfg.contenders, resolve=True).items():
        if not isinstance(c, dict) or set(c) != {"name", "overrides"}:
            raise ConfigError(
                f"config key contenders.{key}: give it a name and overrides ({{name: ..., overrides: [...]}})"
            )
        if key == "single_modality":
            for m in cfg.cohort.modalities:
                single.append(c["name"].format(modality=m))
                runs[single[-1]] = [*c["overrides"], f"modalities=[{m}]"]
        else:
            runs[c["name"]] = list(c["overrides"])
    return runs, single


def run(cfg: DictConfig) -> dict[str, Any]:
    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cfg.cache) if cfg.get("cache") else cache_dir() / "benchmark"
    landmarks = [float(x) for x in cfg.tasks.landmarks_years]
    horizons = [float(x) for x in cfg.tasks.horizons_years]
    timings: dict[str, float] = {}

    def timed(what: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        timings[what] = round(time.perf_counter() - t0, 1)
        return result

    cohort = timed("cohort", lambda: build_cohort(cfg, cache))
    release = timed("pretraining", lambda: pretrain(cfg, cohort, cache))
    people = {lm: people_at(cohort.shards, lm) for lm in landmarks}
    scores: dict[float, dict[str, Scores]] = {lm: {} for lm in landmarks}
    ocfg = OracleConfig(int(cfg.oracle.paths), int(cfg.oracle.reference), int(cfg.oracle.reference_paths))
    for lm in landmarks:
        scores[lm].update(timed(f"oracles L{lm:g}", lambda lm=lm: oracle_scores(cohort, people[lm], horizons, ocfg)))
    from ..release import check_release  # noqa: PLC0415

    _, prep = check_release(release)
    for lm in landmarks:
        scores[lm].update(baseline_scores(prep, cohort.shards, people[lm], horizons, int(cfg.seed)))
    runs, single = contender_runs(cfg)
    for i, (name, overrides) in enumerate(runs.items()):
        _say(f"contender {i + 1}/{len(runs)}: {name} ({' '.join(overrides)})")
        task = timed(
            name,
            lambda n=name, o=overrides: finetune(
                cfg, release, cohort, out / "runs" / n.replace(" ", "_").replace(",", ""), o
            ),
        )
        for lm in landmarks:
            scores[lm][name] = model_scores(task, cohort.shards, people[lm], horizons)
    tasks: dict[str, dict[str, Any]] = {}
    for lm in landmarks:
        tasks.update(score_tasks(people[lm], scores[lm], horizons, int(cfg.n_boot), int(cfg.seed)))
    result = {
        "cohort": {
            "n_subjects": cohort.n_subjects,
            "seed": cohort.seed,
            "modalities": list(cfg.cohort.modalities),
            "test_at_risk": {f"L{lm:g}": len(people[lm].keys) for lm in landmarks},
            "excluded": {f"L{lm:g}": people[lm].excluded for lm in landmarks},
        },
        "release": str(release),
        "tasks": tasks,
        "checks": checks(tasks, single),
        "groups": {"oracles": list(ORACLES), "baselines": list(BASELINES), "models": list(runs)},
        "config": OmegaConf.to_container(cfg, resolve=True),
        "seconds": {**timings, "total": round(time.perf_counter() - t_start, 1)},
    }
    from .report import write  # noqa: PLC0415

    write(result, out)
    return result


__all__ = ["BENCH_SECRET", "People", "build_cohort", "checks", "run", "score_tasks"]
