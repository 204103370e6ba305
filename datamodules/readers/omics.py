"""Omics: CSV / Parquet (long or wide) or NumPy vector -> ``[features]`` float32 on the spec's panel.

* long table: one row per feature, a feature column named one of :data:`FEATURE_COLUMNS` and a value column
  named one of :data:`VALUE_COLUMNS` (any case, surrounding spaces ignored); other columns are ignored;
* wide table: one row whose column names are feature ids;
* ``.npy``: a 1-D vector with exactly ``len(spec.features)`` entries, already in panel order.

Panel features absent from the file (or empty) are NaN (unmeasured). Features not on the panel are
ignored and counted, so the caller can report them. A panel feature given twice must have the same value
both times (``1`` and ``1.0`` are the same; empty is a value here), else the file is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.readers import file_suffix
from datamodules.schema import DataError, OmicsSpec

#: long tables: the feature column's accepted names (compared lower-case, stripped)
FEATURE_COLUMNS = ("feature", "feature_id", "gene", "gene_id", "rsid", "snp", "variant", "probe")
#: long tables: the value column's accepted names
VALUE_COLUMNS = ("value", "dosage", "expression", "count")
_LAYOUTS = (
    "give one sample per file, as a long table (one row per feature, a feature column named one of "
    f"{', '.join(FEATURE_COLUMNS)} and a value column named one of {', '.join(VALUE_COLUMNS)}, any case) "
    "or a wide table (one row, the feature ids as column names)"
)


def read_omics(path: Path, spec: OmicsSpec, options: Mapping[str, Any] | None = None) -> tuple[np.ndarray, list[str]]:
    """Read an omics file -> (``[len(spec.features)]`` float32 with NaN = missing, notes for the report)."""
    where = str(path)
    if file_suffix(path) == ".npy":
        vec = np.load(path, allow_pickle=False)
        if vec.ndim != 1 or vec.shape[0] != len(spec.features):
            raise DataError(
                f"omics .npy has shape {vec.shape}, expected ({len(spec.features)},) in the panel's feature order",
                where=where,
                hint="save a 1-D vector ordered like OmicsSpec.features, or use a feature_id,value table",
            )
        out, off_panel = vec.astype(np.float32), 0
    else:
        ids, values, places = _table(path, where)
        out, off_panel = _on_panel(ids, values, places, spec, where)
    if np.isinf(out).any():
        raise DataError("omics values hold Inf", where=where, hint="fix the export; leave unmeasured values empty")
    if np.isnan(out).all():
        raise DataError(
            f"none of the {len(spec.features)} panel features is measured in this file",
            where=where,
            hint="check the feature ids (e.g. rs1000, GENE000) against OmicsSpec.features",
        )
    notes = (
        [f"{off_panel} omics feature(s) not on the panel were ignored (add them to OmicsSpec.features to keep them)"]
        if off_panel
        else []
    )
    return out, notes


def _table(path: Path, where: str) -> tuple[list[str], list[Any], list[str]]:
    """Feature ids, raw values and where each is in the file (CSV ``line 3``, Parquet ``row 2``, ``column 4``)."""
    import pandas as pd

    parquet = file_suffix(path) == ".parquet"
    if parquet:
        df = pd.read_parquet(path)
        header, rows = [str(c).strip() for c in df.columns], df.astype(object).to_numpy().tolist()
    else:  # header=None keeps duplicate column names visible (pandas would rename them)
        raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=True)
        header, rows = [str(c).strip() for c in raw.iloc[0]], raw.iloc[1:].to_numpy().tolist()
    long = _long_columns(header, len(rows), where)
    if long is None:
        return header, rows[0], [f"column {k + 1}" for k in range(len(header))]
    i, j = long
    ids, values, places = [], [], []
    for k, r in enumerate(rows):
        place = f"row {k + 1}" if parquet else f"line {k + 2}"  # CSV line 1 is the header
        empty_id = pd.isna(r[i]) or not str(r[i]).strip()
        if empty_id and pd.isna(r[j]):
            continue  # an empty row (e.g. a spreadsheet's trailing ",,")
        if empty_id:
            raise DataError(
                f"omics table {place} has value {r[j]!r} but no feature id",
                where=where,
                hint=f"fill in its {header[i]!r} cell or delete the row",
            )
        ids.append(str(r[i]).strip())
        values.append(r[j])
        places.append(place)
    return ids, values, places


def _long_columns(header: list[str], n_rows: int, where: str) -> tuple[int, int] | None:
    """The (feature, value) column indices of a long table; None for a wide table; else a :class:`DataError`."""
    lower = [h.lower() for h in header]
    feature = [k for k, h in enumerate(lower) if h in FEATURE_COLUMNS]
    value = [k for k, h in enumerate(lower) if h in VALUE_COLUMNS]
    if feature and value:
        if len(feature) > 1 or len(value) > 1:
            both = [header[k] for k in (feature if len(feature) > 1 else value)]
            raise DataError(
                f"omics long table has several {'feature' if len(feature) > 1 else 'value'} columns {both}",
                where=where,
                hint="keep one feature column and one value column (rename or drop the others)",
            )
        return feature[0], value[0]
    if n_rows == 1 and not feature:
        return None
    if feature:
        found = f"a feature column {header[feature[0]]!r} but no value column"
    elif value:
        found = f"a value column {header[value[0]]!r} but no feature column"
    else:  # e.g. a wide table with one row per sample
        found = f"no feature and value columns, and {n_rows} rows where a wide table has 1"
    shown = ", ".join(header[:8]) + (", ..." if len(header) > 8 else "")
    raise DataError(f"omics table layout not recognised: {found} (columns: {shown})", where=where, hint=_LAYOUTS)


def _on_panel(
    ids: list[str], values: list[Any], places: list[str], spec: OmicsSpec, where: str
) -> tuple[np.ndarray, int]:
    """Place values on the panel; returns the vector and how many distinct ids are not on the panel."""
    import pandas as pd

    raw = pd.Series(values, index=ids, dtype=object)
    num = pd.to_numeric(raw, errors="coerce")
    on_panel = raw.index.isin(spec.features)
    bad = num.isna().to_numpy() & raw.notna().to_numpy() & on_panel  # off-panel columns may hold text (a sample id)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"omics feature {ids[k]!r} has non-numeric value {values[k]!r} ({places[k]})",
            where=where,
            hint="numbers only; leave unmeasured values empty",
        )
    repeated = raw.index.duplicated(keep=False) & on_panel
    distinct = num[repeated].groupby(level=0, sort=False).nunique(dropna=False)
    conflicting = [str(f) for f in distinct.index[distinct > 1]]
    if conflicting:
        shown = "; ".join(
            f"{f}: " + ", ".join(f"{values[k]!r} ({places[k]})" for k in np.flatnonzero(raw.index == f))
            for f in conflicting[:3]
        )
        raise DataError(
            f"duplicate omics feature ids {conflicting[:5]} with different values ({shown})",
            where=where,
            hint="keep one value per feature (a feature repeated with the same value is accepted)",
        )
    out = num[~num.index.duplicated()].reindex(list(spec.features)).to_numpy(np.float32)
    return out, len(set(ids) - set(spec.features))
