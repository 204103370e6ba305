"""Clinical encoder: one MEDS-style row per instance: code id ``data [N]`` (long, 0 = unknown code),
numeric ``value [N]`` and ``mask [N]`` (True = the value is present) -> tokens ``[N, k, d]``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Encoder, TokenHead, register, signed_log1p


@register("clinical/embedding")
class ClinicalEmbeddingEncoder(Encoder):
    """Code embedding (id 0 = unknown, a fixed zero vector) plus, where a value is present, an MLP of
    the code embedding and ``sign(v) log(1 + |v|)``, so a value is read in its code's context;
    then a linear map to tokens: ``data [N]``, ``value [N]``, ``mask [N]`` -> ``[N, num_tokens, d_model]``.
    Without ``value`` (or ``mask``) no value (resp. every value) is taken as present."""

    mask_axes = (0,)
    in_dtype = torch.long

    def __init__(self, vocab_size: int = 1024, hidden: int = 128, d_model: int = 128, num_tokens: int = 1) -> None:
        super().__init__(d_model=d_model, num_tokens=num_tokens)
        self.vocab_size = int(vocab_size)
        self.code = nn.Embedding(vocab_size, hidden, padding_idx=0)
        self.value_mlp = nn.Sequential(nn.Linear(hidden + 1, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.head = TokenHead(hidden, num_tokens, d_model)

    def encode(self, data: Tensor, mask: Tensor | None, value: Tensor | None) -> Tensor:
        if data.dtype.is_floating_point or data.dtype == torch.bool:
            raise ValueError(f"encoder {self.name!r} expects integer code ids, got {data.dtype}")
        lo, hi = int(data.min()), int(data.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(
                f"encoder {self.name!r}: code ids must lie in [0, {self.vocab_size}), got [{lo}, {hi}]; "
                "build it with vocab_size = the collator's vocab_size"
            )
        h = self.code(data)
        if value is None:  # no values: the value path still runs (gated to zero) so every parameter is used
            value, present = h.new_zeros(data.shape), torch.zeros_like(data, dtype=torch.bool)
        elif value.shape != data.shape:
            raise ValueError(f"encoder {self.name!r} expects value {list(data.shape)}, got {list(value.shape)}")
        else:
            present = mask if mask is not None else torch.ones_like(data, dtype=torch.bool)
        v = signed_log1p(torch.where(present, value.to(h.dtype), 0.0))
        h = h + present[:, None] * self.value_mlp(torch.cat([h, v[:, None]], dim=1))
        return self.head(h)
