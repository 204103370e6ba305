"""Clinical encoder: one MEDS-style row per instance: code id ``data [N]`` (long, 0 = unknown code),
numeric ``value [N]`` and ``mask [N]`` (True = the value is present) -> tokens ``[N, k, d]``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import Encoder, TokenHead, register, signed_log1p


@register("clinical/embedding")
class ClinicalEmbeddingEncoder(Encoder):
    """Code embedding (id 0 = unknown, a fixed zero vector) plus, where a value is present, an MLP of
    the code embedding and the value read on a log scale, so a value is read in its code's context;
    then a linear map to tokens: ``data [N]``, ``value [N]``, ``mask [N]`` -> ``[N, num_tokens, d_model]``.
    Without ``value`` (or ``mask``) no value (resp. every value) is taken as present.

    The value enters as ``sign(z) log(1 + |z|)``. With ``value_scaling`` (what a model built from data
    gets), ``z = (v - center[code]) / scale[code]``, the code's own centre and scale from the training data
    (buffers ``value_center``, ``value_scale`` ``[vocab_size]``, saved with the weights; set by
    :meth:`set_value_scaling`, e.g. from ``datamodules.code_stats``; the identity until then), and the result
    is multiplied by ``sqrt(hidden)`` so that the value weighs at the MLP input as much as the code
    embedding does. Without it (the default, and every model saved before it existed) ``z = v``: no per-code
    scale, so a systolic pressure of 140 and one of 160 differ by 0.13, where scaled by their code's median
    and IQR they differ by about 0.5 (ETHOS and CoMET bin values by per-code quantiles, MOTOR and CLMBR
    normalise per code)."""

    mask_axes = (0,)
    in_dtype = torch.long

    def __init__(
        self,
        vocab_size: int = 1024,
        hidden: int = 128,
        d_model: int = 128,
        num_tokens: int = 1,
        value_scaling: bool = False,
    ) -> None:
        super().__init__(d_model=d_model, num_tokens=num_tokens)
        self.vocab_size = int(vocab_size)
        self.value_scaling = bool(value_scaling)
        self.code = nn.Embedding(vocab_size, hidden, padding_idx=0)
        self.value_mlp = nn.Sequential(nn.Linear(hidden + 1, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.head = TokenHead(hidden, num_tokens, d_model)
        #: the value enters the MLP beside ``hidden`` embedding features of unit scale (N(0, 1)): at unit scale
        #: itself it would weigh 1/sqrt(hidden) of them at initialisation, and the MLP would read the codes and
        #: barely their values (on WHAS500 and GBSG2: 0.01-0.02 lower test C-index, scripts/bench/real_survival.py)
        self.value_gain = float(hidden) ** 0.5
        if self.value_scaling:  # persistent: a release's model.safetensors carries them
            self.register_buffer("value_center", torch.zeros(vocab_size))
            self.register_buffer("value_scale", torch.ones(vocab_size))

    @torch.no_grad()
    def set_value_scaling(self, center: Sequence[float] | Tensor, scale: Sequence[float] | Tensor) -> None:
        """Per code id (``[vocab_size]``, id = the collator's, 0 = unknown): values enter as ``(v - center) /
        scale``."""
        if not self.value_scaling:
            raise ValueError(f"encoder {self.name!r} was built without value_scaling; build it with value_scaling=true")
        c = torch.as_tensor(center, dtype=torch.float32)
        s = torch.as_tensor(scale, dtype=torch.float32)
        for what, t in (("center", c), ("scale", s)):
            if t.shape != (self.vocab_size,):
                raise ValueError(
                    f"encoder {self.name!r}: value {what} must have one entry per code id ({self.vocab_size}, "
                    f"the vocab_size), got shape {list(t.shape)}"
                )
            if not torch.isfinite(t).all():
                raise ValueError(f"encoder {self.name!r}: value {what} has NaN/inf entries")
        if (s <= 0).any():
            bad = torch.nonzero(s <= 0)[:5, 0].tolist()
            raise ValueError(f"encoder {self.name!r}: value scale must be > 0; it is not at code ids {bad}")
        self.value_center.copy_(c)
        self.value_scale.copy_(s)

    def scale_values(self, data: Tensor, value: Tensor) -> Tensor:
        """``sign(z) log(1 + |z|)`` of each value, ``z`` as the class docstring says; with ``value_scaling``
        times ``sqrt(hidden)``, the value's weight at the MLP input (class docstring)."""
        if not self.value_scaling:
            return signed_log1p(value)
        z = (value - self.value_center[data].to(value)) / self.value_scale[data].to(value)
        return signed_log1p(z) * self.value_gain

    def _init_module(self, name: str, module: nn.Module) -> None:
        if module is not self:
            super()._init_module(name, module)
        else:  # the scaling buffers: the identity until set from data
            self.value_center.zero_()
            self.value_scale.fill_(1.0)

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
        v = torch.where(present, self.scale_values(data, torch.where(present, value.to(h.dtype), 0.0)), 0.0)
        h = h + present[:, None] * self.value_mlp(torch.cat([h, v[:, None]], dim=1))
        return self.head(h)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", value_scaling={self.value_scaling}"
