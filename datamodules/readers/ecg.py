"""ECG: WFDB, DICOM waveform, NumPy (``.npy``/``.npz``) or CSV -> the whole recording, cut by the shard builder
into windows of ``[leads, rate_hz * duration_s]`` float32 (``datamodules.windows``).

Values are in ``spec.units`` (mV), rows in ``spec.leads`` order, resampled to ``spec.rate_hz``; a recording
shorter than one window is zero-padded to ``spec.samples``. A spec lead absent from the file is an all-NaN row (the
storage rule for a missing lead); file leads not in the spec are ignored.

Formats that do not describe themselves take ``options`` (events-table columns): ``sampling_rate``
(Hz), ``leads`` (comma-separated names) and ``units`` (default mV).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.readers import file_suffix, option, resample
from datamodules.schema import STANDARD_12_LEADS, DataError, WaveformSpec
from datamodules.windows import Stream

#: signal [leads, samples] in mV, sampling rate (Hz), lead names, the recording's length in the file (s) when
#: more than the signal (WFDB reads only what is asked)
Loaded = tuple[np.ndarray, float, list[str], float | None]

_PER_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}
_ALIASES = {"MLI": "I", "MLII": "II", "MLIII": "III", "DI": "I", "DII": "II", "DIII": "III"}


def read_ecg(
    path: Path, spec: WaveformSpec, options: Mapping[str, Any] | None = None, max_s: float | None = None
) -> Stream:
    """Read one ECG recording whole (at most ``max_s`` seconds) -> a stream at ``spec.rate_hz`` of its leads
    on the spec; each window becomes ``[len(spec.leads), spec.samples]`` float32 in ``spec.units``."""
    loaders: dict[str, Callable[[Path, Mapping[str, Any], float | None], Loaded]] = {
        ".hea": _load_wfdb,
        ".dat": _load_wfdb,
        ".dcm": _load_dicom,
        ".npy": _load_numpy,
        ".npz": _load_numpy,
        ".csv": _load_csv,
    }
    signal, fs, names, duration_s = loaders[file_suffix(path)](path, {} if options is None else options, max_s)
    duration_s = duration_s or signal.shape[1] / fs
    if max_s is not None:
        signal = signal[:, : max(1, int(np.ceil(max_s * fs)))]
    return to_stream(np.asarray(signal), fs, names, spec, duration_s, where=str(path))


def lead_key(name: object) -> str:
    """Normalised lead name: ``"Lead aVR"``, ``"AVR "``, ``"avr"`` -> ``"AVR"``; ``"MLII"`` -> ``"II"``."""
    s = re.sub(r"\(.*?\)", "", str(name)).strip()
    s = re.sub(r"^lead", "", s, flags=re.IGNORECASE)
    s = re.sub(r"[\s_\-]", "", s).upper()
    return _ALIASES.get(s, s)


def to_stream(
    signal: np.ndarray, fs: float, names: Sequence[str], spec: WaveformSpec, duration_s: float, where: str = ""
) -> Stream:
    """``signal [n, samples]`` (mV, named leads, ``fs`` Hz) -> its spec leads resampled to ``spec.rate_hz``, as a
    stream whose windows are put on the spec's lead rows (absent leads all-NaN, short windows zero-padded)."""
    target = {lead_key(lead): i for i, lead in enumerate(spec.leads)}
    rows: list[np.ndarray] = []
    index: list[int] = []
    for name, x in zip(names, signal):
        i = target.get(lead_key(name))
        if i is None or np.isnan(x).all():  # off-spec lead, or a lead the recording lacks
            continue
        if not np.isfinite(x).all():
            raise DataError(
                f"ECG lead {name!r} holds NaN or Inf samples",
                where=where,
                hint="fix or drop the recording; an absent lead must be left out (or all-NaN)",
            )
        if i in index:
            raise DataError(
                f"two ECG leads map to {spec.leads[i]!r} (names {list(names)})",
                where=where,
                hint="rename or drop the duplicate lead",
            )
        rows.append(x)
        index.append(i)
    if not index:
        raise DataError(
            f"none of the ECG leads {list(names)} is one of the spec's leads {list(spec.leads)}",
            where=where,
            hint="name the leads like I, II, aVR, V1 (e.g. via the 'leads' column)",
        )
    x = resample(np.stack(rows).astype(np.float32, copy=False), fs, spec.rate_hz).astype(np.float32, copy=False)
    x /= np.float32(_per_mv(spec.units, where))

    def on_leads(window: np.ndarray) -> np.ndarray:
        out = np.full(spec.shape(), np.nan, dtype=np.float32)
        out[index] = window
        return out

    return Stream(x, axis=1, rate_hz=float(spec.rate_hz), duration_s=duration_s, to_canonical=on_leads, pad=0.0)


def _per_mv(unit: str | None, where: str) -> float:
    """How many mV one ``unit`` is (WFDB's default unit, mV, when not given)."""
    key = (unit or "mV").strip().lower()
    if key not in _PER_MV:
        raise DataError(f"unknown ECG unit {unit!r}", where=where, hint="use mV, uV or V")
    return _PER_MV[key]


def _rate(options: Mapping[str, Any], where: str) -> float:
    v = option(options, "sampling_rate")
    if v is None:
        raise DataError(
            "ECG sampling rate unknown: this format does not store it",
            where=where,
            hint="add a 'sampling_rate' column, in Hz, to the events table (e.g. 500 for this row), or give "
            "the CSV a 'time' column in seconds",
        )
    try:
        return float(v)
    except (TypeError, ValueError):
        raise DataError(f"sampling_rate {v!r} is not a number", where=where, hint="give it in Hz") from None


def _lead_names(options: Mapping[str, Any]) -> list[str] | None:
    v = option(options, "leads")
    if v is None:
        return None
    return [s.strip() for s in v.split(",")] if isinstance(v, str) else [str(s) for s in v]


def _load_wfdb(path: Path, options: Mapping[str, Any], max_s: float | None = None) -> Loaded:
    import wfdb

    record = path.with_suffix("")
    if not record.with_suffix(".hea").exists():
        raise DataError(
            "WFDB header (.hea) not found beside the .dat file",
            where=str(path),
            hint="copy the record's .hea file into the same folder",
        )
    fs, total = _record_line(record.with_suffix(".hea")) or _rdheader(wfdb, record)
    stop = total if max_s is None or not total else min(total, int(np.ceil(max_s * fs)))
    rec = wfdb.rdrecord(str(record), sampto=stop or None, return_res=32)  # float32: a day's Holter fits in memory
    scale = np.array([_per_mv(u, str(path)) for u in (rec.units or [None] * rec.n_sig)], dtype=np.float32)
    signal = np.asarray(rec.p_signal, dtype=np.float32).T * scale[:, None]
    return signal, float(rec.fs), list(rec.sig_name), (total or signal.shape[1]) / float(rec.fs)


#: a WFDB record line: name[/segments] signals [fs[/counter fs][(base counter)] [samples per signal [...]]]
_RECORD_LINE = re.compile(
    r"\S+\s+\d+(?:\s+(?P<fs>\d+(?:\.\d*)?|\.\d+)(?:/[0-9.]+)?(?:\([0-9.+-]*\))?(?:\s+(?P<len>\d+)(?:\s.*)?)?)?"
)


def _record_line(header: Path) -> tuple[float, int] | None:
    """Sampling rate and samples per signal from a WFDB header's record line (its first line that is not a
    comment), or None if it is not in the plain form. ``wfdb.rdheader`` parses every signal line too, through
    pandas: 40 ms a header, and ``rdrecord`` parses it again."""
    try:
        lines = header.read_text(errors="replace").splitlines()
    except OSError:
        return None
    line = next((ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    m = _RECORD_LINE.fullmatch(line)
    if not m:
        return None
    return float(m["fs"]) if m["fs"] else 250.0, int(m["len"] or 0)  # WFDB's default rate: 250 Hz


def _rdheader(wfdb: Any, record: Path) -> tuple[float, int]:
    header = wfdb.rdheader(str(record))
    return float(header.fs), int(header.sig_len or 0)


def _load_dicom(path: Path, options: Mapping[str, Any], max_s: float | None = None) -> Loaded:
    import pydicom

    ds = pydicom.dcmread(path)
    if "WaveformSequence" not in ds:
        raise DataError(
            "DICOM file has no WaveformSequence (not an ECG waveform)",
            where=str(path),
            hint="give a DICOM ECG (12-lead or general waveform) file",
        )
    groups = ds.WaveformSequence  # prefer the rhythm group over median beats
    k = next((i for i, g in enumerate(groups) if "RHYTHM" in str(g.get("MultiplexGroupLabel", "")).upper()), 0)
    group = groups[k]
    names, scale = [], []
    for ch in group.ChannelDefinitionSequence:
        source = ch.get("ChannelSourceSequence")
        names.append(str(source[0].CodeMeaning if source else ch.get("ChannelLabel", "")))
        if "ChannelSensitivity" not in ch:
            raise DataError(
                f"DICOM channel {names[-1]!r} has no ChannelSensitivity",
                where=str(path),
                hint="re-export the ECG with channel sensitivity so values can be put in mV",
            )
        units = ch.get("ChannelSensitivityUnitsSequence")
        scale.append(_per_mv(str(units[0].CodeValue) if units else None, str(path)))
    signal = np.asarray(ds.waveform_array(k), dtype=np.float64).T * np.array(scale)[:, None]
    return signal, float(group.SamplingFrequency), names, None


def _load_numpy(path: Path, options: Mapping[str, Any], max_s: float | None = None) -> Loaded:
    where = str(path)
    names = None
    if file_suffix(path) == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "signal" not in z:
                raise DataError(
                    f".npz has no 'signal' array (keys: {sorted(z)})",
                    where=where,
                    hint="save it with np.savez(path, signal=..., fs=..., leads=...)",
                )
            signal = z["signal"]
            fs = float(z["fs"]) if "fs" in z else _rate(options, where)
            names = [str(n) for n in z["leads"]] if "leads" in z else None
    else:
        signal, fs = np.load(path, allow_pickle=False), _rate(options, where)
    names = names or _lead_names(options)
    signal = np.asarray(signal, dtype=np.float64)
    signal = signal[None] if signal.ndim == 1 else signal
    if signal.ndim != 2:
        raise DataError(f"ECG array has shape {signal.shape}, expected [leads, samples]", where=where)
    if names is None:
        if 12 not in signal.shape:
            raise DataError(
                f"ECG array of shape {signal.shape} has no lead names",
                where=where,
                hint="add a 'leads' column (comma-separated, e.g. I,II,V1) to the events table",
            )
        names = list(STANDARD_12_LEADS)
    if signal.shape[0] != len(names):
        if signal.shape[1] != len(names):
            raise DataError(
                f"ECG array of shape {signal.shape} does not match its {len(names)} lead names",
                where=where,
                hint="check the 'leads' column against the array",
            )
        signal = signal.T  # [samples, leads]
    return signal * _per_mv(option(options, "units"), where), fs, names, None


def _load_csv(path: Path, options: Mapping[str, Any], max_s: float | None = None) -> Loaded:
    import pandas as pd

    where = str(path)
    df = pd.read_csv(path)
    time_col = next((c for c in df.columns if str(c).strip().lower() == "time"), None)
    if time_col is None:
        fs = _rate(options, where)
    else:
        t = pd.to_numeric(df[time_col], errors="coerce").to_numpy(np.float64)
        dt = np.diff(t)
        if len(t) < 2 or not np.isfinite(t).all() or (dt <= 0).any() or np.ptp(dt) > 0.01 * dt.mean():
            raise DataError(
                "ECG 'time' column is not evenly spaced, increasing seconds",
                where=where,
                hint="fix the time column, or drop it and give a 'sampling_rate' column",
            )
        fs = (len(t) - 1) / (t[-1] - t[0])
        fs = float(round(fs)) if abs(fs - round(fs)) < 1e-4 * fs else fs
    cols = [c for c in df.columns if c != time_col]
    signal = (
        np.stack([pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) for c in cols])
        if cols
        else np.zeros((0, len(df)))
    )
    return signal * _per_mv(option(options, "units"), where), fs, [str(c) for c in cols], None
