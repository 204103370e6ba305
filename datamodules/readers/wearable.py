"""Wearable streams: CSV or Parquet table -> the whole recording, ``[channels, minutes]`` float32, one value per
minute (the shard builder cuts it into day windows, ``datamodules.windows``).

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

from datamodules.readers import file_suffix
from datamodules.schema import DataError, WearableSpec
from datamodules.windows import Stream

_NS_PER_MIN = 60_000_000_000


def read_wearable(
    path: Path, spec: WearableSpec, options: Mapping[str, Any] | None = None, max_s: float | None = None
) -> Stream:
    """Read a wearable table -> the whole recording, ``[len(spec.channels), minutes]`` float32 (NaN = gap), one
    column per minute from the first timestamp to the last (at most ``max_s`` seconds of them)."""
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
    minute, problems = _minutes(df[columns["timestamp"]], where)
    total = int(minute.max()) + 1
    n_bins = total if max_s is None else max(1, min(total, int(max_s // 60)))
    keep = minute < n_bins
    out = np.full((len(spec.channels), n_bins), np.nan, dtype=np.float32)
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
        total_v = np.bincount(minute[ok], weights=values[ok], minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_minute = total_v if name in spec.sum_channels else total_v / count
        out[i] = np.where(count > 0, per_minute, np.nan)
    if not found:
        raise DataError(
            f"wearable table has none of the channels {list(spec.channels)} (columns: {[str(c) for c in df.columns]})",
            where=where,
            hint="name the channel columns as in the spec (e.g. heart_rate, steps)",
        )
    observed = ~np.isnan(out).all(axis=0)
    if not observed.any():
        raise DataError(
            "wearable table holds no value in any channel",
            where=where,
            hint="drop the row, or re-export the table with its values",
        )
    return Stream(
        out, axis=1, rate_hz=1 / 60.0, duration_s=total * 60.0, observed=observed, pad=np.nan, problems=problems
    )


def _minutes(ts: Any, where: str) -> tuple[np.ndarray, list[str]]:
    """Timestamp column -> int minute index from the first timestamp floored to the minute, and what was odd
    about the timestamps (out of order, repeated: the samples are used, binned by their own time)."""
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
    problems = []
    back = int((np.diff(sec) < 0).sum())
    if back:
        problems.append(
            f"{back} timestamp(s) out of order (samples binned by their own time: check the export's clock)"
        )
    repeated = int(len(sec) - len(np.unique(sec)))
    if repeated:
        problems.append(
            f"{repeated} repeated timestamp(s) (their samples averaged into one minute: check for a duplicated "
            "export or a clock change)"
        )
    return np.floor((sec - origin) / 60.0).astype(np.int64), problems
