"""Our subjects/events/labels tables -> a MEDS v0.4 dataset (the conventions are those :mod:`datamodules.meds`
reads back, so an export builds into the same shards as its tables)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .meds import BIRTH, DEATH, FILE_CODE, ID_MAP, PATH, SPLITS_IN, conform
from .schema import DataError

SEX_OUT = {1.0: "GENDER//M", 0.0: "GENDER//F"}
SPLITS_OUT = {v: k for k, v in SPLITS_IN.items()}
_DESCRIBED = {
    BIRTH: "Birth (time: the birth date; a birth_year alone is placed on 2 July)",
    DEATH: "Death (time: the death date)",
    "GENDER//M": "Sex: male (static)",
    "GENDER//F": "Sex: female (static)",
}


@dataclass
class MedsExport:
    """What :func:`write_meds` wrote, and what it left out (``skipped``: reason -> rows)."""

    out: Path
    subjects: int = 0
    rows: int = 0
    clinical: int = 0
    files: int = 0
    labels: int = 0
    withdrawn: int = 0
    id_map: bool = False
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        left = ", ".join(f"{k}: {n}" for k, n in sorted(self.skipped.items())) or "none"
        ids = f"; ids mapped to int64 ({ID_MAP}: keep it with the data steward)" if self.id_map else ""
        return (
            f"MEDS export {self.out}: {self.subjects} subjects ({self.withdrawn} left out for withdrawn or unclear "
            f"consent), {self.rows} data rows ({self.clinical} clinical, {self.files} files), {self.labels} label "
            f"rows; rows left out: {left}{ids}"
        )


def meds_ids(ids: pd.Series, where: str | None = None) -> pd.Series:
    """int64 MEDS ids for a table's subject ids. Rule: if every id is an integer that fits int64 (``17``,
    ``-3``, ``007``), that integer; else, for every id, the first 63 bits of SHA-256 of its text (stable: a
    subject keeps its MEDS id when the cohort grows). :class:`DataError` if two ids give the same MEDS id (``where``:
    the subjects table, named in it with the rows; ``ids`` keeps the table's index, 0-based)."""
    import hashlib  # noqa: PLC0415

    text = ids.astype(str)
    ints = pd.to_numeric(text.where(text.str.fullmatch(r"[+-]?\d{1,18}"), None), errors="coerce")
    if ints.notna().all():
        out = ints.astype("int64")
    else:
        out = text.map(lambda s: int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big") >> 1).astype("int64")
    if out.duplicated().any():
        clash = out.duplicated(keep=False)
        rows = [int(i) + 1 for i in out.index[clash]][:10]  # the table's 1-based data rows, never the ids
        raise DataError(
            f"{int(out.duplicated().sum())} subject ids give the same MEDS id (e.g. 7 and 007): rows {rows}",
            where=where,
            hint="make the subject ids unique as integers, or use text ids",
        )
    return out


def write_meds(
    subjects_table: str | Path,
    events_table: str | Path,
    out_dir: str | Path,
    labels_table: str | Path | None = None,
    *,
    time_format: str | None = None,
    dataset_name: str | None = None,
    dataset_version: str = "1.0",
    code_descriptions: dict[str, str] | None = None,
    subjects_per_file: int = 10_000,
) -> MedsExport:
    """Write our subjects/events(/labels) tables as a MEDS v0.4 dataset in ``out_dir`` (README "MEDS"): a
    ``MEDS_BIRTH``/``MEDS_DEATH`` row per subject, a static ``GENDER//M|F`` row, clinical rows as code and
    numeric_value, a ``{MODALITY}//RECORDING`` row per file with its path (relative to ``out_dir``; files are
    not copied) in the ``path`` column, reader options as extra columns; ``metadata/`` with subject_splits,
    codes and dataset.json; labels as MEDS label files ``labels/{name}.parquet``. Subjects whose consent is not
    true are left out (counted). Every file written is checked with the ``meds`` schemas."""
    import meds  # noqa: PLC0415

    from . import tables  # noqa: PLC0415

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise DataError("the output folder is not empty", where=str(out), hint="give a new folder, or remove it")
    info = MedsExport(out)

    def skip(reason: str, n: int) -> None:
        if n:
            info.skipped[reason] = info.skipped.get(reason, 0) + int(n)

    subj = tables.load_subjects(subjects_table, time_format)
    skip("duplicate subject_id in the subjects table", subj["subject_id"].duplicated(keep=False).sum())
    subj = subj[~subj["subject_id"].duplicated(keep=False)]
    ok = subj["consent"].map(lambda c: c is True)
    info.withdrawn = int((~ok).sum())
    subj = subj[ok].copy()
    # left out as a build from the tables would leave them out (their rows are not written either: counted)
    no_birth = subj["birth"].isna()
    skip("subject without a birth date (no MEDS_BIRTH row; the subject and its rows are left out)", no_birth.sum())
    bad_split = subj["split"].notna() & ~subj["split"].isin(list(SPLITS_OUT))
    skip("subject whose split is not train, val or test (the subject and its rows are left out)", bad_split.sum())
    subj = subj[~no_birth & ~bad_split]
    subj["mid"] = meds_ids(subj.set_index(subj["row"] - 1)["subject_id"], str(subjects_table)).to_numpy()
    mid = dict(zip(subj["subject_id"], subj["mid"]))
    ev, extra = _event_rows(tables.load_events(events_table, time_format), mid, out.resolve(), skip)
    rows = [
        _rows(subj[subj["sex_male"].notna()], pd.NaT, subj["sex_male"].map(SEX_OUT), 0),
        _rows(subj[subj["birth"].notna()], "birth", BIRTH, 1),
        _rows(subj[subj["death"].notna()], "death", DEATH, 3),
        ev,
    ]
    data = pd.concat(rows, ignore_index=True)
    data = data.sort_values(["mid", "time", "order", "row"], na_position="first", kind="stable")
    info.files = int(ev[PATH].notna().sum())
    info.clinical, info.rows, info.subjects = len(ev) - info.files, len(data), len(subj)
    ids = data["mid"].drop_duplicates().to_numpy()
    for i in range(0, max(len(ids), 1), subjects_per_file):
        part = data[data["mid"].isin(ids[i : i + subjects_per_file])]
        _write(
            meds.DataSchema,
            _data_table(part, extra),
            out / meds.data_subdirectory / f"{i // subjects_per_file}.parquet",
        )
    split = subj[subj["split"].isin(list(SPLITS_OUT))]
    if len(split):
        mids, names = pa.array(split["mid"], pa.int64()), split["split"].map(SPLITS_OUT).tolist()
        _write(
            meds.SubjectSplitSchema, pa.table({"subject_id": mids, "split": names}), out / meds.subject_splits_filepath
        )
    _write_codes(sorted(data["code"].unique()), code_descriptions or {}, out / meds.code_metadata_filepath, meds)
    info.labels = _write_labels(labels_table, out, mid, time_format, skip, meds) if labels_table else 0
    name = dataset_name or Path(subjects_table).resolve().parent.name
    _write_dataset_json(out / meds.dataset_metadata_filepath, name, dataset_version, extra, meds)
    if (subj["subject_id"] != subj["mid"].astype(str)).any():
        info.id_map = True
        subj[["subject_id", "mid"]].rename(columns={"mid": "meds_subject_id"}).to_csv(out / ID_MAP, index=False)
    return info


def _event_rows(ev: pd.DataFrame, mid: dict, base: Path, skip: Any) -> tuple[pd.DataFrame, list[str]]:
    """The events table's rows as MEDS rows (``mid``, time, code, numeric_value, path, reader options); rows
    that cannot be written are counted through ``skip``."""
    from .schema import MODALITIES  # noqa: PLC0415

    known = ev["subject_id"].isin(mid)
    skip(
        "row of a subject left out (consent not true, no birth date, bad split) or not in the subjects table",
        (~known).sum(),
    )
    ev = ev[known]
    bad_mod, no_time = ~ev["modality"].isin(list(MODALITIES)), ev["time"].isna()
    clinical = ev["modality"] == "clinical"
    no_code = clinical & ~ev["code"].map(lambda c: isinstance(c, str) and bool(c.strip()))
    no_path = ~clinical & ev["path"].isna()
    skip("unknown modality", bad_mod.sum())
    skip("time missing or not a time", (~bad_mod & no_time).sum())
    skip("clinical row without a code", (~bad_mod & ~no_time & no_code).sum())
    skip("file row without a path", (~bad_mod & ~no_time & no_path).sum())
    ev = ev[~(bad_mod | no_time | no_code | no_path)].copy()
    files = ev["modality"] != "clinical"
    ev["code"] = ev["code"].where(~files, ev["modality"].map(lambda m: FILE_CODE.format(modality=m.upper())))
    ev["code"] = ev["code"].astype(str).str.strip()
    ev[PATH] = [_relpath(p, base) if f else None for p, f in zip(ev[PATH], files)]
    core = ("row", "subject_id", "time", "raw_time", "modality", PATH, "code", "numeric_value")
    extra = [c for c in ev.columns if c not in core]
    ev = ev.assign(mid=ev["subject_id"].map(mid), order=2)
    return ev[["mid", "time", "code", "numeric_value", PATH, *extra, "order", "row"]], extra


def _write_codes(codes: list[str], given: dict[str, str], fp: Path, meds: Any) -> None:
    """codes.parquet: every code of the data, described where we know it (our conventions, then ``given``)."""
    from .schema import MODALITIES  # noqa: PLC0415

    files = {FILE_CODE.format(modality=m.upper()): f"{m} recording: a file, in the {PATH} column" for m in MODALITIES}
    described = {**_DESCRIBED, **files, **given}
    table = pa.table(
        {
            "code": codes,
            "description": [described.get(c) for c in codes],
            "parent_codes": pa.nulls(len(codes), pa.list_(pa.string())),
        }
    )
    _write(meds.CodeMetadataSchema, table, fp)


def _rows(subj: pd.DataFrame, time: Any, code: Any, order: int) -> pd.DataFrame:
    t = subj[time] if isinstance(time, str) else pd.Series(pd.NaT, index=subj.index, dtype="datetime64[us]")
    return pd.DataFrame(
        {"mid": subj["mid"], "time": t, "code": code, "numeric_value": float("nan"), "order": order, "row": 0}
    )


def _relpath(path: str, base: Path) -> str:
    import os  # noqa: PLC0415

    return Path(os.path.relpath(path, base)).as_posix()


def _data_table(part: pd.DataFrame, extra: list[str]) -> pa.Table:
    cols = {
        "subject_id": pa.array(part["mid"], pa.int64()),
        "time": pa.array(part["time"].astype("datetime64[us]"), pa.timestamp("us")),
        "code": pa.array(part["code"].astype(str), pa.string()),
        "numeric_value": pa.array(part["numeric_value"].astype("float32"), pa.float32(), from_pandas=True),
        PATH: pa.array(part[PATH].astype(object).where(part[PATH].notna(), None), pa.string()),
    }
    for c in extra:  # reader options: numbers stay numbers, the rest is text
        v = part[c]
        num = pd.to_numeric(v, errors="coerce")
        if num.notna().sum() == v.notna().sum():
            cols[c] = pa.array(num, pa.float64(), from_pandas=True)
        else:
            cols[c] = pa.array(
                v.astype(object).where(v.notna(), None).map(lambda x: x if x is None else str(x)), pa.string()
            )
    return pa.table(cols)


def _write(schema: Any, table: pa.Table, fp: Path) -> None:
    table = conform(schema, table, str(fp), "export")
    fp.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, fp)


def _write_labels(path: str | Path, out: Path, mid: dict, time_format: str | None, skip: Any, meds: Any) -> int:
    from . import tables  # noqa: PLC0415

    lab = tables.load_labels(path, time_format)
    known = lab["subject_id"].isin(mid)
    skip("label of a subject left out", (~known).sum())
    lab = lab[known]
    usable = lab["time"].notna() & lab["value"].notna() & (lab["name"] != "")
    skip("label without a time, value or name (MEDS labels need a prediction_time)", (~usable).sum())
    n, files = 0, {}
    for name, g in lab[usable].groupby("name"):
        file = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.parquet"
        if file in files:
            raise DataError(
                f"labels {files[file]!r} and {name!r} would both be written to labels/{file}",
                where=str(path),
                hint="rename one of them (MEDS label files are named by the label)",
            )
        files[file] = name
        cols = {
            "subject_id": pa.array(g["subject_id"].map(mid), pa.int64()),
            "prediction_time": pa.array(g["time"].astype("datetime64[us]"), pa.timestamp("us")),
        }
        if g["value"].isin([0.0, 1.0]).all():
            cols["boolean_value"] = pa.array(g["value"] == 1.0)
        cols["float_value"] = pa.array(g["value"].astype("float32"), pa.float32())
        _write(meds.LabelSchema, pa.table(cols), out / "labels" / file)
        n += len(g)
    return n


def _write_dataset_json(fp: Path, name: str, version: str, extra: list[str], meds: Any) -> None:
    import datetime  # noqa: PLC0415
    import importlib.metadata  # noqa: PLC0415

    info = meds.DatasetMetadataSchema(
        dataset_name=name,
        dataset_version=version,
        etl_name="omnimodal",
        etl_version=importlib.metadata.version("omnimodal"),
        meds_version=importlib.metadata.version("meds"),
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        additional_value_modality_columns=[PATH],
        other_extension_columns=list(extra) or None,
    ).to_dict()
    info = {k: v for k, v in info.items() if v is not None}
    meds.DatasetMetadataSchema.validate(info)
    fp.parent.mkdir(parents=True, exist_ok=True)
    fp.write_text(json.dumps(info, indent=1))
