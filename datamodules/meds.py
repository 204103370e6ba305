"""MEDS v0.4 datasets as a cohort source (:func:`read_meds`); the export is :mod:`datamodules.meds_export`.

A MEDS dataset is ``data/**/*.parquet`` (``subject_id`` int64, ``time`` timestamp[us], ``code`` string,
``numeric_value`` float32, extra columns allowed) and ``metadata/`` (``codes.parquet``,
``subject_splits.parquet``, ``dataset.json``). Every file is checked with the ``meds`` package's own schemas.

Reading, row by row (a row is its file's 1-based data row, as the build report names it):

- ``MEDS_BIRTH`` (or ``MEDS_BIRTH//...``) gives the birth time (the earliest if several); a subject without
  one is rejected. ``MEDS_DEATH`` (or ``MEDS_DEATH//...``) gives ``death_date``. Neither is a clinical event.
- A sex code, :data:`SEX_CODE` (``GENDER`` or ``SEX``, then ``//``, ``/``, ``:`` or ``_``, then ``M``, ``MALE``,
  ``F`` or ``FEMALE``, in any case: ``GENDER//F``, ``sex/male``), static or timed, sets ``sex``; conflicting sex
  codes leave it unknown (counted).
- Other rows with a null ``time`` are static codes: not events, counted by code in the report.
- A row with a non-empty ``path`` column is a file of the modality its code names before ``//``
  (:data:`FILE_CODE`: ``ECG//RECORDING`` is an ECG file); the path is relative to the dataset root. The other
  extra columns (``sampling_rate``, ``leads``, ...) are passed to that modality's reader, as in an events table.
- Every other row is a ``clinical`` event (``code``, ``numeric_value``); a ``text_value`` is not used (counted).
  A float32 ``numeric_value`` is read as the shortest decimal that gives it (122.1, not 122.09999847).
- Splits from ``subject_splits.parquet``: train -> train, tuning -> val, held_out -> test; a subject without
  a split row gets the hash split of the builder (counted).
- Subject ids are the MEDS ``subject_id`` as text, or, in an export made by ``meds_export.write_meds`` with
  :data:`ID_MAP` (the data steward's ids), the original ids: a subject keeps one key however it is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import meds
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import DataError

BIRTH, DEATH = meds.birth_code, meds.death_code  # "MEDS_BIRTH", "MEDS_DEATH"


def is_code(base: str) -> pl.Expr:
    """Rows whose code is ``base`` or ``base//...`` (``MEDS_BIRTH``, ``MEDS_BIRTH//HOSPITAL``)."""
    code = pl.col("code")
    return (code == base) | code.str.starts_with(base + "//")


#: the sex codes read (case-insensitive): group 1 is the value
SEX_CODE = r"(?i)^(?:GENDER|SEX)(?://|/|:|_)(M|MALE|F|FEMALE)$"
#: the code of a row that references a file: ``{MODALITY}//RECORDING``, its file in the ``path`` column
FILE_CODE = "{modality}//RECORDING"
PATH = "path"
#: written beside an export whose ids are not int64: the data steward's ``subject_id`` -> ``meds_subject_id``
ID_MAP = "subject_id_map.csv"
SPLITS_IN = {meds.train_split: "train", meds.tuning_split: "val", meds.held_out_split: "test"}  # MEDS -> ours
_CORE = ("subject_id", "time", "code", "numeric_value", "text_value")
_RESERVED = ("row", "table", "modality", "raw_time", "sid")  # columns read_meds adds


@dataclass
class MedsCohort:
    """A MEDS dataset as the builder's tables: ``subjects`` and ``events`` in the formats of
    :func:`datamodules.tables.load_subjects` / :func:`~datamodules.tables.load_events`, each row also naming its
    MEDS file (``table``); ``subjects.problem`` says why a subject cannot be used (None = usable).
    ``descriptions``: code -> description from ``codes.parquet``; ``counts``: what was read and not used."""

    root: Path
    subjects: pd.DataFrame
    events: pd.DataFrame
    descriptions: dict[str, str] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def read_meds(root: str | Path) -> MedsCohort:
    """Read and validate a MEDS v0.4 dataset (module docstring for the rules); :class:`DataError` on a file that
    breaks the MEDS schemas, naming the file, the first offending row and what to fix."""
    root = Path(root)
    files = sorted((root / meds.data_subdirectory).rglob("*.parquet")) if root.is_dir() else []
    if not files:
        raise DataError(
            f"no MEDS data files ({meds.data_subdirectory}/**/*.parquet)",
            where=str(root),
            hint="give the root of a MEDS dataset (the folder holding data/ and metadata/)",
        )
    parts = []
    for fp in files:
        rel = fp.relative_to(root).as_posix()
        table = conform(meds.DataSchema, _read_parquet(fp), str(fp), "data")
        clash = sorted(set(table.column_names) & set(_RESERVED))
        if clash:
            raise DataError(
                f"extra column(s) {clash} have names this reader gives its own columns",
                where=str(fp),
                hint=f"rename them (reserved: {', '.join(_RESERVED)})",
            )
        df = pl.from_arrow(table).with_row_index("row", offset=1).with_columns(table=pl.lit(rel))
        parts.append(df.with_columns(pl.col("row").cast(pl.Int64)))
    data = pl.concat(parts, how="diagonal_relaxed")
    splits = _metadata(root, meds.subject_splits_filepath, meds.SubjectSplitSchema)
    codes = _metadata(root, meds.code_metadata_filepath, meds.CodeMetadataSchema)
    info = _dataset_json(root / meds.dataset_metadata_filepath, meds.DatasetMetadataSchema)
    ids = _id_names(root, data.select(pl.col("subject_id").unique()))
    subjects, counts = _subjects(data, splits, ids)
    events, more = _events(data, root, ids)
    descriptions = {}
    if codes is not None and "description" in codes.columns:
        d = codes.filter(pl.col("description").is_not_null())
        descriptions = dict(zip(d["code"].to_list(), d["description"].to_list()))
    return MedsCohort(root, subjects, events, descriptions, {**counts, **more}, info)


def conform(schema: Any, table: pa.Table, where: str, what: str) -> pa.Table:
    """``table`` checked against a ``meds`` schema and aligned to it; a :class:`DataError` naming ``where``, the
    first offending row (1-based) and what to fix if it breaks the schema. Types must be the schema's (a string
    ``subject_id`` is refused even if its text is digits), except lossless widenings that ``align`` makes (int32
    -> int64 ids, string <-> large_string (polars writes large_string), timestamps in s/ms -> us)."""
    from flexible_schema.exceptions import SchemaValidationError, TableValidationError  # noqa: PLC0415

    try:
        schema.validate(table)
        return schema.align(table)
    except SchemaValidationError as exc:
        mistyped = exc.mistyped_cols or []
        if not exc.missing_req_cols and not exc.disallowed_extra_cols and all(_widens(g, w) for _, w, g in mistyped):
            try:
                return schema.align(table)
            except (SchemaValidationError, TableValidationError, pa.ArrowInvalid) as again:
                exc = again  # noqa: PLW2901 - report what align found
        reason = _schema_problems(exc, table)
    except TableValidationError as exc:
        reason = _schema_problems(exc, table)
    cols = ", ".join(f"{f.name} ({f.type})" for f in schema.schema())
    extra = "other columns allowed" if schema.allow_extra_columns else "no other columns"
    raise DataError(
        f"not a valid MEDS {what} file: {reason}",
        where=where,
        hint=f"write it as MEDS v0.4 {schema.__name__}: {cols}; {extra}",
    )


def _widens(got: pa.DataType, want: pa.DataType) -> bool:
    if pa.types.is_integer(got) and want == pa.int64():
        return got.bit_width < 64 or got == pa.int64()
    text = (pa.types.is_string, pa.types.is_large_string)
    if any(f(got) for f in text) and any(f(want) for f in text):  # polars writes large_string
        return True
    return pa.types.is_timestamp(got) and pa.types.is_timestamp(want) and got.tz is None and got.unit in ("s", "ms")


def _schema_problems(exc: Exception, table: pa.Table) -> str:
    problems = [f"column {c!r} is missing" for c in getattr(exc, "missing_req_cols", None) or []]
    for col, want, got in getattr(exc, "mistyped_cols", None) or []:
        valid = pc.drop_null(table.column(col))
        first = 1 + (pc.index(table.column(col), valid[0]).as_py() if len(valid) else 0)
        problems.append(f"{col} must be {want}; found {got} (first offending row {first})")
    problems += [f"column {c!r} is not allowed" for c in getattr(exc, "disallowed_extra_cols", None) or []]
    for col in getattr(exc, "nullability_none_err_cols", None) or []:
        first = 1 + pc.index(pc.is_null(table.column(col)), True).as_py()
        problems.append(f"{col} has nulls (first offending row {first})")
    return "; ".join(problems) or str(exc)


def _read_parquet(fp: Path) -> pa.Table:
    try:
        return pq.read_table(fp)
    except Exception as exc:  # noqa: BLE001 - any pyarrow error becomes a user-facing message
        raise DataError(f"cannot read parquet: {type(exc).__name__}: {exc}", where=str(fp)) from None


def _metadata(root: Path, rel: str, schema: Any) -> pl.DataFrame | None:
    fp = root / rel
    return pl.from_arrow(conform(schema, _read_parquet(fp), str(fp), "metadata")) if fp.is_file() else None


def _dataset_json(fp: Path, schema: Any) -> dict[str, Any]:
    if not fp.is_file():
        return {}
    try:
        info = json.loads(fp.read_text())
        schema.validate(info)
    except Exception as exc:  # noqa: BLE001 - bad JSON or a field of the wrong type
        raise DataError(
            f"not a valid MEDS dataset.json ({type(exc).__name__}: {exc})",
            where=str(fp),
            hint="dataset_name, dataset_version, etl_name, etl_version, meds_version are strings",
        ) from None
    return info


def subject_ids(root: str | Path, ids: list[int]) -> list[str]:
    """The subject ids a build from ``root`` uses (and a labels, consent or events table beside it must use) for
    MEDS ``subject_id``s: the data steward's id from :data:`ID_MAP` where the dataset carries one (an export of
    :func:`datamodules.meds_export.write_meds`), else the integer as text. E.g. to join ACES labels (MEDS ids)
    with ``--labels``."""
    frame = pl.DataFrame({"subject_id": ids}, schema={"subject_id": pl.Int64})
    return _id_names(Path(root), frame)["sid"].to_list()


def _id_names(root: Path, ids: pl.DataFrame) -> pl.DataFrame:
    """``ids`` (a ``subject_id`` column of MEDS ids) with ``sid``, the id keys are made of (:func:`subject_ids`)."""
    fp = root / ID_MAP
    if not fp.is_file():
        return ids.with_columns(sid=pl.col("subject_id").cast(pl.String))
    m = pl.read_csv(fp, schema_overrides={"subject_id": pl.String, "meds_subject_id": pl.Int64})
    m = m.rename({"subject_id": "sid", "meds_subject_id": "subject_id"})
    out = ids.join(m, on="subject_id", how="left", maintain_order="left")
    return out.with_columns(sid=pl.coalesce("sid", pl.col("subject_id").cast(pl.String)))


def _subjects(data: pl.DataFrame, splits: pl.DataFrame | None, ids: pl.DataFrame) -> tuple[pd.DataFrame, dict]:
    code = pl.col("code")
    birth, death = is_code(BIRTH), is_code(DEATH)
    sex = code.str.extract(SEX_CODE, 1).str.to_uppercase().str.slice(0, 1)
    timed = pl.col("time").is_not_null()
    per = (
        data.with_columns(_sex=sex)
        .sort("table", "row")
        .group_by("subject_id", maintain_order=True)
        .agg(
            first_row=pl.col("row").first(),
            first_table=pl.col("table").first(),
            files=pl.col("table").n_unique(),
            birth=pl.col("time").filter(birth & timed).min(),
            birth_row=pl.col("row").filter(birth & timed).sort_by(pl.col("time").filter(birth & timed)).first(),
            birth_table=pl.col("table").filter(birth & timed).sort_by(pl.col("time").filter(birth & timed)).first(),
            births=(birth & timed).sum(),
            death=pl.col("time").filter(death & timed).min(),
            sexes=pl.col("_sex").drop_nulls().unique().sort(),
        )
        .join(ids, on="subject_id", how="left")
    )
    if splits is not None:
        per_split = splits.group_by("subject_id").agg(
            split=pl.col("split").first(), splits=pl.col("split").n_unique(), split_rows=pl.len()
        )
        per = per.join(per_split, on="subject_id", how="left")
    else:
        per = per.with_columns(split=pl.lit(None, pl.String), splits=pl.lit(0), split_rows=pl.lit(0))
    ok_split = pl.col("split").is_null() | pl.col("split").is_in(list(SPLITS_IN))
    problem = (
        pl.when(pl.col("birth").is_null())
        .then(pl.lit(f"no {BIRTH} row with a time [MEDS places ages from it: add the subject's {BIRTH} row]"))
        .when(pl.col("splits") > 1)
        .then(
            pl.format(
                "{} different splits in metadata/subject_splits.parquet for this subject [keep one row per subject: "
                "a person in two splits would leak between training and test]",
                pl.col("splits"),
            )
        )
        .when(~ok_split)
        .then(
            pl.format(
                "split '{}' in metadata/subject_splits.parquet is not train, tuning or held_out [use one of those]",
                pl.col("split"),
            )
        )
    )
    per = per.with_columns(
        problem=problem,
        row=pl.coalesce("birth_row", "first_row"),
        table=pl.coalesce("birth_table", "first_table"),
        sex_male=pl.when(pl.col("sexes").list.len() == 1)
        .then((pl.col("sexes").list.first() == "M").cast(pl.Float64))
        .otherwise(None),
        ours=pl.col("split").replace_strict(SPLITS_IN, default=None),
    ).sort("table", "row")
    out = per.select("row", "table", "sid", "birth", "death", "sex_male", "ours", "problem").to_pandas()
    out = out.rename(columns={"sid": "subject_id", "ours": "split"})
    out.insert(4, "birth_year_only", False)
    out["consent"] = True  # MEDS has no consent: the optional subjects table withdraws it
    out["split"] = out["split"].astype(object).where(out["split"].notna(), None)
    out["problem"] = out["problem"].astype(object).where(out["problem"].notna(), None)
    out["death"] = pd.to_datetime(out["death"])
    out["sex_male"] = out["sex_male"].astype(float)
    counts = {
        "subjects": len(per),
        "without_split_row": int(pl.Series(per["split"]).is_null().sum()) if splits is not None else len(per),
        "without_birth": int(per["birth"].is_null().sum()),
        "with_several_births": int((per["births"] > 1).sum()),
        "with_conflicting_sex_codes": int((per["sexes"].list.len() > 1).sum()),
        "in_several_files": int((per["files"] > 1).sum()),
    }
    if splits is not None:
        counts["duplicate_split_rows"] = int((per["split_rows"].fill_null(0) - per["splits"].fill_null(0)).sum())
        counts["split_rows_without_data"] = splits.join(per.select("subject_id"), on="subject_id", how="anti").height
    return out, counts


def _events(data: pl.DataFrame, root: Path, ids: pl.DataFrame) -> tuple[pd.DataFrame, dict]:
    code = pl.col("code")
    special = is_code(BIRTH) | is_code(DEATH) | code.str.contains(SEX_CODE)
    static = ~special & pl.col("time").is_null()
    counts: dict[str, Any] = {"rows": data.height}
    st = data.filter(static).group_by("code").len().sort("len", descending=True)
    counts["static_rows"] = int(st["len"].sum())
    counts["static_codes"] = dict(zip(st["code"].to_list()[:20], st["len"].to_list()[:20]))
    ev = data.filter(~special & ~static)
    if "text_value" in ev.columns:
        counts["text_values_not_used"] = int(ev["text_value"].is_not_null().sum())
    has_path = PATH in ev.columns
    is_file = (pl.col(PATH).is_not_null() & (pl.col(PATH).str.strip_chars() != "")) if has_path else pl.lit(False)
    ev = ev.join(ids, on="subject_id", how="left").with_columns(
        modality=pl.when(is_file)
        .then(code.str.split("//").list.first().str.to_lowercase())
        .otherwise(pl.lit("clinical")),
        # float32 -> the shortest decimal giving the same float32 (122.1, not 122.09999847): the value the source held
        numeric_value=pl.col("numeric_value").cast(pl.String).cast(pl.Float64),
    )
    if has_path:
        base = str(root.resolve())
        ev = ev.with_columns(
            pl.when(is_file)
            .then(
                pl.when(pl.col(PATH).str.starts_with("/"))
                .then(pl.col(PATH))
                .otherwise(pl.lit(base + "/") + pl.col(PATH).str.strip_chars())
            )
            .otherwise(None)
            .alias(PATH),
            code=pl.when(is_file).then(None).otherwise(code),
        )
    else:
        ev = ev.with_columns(pl.lit(None, pl.String).alias(PATH))
    counts["files"] = int(ev.filter(pl.col("modality") != "clinical").height)
    counts["clinical_rows"] = ev.height - counts["files"]
    extra = [c for c in ev.columns if c not in (*_CORE, "row", "table", "sid", "modality", PATH)]
    out = ev.select("row", "table", "sid", "time", "modality", PATH, "code", "numeric_value", *extra).to_pandas()
    out = out.rename(columns={"sid": "subject_id"})
    out.insert(4, "raw_time", out["time"])
    out[PATH] = out[PATH].astype(object).where(out[PATH].notna(), None)
    return out, counts


def apply_consent(subjects: pd.DataFrame, consent: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``subjects`` (of :func:`read_meds`) with the consent of a consent table (``tables.load_consent``): a subject
    the table says false for (in any of its rows) is withdrawn, one it does not list keeps consent, a value not
    understood is None (rejected by the builder). Also returns how many table rows name no MEDS subject."""
    c = consent.assign(withdrawn=[v is False for v in consent["consent"]], unknown=consent["consent"].isna())
    per = c.groupby("subject_id").agg(withdrawn=("withdrawn", "any"), unknown=("unknown", "any"))
    out = subjects.copy()
    w = out["subject_id"].map(per["withdrawn"]).fillna(False).astype(bool)
    u = out["subject_id"].map(per["unknown"]).fillna(False).astype(bool)
    out["consent"] = [False if a else None if b else True for a, b in zip(w, u)]
    return out, int((~consent["subject_id"].isin(subjects["subject_id"])).sum())
