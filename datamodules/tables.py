"""The tables a user brings (DESIGN.md, "Data contract"): subjects, events, labels as CSV or Parquet.

Each loader checks the columns, normalises types and keeps the table's own row numbers (``row``:
1-based data row, as a spreadsheet shows it after the header) so the build report can point at them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .schema import DataError

SPLITS = ("train", "val", "test")
_TRUE = {"true", "1", "yes", "y", "t", "given", "consented"}
_FALSE = {"false", "0", "no", "n", "f", "withdrawn", "revoked"}


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV or Parquet table with all columns as given (ids kept as strings)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("table not found", where=str(path), hint="check the path in your build config")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet") or suffix.endswith(".pq"):
            df = pd.read_parquet(path)
        elif suffix.endswith((".csv", ".csv.gz", ".tsv")):
            df = pd.read_csv(path, sep="\t" if ".tsv" in suffix else ",", dtype={"subject_id": str},
                             keep_default_na=True)
        else:
            raise DataError(f"unsupported table format {suffix!r}", where=str(path),
                            hint="give a .csv, .csv.gz, .tsv or .parquet file")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser error becomes a user-facing message
        raise DataError(f"cannot read table: {type(exc).__name__}: {exc}", where=str(path)) from exc
    df.columns = [str(c).strip() for c in df.columns]
    df.insert(0, "row", np.arange(1, len(df) + 1))
    return df


def _require(df: pd.DataFrame, cols: tuple[str, ...], path: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; found {[c for c in df.columns if c != 'row']}",
                        where=path, hint="see DESIGN.md 'Data contract' for the expected columns")


def _ids(df: pd.DataFrame, path: str) -> pd.Series:
    ids = df["subject_id"].astype("string").str.strip()
    if ids.isna().any() or (ids == "").any():
        rows = df.loc[ids.isna() | (ids == ""), "row"].tolist()[:5]
        raise DataError(f"empty subject_id in rows {rows}", where=path, hint="every row needs a subject_id")
    return ids.astype(str)


def parse_times(values: pd.Series) -> pd.Series:
    """ISO dates/datetimes -> naive UTC ``Timestamp``; unparseable -> NaT."""
    t = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    return t.dt.tz_localize(None)


def load_subjects(path: str | os.PathLike) -> pd.DataFrame:
    """Columns out: row, subject_id, birth (Timestamp), sex_male (float), split (str|None), consent (bool|None).

    ``consent`` is None where the value is not understood (the builder rejects those rows).
    """
    path = str(path)
    df = read_table(path)
    _require(df, ("subject_id", "sex", "consent"), path)
    if "birth_date" not in df.columns and "birth_year" not in df.columns:
        raise DataError("needs a birth_date or birth_year column", where=path)
    out = pd.DataFrame({"row": df["row"], "subject_id": _ids(df, path)})
    if "birth_date" in df.columns:
        out["birth"] = parse_times(df["birth_date"])
    else:
        year = pd.to_numeric(df["birth_year"], errors="coerce")
        # Only the year is known: place birth mid-year (the unbiased guess for ages).
        out["birth"] = pd.to_datetime(year.astype("Int64").astype(str) + "-07-02", errors="coerce")
    sex = df["sex"].astype("string").str.strip().str.upper()
    out["sex_male"] = np.where(sex.isin(["M", "MALE"]), 1.0, np.where(sex.isin(["F", "FEMALE"]), 0.0, np.nan))
    split = df["split"].astype("string").str.strip().str.lower() if "split" in df.columns else None
    out["split"] = split.where(split.notna(), None) if split is not None else None
    consent = df["consent"].astype("string").str.strip().str.lower()
    out["consent"] = [True if c in _TRUE else False if c in _FALSE else None for c in consent.fillna("")]
    return out


def load_events(path: str | os.PathLike) -> pd.DataFrame:
    """Columns out: row, subject_id, time (Timestamp|NaT), modality, path (absolute str|None),
    code, numeric_value, plus any extra columns (reader options such as sampling_rate, leads)."""
    path = str(path)
    df = read_table(path)
    _require(df, ("subject_id", "time", "modality"), path)
    base = Path(path).resolve().parent
    out = df.copy()
    out["subject_id"] = _ids(df, path)
    out["time"] = parse_times(df["time"])
    out["modality"] = df["modality"].astype("string").str.strip().str.lower().fillna("")
    if "path" in df.columns:
        out["path"] = [None if (p is None or pd.isna(p) or str(p).strip() == "") else str(base / str(p).strip())
                       for p in df["path"]]
    else:
        out["path"] = None
    if "numeric_value" not in out.columns and "value" in out.columns:
        out = out.rename(columns={"value": "numeric_value"})
    for col in ("code", "numeric_value"):
        if col not in out.columns:
            out[col] = None
    out["numeric_value"] = pd.to_numeric(out["numeric_value"], errors="coerce")
    return out


def load_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Columns out: row, subject_id, name, time (Timestamp|NaT), value (float)."""
    path = str(path)
    df = read_table(path)
    _require(df, ("subject_id", "name", "value"), path)
    out = pd.DataFrame({"row": df["row"], "subject_id": _ids(df, path),
                        "name": df["name"].astype("string").str.strip().fillna("")})
    out["time"] = parse_times(df["time"]) if "time" in df.columns else pd.NaT
    out["raw_time"] = df["time"] if "time" in df.columns else None
    out["value"] = pd.to_numeric(df["value"], errors="coerce")
    return out
