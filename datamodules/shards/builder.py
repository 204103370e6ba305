"""``omnimodal-shard``: subjects/events/labels tables -> validated, pseudonymised WebDataset shards.

Every measurement is read by its reader and stored decoded in its canonical layout. Bad rows are
rejected with a reason in the build report (or stop the build when ``strict``); subjects who withdrew
consent are left out and listed by key. No raw id, name or date leaves this module: shards and the
report carry keyed hashes, times in days since the subject's first event, and ages in days.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import interventions, tables
from ..modalities import registry
from ..readers import Reading, preload_readers, read_recording
from ..schema import (
    MODALITIES,
    SCHEMA_VERSION,
    DataError,
    DataWarning,
    Spec,
    default_specs,
    dumps,
    specs_from_json,
    specs_to_json,
)
from ..windows import Account, Window, WindowPolicy, policies, tally
from .format import INDEX_NAME, TarShardWriter, checksum, encode_array, member_name, resolve_secret, subject_key
from .report import BuildReport, Rejection

DAY_S = 86400.0
#: what ``meta.json`` says of a measurement itself: a reader's own metadata (``Reading.meta``) may not use these
LAYOUT_KEYS = frozenset({"modality", "offset", "shape", "code", "value", "recording", "window", "offset_s", "coverage"})


@dataclass
class BuildConfig:
    """What ``omnimodal-shard`` needs; every field can come from a YAML/JSON config or the command line."""

    subjects: str | None = None  # with ``meds``: optional, a consent table (``tables.load_consent``)
    events: str | None = None  # with ``meds``: optional, more events (files of other modalities)
    out: str = ""
    labels: str | None = None
    #: a MEDS v0.4 dataset root (``datamodules.meds``): subjects and events come from it
    meds: str | None = None
    secret: str | None = None  # else $OMNIMODAL_SHARD_SECRET
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)  # overrides of schema defaults
    strict: bool = False
    workers: int = 1
    max_samples_per_shard: int = 256
    max_shard_bytes: int = 1 << 30
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    #: a strftime format (pandas ``format=``) that times may have besides ISO 8601, e.g. ``%d/%m/%Y %H:%M``
    time_format: str | None = None
    #: window policies of time-based modalities, overriding the defaults field by field (``datamodules.windows``):
    #: e.g. ``{"wearable": {"min_coverage": 0.5}, "ecg": {"max_windows": 20, "select": "first"}}``
    windows: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: build only share ``"I/N"`` (I from 1 to N) of the subjects, chosen by their keys, into
    #: ``out/parts/part-I-of-N/``; ``omnimodal-shard merge OUT`` joins the N parts (``datamodules.shards.parts``)
    part: str | None = None


@dataclass
class _SubjectJob:
    key: str
    split: str
    birth: pd.Timestamp
    death: pd.Timestamp | None
    static: dict[str, float]
    events: list[dict[str, Any]]
    labels: list[dict[str, Any]]
    raw_id: str  # only to scrub it from library messages; never written
    row: int = 0  # the subject's row in the subjects table
    table: str = "subjects"  # that table (a MEDS file for a MEDS build)

    def source(self) -> str:
        """Where the subject's birth date comes from, for messages: its subjects row, or in a MEDS build its
        ``MEDS_BIRTH`` row."""
        if self.table == "subjects":
            return f"subjects row {self.row}"
        return f"the subject's MEDS_BIRTH row ({self.table} row {self.row})"

    def scrub(self, text: str, path: str | None = None) -> str:
        """Remove the raw id and the file path from a message (paths often embed the raw id)."""
        if path:
            text = text.replace(str(path), f"<{Path(path).suffix or 'file'}>")
        return text.replace(self.raw_id, "<subject>")


@dataclass
class SubjectResult:
    """One subject read and encoded: its sample's members (None: no valid event) and its share of the report."""

    key: str
    split: str
    members: dict[str, bytes] | None
    counts: Counter
    codes: Counter
    rejections: list[Rejection]
    notes: list[str]
    windows: dict[str, Account] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """Everything but the members, as JSON data (exact: floats survive a JSON round trip); ``sample`` says
        whether there are members."""
        return {
            "key": self.key,
            "split": self.split,
            "sample": self.members is not None,
            "counts": dict(self.counts),
            "codes": dict(self.codes),
            "rejections": [dataclasses.asdict(r) for r in self.rejections],
            "notes": list(self.notes),
            "windows": {m: dataclasses.asdict(a) for m, a in self.windows.items()},
        }

    @classmethod
    def from_record(cls, d: dict[str, Any], members: dict[str, bytes] | None) -> SubjectResult:
        return cls(
            d["key"],
            d["split"],
            members,
            Counter(d["counts"]),
            Counter(d["codes"]),
            [Rejection(**r) for r in d["rejections"]],
            list(d["notes"]),
            {m: Account(**a) for m, a in d["windows"].items()},
        )


def build_shards(cfg: BuildConfig) -> BuildReport:
    """Build shards, ``index.json`` and ``report.{json,md}`` in ``cfg.out``; return the report. A part of a build
    (``cfg.part``) is :func:`datamodules.shards.parts.build_part`'s."""
    if cfg.part:
        raise DataError(
            f"part {cfg.part!r} given to build_shards, which builds every subject",
            hint="build a part with datamodules.shards.parts.build_part (omnimodal-shard --part does)",
        )
    prepared = prepare(cfg)
    shards = ShardFolder(Path(cfg.out), cfg.max_samples_per_shard, cfg.max_shard_bytes, prepared.report)
    with subject_results(cfg, prepared, prepared.jobs) as results:
        for res in results:
            shards.add(res)
    return shards.finish(specs_to_json(prepared.specs), prepared.descriptions)


@dataclass
class Prepared:
    """A build's checked tables: one job per included subject (sorted by key) and what the tables alone decided
    (``report``: rows rejected, consent withdrawn, subjects in the table), the same for every part of a build."""

    specs: dict[str, Spec]
    windows: dict[str, WindowPolicy]
    report: BuildReport
    jobs: list[_SubjectJob]
    descriptions: dict[str, str]  # clinical code -> description (a MEDS build's codes.parquet)
    secret: bytes


def prepare(cfg: BuildConfig) -> Prepared:
    """Resolve the secret, specs and window policies, and read and check the tables (main process)."""
    secret = resolve_secret(cfg.secret)
    specs = default_specs(**cfg.specs)
    windows = window_policies(cfg, specs)
    report = BuildReport()
    jobs = _plan(cfg, secret, report)
    return Prepared(specs, windows, report, jobs, report.meds.pop("descriptions", {}), secret)


@contextmanager
def subject_results(cfg: BuildConfig, prepared: Prepared, jobs: list[_SubjectJob]) -> Iterator[Iterator[SubjectResult]]:
    """Each job read, checked and encoded, in the order of ``jobs``: in ``cfg.workers`` processes, or in this one.

    Every subject is encoded single-threaded (torch's intra-op threads are one per process): a worker is a core,
    and the bytes do not depend on the machine's core count."""
    policy_json = {m: dataclasses.asdict(p) for m, p in prepared.windows.items()}
    args = [(job, specs_to_json(prepared.specs), policy_json, cfg.strict, cfg.time_format) for job in jobs]
    # import the readers this build needs first: forked workers start at once instead of each importing
    # torch/MONAI/PyAV again (tens of seconds); spawn where fork does not exist.
    preload_readers({row["modality"] for job in jobs for row in job.events})
    if cfg.workers <= 1:
        with _one_thread():
            yield map(_build_subject, args)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = ctx.Pool(cfg.workers, initializer=_worker_init)
    try:
        yield pool.imap(_build_subject, args, chunksize=1)
    finally:
        pool.terminate()


class ShardFolder:
    """The final shard folder being written: subjects' results added in key order go into ``{split}-NNNNNN.tar``
    and the report; :meth:`finish` writes ``index.json`` and ``report.{json,md}``. A one-machine build and the
    merge of a build's parts (:mod:`datamodules.shards.parts`) both write through it, so their bytes agree."""

    def __init__(self, out: Path, max_samples: int, max_bytes: int, report: BuildReport) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for stale in [*out.glob("*.tar"), *out.glob("*.tar.tmp")]:
            stale.unlink()
        self.out, self.report = out, report
        self.writers = {s: TarShardWriter(out, s, max_samples, max_bytes) for s in tables.SPLITS}
        self.train_codes: Counter = Counter()

    def add(self, res: SubjectResult) -> None:
        tally_result(self.report, res, self.train_codes)
        if res.members is not None:
            self.writers[res.split].add(res.key, res.members)

    def close(self) -> dict[str, list[dict[str, Any]]]:
        """Finish the open shards; each split's shard entries (name, samples, bytes, sha256) in order."""
        return {s: w.close() for s, w in self.writers.items()}

    def finish(self, specs_json: dict[str, Any], descriptions: dict[str, str]) -> BuildReport:
        """Write ``index.json`` and ``report.{json,md}``; a :class:`DataError` if no sample was written."""
        out, report = self.out, self.report
        if not report.samples:
            (out / INDEX_NAME).unlink(missing_ok=True)  # nothing to train on: no index a loader could open
            report.write(out)
            raise DataError(
                f"0 samples written: of {report.subjects_in_table} subjects, {len(report.withdrawn)} withdrew "
                f"consent and {len(report.no_events)} have no valid event; {len(report.rejected)} rows were "
                "rejected",
                where=str(out),
                hint=f"{out / 'report.md'} lists every rejected row with its reason",
            )
        index = {
            "schema_version": SCHEMA_VERSION,
            "specs": specs_json,
            "clinical_codes": sorted(self.train_codes),
            "splits": {s: {"samples": report.splits[s], "shards": entries} for s, entries in self.close().items()},
        }
        kept = {c: descriptions[c] for c in sorted(self.train_codes) if descriptions.get(c)}
        if kept:
            index["clinical_code_descriptions"] = kept  # from the MEDS codes.parquet
        (out / INDEX_NAME).write_bytes(dumps(index))
        report.write(out)
        return report


def tally_result(report: BuildReport, res: SubjectResult, train_codes: Counter) -> None:
    """Add one subject's result to the report (and its clinical codes, if a training subject, to ``train_codes``)."""
    report.rejected.extend(res.rejections)
    report.notes.extend(res.notes)
    for m, account in res.windows.items():
        report.add_windows(m, account)
    if res.members is None:
        report.no_events.append(res.key)
        return
    report.modalities.update(res.counts)
    report.splits[res.split] += 1
    if res.split == "train":
        train_codes.update(res.codes)


def window_policies(cfg: BuildConfig, specs: dict[str, Spec]) -> dict[str, WindowPolicy]:
    """Each time-based modality's window policy: its declaration's, with ``cfg.windows`` overrides."""
    return policies({m: d.windows for m, d in registry().items()}, specs, cfg.windows)


def _worker_init() -> None:
    import torch  # noqa: PLC0415

    torch.set_num_threads(1)  # one process per core already


@contextmanager
def _one_thread() -> Iterator[None]:
    """An in-process build as a worker runs: torch on one thread, restored afterwards (on every core, a subject's
    small tensors made a 1-worker build 3.6x slower on a busy 2-core machine: scripts/bench/builder.py)."""
    torch = sys.modules.get("torch")  # loaded by the readers this build needs (preload_readers), or not needed
    before = torch.get_num_threads() if torch else 0
    if torch:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch:
            torch.set_num_threads(before)


def _plan(cfg: BuildConfig, secret: bytes, report: BuildReport) -> list[_SubjectJob]:
    """Read and check the tables in the main process; one job per included subject, sorted by key."""
    subj, events = _sources(cfg, report)
    labels = tables.load_labels(cfg.labels, cfg.time_format) if cfg.labels else None
    subj["key"] = [subject_key(s, secret) for s in subj["subject_id"]]
    key_of = dict(zip(subj["subject_id"], subj["key"]))
    where = "the MEDS data" if cfg.meds else "the subjects table"

    def reject(table: str, row: int, key: str | None, reason: str, modality: str | None = None) -> None:
        rej = Rejection(table, int(row), key, modality, reason)
        if cfg.strict:
            raise DataError(rej.describe(), hint="fix the row, or build without --strict to skip and report it")
        report.rejected.append(rej)

    dup = subj["subject_id"].duplicated(keep=False)
    for r in subj[dup].itertuples():
        reject(
            _table(r, "subjects"),
            r.row,
            r.key,
            "duplicate subject_id: the subject is left out until the table has one row",
        )
    jobs: list[_SubjectJob] = []
    ev_by, lab_by = _records_by_subject(events), _records_by_subject(labels)
    for tbl, df in (("events", events), ("labels", labels)):
        if df is not None:
            for r in df[~df["subject_id"].isin(key_of)].itertuples():
                reject(_table(r, tbl), r.row, None, f"subject_id not in {where}")
    for r in subj[~dup].itertuples():
        table = _table(r, "subjects")
        if r.consent is None:
            reject(table, r.row, r.key, "consent value not understood (use true/false)")
            continue
        if not r.consent:  # before any other check: a withdrawn subject is listed as withdrawn, nothing else
            report.withdrawn.append(r.key)
            continue
        if getattr(r, "problem", None):
            reject(table, r.row, r.key, r.problem)
            continue
        column = "the birth_date/birth_year column" if table == "subjects" else "the subject's MEDS_BIRTH row"
        birth_problem = _birth_problem(r.birth, r.birth_year_only, cfg.time_format, column)
        if birth_problem:
            reject(table, r.row, r.key, birth_problem)
            continue
        split = r.split if isinstance(r.split, str) else _hash_split(r.key, cfg.split_fractions)
        if split not in tables.SPLITS:
            reject(table, r.row, r.key, f"split {split!r} is not one of {tables.SPLITS}")
            continue
        rows = ev_by.get(r.subject_id, [])
        lab_rows = lab_by.get(r.subject_id, [])
        death = getattr(r, "death", None)
        if death is not None and not pd.isna(death) and death < r.birth:
            where_death = "the death_date column" if table == "subjects" else "the subject's MEDS_DEATH row"
            reject(table, r.row, r.key, f"death date before the birth date: check {where_death}")
            continue
        jobs.append(
            _SubjectJob(
                r.key,
                split,
                r.birth,
                None if death is None or pd.isna(death) else death,
                {"sex_male": float(r.sex_male)},
                rows,
                lab_rows,
                r.subject_id,
                int(r.row),
                table,
            )
        )
    report.subjects_in_table = len(subj)
    jobs.sort(key=lambda j: j.key)
    return jobs


def _sources(cfg: BuildConfig, report: BuildReport) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The subjects and events to build from: the tables, or a MEDS dataset (``cfg.meds``) with, optionally,
    a consent table (``cfg.subjects``) and an events table of more files (``cfg.events``) joined on subject_id."""
    if not cfg.out:
        raise DataError("no output folder", hint="give --out (or out: in the config)")
    if not cfg.meds:
        if not cfg.subjects or not cfg.events:
            raise DataError("no input", hint="give --subjects and --events, or --meds DIR (a MEDS dataset)")
        return tables.load_subjects(cfg.subjects, cfg.time_format), tables.load_events(cfg.events, cfg.time_format)
    from .. import meds  # noqa: PLC0415 - polars/pyarrow/meds only for MEDS builds

    cohort = meds.read_meds(cfg.meds)
    report.meds = {"root": str(cfg.meds), **cohort.counts, "descriptions": cohort.descriptions}
    subj, events = cohort.subjects, cohort.events
    if cfg.subjects:
        subj, unknown = meds.apply_consent(subj, tables.load_consent(cfg.subjects))
        report.meds["consent_rows_not_in_meds"] = unknown
    if cfg.events:
        more = tables.load_events(cfg.events, cfg.time_format).assign(table="events")
        events = pd.concat([events, more], ignore_index=True)
    return subj, events


def _records_by_subject(df: pd.DataFrame | None) -> dict[str, list[dict[str, Any]]]:
    """A table's rows as dicts (without subject_id), by subject: one conversion for the whole table (per-subject
    ``to_dict`` took 7 ms a subject, minutes for a MEDS dataset of 100k subjects)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in [] if df is None else df.to_dict("records"):
        out.setdefault(rec.pop("subject_id"), []).append(rec)
    return out


def _table(row: Any, default: str) -> str:
    """The table a row comes from: its own ``table`` (a MEDS file) or ``default``."""
    t = row.get("table") if isinstance(row, dict) else getattr(row, "table", None)
    return t if isinstance(t, str) and t else default


def _birth_problem(
    birth: pd.Timestamp, year_only: bool, time_format: str | None, column: str = "the birth_date/birth_year column"
) -> str | None:
    """Why a birth date cannot be used: missing, not a date, in the future or before 1900 (the report names the
    subjects row, never the date itself: no date leaves the builder); ``column``: where to look (a MEDS build:
    the subject's MEDS_BIRTH row)."""
    if pd.isna(birth):
        return (
            "birth_year missing or not a year"
            if year_only
            else f"birth_date missing or not a date [{tables.accepted_times(time_format)}]"
        )
    now = pd.Timestamp.now("UTC").tz_localize(None)
    if (birth.year > now.year) if year_only else birth > now:
        return f"birth date is in the future: check {column}"
    if birth < pd.Timestamp("1900-01-01"):
        return f"birth date is before 1900 (implausible): check {column}"
    return None


def _hash_split(key: str, fractions: tuple[float, float, float]) -> str:
    u = int(key[:8], 16) / 16**8
    cum = np.cumsum(fractions) / sum(fractions)
    return tables.SPLITS[int(np.searchsorted(cum, u, side="right"))]


def _build_subject(arg: tuple[_SubjectJob, dict[str, Any], dict[str, Any], bool, str | None]) -> SubjectResult:
    """Read, check and encode one subject (runs in a worker process)."""
    job, specs_json, policy_json, strict, time_format = arg
    specs: dict[str, Spec] = specs_from_json(specs_json)
    windows = {m: WindowPolicy(**p) for m, p in policy_json.items()}
    res = SubjectResult(job.key, job.split, None, Counter(), Counter(), [], [])

    def reject(table: str, row: dict[str, Any], reason: str) -> None:
        rej = Rejection(_table(row, table), int(row["row"]), job.key, row.get("modality"), reason)
        if strict:
            raise DataError(rej.describe(), hint="fix the row, or build without --strict to skip and report it")
        res.rejections.append(rej)

    # (time, row, events row, window or None for a clinical row, recording index)
    accepted: list[tuple[pd.Timestamp, int, dict[str, Any], Window | None, int, dict[str, Any]]] = []
    seen: set[tuple[Any, ...]] = set()
    recordings = 0
    for row in sorted(job.events, key=lambda r: (_table(r, "events"), r["row"])):
        m = row["modality"]
        ident = tuple(
            None if _missing(v) else v
            for v in (row["time"], m, row.get("path"), row.get("code"), row.get("numeric_value"))
        )
        if m not in MODALITIES:
            reject("events", row, f"unknown modality {m!r} [use one of {', '.join(MODALITIES)}]")
        elif pd.isna(row["time"]):
            reject("events", row, tables.time_problem(row.get("raw_time"), time_format))
        elif row["time"] < job.birth:
            days = (job.birth - row["time"]).total_seconds() / DAY_S
            reject(
                "events",
                row,
                f"event before birth [{days:.0f} days before the birth date of {job.source()}: fix the event's "
                "time or the birth date]",
            )
        elif job.death is not None and row["time"] > job.death:
            days = (row["time"] - job.death).total_seconds() / DAY_S
            reject(
                "events",
                row,
                f"event after death [{days:.0f} days after the death date of "
                f"{job.source() if job.table == 'subjects' else 'its MEDS_DEATH row'}: fix the event's time or the "
                "death date]",
            )
        elif ident in seen:
            reject("events", row, "duplicate event row (same time, modality and file/code) [drop one of the rows]")
        elif m == "clinical":
            if not isinstance(row.get("code"), str) or not row["code"].strip():
                reject("events", row, "clinical row without a code [give the row a code, e.g. ICD10:I10]")
            else:
                accepted.append((row["time"], row["row"], row, None, -1, {}))
        elif not row.get("path"):
            reject("events", row, f"{m} row without a path [give the file's path in the path column]")
        else:
            try:
                reading = _read(job, row, specs[m], windows.get(m), strict)
            except DataError as exc:
                reject("events", row, job.scrub(_with_hint(exc), row["path"]))
                account = getattr(exc, "account", None)
                if account is not None:
                    tally(res.windows, m, account)
            else:
                res.notes.extend(
                    f"events row {row['row']} (key {job.key}): {job.scrub(n, row['path'])}"
                    for n in reading.notes + reading.problems
                )
                if reading.account is not None:
                    tally(res.windows, m, reading.account)
                for w in reading.windows:
                    t = row["time"] + pd.Timedelta(seconds=w.offset_s)
                    accepted.append((t, row["row"], row, w, recordings, reading.meta))
                recordings += 1
        seen.add(ident)
    accepted = _check_interventions(accepted, reject)
    if not accepted:
        return res
    accepted.sort(key=lambda a: (a[0], MODALITIES.index(a[2]["modality"]), a[1], a[3].index if a[3] else 0))
    first = accepted[0][0]
    packed: dict[str, list[np.ndarray]] = {}  # modality -> its measurements' arrays, in timeline order
    size: Counter[str] = Counter()  # modality -> values packed so far: the next measurement's offset
    events: list[dict[str, Any]] = []
    for t, _, row, window, recording, facts in accepted:
        if not events or events[-1]["_t"] != t:
            events.append(
                {
                    "_t": t,
                    "time_days": (t - first).total_seconds() / DAY_S,
                    "age_days": (t - job.birth).total_seconds() / DAY_S,
                    "measurements": [],
                }
            )
        m = row["modality"]
        res.counts[m] += 1
        if window is None:
            value = row.get("numeric_value")
            events[-1]["measurements"].append(
                {"modality": m, "code": row["code"].strip(), "value": None if pd.isna(value) else float(value)}
            )
            res.codes[row["code"].strip()] += 1
            continue
        if clash := LAYOUT_KEYS.intersection(facts):
            raise DataError(
                f"the {m} reader's metadata has the shard layout's key(s) {sorted(clash)}, which it would overwrite",
                where=str(row["path"]),
                hint=f"rename them in the reader (datamodules/modalities/{m}.py or datamodules/readers/)",
            )
        entry = {"modality": m, "offset": size[m], "shape": list(window.array.shape), **facts}
        packed.setdefault(m, []).append(window.array)
        size[m] += window.array.size
        if m in windows:
            entry.update(recording=recording, window=window.index, offset_s=window.offset_s, coverage=window.coverage)
        events[-1]["measurements"].append(entry)
    members: dict[str, bytes] = {}
    inventory: dict[str, Any] = {}
    for m, arrays in packed.items():  # one member per modality: its measurements end to end, flat
        name = member_name(m)
        members[name] = encode_array(np.concatenate([a.ravel() for a in arrays]), specs[m].storage_dtype)
        inventory[name] = {
            "modality": m,
            "shape": [size[m]],
            "dtype": specs[m].storage_dtype,
            "crc32": checksum(members[name]),
        }
    for ev in events:
        del ev["_t"]
    meta = {
        "schema_version": SCHEMA_VERSION,
        "key": job.key,
        "static": _nan_to_none(job.static),
        "events": events,
        "inventory": inventory,
        "labels": _labels(job, first, reject, time_format),
    }
    meta["crc32"] = checksum(dumps(meta))  # the loader checks it against the rest of meta.json
    members["meta.json"] = dumps(meta)
    res.members = members
    return res


def _check_interventions(accepted: list[tuple[Any, ...]], reject: Any) -> list[tuple[Any, ...]]:
    """Treatment START/STOP rows (``datamodules.interventions``) checked in time order (rows at the same time in
    the table's order): a STOP of a code that is not active, a bad dose, an empty code are rejected and left out."""
    clinical = sorted(
        (a for a in accepted if a[3] is None and interventions.parse(a[2]["code"]) is not None),
        key=lambda a: (a[0], _table(a[2], "events"), a[1]),
    )
    if not clinical:
        return accepted
    problems = interventions.check_rows((a[0], a[2]["code"], a[2].get("numeric_value")) for a in clinical)
    bad = {id(a) for a, problem in zip(clinical, problems) if problem is not None}
    for a, problem in zip(clinical, problems):
        if problem is not None:
            reject("events", a[2], problem)
    return [a for a in accepted if id(a) not in bad]


def _read(job: _SubjectJob, row: dict[str, Any], spec: Spec, policy: WindowPolicy | None, strict: bool) -> Reading:
    """One file of the events table, read and cut into windows (library warnings kept for the report); under
    ``strict``, suspect input that was used (timestamps out of order, ...) stops the build."""
    stop_s = None if job.death is None else (job.death - row["time"]).total_seconds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", DataWarning)
        reading = read_recording(row["modality"], row["path"], spec, _options(row), policy, stop_s)
    reading.notes += [str(w.message) for w in caught]
    if strict and reading.problems:
        raise DataError(
            reading.problems[0], where=str(row["path"]), hint="fix the recording, or build without --strict"
        )
    return reading


def _with_hint(exc: DataError) -> str:
    """A rejection reason: what is wrong, then what to do in brackets (the report groups by the first part)."""
    return f"{exc.reason} [{exc.hint}]" if exc.hint else exc.reason


def _labels(job: _SubjectJob, first: pd.Timestamp, reject: Any, time_format: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in sorted(job.labels, key=lambda r: r["row"]):
        name = row["name"]
        has_time = not (row.get("raw_time") is None or pd.isna(row.get("raw_time")))
        if not name:
            reject("labels", row, "label without a name")
        elif pd.isna(row["value"]):
            reject("labels", row, f"label {name!r} value is missing or not a number")
        elif has_time and pd.isna(row["time"]):
            reject("labels", row, f"label {name!r}: {tables.time_problem(row['raw_time'], time_format)}")
        elif name in out:
            reject("labels", row, f"duplicate label {name!r} for this subject")
        else:
            t = None if not has_time else (row["time"] - first).total_seconds() / DAY_S
            out[name] = {"value": float(row["value"]), "time_days": t}
    return out


def _missing(v: Any) -> bool:
    return v is None or (np.isscalar(v) and bool(pd.isna(v)))


def _options(row: dict[str, Any]) -> dict[str, Any]:
    skip = {"row", "table", "time", "raw_time", "modality", "path", "code", "numeric_value"}
    return {k: v for k, v in row.items() if k not in skip and not _missing(v)}


def _nan_to_none(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if v is None or np.isnan(v) else v) for k, v in d.items()}
