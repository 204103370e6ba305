"""Per-modality encoders: canonical tensor -> tokens ``[N, k, d]``, built by registry name.

>>> from encoders import build_encoder, list_encoders, DEFAULT_ENCODERS
>>> enc = build_encoder(DEFAULT_ENCODERS["ecg"], d_model=256)   # == build_encoder("ecg/conv1d", ...)
>>> tokens = enc(batch.data, batch.mask)                          # [N, enc.num_tokens, enc.d_model]

Imports torch, monai, torchaudio, torchvision and transformers only; never ``datamodules`` or
``omnimodal``. Importing this package registers every encoder below.
"""

from __future__ import annotations

from . import audio, clinical, ecg, mri, omics, video, wearable  # noqa: F401  (register the encoders)
from .base import MODALITIES, Encoder, build_encoder, list_encoders, register

#: modality -> registry name of its default (small, fast) encoder
DEFAULT_ENCODERS: dict[str, str] = {
    "mri": "mri/conv3d",
    "ecg": "ecg/conv1d",
    "voice": "voice/conv",
    "breath": "breath/conv",
    "gait": "gait/conv3d",
    "face": "face/conv3d",
    "wearable": "wearable/conv1d",
    "omics": "omics/mlp",
    "clinical": "clinical/embedding",
}

__all__ = ["DEFAULT_ENCODERS", "MODALITIES", "Encoder", "build_encoder", "list_encoders", "register"]
