"""ECG encoder: ``[N, leads, samples]`` (mV) + lead mask ``[N, leads]`` -> tokens ``[N, k, d]``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Encoder, MaskedTokenPool, as_tuple, conv_stack, map_to_tokens, register


@register("ecg/conv1d")
class ECGConvEncoder(Encoder):
    """1-D CNN over time with the lead mask as input.

    Missing leads (mask False) are set to zero and the mask is appended as ``leads`` constant
    channels, so the network tells "absent" from "flat": ``[N, leads, samples]`` -> ``[N, 2 * leads,
    samples]`` -> strided convolutions -> attention pooling over time -> ``[N, num_tokens, d_model]``.
    Defaults: 12 leads x 2500 samples (250 Hz x 10 s).
    """

    mask_axes = (0, 1)

    def __init__(
        self,
        leads: int = 12,
        samples: int = 2500,
        channels: Sequence[int] = (32, 64, 96, 128),
        strides: Sequence[int] = (4, 2, 2, 2),
        kernel_size: int = 7,
        d_model: int = 128,
        num_tokens: int = 4,
    ) -> None:
        super().__init__(d_model=d_model, num_tokens=num_tokens)
        self.in_shape = (int(leads), int(samples))
        channels = as_tuple(channels)
        self.net = conv_stack(1, 2 * leads, channels, as_tuple(strides), kernel_size=kernel_size)
        self.pool = MaskedTokenPool(channels[-1], num_tokens, d_model)

    def encode(self, data: Tensor, mask: Tensor | None, value: Tensor | None) -> Tensor:
        if mask is None:
            mask = torch.ones(data.shape[:2], dtype=torch.bool, device=data.device)
        lead_mask = mask[..., None].expand_as(data)
        x = torch.cat([torch.where(lead_mask, data, 0.0), lead_mask.to(data.dtype)], dim=1)
        tokens, _ = map_to_tokens(self.net(x))
        return self.pool(tokens)
