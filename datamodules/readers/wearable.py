"""Wearable streams: CSV or Parquet table -> ``[channels, window_minutes]`` float32, one value per minute.

The table has a ``timestamp`` column (ISO datetimes, or numbers = seconds from the start of the
recording) and one column per channel of ``spec.channels`` (any subset; extra columns are ignored).
Samples are binned into minutes counted from the first timestamp floored to the minute: ``sum`` for
``spec.sum_channels``, ``mean`` otherwise. A minute without a (non-NaN) sample, and every minute of
a channel the table lacks, is NaN (a gap).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.readers import file_suffix, fit_length
from datamodules.schema import DataError, WearableSpec

_NS_PER_MIN = 60_000_000_000


def read_wearable(path: Path, spec: WearableSpec, options: Mapping[str, Any] | None = None) -> np.ndarray:
    """Read a wearable table -> ``[len(spec.channels), spec.window_minutes]`` float32 (NaN = gap)."""
    import pandas as pd

    where = str(path)
    df = pd.read_parquet(path) if file_suffix(path) == ".parquet" else pd.read_csv(path)
    columns = {str(c).strip().lower(): c for c in df.columns}
    if "timestamp" not in columns:
        raise DataError(
            f"wearable table has no 'timestamp' column (columns: {[str(c) for c in df.columns]})",
            where=where,
            hint="name the time column 'timestamp' (ISO datetime or seconds)",
        )
    minute = _minutes(df[columns["timestamp"]], where)
    keep = minute < spec.window_minutes
    n_bins = int(minute[keep].max()) + 1 if keep.any() else 1
    out = np.full((len(spec.channels), spec.window_minutes), np.nan, dtype=np.float32)
    found = False
    for i, name in enumerate(spec.channels):
        col = columns.get(name.strip().lower())
        if col is None:
            continue
        found = True
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
        if (np.isnan(values) & df[col].notna().to_numpy()).any():
            raise DataError(
                f"wearable channel {name!r} holds non-numeric values",
                where=where,
                hint="leave missing values empty; numbers only",
            )
        if np.isinf(values).any():
            raise DataError(
                f"wearable channel {name!r} holds Inf values",
                where=where,
                hint="fix the export; leave missing values empty (NaN)",
            )
        ok = keep & ~np.isnan(values)
        count = np.bincount(minute[ok], minlength=n_bins)
        total = np.bincount(minute[ok], weights=values[ok], minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_minute = total if name in spec.sum_channels else total / count
        out[i] = fit_length(np.where(count > 0, per_minute, np.nan), spec.window_minutes, np.nan)
    if not found:
        raise DataError(
            f"wearable table has none of the channels {list(spec.channels)} (columns: {[str(c) for c in df.columns]})",
            where=where,
            hint="name the channel columns as in the spec (e.g. heart_rate, steps)",
        )
    return out


def _minutes(ts: Any, where: str) -> np.ndarray:
    """Timestamp column -> int minute index from the first timestamp floored to the minute."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(ts) and not pd.api.types.is_bool_dtype(ts):
        sec = ts.to_numpy(np.float64)
        bad = ~np.isfinite(sec)
    else:
        parsed = pd.to_datetime(ts, errors="coerce", utc=True, format="ISO8601")
        bad = parsed.isna().to_numpy()
        ns = parsed.dt.tz_convert(None).to_numpy().astype("datetime64[ns]").astype(np.int64)
        floor = ns[~bad].min() // _NS_PER_MIN * _NS_PER_MIN if (~bad).any() else 0
        sec = np.where(bad, np.nan, (ns - floor) / 1e9)
    if bad.any():
        first = ts[bad].iloc[0] if hasattr(ts, "iloc") else "?"
        raise DataError(
            f"{int(bad.sum())} unparseable timestamp(s), e.g. {first!r}",
            where=where,
            hint="use ISO datetimes (2024-01-31T08:00:00) or seconds from the recording start",
        )
    if sec.size == 0:
        raise DataError("wearable table has no rows", where=where, hint="drop the row or re-export")
    origin = np.floor(sec.min() / 60.0) * 60.0
    return np.floor((sec - origin) / 60.0).astype(np.int64)
