"""Canonical layouts: one dataclass per layout kind, with the cohort-wide defaults.

The data contract's array side (numpy only, no torch: rendering workers import it). Every reader turns
a native file into its modality's canonical array; :func:`validate_canonical` checks one against its
spec. Which modality uses which spec (and its default values) is declared once, in
:mod:`datamodules.modalities`. The table of layouts is in :mod:`datamodules.schema`'s docstring.

Storage rule: *missing entries are NaN in the stored array*; the loader turns them into zeros plus a
boolean mask (True = observed). Any other NaN or Inf is bad input and is rejected.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

STANDARD_12_LEADS: tuple[str, ...] = (
    "I",
    "II",
    "III",
    "aVR",
    "aVL",
    "aVF",
    "V1",
    "V2",
    "V3",
    "V4",
    "V5",
    "V6",
)


class DataError(ValueError):
    """Bad input, with where it is (file, shard, subject key, member) and what to do."""

    def __init__(self, reason: str, *, where: str = "", hint: str = "") -> None:
        self.reason, self.where, self.hint = reason, where, hint
        msg = f"{where}: {reason}" if where else reason
        super().__init__(f"{msg}. {hint}" if hint else msg)


class DataWarning(UserWarning):
    """Input that was used, but not all of it (e.g. omics features off the panel): goes in the report."""


# ----------------------------------------------------------------------------------------------
# Canonical specs: one dataclass per layout kind; the values are the cohort-wide defaults and are
# stored in the shard index so every consumer agrees on them.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec(abc.ABC):
    kind: ClassVar[str] = ""
    dtype: ClassVar[str] = "float32"
    storage_dtype: ClassVar[str] = "float32"
    #: what the loader hands the model (the shard's bytes used in place where it is ``storage_dtype``; an
    #: encoder casts floats to its own dtype on the device): half the bytes to decode, collate and copy
    batch_dtype: ClassVar[str] = "float32"
    #: modalities whose stored arrays may hold NaN (= missing entries, see the storage rule)
    nan_is_missing: ClassVar[bool] = False
    #: leading dims that may be shorter than :meth:`shape` (padded at collation, masked)
    variable_axis: ClassVar[int | None] = None
    #: fields that decide which inputs the builder accepts, not the layout (a release does not compare them)
    build_only: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Full canonical shape of one instance (the maximum along ``variable_axis``)."""

    @abc.abstractmethod
    def encoder_layout(self, vocab_size: int = 0) -> dict[str, Any]:
        """The layout an encoder of this kind is built for, as its constructor keywords (the contract both
        layers share: ``encoders`` never sees a spec). ``vocab_size``: clinical codes + 1 (unknown)."""

    def layout_json(self) -> dict[str, Any]:
        """:meth:`to_json` without the :attr:`build_only` fields: what a model's input depends on."""
        return {k: v for k, v in self.to_json().items() if k not in self.build_only}

    def to_json(self) -> dict[str, Any]:
        """JSON data (tuples as lists): what ``index.json`` and a release's ``preprocessing.json`` hold."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        d["kind"] = self.kind
        return d


@dataclass(frozen=True)
class VolumeSpec(Spec):
    """3-D image (MRI): ``[1, D, H, W]`` at ``spacing_mm``, orientation ``RAS``."""

    kind: ClassVar[str] = "volume"
    storage_dtype: ClassVar[str] = "float16"
    batch_dtype: ClassVar[str] = "float16"
    spacing_mm: tuple[float, float, float] = (4.0, 4.0, 4.0)
    size: tuple[int, int, int] = (48, 48, 48)
    orientation: str = "RAS"
    #: the largest fraction of a scan's voxels that may be NaN or Inf (e.g. outside the field of view after
    #: resampling; they become background); a scan with more is refused
    max_nonfinite_fraction: float = 0.5
    build_only: ClassVar[tuple[str, ...]] = ("max_nonfinite_fraction",)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_nonfinite_fraction <= 1.0:  # also refuses NaN
            raise DataError(
                f"VolumeSpec.max_nonfinite_fraction = {self.max_nonfinite_fraction!r} is not a fraction in [0, 1]",
                hint="e.g. --spec mri.max_nonfinite_fraction=0.5 (0 refuses any scan with a NaN or Inf voxel)",
            )

    def shape(self) -> tuple[int, ...]:
        return (1, *self.size)

    def encoder_layout(self, vocab_size: int = 0) -> dict[str, Any]:
        return {"size": list(self.size)}


#: what a :class:`StoredSpec`'s ``storage`` may be
STORAGE_DTYPES = ("float16", "float32")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
FLOAT16_INF = 65520.0  # the least magnitude that float16 rounds to Inf (65504 + half its last step)


@dataclass(frozen=True)
class StoredSpec(Spec):
    """A spec whose arrays are stored in the shards, and handed to the model, as ``storage``: ``float16`` (the
    default: half the bytes to store, read, check and collate; 11 significant bits, a step of 2**-10 of the
    value's power of two: 2 uV at 2 mV, 0.06 bpm at 120 bpm, 0.03 degC at 33 degC) or ``float32`` (for values
    beyond float16's +-65,504, which the builder refuses, or that need more digits). Shards written before the
    field existed hold float32, and their ``index.json`` says nothing: :func:`specs_from_json` reads them so."""

    storage: str = "float16"
    build_only: ClassVar[tuple[str, ...]] = ("storage",)

    def __post_init__(self) -> None:
        if self.storage not in STORAGE_DTYPES:
            raise DataError(
                f"{type(self).__name__}.storage = {self.storage!r} is not one of {list(STORAGE_DTYPES)}",
                hint="--spec <modality>.storage=float32 or float16 (the default: half the bytes)",
            )

    @property  # type: ignore[override]
    def storage_dtype(self) -> str:  # type: ignore[override]
        return self.storage

    @property  # type: ignore[override]
    def batch_dtype(self) -> str:  # type: ignore[override]
        return self.storage


@dataclass(frozen=True)
class WaveformSpec(StoredSpec):
    """Multi-lead biosignal (ECG): ``[leads, rate_hz * duration_s]`` in ``units`` (stored as ``storage``)."""

    kind: ClassVar[str] = "waveform"
    nan_is_missing: ClassVar[bool] = True
    rate_hz: int = 250
    duration_s: float = 10.0
    leads: tuple[str, ...] = STANDARD_12_LEADS
    units: str = "mV"

    @property
    def samples(self) -> int:
        return int(round(self.rate_hz * self.duration_s))

    def shape(self) -> tuple[int, ...]:
        return (len(self.leads), self.samples)

    def encoder_layout(self, vocab_size: int = 0) -> dict[str, Any]:
        return {"leads": len(self.leads), "samples": self.samples}


@dataclass(frozen=True)
class AudioSpec(Spec):
    """Mono audio: ``[1, n]`` with ``n <= rate_hz * max_duration_s``."""

    kind: ClassVar[str] = "audio"
    storage_dtype: ClassVar[str] = "float16"
    batch_dtype: ClassVar[str] = "float16"
    variable_axis: ClassVar[int | None] = 1
    rate_hz: int = 16000
    max_duration_s: float = 4.0

    @property
    def max_samples(self) -> int:
        return int(round(self.rate_hz * self.max_duration_s))

    def shape(self) -> tuple[int, ...]:
        return (1, self.max_samples)

    def encoder_layout(self, vocab_size: int = 0) -> dict[str, Any]:
        return {"sample_rate": self.rate_hz, "max_samples": self.max_samples}


@dataclass(frozen=True)
class VideoSpec(Spec):
    """Video clip: ``[T, 3, H, W]`` uint8 RGB at ``fps`` with ``T <= max_frames``."""

    kind: ClassVar[str] = "video"
    dtype: ClassVar[str] = "uint8"
    storage_dtype: ClassVar[str] = "uint8"
    batch_dtype: ClassVar[str] = "uint8"
    variable_axis: ClassVar[int | None] = 0
    fps: float = 8.0
    max_frames: int = 16
    size: tuple[int, int] = (64, 64)

    def shape(self) -> tuple[int, ...]:
        return (self.max_frames, 3, *self.size)

    def encoder_layout(self, vocab_size: int = 0) -> dict[str, Any]:
        return {"frames": self.max_frames, "size": list(self.size)}


@dataclass(frozen=True)
class WearableSpec(StoredSpec):
    """Minute-level wearable streams: ``[channels, window_minutes]`` from the first timestamp (stored as
    ``storage``).

    Samples are binned per minute: ``mean`` for rates, ``sum`` for counts (``sum_channels``).
    """

    kind: ClassVar[str] = "timeseries"
    nan_is_missing: ClassVar[bool] = True
    channels: tuple[str, ...] = ("heart_rate", "steps", "skin_temp")
    window_minutes: int = 1440
    sum_channels: tuple[str, ...] = ("steps",)

    def shape(self) -> tuple[int, ...]:
        return (len(self.channels), self.window_minutes)

    def encoder_layout(self, vocab_size: int = 0) -> dict[str, Any]:
        return {"channels": len(self.channels), "minutes": self.window_minutes}


@dataclass(frozen=True)
class OmicsSpec(Spec):
    """Omics values on a fixed feature panel: ``[features]`` (SNP dosages, expression, ...)."""

    kind: ClassVar[str] = "vector"
    nan_is_missing: ClassVar[bool] = True
    features: tuple[str, ...] = tuple(f"rs{1000 + i}" for i in range(32)) + tuple(f"GENE{i:03d}" for i in range(32))

    def shape(self) -> tuple[int, ...]:
        return (len(self.features),)

    def encoder_layout(self, vocab_size: int = 0) -> dict[str, Any]:
        return {"features": len(self.features)}


@dataclass(frozen=True)
class ClinicalSpec(Spec):
    """Clinical events as MEDS rows: ``code`` (str) and ``numeric_value`` (float or NaN)."""

    kind: ClassVar[str] = "event"

    def shape(self) -> tuple[int, ...]:
        return ()

    def encoder_layout(self, vocab_size: int = 0) -> dict[str, Any]:
        return {"vocab_size": vocab_size}


SPEC_KINDS: dict[str, type[Spec]] = {
    c.kind: c for c in (VolumeSpec, WaveformSpec, AudioSpec, VideoSpec, WearableSpec, OmicsSpec, ClinicalSpec)
}


def replace_fields(spec: Spec, fields: Mapping[str, Any], where: str = "spec") -> Spec:
    """``spec`` with some fields changed; an unknown field or a value of the wrong type is a :class:`DataError`
    naming ``where.field`` (JSON lists become tuples)."""
    known = {f.name: f for f in dataclasses.fields(spec)}
    for k, v in fields.items():
        if k not in known:
            raise DataError(f"unknown field {k!r}", where=where, hint=f"{type(spec).__name__} has {sorted(known)}")
        want = type(getattr(spec, k))
        ok = (
            isinstance(v, want)
            or (want is float and isinstance(v, int) and not isinstance(v, bool))
            or (want is tuple and isinstance(v, list))
        )
        default = getattr(spec, k)
        if (
            ok
            and want is tuple
            and default
            and any(
                type(x) is not type(default[0]) and not (isinstance(default[0], float) and type(x) is int) for x in v
            )
        ):
            ok = False
        if not ok or isinstance(v, bool) != (want is bool):
            raise DataError(
                f"{where}.{k} = {v!r} is a {type(v).__name__}, expected a {want.__name__}",
                hint=f"e.g. {k}={list(getattr(spec, k)) if want is tuple else getattr(spec, k)!r}",
            )
    return dataclasses.replace(spec, **_tuples(fields))


def _tuples(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def specs_to_json(specs: Mapping[str, Spec]) -> dict[str, Any]:
    return {m: s.to_json() for m, s in specs.items()}


def specs_from_json(d: Mapping[str, Any]) -> dict[str, Spec]:
    """Specs from :func:`specs_to_json`'s data. A :class:`StoredSpec` without ``storage`` was written before the
    field existed, when such arrays were stored as float32: read so (its shards load as they were built)."""
    out = {}
    for m, s in d.items():
        s = dict(s)
        cls = SPEC_KINDS[s.pop("kind")]
        if issubclass(cls, StoredSpec):
            s.setdefault("storage", "float32")
        out[m] = cls(**_tuples(s))
    return out


def shape_fits(spec: Spec, shape: tuple[int, ...]) -> bool:
    """Is ``shape`` a canonical shape of ``spec`` (its ``variable_axis``, if any, 1 up to its full length)?"""
    full = spec.shape()
    if shape == full:  # the common case, without the per-axis loop
        return True
    ax = spec.variable_axis
    return (
        ax is not None
        and len(shape) == len(full)
        and 1 <= shape[ax] <= full[ax]
        and all(s == f for i, (s, f) in enumerate(zip(shape, full)) if i != ax)
    )


def shape_expected(spec: Spec) -> str:
    """``spec``'s canonical shape, in words for an error."""
    return f"{spec.shape()}" + (
        f" (axis {spec.variable_axis} may be shorter)" if spec.variable_axis is not None else ""
    )


def validate_canonical(
    modality: str, spec: Spec, array: np.ndarray, where: str = "", dtype: str | None = None
) -> np.ndarray:
    """Check one canonical array against its spec (shape, ``dtype``: ``spec.dtype`` unless given, finiteness, and
    that its values fit float16 where the spec stores that); return it.

    Raises :class:`DataError` naming ``where`` and the problem.
    """
    if not isinstance(array, np.ndarray):
        raise DataError(f"{modality} array is {type(array).__name__}, expected numpy.ndarray", where=where)
    if not shape_fits(spec, array.shape):
        raise DataError(
            f"{modality} array has shape {tuple(array.shape)}, expected {shape_expected(spec)}",
            where=where,
            hint="re-run the reader with this cohort's spec",
        )
    dtype = dtype or spec.dtype
    if array.dtype != np.dtype(dtype):
        raise DataError(f"{modality} array has dtype {array.dtype}, expected {dtype}", where=where)
    if array.dtype.kind != "f":
        return array
    finite = np.isfinite(array)
    if finite.all() and (array.size or not spec.nan_is_missing):  # the common case: one pass
        return _fits_storage(modality, spec, array, where)
    if not spec.nan_is_missing or np.isinf(array).any():
        raise DataError(
            f"{modality} array holds NaN or Inf values",
            where=where,
            hint="fix or drop the recording; only missing entries of ecg/wearable/omics may be NaN",
        )
    if not finite.any():  # no Inf, so every entry is NaN
        raise DataError(f"{modality} array holds no observed value (all missing)", where=where)
    return _fits_storage(modality, spec, array, where)


def _fits_storage(modality: str, spec: Spec, array: np.ndarray, where: str) -> np.ndarray:
    """``array`` if its finite values fit the spec's float16 storage (ECG and wearable by default, MRI and audio
    always: z-scored and within +-1, they fit by far): from :data:`FLOAT16_INF` on the cast to store it would make
    Inf, which would read as missing (up to it, a value rounds to at most 65,504). A :class:`DataError` naming the
    setting otherwise."""
    if spec.storage_dtype != "float16" or array.dtype.itemsize <= 2 or not array.size:
        return array
    big = max(abs(float(np.fmax.reduce(array, axis=None))), abs(float(np.fmin.reduce(array, axis=None))))
    if big >= FLOAT16_INF:  # False for NaN (all missing)
        setting = f"--spec {modality}.storage=float32" if isinstance(spec, StoredSpec) else "the reader's scaling"
        raise DataError(
            f"{modality} array holds a value of magnitude {big:.6g}, beyond float16's {FLOAT16_MAX:.0f}, "
            f"which its spec stores",
            where=where,
            hint=f"store it as float32 ({setting}) or in units that keep it smaller",
        )
    return array
