"""Longitudinal backbone: pre-norm transformer, continuous-time rotary position, block-causal attention.

Rotary angles come from each token's time in days (not its index), with periods from one day to a
century, so attention sees how far apart two measurements are. Attention is full within an event,
causal across events, and never crosses subjects packed into one row. Two paths compute it
(``attention``): SDPA with an explicit mask, and FlexAttention with a block mask, which skips the blocks of
pairs that never attend. ``auto`` takes FlexAttention on CUDA (compiled to a fused Triton kernel) and SDPA
elsewhere; ``flex`` takes it on CPU too, where torch gives it no backward, so there it runs where no gradient
is needed (evaluation, inference, embedding; tests/test_flex_attention.py checks it against SDPA): compiled by
inductor to its C++ kernel, or unfused where that kernel is wrong (:data:`CPU_FUSED_MIN_HEAD_DIM`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .packing import Packed

SIZES: dict[str, dict[str, int]] = {  # one size dial: name -> (width, depth, heads)
    "tiny": dict(d_model=64, n_layers=2, n_heads=4),
    "small": dict(d_model=256, n_layers=4, n_heads=4),
    "base": dict(d_model=768, n_layers=12, n_heads=12),
    "large": dict(d_model=1536, n_layers=24, n_heads=16),
    "xl": dict(d_model=2048, n_layers=20, n_heads=16),  # ~1B parameters
}
ATTENTION = ("auto", "sdpa", "flex")
#: The fused CPU FlexAttention kernel (inductor's C++ template, torch 2.14) gives NaN or wrong rows for head
#: sizes below this (8 and 16 tried) at row lengths under 128 that are not a multiple of 16 (8, 24, ..., 120
#: tried; right at 16 to 80 in 16s, 128 to 256); head sizes 32 and 64 are right at all tried (8 to 200). Below it
#: the CPU path runs FlexAttention unfused (the tiny backbone's heads are 16 wide).
CPU_FUSED_MIN_HEAD_DIM = 32


@dataclass
class BackboneConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    min_period_days: float = 1.0
    max_period_days: float = 36525.0
    activation_checkpointing: bool = False
    attention: str = "auto"  # auto | sdpa | flex

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> BackboneConfig:
        if size not in SIZES:
            raise ValueError(f"unknown backbone size {size!r}; use one of {list(SIZES)}")
        return cls(**{**SIZES[size], **overrides})


class TimeRotary(nn.Module):
    """Rotary embedding whose position is continuous time in days; periods geometric in [min, max]."""

    def __init__(self, head_dim: int, min_period: float, max_period: float) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head dim {head_dim} must be even for rotary position")
        self.head_dim, self.min_period, self.max_period = head_dim, min_period, max_period
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self) -> Tensor:
        periods = torch.logspace(math.log10(self.min_period), math.log10(self.max_period), self.head_dim // 2)
        return 2 * math.pi / periods

    def reset_parameters(self) -> None:
        self.inv_freq.copy_(self._inv_freq().to(self.inv_freq.device))

    def forward(self, time: Tensor) -> tuple[Tensor, Tensor]:
        """``time [R, L]`` days -> cos, sin ``[R, 1, L, head_dim/2]``."""
        ang = time.float()[..., None] * self.inv_freq
        return ang.cos()[:, None], ang.sin()[:, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def block_causal_mask(packed: Packed) -> Tensor:
    """``[R, 1, L, L]`` bool: query may attend to key (same subject, key's event not later). Padding
    attends to itself only, so no row of the softmax is empty."""
    doc, ev = packed.doc, packed.event
    allowed = (doc[:, :, None] == doc[:, None, :]) & (ev[:, None, :] <= ev[:, :, None]) & (doc[:, :, None] >= 0)
    eye = torch.eye(doc.shape[1], dtype=torch.bool, device=doc.device)
    return (allowed | eye)[:, None]


def flex_block_mask(packed: Packed) -> Any:
    """The :func:`block_causal_mask` rule as a FlexAttention ``BlockMask`` (128 x 128 blocks; a block no pair of
    which attends is skipped, one all of whose pairs attend is computed without the mask)."""
    from torch.nn.attention.flex_attention import create_block_mask  # noqa: PLC0415 - the flex path only

    doc, ev = packed.doc, packed.event

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        same = (doc[b, q] == doc[b, k]) & (ev[b, k] <= ev[b, q]) & (doc[b, q] >= 0)
        return same | (q == k)

    R, L = doc.shape
    return create_block_mask(mask_mod, R, None, L, L, device=doc.device)


class Attention(nn.Module):
    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Any) -> Tensor:
        R, L, d = x.shape
        q, k, v = self.qkv(x).view(R, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if isinstance(mask, Tensor):
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            y = flex_attention_fn(q.device.type, self.head_dim)(q, k, v, block_mask=mask)
        return self.out(y.transpose(1, 2).reshape(R, L, d))


_FLEX: dict[bool, Any] = {}


def flex_attention_fn(device_type: str, head_dim: int) -> Any:
    """FlexAttention for ``device_type``: compiled (``dynamic=False``: one kernel per row shape; the fused Triton
    kernel on CUDA, inductor's C++ one on CPU), or unfused (scores materialized, as SDPA with a mask) on CPU
    for head sizes below :data:`CPU_FUSED_MIN_HEAD_DIM`, where the fused kernel is wrong."""
    fused = device_type != "cpu" or head_dim >= CPU_FUSED_MIN_HEAD_DIM
    if fused not in _FLEX:
        from torch.nn.attention import flex_attention as fa  # noqa: PLC0415 - the flex path only

        _FLEX[fused] = torch.compile(fa.flex_attention, dynamic=False) if fused else _unfused(fa.flex_attention)
    return _FLEX[fused]


def _unfused(flex: Any) -> Any:
    def run(q: Tensor, k: Tensor, v: Tensor, block_mask: Any) -> Tensor:
        with warnings.catch_warnings():  # torch's advice to compile it: here it is unfused by choice (above)
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex(q, k, v, block_mask=block_mask)

    return run


class Block(nn.Module):
    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, hidden), nn.GELU(), nn.Linear(hidden, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Any) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), rope, mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class Backbone(nn.Module):
    """``x [R, L, d]`` packed tokens + :class:`Packed` layout -> ``[R, L, d]`` contextual tokens."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model {cfg.d_model} is not divisible by n_heads {cfg.n_heads}")
        if cfg.attention not in ATTENTION:
            raise ValueError(f"model.backbone.attention={cfg.attention!r}: use one of {', '.join(ATTENTION)}")
        self.cfg = cfg
        self.rotary = TimeRotary(cfg.d_model // cfg.n_heads, cfg.min_period_days, cfg.max_period_days)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def use_flex(self, device: torch.device) -> bool:
        """FlexAttention (else SDPA): ``auto`` on CUDA, ``flex`` on CUDA or CPU."""
        if self.cfg.attention == "flex" and device.type not in ("cuda", "cpu"):
            raise ValueError(
                f"model.backbone.attention=flex runs on CUDA or CPU, not {device.type}; use auto or sdpa there"
            )
        return self.cfg.attention == "flex" or (self.cfg.attention == "auto" and device.type == "cuda")

    def forward(self, x: Tensor, packed: Packed) -> Tensor:
        if self.use_flex(x.device):
            if (
                x.device.type == "cpu"
                and torch.is_grad_enabled()
                and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
            ):
                raise ValueError(
                    f"model.backbone.attention=flex on CPU: torch {torch.__version__} has no FlexAttention backward "
                    "on CPU, so it cannot train there; train on CPU with model.backbone.attention=auto (SDPA). On "
                    "CPU, flex runs where no gradient is needed (evaluation, inference, embedding)."
                )
            mask = flex_block_mask(packed)
        else:
            mask = block_causal_mask(packed)
            if not (self.cfg.activation_checkpointing and self.training):
                # SDPA turns a bool mask into an additive one in every layer, and each layer keeps its copy
                # for backward: build it once (-20% peak memory at 6k tokens, scripts/bench/memory.py)
                mask = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(~mask, float("-inf"))
        rope = self.rotary(packed.time)
        for block in self.blocks:
            if self.cfg.activation_checkpointing and self.training:
                x = checkpoint(block, x, rope, mask, use_reentrant=False)
            else:
                x = block(x, rope, mask)
        return self.norm(x)
