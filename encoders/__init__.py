"""Per-modality encoders: canonical tensor -> tokens ``[N, k, d]``, built by registry name.

>>> from encoders import build_encoder, list_encoders
>>> enc = build_encoder("ecg/conv1d", d_model=256, leads=12, samples=2500)
>>> tokens = enc(batch.data, batch.mask)                          # [N, enc.num_tokens, enc.d_model]

Imports torch, monai, torchaudio, torchvision and transformers only; never ``datamodules`` or
``omnimodal``. Importing this package imports every module in it, which registers its encoders: a new
modality's encoder is one new module here.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Encoder, build_encoder, encoder_modalities, list_encoders, register

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Encoder", "build_encoder", "encoder_modalities", "list_encoders", "register"]
