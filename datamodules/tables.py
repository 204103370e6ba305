"""The tables a user brings (DESIGN.md, "Data contract"): subjects, events, labels as CSV or Parquet.

Each loader checks the columns, normalises types and keeps the table's own row numbers (``row``: the
1-based data row, the header not counted: row 1 is line 2 of a CSV) so the build report can point at them.

Times are never guessed: ISO 8601 dates and datetimes (:data:`ISO_TIMES`), or a format the user states
(``time_format``, a strftime format such as ``%d/%m/%Y %H:%M`` passed to pandas as ``format=``). A time
with a UTC offset (``Z``, ``+01:00``) is converted to UTC; one without is taken as it stands (as if UTC):
only differences between a subject's times reach the shards, so give one subject's times in one clock.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .schema import DataError

SPLITS = ("train", "val", "test")
_TRUE = {"true", "1", "yes", "y", "t", "given", "consented"}
_FALSE = {"false", "0", "no", "n", "f", "withdrawn", "revoked"}
#: the times accepted without a stated format
ISO_TIMES = (
    "ISO 8601 dates or datetimes: 2011-03-04, 2011-03-04T12:30, 2011-03-04 12:30:00[.123], "
    "optionally ending in Z or an offset such as +01:00"
)
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?")


def read_table(path: str | os.PathLike, empty_ok: bool = False) -> pd.DataFrame:
    """Read a CSV or Parquet table with all columns as given (ids kept as strings); one without data rows
    is a :class:`DataError` unless ``empty_ok``."""
    path = Path(path)
    if not path.is_file():
        raise DataError("table not found", where=str(path), hint="check the path in your build config")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet") or suffix.endswith(".pq"):
            df = pd.read_parquet(path)
        elif suffix.endswith((".csv", ".csv.gz", ".tsv")):
            df = pd.read_csv(
                path, sep="\t" if ".tsv" in suffix else ",", dtype={"subject_id": str}, keep_default_na=True
            )
        else:
            raise DataError(
                f"unsupported table format {suffix!r}",
                where=str(path),
                hint="give a .csv, .csv.gz, .tsv or .parquet file",
            )
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(
            "the table is empty (no header, no rows)",
            where=str(path),
            hint="give the header line, then one row per record (the README lists the columns)",
        ) from None
    except Exception as exc:  # noqa: BLE001 - any parser error becomes a user-facing message
        raise DataError(f"cannot read table: {type(exc).__name__}: {exc}", where=str(path)) from exc
    if df.empty and not empty_ok:
        raise DataError(
            "the table has no rows (only a header)",
            where=str(path),
            hint="nothing can be built from it: check that this is the right file",
        )
    df.columns = [str(c).strip() for c in df.columns]
    df.insert(0, "row", np.arange(1, len(df) + 1))
    return df


def _require(df: pd.DataFrame, cols: tuple[str, ...], path: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; found {[c for c in df.columns if c != 'row']}",
            where=path,
            hint="see DESIGN.md 'Data contract' for the expected columns",
        )


def _ids(df: pd.DataFrame, path: str) -> pd.Series:
    ids = df["subject_id"].astype("string").str.strip()
    if ids.isna().any() or (ids == "").any():
        rows = df.loc[ids.isna() | (ids == ""), "row"].tolist()[:5]
        raise DataError(f"empty subject_id in rows {rows}", where=path, hint="every row needs a subject_id")
    return ids.astype(str)


def parse_times(values: pd.Series, time_format: str | None = None) -> pd.Series:
    """Times -> naive UTC ``Timestamp``; NaT where empty or not a time (module docstring: ISO 8601, or also
    ``time_format``; ``03/04/05`` or ``12:30`` are never guessed)."""
    text = values.astype("string").str.strip()
    iso = text.str.fullmatch(_ISO).fillna(False).astype(bool)
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    out[iso] = pd.to_datetime(text[iso], format="ISO8601", utc=True, errors="coerce")
    rest = text.notna() & (text != "") & ~iso
    if time_format and rest.any():
        try:
            out[rest] = pd.to_datetime(text[rest], format=time_format, utc=True, errors="coerce")
        except ValueError as exc:
            raise DataError(
                f"time format {time_format!r} is not a strftime format ({exc})",
                hint="e.g. --time-format '%d/%m/%Y %H:%M'",
            ) from None
    return out.dt.tz_localize(None)


def accepted_times(time_format: str | None = None) -> str:
    """The time formats accepted, for messages."""
    other = f"or {time_format!r}" if time_format else "for another format, state it (--time-format, e.g. '%d/%m/%Y')"
    return f"accepted: {ISO_TIMES}; {other}"


def time_problem(raw: object, time_format: str | None = None) -> str:
    """Why a time cell gave no time, as the build report says it (the accepted formats in brackets)."""
    if raw is None or (not isinstance(raw, str) and pd.isna(raw)) or str(raw).strip() == "":
        return "time is missing"
    what = (
        f"neither ISO 8601 nor in the stated format {time_format!r}"
        if time_format
        else "not an ISO 8601 date or datetime"
    )
    return f"time is {what} [{accepted_times(time_format)}]"


def load_subjects(path: str | os.PathLike, time_format: str | None = None) -> pd.DataFrame:
    """Columns out: row, subject_id, birth (Timestamp), birth_year_only (bool), death (Timestamp|NaT, from the
    optional ``death_date`` column), sex_male (float), split (str|None), consent (bool|None).

    ``consent`` is None where the value is not understood (the builder rejects those rows).
    """
    path = str(path)
    df = read_table(path)
    _require(df, ("subject_id", "sex", "consent"), path)
    if "birth_date" not in df.columns and "birth_year" not in df.columns:
        raise DataError("needs a birth_date or birth_year column", where=path)
    out = pd.DataFrame({"row": df["row"], "subject_id": _ids(df, path)})
    out["birth_year_only"] = "birth_date" not in df.columns
    if "birth_date" in df.columns:
        out["birth"] = parse_times(df["birth_date"], time_format)
    else:
        year = pd.to_numeric(df["birth_year"], errors="coerce")
        # Only the year is known: place birth mid-year (the unbiased guess for ages).
        out["birth"] = pd.to_datetime(year.astype("Int64").astype(str) + "-07-02", errors="coerce")
    out["death"] = parse_times(df["death_date"], time_format) if "death_date" in df.columns else pd.NaT
    sex = df["sex"].astype("string").str.strip().str.upper()
    out["sex_male"] = np.where(sex.isin(["M", "MALE"]), 1.0, np.where(sex.isin(["F", "FEMALE"]), 0.0, np.nan))
    split = df["split"].astype("string").str.strip().str.lower() if "split" in df.columns else None
    out["split"] = split.where(split.notna(), None) if split is not None else None
    out["consent"] = _consent(df["consent"])
    return out


def _consent(values: pd.Series) -> list[bool | None]:
    consent = values.astype("string").str.strip().str.lower()
    return [True if c in _TRUE else False if c in _FALSE else None for c in consent.fillna("")]


def load_consent(path: str | os.PathLike) -> pd.DataFrame:
    """A subjects table beside a MEDS dataset: only ``subject_id`` and ``consent`` are read (MEDS carries the
    rest). Columns out: row, subject_id, consent (bool|None, None where not understood)."""
    path = str(path)
    df = read_table(path)
    _require(df, ("subject_id", "consent"), path)
    return pd.DataFrame({"row": df["row"], "subject_id": _ids(df, path), "consent": _consent(df["consent"])})


def load_events(path: str | os.PathLike, time_format: str | None = None) -> pd.DataFrame:
    """Columns out: row, subject_id, time (Timestamp|NaT), raw_time (as given), modality, path (absolute
    str|None), code, numeric_value, plus any extra columns (reader options such as sampling_rate, leads)."""
    path = str(path)
    df = read_table(path)
    _require(df, ("subject_id", "time", "modality"), path)
    base = Path(path).resolve().parent
    out = df.copy()
    out["subject_id"] = _ids(df, path)
    out["time"] = parse_times(df["time"], time_format)
    out["raw_time"] = df["time"]
    out["modality"] = df["modality"].astype("string").str.strip().str.lower().fillna("")
    if "path" in df.columns:
        out["path"] = [
            None if (p is None or pd.isna(p) or str(p).strip() == "") else str(base / str(p).strip())
            for p in df["path"]
        ]
    else:
        out["path"] = None
    if "numeric_value" not in out.columns and "value" in out.columns:
        out = out.rename(columns={"value": "numeric_value"})
    for col in ("code", "numeric_value"):
        if col not in out.columns:
            out[col] = None
    out["numeric_value"] = pd.to_numeric(out["numeric_value"], errors="coerce")
    return out


def load_labels(path: str | os.PathLike, time_format: str | None = None) -> pd.DataFrame:
    """Columns out: row, subject_id, name, time (Timestamp|NaT), raw_time (as given), value (float); a table
    with a header and no rows is allowed (no labels yet)."""
    path = str(path)
    df = read_table(path, empty_ok=True)
    _require(df, ("subject_id", "name", "value"), path)
    out = pd.DataFrame(
        {"row": df["row"], "subject_id": _ids(df, path), "name": df["name"].astype("string").str.strip().fillna("")}
    )
    out["time"] = parse_times(df["time"], time_format) if "time" in df.columns else pd.NaT
    out["raw_time"] = df["time"] if "time" in df.columns else None
    out["value"] = pd.to_numeric(df["value"], errors="coerce")
    return out
