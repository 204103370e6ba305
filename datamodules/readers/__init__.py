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
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from datamodules.schema import (
    AudioSpec, DataError, DataWarning, OmicsSpec, Spec, VideoSpec, VolumeSpec, WaveformSpec, WearableSpec, check_modality,
    validate_canonical,
)

__all__ = ["read_measurement", "preload_readers", "SUPPORTED", "file_suffix", "resample", "fit_length", "option"]

# modality -> (reader module, spec type, supported suffixes, hint shown when decoding fails)
_DICOM_DIR = "<directory of .dcm files>"
_BROKEN = "the file is damaged, truncated or not in the format its extension says; "
_TABLE: dict[str, tuple[str, type[Spec], tuple[str, ...], str]] = {
    "mri": ("mri", VolumeSpec, (".nii", ".nii.gz", ".dcm", _DICOM_DIR),
            _BROKEN + "check that it opens with nibabel (NIfTI) or pydicom (DICOM) and re-export it"),
    "ecg": ("ecg", WaveformSpec, (".hea", ".dat", ".dcm", ".npy", ".npz", ".csv"),
            _BROKEN + "check that it opens with wfdb.rdrecord, pydicom, numpy or pandas and re-export it"),
    "voice": ("audio", AudioSpec, (".wav", ".flac"),
              _BROKEN + "check that it opens with soundfile and re-export it as WAV or FLAC"),
    "gait": ("video", VideoSpec, (".mp4", ".mov", ".avi", ".mkv", ".webm"),
             _BROKEN + "check that it plays (e.g. ffprobe) and re-encode it as H.264 MP4"),
    "wearable": ("wearable", WearableSpec, (".csv", ".parquet"), _BROKEN + "check that it opens with pandas"),
    "omics": ("omics", OmicsSpec, (".csv", ".parquet", ".npy"),
              _BROKEN + "check that it opens with pandas (tables) or numpy (.npy)"),
}
_TABLE["breath"] = _TABLE["voice"]
_TABLE["face"] = _TABLE["gait"]

#: modality -> supported file suffixes (what users may put in the events table's ``path``)
SUPPORTED: dict[str, tuple[str, ...]] = {m: t[2] for m, t in _TABLE.items()}


def read_measurement(modality: str, path: str | os.PathLike, spec: Spec,
                     options: Mapping[str, Any] | None = None) -> np.ndarray:
    """Read one measurement file into its modality's canonical array (validated against ``spec``).

    ``options`` holds extra columns of the events-table row (e.g. ``sampling_rate``, ``leads``) that
    formats which do not describe themselves need. Raises :class:`DataError` on any bad input.
    """
    where = str(path)
    check_modality(modality, where)
    if modality == "clinical":
        raise DataError("clinical measurements have no file", where=where,
                        hint="give clinical events as code/value columns of the events table, not a path")
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", where=where,
                        hint="check the events table's path column (relative paths are resolved from "
                             "the current directory) and that the file was copied")
    module, spec_type, suffixes, decode_hint = _TABLE[modality]
    if not isinstance(spec, spec_type):
        raise DataError(f"{modality} needs a {spec_type.__name__}, got {type(spec).__name__}", where=where,
                        hint="pass the cohort's spec for this modality (default_specs()[modality])")
    suffix = _DICOM_DIR if p.is_dir() else file_suffix(p)
    if suffix not in suffixes:
        raise DataError(f"unsupported {modality} file type {suffix or '(no extension)'!r}", where=where,
                        hint=f"convert it to one of: {', '.join(suffixes)}")
    opts: Mapping[str, Any] = {} if options is None else options
    reader = getattr(importlib.import_module(f"{__name__}.{module}"), f"read_{module}")
    try:
        if modality == "omics":
            arr, off_panel = reader(p, spec, opts)
            if off_panel:
                warnings.warn(f"{where}: {off_panel} omics feature(s) not on the panel were ignored "
                              "(add them to OmicsSpec.features to keep them)", DataWarning, stacklevel=2)
        else:
            arr = reader(p, spec, opts)
    except (DataError, MemoryError):
        raise
    except Exception as e:  # any decoding-library failure -> a DataError naming the file
        detail = " ".join(str(e).split()).rstrip(". ")  # one line, for logs
        raise DataError(f"cannot decode {modality} file: {type(e).__name__}: {detail}", where=where,
                        hint=decode_hint) from e
    return validate_canonical(modality, spec, arr, where=where)


# ----------------------------------------------------------------------------------------------
# Shared helpers (used by several readers)
# ----------------------------------------------------------------------------------------------


def preload_readers(modalities: Iterable[str]) -> None:
    """Import the reader modules (and their libraries) for these modalities now, e.g. before forking
    worker processes so that each does not import MONAI or PyAV again."""
    heavy = {"mri": ("monai.transforms", "monai.data"), "gait": ("av",), "face": ("av",),
             "voice": ("soundfile", "torchaudio.functional"), "breath": ("soundfile", "torchaudio.functional"),
             "ecg": ("wfdb", "pydicom", "torchaudio.functional")}
    for m in set(modalities) & set(_TABLE):
        for name in (f"{__name__}.{_TABLE[m][0]}", *heavy.get(m, ())):
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
