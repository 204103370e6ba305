"""Voice / breath audio: WAV or FLAC -> the whole recording, ``[1, n]`` float32 mono at ``spec.rate_hz``, cut by
the shard builder into windows of at most ``max_samples`` (``datamodules.windows``).

Decoded with ``soundfile`` (torchaudio >= 2.9 needs FFmpeg via torchcodec for loading), downmixed to
mono by averaging channels, resampled with ``torchaudio.functional.resample``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.readers import resample
from datamodules.schema import AudioSpec, DataError
from datamodules.windows import Stream

_MARGIN = 64  # extra input frames read past the crop so resampling has its right-hand context


def read_audio(
    path: Path, spec: AudioSpec, options: Mapping[str, Any] | None = None, max_s: float | None = None
) -> Stream:
    """Read a WAV/FLAC file whole (at most ``max_s`` seconds) -> ``[1, n]`` float32, mono, ``spec.rate_hz``."""
    import soundfile as sf

    with sf.SoundFile(str(path)) as f:
        rate, total = f.samplerate, f.frames
        want = -1 if max_s is None else math.ceil(max_s * rate) + _MARGIN
        frames = f.read(want, dtype="float32", always_2d=True)
    if frames.size == 0:
        raise DataError("audio file holds no samples", where=str(path), hint="drop the row or re-record")
    mono = frames.mean(axis=1, dtype=np.float64)
    out = resample(mono, rate, spec.rate_hz)
    if max_s is not None:
        out = out[: max(1, int(max_s * spec.rate_hz))]
    return Stream(
        np.ascontiguousarray(out[None], dtype=np.float32),
        axis=1,
        rate_hz=float(spec.rate_hz),
        duration_s=max(total / rate, out.shape[0] / spec.rate_hz),
    )
