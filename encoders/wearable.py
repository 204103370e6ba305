"""Wearable encoder: minute-level streams ``[N, channels, minutes]`` + mask ``[N, channels, minutes]``
(True = observed; gaps are zero) -> tokens ``[N, k, d]``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Encoder, MaskedTokenPool, as_tuple, conv_stack, map_to_tokens, register, signed_log1p


@register("wearable/conv1d")
class WearableConvEncoder(Encoder):
    """Values (``sign(x) log(1 + |x|)``, keeping absolute level across channels of different scale) with
    unobserved minutes zeroed, plus one mask channel per stream -> strided 1-D CNN over minutes ->
    attention pooling over time steps where any stream was observed -> ``[N, num_tokens, d_model]``.
    Defaults: 3 channels x 1440 minutes, strides 4, 2, 2, 2 (1440 -> 45 time steps).
    """

    mask_axes = (0, 1, 2)

    def __init__(
        self,
        channels: int = 3,
        minutes: int = 1440,
        widths: Sequence[int] = (32, 64, 96, 128),
        strides: Sequence[int] = (4, 2, 2, 2),
        kernel_size: int = 5,
        d_model: int = 128,
        num_tokens: int = 4,
    ) -> None:
        super().__init__(d_model=d_model, num_tokens=num_tokens)
        self.in_shape = (int(channels), int(minutes))
        widths = as_tuple(widths)
        self.net = conv_stack(1, 2 * channels, widths, as_tuple(strides), kernel_size=kernel_size)
        self.pool = MaskedTokenPool(widths[-1], num_tokens, d_model)

    def encode(self, data: Tensor, mask: Tensor | None, value: Tensor | None) -> Tensor:
        if mask is None:
            mask = torch.ones_like(data, dtype=torch.bool)
        x = torch.cat([signed_log1p(torch.where(mask, data, 0.0)), mask.to(data.dtype)], dim=1)
        tokens, token_mask = map_to_tokens(self.net(x), mask.any(1), axis=0)
        return self.pool(tokens, token_mask)
