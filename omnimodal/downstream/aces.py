"""Tasks defined in ACES on a MEDS dataset: each (person, prediction time) a landmark on the shards.

``omnimodal-finetune ... task=TASK.yaml task_data=MEDS_DIR`` extracts the task's labels with ACES's own
API (``aces.config.TaskExtractorConfig.load``, ``aces.predicates.get_predicates_df`` with
``standard: meds`` and ``aces.query.query``, one MEDS data shard at a time as ``aces-cli data=sharded``
does) and aligns them to MEDS's label schema as ``aces-cli`` does. Each prediction time becomes one sample:
the history is the person's events at or before it, the target its boolean label (a binary
classification head).

Matching: a MEDS ``subject_id`` is the shards' key ``subject_key(str(subject_id), secret)`` with the
secret the shards were built with (``$OMNIMODAL_SHARD_SECRET``); the sample goes to the split the person's
shard is in. Time axis: a prediction time ``T`` is ``(T - MEDS_BIRTH) - (age_days - time_days)`` days on
the shards' axis (age minus time since the first event is the same for every event of a person), so a
history is exact to the second whatever the first event was; events up to one second after ``T`` count
as at ``T`` (float days). Prediction times left out are counted by reason: person not in the shards, no
``MEDS_BIRTH``, no event at or before the prediction time.

Training sees one random prediction time per person and epoch (each person weighs the same, as the
shard-label landmarks do); validation and test see all of them. Predictions and scores:
:mod:`omnimodal.downstream.aces_eval`.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from torch.utils.data import IterableDataset

from datamodules.loader import ShardDataset, _seed
from datamodules.meds import BIRTH, is_code, subject_ids  # the builder's own MEDS rules (ids, birth)
from datamodules.schema import DataError, Timeline
from datamodules.shards.format import SECRET_ENV, resolve_secret, subject_key
from datamodules.shards.store import read_index

from ..infra.config_check import ConfigError
from .landmarks import LandmarkConfig, LandmarkData, at_landmark

DAY_S = 86400.0
#: events up to 1 ms after a prediction time are at it (float days carry ~1e-7 s of error; an outcome a second
#: after the trigger must not enter the history)
AT_TIME_DAYS = 1e-3 / DAY_S
LEFT_OUT_NOT_IN_SHARDS = "person not in the shards"
LEFT_OUT_NO_BIRTH = "no MEDS_BIRTH event for the person (its time axis is unknown)"
LEFT_OUT_NO_HISTORY = "no event at or before the prediction time"


# -- ACES: the task's labels ------------------------------------------------------------------------------
def meds_data_files(meds_dir: str | Path) -> list[Path]:
    """The data shards of a MEDS dataset (``data/**/*.parquet``), or a DataError saying what is wrong."""
    root = Path(meds_dir)
    if not root.is_dir():
        raise DataError("no such directory", where=f"task_data={root}", hint="set task_data to a MEDS dataset's root")
    files = sorted((root / "data").glob("**/*.parquet"))
    if not files:
        raise DataError(
            "not a MEDS dataset: no data/**/*.parquet under it",
            where=f"task_data={root}",
            hint="point task_data at the MEDS root (the folder holding data/ and metadata/)",
        )
    return files


def load_task(path: str | Path) -> Any:
    """An ACES task config (``aces.config.TaskExtractorConfig``), or a ConfigError naming the file."""
    from aces.config import TaskExtractorConfig
    from ruamel.yaml import YAMLError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config key task = {str(p)!r}: no such file (an ACES task config, .yaml)")
    try:
        cfg = TaskExtractorConfig.load(config_path=p)
    except (YAMLError, ValueError, KeyError, TypeError, AttributeError) as exc:  # ruamel's, ACES's own checks
        raise ConfigError(
            f"config key task = {str(p)!r}: not a valid ACES task config ({type(exc).__name__}: {exc}); "
            "see https://eventstreamaces.readthedocs.io/en/latest/configuration.html"
        ) from None
    missing = [k for k, v in (("label", cfg.label_window), ("index_timestamp", cfg.index_timestamp_window)) if not v]
    if missing:
        raise ConfigError(
            f"config key task = {str(p)!r}: no window has {' or '.join(missing)}: a fine-tuning task needs a "
            "boolean label (label: PREDICATE in one window) and a prediction time (index_timestamp: start|end)"
        )
    return cfg


def extract_labels(task_path: str | Path, meds_dir: str | Path) -> pl.DataFrame:
    """ACES labels: ``subject_id`` (int64), ``prediction_time`` (datetime[us]), ``boolean_value`` (bool)."""
    from aces.predicates import get_predicates_df
    from aces.query import query
    from aces.run import get_and_validate_label_schema
    from omegaconf import DictConfig

    cfg = load_task(task_path)
    parts = []
    for f in meds_data_files(meds_dir):  # a subject's events are in one shard (MEDS): shards are independent
        try:
            preds = get_predicates_df(cfg, DictConfig({"path": str(f), "standard": "meds"}))
            result = query(cfg, preds)
        except (pl.exceptions.PolarsError, KeyError, ValueError) as exc:
            raise DataError(f"ACES could not read it ({type(exc).__name__}: {exc})", where=str(f)) from None
        if result.is_empty():
            continue
        result = result.select(
            "subject_id", pl.col("index_timestamp").alias("prediction_time"), pl.col("label").alias("boolean_value")
        )
        parts.append(pl.from_arrow(get_and_validate_label_schema(result)))
    cols = {"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"), "boolean_value": pl.Boolean}
    if not parts:
        return pl.DataFrame(schema=cols)
    return pl.concat(parts).select(list(cols)).sort("subject_id", "prediction_time")


def births(meds_dir: str | Path) -> dict[int, datetime]:
    """``MEDS_BIRTH`` (or ``MEDS_BIRTH//...``) time per MEDS subject_id, the earliest: the rule the shard
    builder reads MEDS data by (:mod:`datamodules.meds`), so ages agree with the shards' ``age_days``."""
    df = (
        pl.scan_parquet([str(f) for f in meds_data_files(meds_dir)])
        .filter(is_code(BIRTH) & pl.col("time").is_not_null())
        .group_by("subject_id")
        .agg(pl.col("time").min())
        .collect()
    )
    return dict(zip(df["subject_id"].to_list(), df["time"].to_list(), strict=True))


def key_names(meds_dir: str | Path, meds_ids: pl.Series) -> dict[int, str]:
    """MEDS subject_id -> the id the shards' keys hash, as a build from ``meds_dir`` names subjects
    (:func:`datamodules.meds.subject_ids`: the data steward's id from an export's id map, else the int as text)."""
    ids = meds_ids.unique().sort().to_list()
    return dict(zip(ids, subject_ids(meds_dir, ids), strict=True))


# -- matching labels to the shards ------------------------------------------------------------------------
@dataclass(frozen=True)
class PredictionTime:
    """One sample: the landmark on the shards' axis (days since the first event), the label, and what the
    predictions file says about it (``subject_id``: the pseudonym, the MEDS ``prediction_time``)."""

    days: float
    label: bool
    subject_id: int
    time: datetime


@dataclass
class AcesLandmarks:
    """The task's prediction times per split and shard key, and those left out by reason."""

    splits: dict[str, dict[str, list[PredictionTime]]]
    excluded: collections.Counter[str] = field(default_factory=collections.Counter)
    n_labels: int = 0

    def count(self, split: str) -> tuple[int, int, int]:
        """(people, prediction times, positives) of a split."""
        times = [t for ts in self.splits.get(split, {}).values() for t in ts]
        return len(self.splits.get(split, {})), len(times), sum(t.label for t in times)

    def summary(self) -> str:
        parts = []
        for split in sorted(self.splits):
            people, n, pos = self.count(split)
            parts.append(f"{split} {n} ({pos} positive) of {people} people")
        left = "; ".join(f"{n} {why}" for why, n in self.excluded.most_common()) or "none"
        return f"ACES task: {self.n_labels} prediction times; {', '.join(parts)}; left out: {left}"


def pseudonym_id(key: str) -> int:
    """An int64 subject_id from a shard key (its first 60 bits): joins predictions without a raw id."""
    return int(key[:15], 16)


def _secret() -> bytes:
    try:
        return resolve_secret(None)
    except DataError as err:
        raise DataError(
            err.reason,
            where="ACES labels",
            hint=f"MEDS subject_ids are matched to the shards by keyed hash: set {SECRET_ENV} to the secret the "
            "shards in data.root were built with",
        ) from None


def shard_axes(root: str | Path) -> dict[str, tuple[str, float]]:
    """Per shard key: (split, offset) with ``offset = age - time since the first event`` in days.
    Reads meta.json only (the arrays are checked when training reads them)."""
    out = {}
    for split in read_index(root)["splits"]:
        ds = ShardDataset(root, split, shuffle=False, validate=False)
        for sample in ds.raw_samples(0):
            meta = json.loads(sample["meta.json"])
            ev = meta["events"]
            if ev:
                out[sample["__key__"]] = (split, ev[0]["age_days"] - ev[0]["time_days"])
    return out


def match(
    labels: pl.DataFrame,
    birth: dict[int, datetime],
    names: dict[int, str],
    root: str | Path,
    where: str = "",
) -> AcesLandmarks:
    """ACES labels -> prediction times on the shards' time axis, per split and key (see the module docstring)."""
    secret = _secret()
    axes = shard_axes(root)
    out = AcesLandmarks({split: {} for split in read_index(root)["splits"]}, n_labels=len(labels))
    keys: dict[int, str] = {}
    for sid, t, y in labels.iter_rows():
        key = keys.setdefault(sid, subject_key(names.get(sid, str(sid)), secret))
        if key not in axes:
            out.excluded[LEFT_OUT_NOT_IN_SHARDS] += 1
            continue
        if sid not in birth:
            out.excluded[LEFT_OUT_NO_BIRTH] += 1
            continue
        split, offset = axes[key]
        days = (t - birth[sid]).total_seconds() / DAY_S - offset
        if days + AT_TIME_DAYS < 0:  # before the first event
            out.excluded[LEFT_OUT_NO_HISTORY] += 1
            continue
        out.splits[split].setdefault(key, []).append(PredictionTime(days, bool(y), pseudonym_id(key), t))
    if len(labels) and not any(out.splits.values()):
        raise DataError(
            f"none of the {labels['subject_id'].n_unique()} people with ACES labels is in the shards",
            where=where,
            hint=f"were these shards built from this MEDS dataset (omnimodal-shard --meds) with this secret "
            f"({SECRET_ENV})?",
        )
    return out


# -- datasets ---------------------------------------------------------------------------------------------
class AcesLandmarkDataset(IterableDataset):
    """A split's people with prediction times: ``(history, {"y": label})`` (and, with ``with_times``, the
    :class:`PredictionTime` third); ``random_landmark``: one random prediction time per person and epoch."""

    def __init__(
        self,
        shards: ShardDataset,
        times: dict[str, list[PredictionTime]],
        lm: LandmarkConfig,
        random_landmark: bool,
        with_times: bool = False,
    ) -> None:
        self.shards, self.times, self.lm, self.random_landmark = shards, times, lm, random_landmark
        self.with_times = with_times
        self.excluded: collections.Counter[str] = collections.Counter()
        self.included = 0

    def __len__(self) -> int:  # an upper bound: histories of other modalities only are left out
        return len(self.times) if self.random_landmark else sum(map(len, self.times.values()))

    def set_epoch(self, epoch: int) -> None:
        self.shards.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        self.excluded.clear()
        self.included = 0
        for tl in self.shards:
            times = self.times.get(tl.key)
            if not times:
                continue
            if self.random_landmark:
                rng = np.random.default_rng(_seed(self.shards.seed, self.shards.epoch, tl.key, "aces"))
                times = [times[int(rng.integers(len(times)))]]
            for pt in times:
                hist = at_landmark(tl, pt.days + AT_TIME_DAYS, self.lm)
                if hist is None:
                    self.excluded[LEFT_OUT_NO_HISTORY] += 1
                    continue
                self.included += 1
                item = (hist, {"y": float(pt.label)})
                yield (*item, pt) if self.with_times else item


class AcesLandmarkData(LandmarkData):
    """:class:`LandmarkData` whose samples are an ACES task's prediction times."""

    def __init__(self, root: str | Path, *args: Any, landmarks: AcesLandmarks, **kw: Any) -> None:
        super().__init__(root, *args, **kw)
        self.landmarks = landmarks

    def dataset(self, split: str, train: bool | None = None, with_times: bool = False) -> AcesLandmarkDataset:
        train = split == "train" if train is None else train
        times = self.landmarks.splits.get(split, {})
        return AcesLandmarkDataset(
            self.shards(split, train), times, self.lm, random_landmark=train, with_times=with_times
        )

    def items(self, split: str) -> tuple[list[tuple[Timeline, dict[str, float]]], list[PredictionTime], dict]:
        """All of a split's samples (in shard order), their prediction times, and those left out."""
        ds = self.dataset(split, train=False, with_times=True)
        rows = list(ds)
        return [(h, t) for h, t, _ in rows], [p for _, _, p in rows], dict(ds.excluded)


def prepare(cfg: Any) -> AcesLandmarks:
    """The ``task``/``task_data`` keys of a finetune config -> the task's prediction times."""
    if not cfg.get("task_data"):
        raise ConfigError("config key task_data: set task_data=/path/to/MEDS dataset the ACES task is defined on")
    labels = extract_labels(cfg.task, cfg.task_data)
    if labels.is_empty():
        raise DataError(
            "ACES found no prediction time",
            where=f"task={cfg.task} on task_data={cfg.task_data}",
            hint="check the task's trigger and window constraints against the codes of the MEDS data",
        )
    where = f"task_data={cfg.task_data}, data.root={cfg.data.root}"
    names = key_names(cfg.task_data, labels["subject_id"])
    return match(labels, births(cfg.task_data), names, cfg.data.root, where=where)


__all__ = [
    "AcesLandmarkData",
    "AcesLandmarkDataset",
    "AcesLandmarks",
    "PredictionTime",
    "births",
    "key_names",
    "extract_labels",
    "load_task",
    "match",
    "prepare",
]
