"""Voice / breath audio: WAV or FLAC -> ``[1, n]`` float32 mono at ``spec.rate_hz``, ``n <= max_samples``.

Decoded with ``soundfile`` (torchaudio >= 2.9 needs FFmpeg via torchcodec for loading), downmixed to
mono by averaging channels, resampled with ``torchaudio.functional.resample``, and cut to the first
``spec.max_samples`` samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.readers import resample
from datamodules.schema import AudioSpec, DataError

_MARGIN = 64  # extra input frames read past the crop so resampling has its right-hand context


def read_audio(path: Path, spec: AudioSpec, options: Mapping[str, Any] | None = None) -> np.ndarray:
    """Read a WAV/FLAC file -> ``[1, n]`` float32, mono, ``spec.rate_hz``, ``1 <= n <= spec.max_samples``."""
    import soundfile as sf

    with sf.SoundFile(str(path)) as f:
        rate = f.samplerate
        frames = f.read(math.ceil(spec.max_duration_s * rate) + _MARGIN, dtype="float32", always_2d=True)
    if frames.size == 0:
        raise DataError("audio file holds no samples", where=str(path), hint="drop the row or re-record")
    mono = frames.mean(axis=1, dtype=np.float64)
    out = resample(mono, rate, spec.rate_hz)[: spec.max_samples]
    return np.ascontiguousarray(out[None], dtype=np.float32)
