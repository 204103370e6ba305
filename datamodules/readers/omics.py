"""Omics: CSV / Parquet (long or wide) or NumPy vector -> ``[features]`` float32 on the spec's panel.

* long table: columns ``feature_id`` and ``value``, one row per feature;
* wide table: one row whose column names are feature ids;
* ``.npy``: a 1-D vector with exactly ``len(spec.features)`` entries, already in panel order.

Panel features absent from the file (or empty) are NaN (unmeasured). Features not on the panel are
ignored and counted, so the caller can report them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.readers import file_suffix
from datamodules.schema import DataError, OmicsSpec


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
        ids, values = _table(path, where)
        out, off_panel = _on_panel(ids, values, spec, where)
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


def _table(path: Path, where: str) -> tuple[list[str], list[Any]]:
    """Feature ids and raw values from a long or wide table (duplicate ids are an error)."""
    import pandas as pd

    if file_suffix(path) == ".parquet":
        df = pd.read_parquet(path)
        header, rows = [str(c) for c in df.columns], df.astype(object).to_numpy().tolist()
    else:  # header=None keeps duplicate column names visible (pandas would rename them)
        raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=True)
        header, rows = [str(c).strip() for c in raw.iloc[0]], raw.iloc[1:].to_numpy().tolist()
    lower = [h.lower() for h in header]
    if "feature_id" in lower and "value" in lower:
        i, j = lower.index("feature_id"), lower.index("value")
        ids, values = [str(r[i]).strip() for r in rows], [r[j] for r in rows]
    else:
        if len(rows) != 1:
            raise DataError(
                f"wide omics table has {len(rows)} rows, expected 1",
                where=where,
                hint="give one row per file, or use long format with feature_id,value columns",
            )
        ids, values = header, rows[0]
    dup = sorted(f for f, n in Counter(ids).items() if n > 1)
    if dup:
        raise DataError(f"duplicate omics feature ids {dup[:5]}", where=where, hint="keep one value per feature")
    return ids, values


def _on_panel(ids: list[str], values: list[Any], spec: OmicsSpec, where: str) -> tuple[np.ndarray, int]:
    """Place values on the panel; returns the vector and how many ids are not on the panel."""
    import pandas as pd

    raw = pd.Series(values, index=ids, dtype=object)
    num = pd.to_numeric(raw, errors="coerce")
    on_panel = raw.index.isin(spec.features)
    bad = num.isna() & raw.notna() & on_panel  # off-panel columns (e.g. a sample id) may hold text
    if bad.any():
        fid = bad[bad].index[0]
        raise DataError(
            f"omics feature {fid!r} has non-numeric value {raw[fid]!r}",
            where=where,
            hint="numbers only; leave unmeasured values empty",
        )
    out = num.reindex(list(spec.features)).to_numpy(np.float32)
    return out, int((~on_panel).sum())
