"""Readers: one native file -> the canonical numpy array of its modality (see ``schema.py``).

:func:`read_measurement` dispatches on modality and file extension, turns any decoding-library
failure into a :class:`~datamodules.schema.DataError` that names the file, and always checks the
result with :func:`~datamodules.schema.validate_canonical`. The per-format readers live in the
submodules (imported lazily: MONAI and PyAV are slow to import) and share the helpers below.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.modalities import DICOM_DIR, get, registry
from datamodules.schema import DataError, DataWarning, Spec, validate_canonical
from datamodules.windows import REASONS, Account, Stream, Window, WindowPolicy, cut, first_window, timing

__all__ = [
    "Reading",
    "file_suffix",
    "fit_length",
    "option",
    "preload_readers",
    "read_measurement",
    "read_recording",
    "resample",
    "supported",
]


def supported(modality: str) -> tuple[str, ...]:
    """The file suffixes a modality's readers take (what users may put in the events table's ``path``)."""
    return get(modality).suffixes


@dataclass
class Reading:
    """One file read for the shard builder: its kept windows (one, at offset 0, for a modality without a
    time axis), what the window policy left out (None without a time axis), report lines (``notes``),
    suspect input that was used (``problems``: a stop under ``--strict``) and per-measurement facts for
    ``meta.json`` (``meta``, e.g. the fraction of non-finite MRI voxels made background)."""

    windows: list[Window]
    account: Account | None = None
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def read_measurement(
    modality: str, path: str | os.PathLike, spec: Spec, options: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Read one measurement file into its modality's canonical array (validated against ``spec``): for a
    long recording of a time-based modality, its first window (:func:`read_recording` gives them all).

    ``options`` holds extra columns of the events-table row (e.g. ``sampling_rate``, ``leads``) that
    formats which do not describe themselves need. Raises :class:`DataError` on any bad input.
    """
    where = str(path)
    window = timing(spec)
    raw = _call_reader(modality, path, spec, options, None if window is None else window[0] / window[1])
    if isinstance(raw, Stream):
        arr, notes = first_window(raw, spec), raw.notes + raw.problems
    else:
        arr, notes, _ = _parts(raw)
    for note in notes:
        warnings.warn(f"{where}: {note}", DataWarning, stacklevel=2)
    return validate_canonical(modality, spec, arr, where=where)


def read_recording(
    modality: str,
    path: str | os.PathLike,
    spec: Spec,
    options: Mapping[str, Any] | None = None,
    policy: WindowPolicy | None = None,
    stop_s: float | None = None,
) -> Reading:
    """Read one file for the shard builder: every window ``policy`` keeps (validated against ``spec``) and the
    account of the rest (:func:`datamodules.windows.cut`; ``stop_s``: seconds from the recording's start to
    the subject's death). A policy that keeps no window is a :class:`DataError` saying which setting to change.
    """
    where = str(path)
    if timing(spec) is None:
        arr, notes, meta = _parts(_call_reader(modality, path, spec, options, None))
        return Reading(
            [Window(0.0, 0, 1.0, validate_canonical(modality, spec, arr, where=where))], None, notes, [], meta
        )
    policy = policy or WindowPolicy()
    stream = _call_reader(modality, path, spec, options, policy.max_read_s)
    windows, account = cut(stream, spec, policy, stop_s)
    if not windows:
        why = ", ".join(f"{n} {REASONS[k]}" for k, n in account.windows_dropped.items())
        hint = (  # max_windows >= 1 always keeps one: nothing kept means gaps or a death before the end
            f"lower windows.{modality}.min_coverage in the build config, or fix the recording"
            if "low_coverage" in account.windows_dropped
            else "check the recording's time and the subject's death_date"
        )
        err = DataError(
            f"the window policy keeps no window of this {account.duration_s:.0f}-s recording ({why})",
            where=where,
            hint=hint,
        )
        err.account = account  # the builder reports what was read, though nothing is kept
        raise err
    for w in windows:
        w.array = validate_canonical(modality, spec, w.array, where=f"{where} (window at {w.offset_s:g} s)")
    return Reading(windows, account, stream.notes, stream.problems)


def _call_reader(
    modality: str, path: str | os.PathLike, spec: Spec, options: Mapping[str, Any] | None, max_s: float | None
) -> Any:
    """The reader's own result (an array, ``(array, notes[, meta])`` or a :class:`Stream`); every failure a
    :class:`DataError` naming the file. Readers of time-based modalities take ``max_s`` (seconds to read)."""
    where = str(path)
    decl = get(modality, where)
    if not decl.has_files:
        raise DataError(
            f"{modality} measurements have no file",
            where=where,
            hint=f"give {modality} events as code/value columns of the events table, not a path",
        )
    p = Path(path)
    if not p.exists():
        raise DataError(
            "file not found",
            where=where,
            hint="check the events table's path column (relative paths are resolved from "
            "the current directory) and that the file was copied",
        )
    if type(spec) is not type(decl.spec):
        raise DataError(
            f"{modality} needs a {type(decl.spec).__name__}, got {type(spec).__name__}",
            where=where,
            hint="pass the cohort's spec for this modality (default_specs()[modality])",
        )
    suffix = DICOM_DIR if p.is_dir() else file_suffix(p)
    if suffix not in decl.readers:
        raise DataError(
            f"unsupported {modality} file type {suffix or '(no extension)'!r}",
            where=where,
            hint=f"convert it to one of: {', '.join(decl.suffixes)}",
        )
    reader = decl.reader(suffix)
    opts = {} if options is None else options
    try:
        return reader(p, spec, opts) if timing(spec) is None else reader(p, spec, opts, max_s)
    except (DataError, MemoryError):
        raise
    except Exception as e:  # any decoding-library failure -> a DataError naming the file
        detail = " ".join(str(e).split()).rstrip(". ")  # one line, for logs
        raise DataError(
            f"cannot decode {modality} file: {type(e).__name__}: {detail}", where=where, hint=decl.decode_hint
        ) from e


def _parts(raw: Any) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """A reader's array, ``(array, notes)`` or ``(array, notes, meta)`` -> all three."""
    if not isinstance(raw, tuple):
        return raw, [], {}
    return raw[0], list(raw[1]), dict(raw[2]) if len(raw) > 2 else {}


# ----------------------------------------------------------------------------------------------
# Shared helpers (used by several readers)
# ----------------------------------------------------------------------------------------------


def preload_readers(modalities: Iterable[str]) -> None:
    """Import the reader modules (and their libraries) for these modalities now, e.g. before forking
    worker processes so that each does not import MONAI or PyAV again."""
    mods = registry()
    for m in set(modalities) & set(mods):
        for ref in set(mods[m].readers.values()):
            importlib.import_module(ref.partition(":")[0])
        for name in mods[m].preload:
            importlib.import_module(name)


def file_suffix(path: str | os.PathLike) -> str:
    """Lower-case suffix, keeping ``.nii.gz`` whole."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def option(options: Mapping[str, Any], key: str) -> Any:
    """``options[key]``, or None when absent or empty (None, NaN, NA, blank string: a missing table cell)."""
    import pandas as pd

    v = options.get(key)
    if isinstance(v, str):
        return v if v.strip() else None
    return None if np.ndim(v) == 0 and pd.isna(v) else v


def resample(x: np.ndarray, orig_hz: float, new_hz: int) -> np.ndarray:
    """Resample ``x [..., n]`` along the last axis from ``orig_hz`` to ``new_hz`` (band-limited).

    Integer rates use ``torchaudio.functional.resample``; a non-integer rate uses
    ``scipy.signal.resample_poly`` with a rational approximation of the ratio (denominator <= 1000).
    """
    if not np.isfinite(orig_hz) or orig_hz <= 0:
        raise DataError(f"invalid sampling rate {orig_hz!r}", hint="give a positive rate in Hz")
    if abs(orig_hz - new_hz) < 1e-9:
        return x
    if abs(orig_hz - round(orig_hz)) < 1e-6:
        import torch
        import torchaudio.functional as AF

        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return AF.resample(t, int(round(orig_hz)), int(new_hz)).numpy()
    from scipy.signal import resample_poly

    ratio = Fraction(new_hz / orig_hz).limit_denominator(1000)
    return resample_poly(np.asarray(x, dtype=np.float64), ratio.numerator, ratio.denominator, axis=-1)


def fit_length(x: np.ndarray, n: int, fill: float = 0.0) -> np.ndarray:
    """Crop (keep the start) or pad with ``fill`` at the end of the last axis to length ``n``."""
    if x.shape[-1] >= n:
        return x[..., :n]
    pad = np.full((*x.shape[:-1], n - x.shape[-1]), fill, dtype=x.dtype)
    return np.concatenate([x, pad], axis=-1)
