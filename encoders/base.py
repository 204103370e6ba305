"""The encoder contract, the registry, and the pieces every encoder shares.

An encoder turns one modality's stacked canonical tensor ``data [N, *layout]`` (plus its ``mask`` and,
for clinical, ``value``) into ``k`` tokens per instance: ``[N, k, d]``. Encoders are built by registry
name (``"ecg/conv1d"``) with JSON-serialisable keyword arguments, so a released checkpoint can name them
without import paths. This package imports torch and model libraries only, never ``datamodules``: a modality
is just the first part of an encoder's name, and its layout arrives as constructor keywords (the data side's
``Spec.encoder_layout``); tests check that both sides agree.
"""

from __future__ import annotations

import abc
import inspect
import math
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_NAME = re.compile(r"^[a-z][a-z0-9_]*/[a-z0-9_]+$")
EncoderT = TypeVar("EncoderT", bound="Encoder")
_REGISTRY: dict[str, type[Encoder]] = {}


def nan_mask(data: Tensor, mask_axes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """NaN marks what is missing (the storage rule): ``data`` with 0 there, and the mask over ``mask_axes`` (an
    entry observed where any of the values it covers is: an ECG lead with a finite sample). Where the loader's
    worker used to do it, now on the device."""
    finite = torch.isfinite(data)
    rest = [a for a in range(data.ndim) if a not in mask_axes]
    mask = finite.any(dim=rest) if rest else finite
    return torch.where(finite, data, 0.0), mask


class Encoder(nn.Module, abc.ABC):
    """Base class: canonical tensor of one modality -> tokens ``[N, num_tokens, d_model]``.

    Subclasses set :attr:`in_shape` (the layout of one instance), :attr:`variable_axes` (layout axes
    that may be shorter than ``in_shape``, e.g. audio samples), :attr:`mask_axes` (which axes of
    ``data`` the mask covers, ``None`` if the modality has no mask) and implement :meth:`encode`.
    Masks are bool, True = observed; an encoder's output never depends on data at masked-out positions.
    """

    modality: str = ""
    name: str = ""
    in_dtype: torch.dtype = torch.float32
    mask_axes: tuple[int, ...] | None = None

    def __init__(self, *, d_model: int, num_tokens: int) -> None:
        super().__init__()
        if d_model < 1 or num_tokens < 1:
            raise ValueError(f"d_model and num_tokens must be >= 1, got d_model={d_model}, num_tokens={num_tokens}")
        self.d_model, self.num_tokens = int(d_model), int(num_tokens)
        self.in_shape: tuple[int, ...] = ()
        self.variable_axes: tuple[int, ...] = ()

    def forward(self, data: Tensor, mask: Tensor | None = None, value: Tensor | None = None) -> Tensor:
        """``data [N, *in_shape]`` (+ ``mask``, ``value``) -> ``[N, num_tokens, d_model]``. Floating ``data`` of
        another dtype than the weights' (the loader's float16 MRI and audio) is cast to theirs first; without a
        ``mask``, its NaN entries are the missing ones (as the loader sends ECG, wearable and omics:
        :func:`nan_mask`), and with none, all is observed.

        ``N = 0`` returns ``[0, k, d]`` that still depends (with zero gradient) on every parameter, so
        an encoder whose modality is absent from a batch takes part in gradient synchronisation
        (:meth:`empty_tokens`).
        """
        mask = self._check_input(data, mask)
        if data.shape[0] == 0:
            return self.empty_tokens(data.device)
        if data.is_floating_point() and self.in_dtype.is_floating_point:
            if mask is None and self.mask_axes is not None:
                data, mask = nan_mask(data, self.mask_axes)
            want = next((p.dtype for p in self.parameters() if p.is_floating_point()), self.in_dtype)
            if data.dtype != want:  # float16 MRI and audio cross to the device at half the bytes
                data = data.to(want)  # (as the weights: float32, or bf16 where DeepSpeed holds them so)
        return self.encode(data, mask, value)

    def empty_tokens(self, device: torch.device | str | None = None) -> Tensor:
        """``[0, k, d]`` tokens tied, with zero gradient, to every trainable parameter.

        Sharded weights (DeepSpeed ZeRO-3, FSDP2) are gathered only when the modules holding them run, and
        processes with and without the modality must gather the same ones: then :meth:`encode` runs on one
        all-zero, fully observed instance (in eval mode: no BatchNorm statistics move, no dropout draws) and
        its output is sliced to nothing. Otherwise (one process, DDP, ZeRO-1/2) a zero multiple of each
        parameter is enough and costs no encoder compute."""
        if not self.sharded():
            zero = torch.zeros((), device=device)
            for p in self.parameters():
                if p.requires_grad:
                    zero = zero + p.reshape(-1)[:1].sum() * 0.0
            return torch.zeros(0, self.num_tokens, self.d_model, device=device) + zero
        return self.encode_one_dummy(device)[:0]

    def sharded(self) -> bool:
        """Whether this encoder's weights are partitioned over processes (ZeRO-3 or FSDP2)."""
        from torch.distributed.fsdp import FSDPModule  # noqa: PLC0415 - torch >= 2.6 public path

        return isinstance(self, FSDPModule) or any(hasattr(p, "ds_id") for p in self.parameters())

    def encode_one_dummy(self, device: torch.device | str | None = None) -> Tensor:
        """:meth:`encode` on one all-zero, fully observed instance, in eval mode (modes restored)."""
        dummy = torch.zeros(1, *self.in_shape, dtype=self.in_dtype, device=device)
        mask = (
            None
            if self.mask_axes is None
            else torch.ones([dummy.shape[a] for a in self.mask_axes], dtype=torch.bool, device=device)
        )
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            return self.encode(dummy, mask, None)
        finally:
            for m, training in modes:
                m.training = training

    @abc.abstractmethod
    def encode(self, data: Tensor, mask: Tensor | None, value: Tensor | None) -> Tensor:
        """The encoder proper, called with ``N >= 1`` and a checked bool mask (or None)."""

    def _check_input(self, data: Tensor, mask: Tensor | None) -> Tensor | None:
        layout = ", ".join(str(s) for s in self.in_shape)
        want = f"data [N{', ' if layout else ''}{layout}]"
        got = tuple(data.shape[1:])
        ok = len(got) == len(self.in_shape) and all(
            g == s or (i in self.variable_axes and 1 <= g <= s) for i, (g, s) in enumerate(zip(got, self.in_shape))
        )
        if not ok:
            shorter = f" (axes {list(self.variable_axes)} may be shorter)" if self.variable_axes else ""
            raise ValueError(
                f"encoder {self.name!r} expects {want}{shorter}, got {list(data.shape)}; "
                "build it with this cohort's layout (see its constructor arguments)"
            )
        if mask is None or self.mask_axes is None:
            return None
        expect = tuple(data.shape[a] for a in self.mask_axes)
        if tuple(mask.shape) != expect:
            raise ValueError(
                f"encoder {self.name!r} expects mask {list(expect)} for {list(data.shape)} data, got {list(mask.shape)}"
            )
        return mask.to(torch.bool)

    # -- initialisation: build on the meta device, then ``to_empty`` + ``init_weights`` ----------------

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re-)initialise every parameter and buffer, e.g. after ``to_empty``.

        Calls ``reset_parameters()`` on every submodule that has one; such a module also answers for
        the buffers of its parameter-free descendants (e.g. a mel filterbank). Any other module that
        holds parameters or buffers goes to :meth:`_init_module`, which subclasses override.
        """
        covered: list[str] = []
        for name, module in self.named_modules():
            has_params = any(True for _ in module.parameters(recurse=False))
            has_buffers = any(True for _ in module.buffers(recurse=False))
            if module is not self and callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
                covered.append(name + ".")
            elif has_params or (has_buffers and not any(name.startswith(c) for c in covered)):
                self._init_module(name, module)

    def _init_module(self, name: str, module: nn.Module) -> None:
        raise TypeError(
            f"encoder {self.name!r} does not know how to initialise {name or 'itself'} "
            f"({type(module).__name__}); override _init_module"
        )

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, in_shape={list(self.in_shape)}, num_tokens={self.num_tokens}, d_model={self.d_model}"
        )


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------


def register(name: str) -> Callable[[type[EncoderT]], type[EncoderT]]:
    """Class decorator: make an :class:`Encoder` buildable as ``build_encoder(name)``.

    ``name`` is ``"modality/variant"``. One class may be registered under several names (e.g. the same
    audio encoder for ``voice`` and ``breath``); :func:`build_encoder` sets ``modality`` and ``name`` on
    the instance from the name it was built by.
    """
    if not _NAME.match(name):
        raise ValueError(f"encoder name {name!r} must be 'modality/variant' (lower case letters, digits, '_')")
    modality = name.partition("/")[0]

    def deco(cls: type[EncoderT]) -> type[EncoderT]:
        old = _REGISTRY.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"encoder name {name!r} is already registered to {old.__module__}.{old.__qualname__}")
        _REGISTRY[name] = cls
        if "name" not in cls.__dict__:  # the first name a class is registered under is its default
            cls.name, cls.modality = name, modality
        return cls

    return deco


def list_encoders(modality: str | None = None) -> list[str]:
    """Registered encoder names, sorted; only those of ``modality`` if given."""
    if modality is not None and modality not in encoder_modalities():
        raise ValueError(
            f"no encoder is registered for modality {modality!r}; encoders exist for {encoder_modalities()}"
        )
    return sorted(n for n in _REGISTRY if modality is None or n.split("/")[0] == modality)


def encoder_modalities() -> list[str]:
    """The modalities some registered encoder is for, sorted."""
    return sorted({n.split("/")[0] for n in _REGISTRY})


def _encoder_class(name: str) -> type[Encoder]:
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown encoder {name!r}; registered encoders: {', '.join(list_encoders())}")
    return cls


def encoder_options(name: str) -> list[str]:
    """The constructor keywords of the encoder registered as ``name``."""
    return [p for p in inspect.signature(_encoder_class(name)).parameters if p not in ("self", "args", "kwargs")]


def build_encoder(name: str, **kwargs: object) -> Encoder:
    """Build the encoder registered as ``name`` with constructor ``kwargs`` (JSON-serialisable).

    Parameters are created on the meta device and then materialised with ``to_empty`` +
    :meth:`Encoder.init_weights` on the current default device, so a build under
    ``with torch.device("meta")`` followed by ``to_empty(device=...)`` + ``init_weights()`` gives the
    same weights for the same random seed. Under a meta default device the encoder is left on meta.
    """
    cls = _encoder_class(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        raise TypeError(f"encoder {name!r}: {e}; it accepts {encoder_options(name)}") from None
    device = torch.get_default_device()
    with torch.device("meta"):
        enc = cls(**kwargs)
    enc.name, enc.modality = name, name.split("/")[0]
    if device.type != "meta":
        enc.to_empty(device=device)
        enc.init_weights()
    return enc


# ---------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------


def as_tuple(x: int | Sequence[int], n: int | None = None) -> tuple[int, ...]:
    """An int, list or tuple (as JSON gives it) as a tuple of ints; an int repeated ``n`` times."""
    if isinstance(x, int):
        return (x,) * (n or 1)
    return tuple(int(v) if not isinstance(v, (list, tuple)) else as_tuple(v) for v in x)  # type: ignore[misc]


def signed_log1p(x: Tensor) -> Tensor:
    """``sign(x) * log(1 + |x|)``: compresses values of unknown scale (heart rate, steps, labs)."""
    return torch.sign(x) * torch.log1p(x.abs())


def conv_stack(
    spatial_dims: int,
    in_channels: int,
    channels: Sequence[int],
    strides: Sequence[int | Sequence[int]],
    kernel_size: int = 3,
) -> nn.Sequential:
    """Strided MONAI ``Convolution`` blocks (conv -> GroupNorm -> GELU), one per entry of ``channels``.

    GroupNorm, not BatchNorm: the output of one instance never depends on the rest of the batch.
    """
    from monai.networks.blocks import Convolution  # imported here: importing monai takes seconds

    if len(channels) != len(strides):
        raise ValueError(f"channels {list(channels)} and strides {list(strides)} must have the same length")
    layers = []
    for c, s in zip(channels, strides):
        layers.append(
            Convolution(
                spatial_dims,
                in_channels,
                c,
                strides=s,
                kernel_size=kernel_size,
                act="GELU",
                norm=("group", {"num_groups": math.gcd(8, c)}),
            )
        )
        in_channels = c
    return nn.Sequential(*layers)


def downsample_mask(mask: Tensor, size: int) -> Tensor:
    """``[N, L]`` bool -> ``[N, size]``: a position is valid if any position it covers is."""
    return F.adaptive_max_pool1d(mask[:, None].float(), size)[:, 0] > 0


def map_to_tokens(x: Tensor, mask: Tensor | None = None, axis: int = 0) -> tuple[Tensor, Tensor | None]:
    """Feature map ``[N, C, *S]`` -> tokens ``[N, prod(S), C]`` and their mask ``[N, prod(S)]``.

    ``mask [N, L]`` runs along spatial axis ``axis`` at input resolution; it is downsampled to
    ``S[axis]`` and broadcast over the other axes.
    """
    n, c, *s = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    if mask is None:
        return tokens, None
    view = [n] + [1] * len(s)
    view[1 + axis] = s[axis]
    return tokens, downsample_mask(mask, s[axis]).view(view).expand(n, *s).reshape(n, -1)


class MaskedTokenPool(nn.Module):
    """Attention pooling of a token sequence into ``k`` tokens: ``[N, L, c]`` (+ mask ``[N, L]``) ->
    ``[N, k, d]``.

    Each output token has its own score per position (a linear map of the features); masked positions
    get weight exactly 0, and a row with no valid position pools to zeros. The pooled features are
    projected to ``d`` and a learned per-token embedding is added.
    """

    def __init__(self, in_dim: int, num_tokens: int, d_model: int) -> None:
        super().__init__()
        self.score = nn.Linear(in_dim, num_tokens)
        self.proj = nn.Linear(in_dim, d_model)
        self.token_embedding = nn.Parameter(torch.empty(num_tokens, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.token_embedding, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        logits = self.score(x).float()  # [N, L, k]
        if mask is not None:
            logits = logits.masked_fill(~mask[..., None], torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits, dim=1)
        if mask is not None:
            weights = weights * mask[..., None]
        pooled = torch.einsum("nlk,nlc->nkc", weights.to(x.dtype), x)
        return self.proj(pooled) + self.token_embedding


class TokenHead(nn.Module):
    """One feature vector per instance -> ``k`` tokens: ``[N, c]`` -> ``[N, k, d]`` (a linear map)."""

    def __init__(self, in_dim: int, num_tokens: int, d_model: int) -> None:
        super().__init__()
        self.num_tokens, self.d_model = num_tokens, d_model
        self.proj = nn.Linear(in_dim, num_tokens * d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).view(x.shape[0], self.num_tokens, self.d_model)
