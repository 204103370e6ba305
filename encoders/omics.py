"""Omics encoder: values on a fixed feature panel ``[N, features]`` + mask ``[N, features]`` (True =
measured; unmeasured are zero) -> tokens ``[N, k, d]``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Encoder, TokenHead, register, signed_log1p


@register("omics/mlp")
class OmicsMLPEncoder(Encoder):
    """MLP over ``[sign(x) log(1 + |x|) * mask, mask]`` (``2 * features`` inputs, unmeasured values
    zeroed) -> linear map to ``num_tokens`` tokens: ``[N, features]`` -> ``[N, num_tokens, d_model]``."""

    mask_axes = (0, 1)

    def __init__(self, features: int = 64, hidden: int = 256, d_model: int = 128, num_tokens: int = 2) -> None:
        super().__init__(d_model=d_model, num_tokens=num_tokens)
        self.in_shape = (int(features),)
        self.mlp = nn.Sequential(
            nn.Linear(2 * features, hidden),
            nn.GELU(),
            nn.LayerNorm(hidden),
            nn.Linear(hidden, hidden),
            nn.GELU(),
        )
        self.head = TokenHead(hidden, num_tokens, d_model)

    def encode(self, data: Tensor, mask: Tensor | None, value: Tensor | None) -> Tensor:
        if mask is None:
            mask = torch.ones_like(data, dtype=torch.bool)
        x = torch.cat([signed_log1p(torch.where(mask, data, 0.0)), mask.to(data.dtype)], dim=1)
        return self.head(self.mlp(x))
