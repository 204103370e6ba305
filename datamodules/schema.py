"""The data contract: modality names, canonical layouts, and the records that carry them.

Every reader turns a native file into its modality's *canonical array* (numpy, below); the shard
writer stores that array as one ``.npy`` member; the loader turns it back into a tensor; encoders
consume the stacked tensors of an :class:`OmniBatch`. Tests on both sides check these layouts.

Canonical layouts (one instance; ``N`` instances stack in front in a batch):

============  ==========================  =========  ============================================
modality      array                       dtype      notes
============  ==========================  =========  ============================================
mri           ``[1, D, H, W]``            float32    RAS, fixed spacing (mm), z-scored in brain
ecg           ``[leads, samples]``        float32    mV, fixed rate and lead order; a missing
                                                     lead is all-NaN in storage, ``mask [leads]``
voice/breath  ``[1, samples]``            float32    mono, fixed rate, ``samples <= max``;
                                                     padded at collation, ``mask [samples]``
gait/face     ``[T, 3, H, W]``            uint8      RGB, fixed fps and size, ``T <= max_frames``;
                                                     padded at collation, ``mask [T]``
wearable      ``[channels, minutes]``     float32    one value per minute; a gap is NaN in
                                                     storage, ``mask [channels, minutes]``
omics         ``[features]``              float32    values on the spec's feature panel; an
                                                     unmeasured feature is NaN, ``mask [features]``
clinical      (no array)                  -          MEDS-style ``code`` + ``numeric_value``
============  ==========================  =========  ============================================

Storage rule: *missing entries are NaN in the stored array*; the loader turns them into zeros plus a
boolean mask (True = observed). Any other NaN or Inf is bad input and is rejected.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

SCHEMA_VERSION = 1

MODALITIES: tuple[str, ...] = (
    "mri", "ecg", "voice", "breath", "gait", "face", "wearable", "omics", "clinical",
)

STANDARD_12_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
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
    #: modalities whose stored arrays may hold NaN (= missing entries, see the storage rule)
    nan_is_missing: ClassVar[bool] = False
    #: leading dims that may be shorter than :meth:`shape` (padded at collation, masked)
    variable_axis: ClassVar[int | None] = None

    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Full canonical shape of one instance (the maximum along ``variable_axis``)."""

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
    spacing_mm: tuple[float, float, float] = (4.0, 4.0, 4.0)
    size: tuple[int, int, int] = (48, 48, 48)
    orientation: str = "RAS"

    def shape(self) -> tuple[int, ...]:
        return (1, *self.size)


@dataclass(frozen=True)
class WaveformSpec(Spec):
    """Multi-lead biosignal (ECG): ``[leads, rate_hz * duration_s]`` in ``units``."""

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


@dataclass(frozen=True)
class AudioSpec(Spec):
    """Mono audio: ``[1, n]`` with ``n <= rate_hz * max_duration_s``."""

    kind: ClassVar[str] = "audio"
    storage_dtype: ClassVar[str] = "float16"
    variable_axis: ClassVar[int | None] = 1
    rate_hz: int = 16000
    max_duration_s: float = 4.0

    @property
    def max_samples(self) -> int:
        return int(round(self.rate_hz * self.max_duration_s))

    def shape(self) -> tuple[int, ...]:
        return (1, self.max_samples)


@dataclass(frozen=True)
class VideoSpec(Spec):
    """Video clip: ``[T, 3, H, W]`` uint8 RGB at ``fps`` with ``T <= max_frames``."""

    kind: ClassVar[str] = "video"
    dtype: ClassVar[str] = "uint8"
    storage_dtype: ClassVar[str] = "uint8"
    variable_axis: ClassVar[int | None] = 0
    fps: float = 8.0
    max_frames: int = 16
    size: tuple[int, int] = (64, 64)

    def shape(self) -> tuple[int, ...]:
        return (self.max_frames, 3, *self.size)


@dataclass(frozen=True)
class WearableSpec(Spec):
    """Minute-level wearable streams: ``[channels, window_minutes]`` from the first timestamp.

    Samples are binned per minute: ``mean`` for rates, ``sum`` for counts (``sum_channels``).
    """

    kind: ClassVar[str] = "timeseries"
    nan_is_missing: ClassVar[bool] = True
    channels: tuple[str, ...] = ("heart_rate", "steps", "skin_temp")
    window_minutes: int = 1440
    sum_channels: tuple[str, ...] = ("steps",)

    def shape(self) -> tuple[int, ...]:
        return (len(self.channels), self.window_minutes)


@dataclass(frozen=True)
class OmicsSpec(Spec):
    """Omics values on a fixed feature panel: ``[features]`` (SNP dosages, expression, ...)."""

    kind: ClassVar[str] = "vector"
    nan_is_missing: ClassVar[bool] = True
    features: tuple[str, ...] = tuple(f"rs{1000 + i}" for i in range(32)) + tuple(
        f"GENE{i:03d}" for i in range(32)
    )

    def shape(self) -> tuple[int, ...]:
        return (len(self.features),)


@dataclass(frozen=True)
class ClinicalSpec(Spec):
    """Clinical events as MEDS rows: ``code`` (str) and ``numeric_value`` (float or NaN)."""

    kind: ClassVar[str] = "event"

    def shape(self) -> tuple[int, ...]:
        return ()


SPEC_KINDS: dict[str, type[Spec]] = {
    c.kind: c for c in (VolumeSpec, WaveformSpec, AudioSpec, VideoSpec, WearableSpec, OmicsSpec, ClinicalSpec)
}

_DEFAULT_KIND = {
    "mri": VolumeSpec, "ecg": WaveformSpec, "voice": AudioSpec, "breath": AudioSpec,
    "gait": VideoSpec, "face": VideoSpec, "wearable": WearableSpec, "omics": OmicsSpec,
    "clinical": ClinicalSpec,
}


def default_specs(**overrides: Mapping[str, Any]) -> dict[str, Spec]:
    """Canonical specs for every modality; ``overrides={"ecg": {"rate_hz": 500}}`` changes fields."""
    unknown = set(overrides) - set(MODALITIES)
    if unknown:
        raise DataError(f"unknown modality {sorted(unknown)} in spec overrides",
                        hint=f"use one of {list(MODALITIES)}")
    return {m: _DEFAULT_KIND[m](**_tuples(overrides.get(m, {}))) for m in MODALITIES}


def _tuples(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def specs_to_json(specs: Mapping[str, Spec]) -> dict[str, Any]:
    return {m: s.to_json() for m, s in specs.items()}


def specs_from_json(d: Mapping[str, Any]) -> dict[str, Spec]:
    out = {}
    for m, s in d.items():
        s = dict(s)
        cls = SPEC_KINDS[s.pop("kind")]
        out[m] = cls(**_tuples(s))
    return out


def check_modality(modality: str, where: str = "") -> str:
    if modality not in MODALITIES:
        raise DataError(f"unknown modality {modality!r}", where=where,
                        hint=f"use one of {', '.join(MODALITIES)}")
    return modality


def validate_canonical(modality: str, spec: Spec, array: np.ndarray, where: str = "") -> np.ndarray:
    """Check one canonical array against its spec (shape, dtype, finiteness); return it.

    Raises :class:`DataError` naming ``where`` and the problem.
    """
    if not isinstance(array, np.ndarray):
        raise DataError(f"{modality} array is {type(array).__name__}, expected numpy.ndarray", where=where)
    full = spec.shape()
    shape = array.shape
    ok = len(shape) == len(full)
    if ok and spec.variable_axis is not None:
        ax = spec.variable_axis
        ok = (1 <= shape[ax] <= full[ax]) and all(
            s == f for i, (s, f) in enumerate(zip(shape, full)) if i != ax)
    elif ok:
        ok = tuple(shape) == tuple(full)
    if not ok:
        raise DataError(f"{modality} array has shape {tuple(shape)}, expected {full}"
                        + (f" (axis {spec.variable_axis} may be shorter)" if spec.variable_axis is not None else ""),
                        where=where, hint="re-run the reader with this cohort's spec")
    if array.dtype != np.dtype(spec.dtype):
        raise DataError(f"{modality} array has dtype {array.dtype}, expected {spec.dtype}", where=where)
    if array.dtype.kind == "f":
        bad = np.isinf(array).any() or (not spec.nan_is_missing and np.isnan(array).any())
        if bad:
            raise DataError(f"{modality} array holds NaN or Inf values", where=where,
                            hint="fix or drop the recording; only missing entries of ecg/wearable/omics may be NaN")
        if spec.nan_is_missing and np.isnan(array).all():
            raise DataError(f"{modality} array holds no observed value (all missing)", where=where)
    return array


# ----------------------------------------------------------------------------------------------
# Records: a person's timeline (numpy, one subject) and a collated batch (torch, many subjects).
# ----------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One measurement of one modality. ``data`` is the canonical array (None for clinical)."""

    modality: str
    data: np.ndarray | None = None
    code: str | None = None
    value: float = float("nan")


@dataclass
class Event:
    """Measurements taken at one time (a visit). Times are days: since the subject's first event,
    and since birth."""

    time_days: float
    age_days: float
    measurements: list[Measurement] = field(default_factory=list)


@dataclass
class Label:
    value: float
    time_days: float = float("nan")


@dataclass
class Timeline:
    """One subject: pseudonymous ``key`` (keyed hash, never the raw id), static covariates, events
    sorted by time, labels by name. ``padding``: a repeat that evens out an epoch across ranks
    (``ShardDataset(even=True)``), not a new sample."""

    key: str
    static: dict[str, float] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    labels: dict[str, Label] = field(default_factory=dict)
    padding: bool = False

    def count(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ev in self.events:
            for m in ev.measurements:
                out[m.modality] = out.get(m.modality, 0) + 1
        return out


@dataclass
class ModalityBatch:
    """All instances of one modality in a batch, stacked: ``data [N, *layout]``.

    ``mask`` (bool, True = observed) has the modality's mask layout (see module docstring) or is None;
    ``subject [N]`` indexes the batch row, ``event [N]`` the event within that subject's timeline,
    ``time_days [N]`` / ``age_days [N]`` place it in time. For clinical, ``data [N]`` holds code ids
    (0 = unknown code) and ``value [N]`` the numeric value with ``mask [N]`` saying it is present.
    """

    modality: str
    data: torch.Tensor
    subject: torch.Tensor
    event: torch.Tensor
    time_days: torch.Tensor
    age_days: torch.Tensor
    mask: torch.Tensor | None = None
    value: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.subject.shape[0])

    def to(self, device: torch.device | str) -> ModalityBatch:
        return dataclasses.replace(self, **{
            f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)})


@dataclass
class OmniBatch:
    """A batch of B timelines: per-modality stacks, per-subject covariates and labels.

    ``num_events [B]``; ``static`` name -> ``[B]`` float; ``labels`` name -> ``(value [B], time_days [B])``
    with NaN where a subject has no such label. ``padding [B]`` bool: True for a repeated timeline that
    evens out an epoch across ranks (``Timeline.padding``); None = no row is.
    """

    keys: list[str]
    modalities: dict[str, ModalityBatch]
    num_events: torch.Tensor
    static: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    padding: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str) -> OmniBatch:
        return dataclasses.replace(
            self,
            modalities={m: b.to(device) for m, b in self.modalities.items()},
            num_events=self.num_events.to(device),
            static={k: v.to(device) for k, v in self.static.items()},
            labels={k: (v.to(device), t.to(device)) for k, (v, t) in self.labels.items()},
            padding=None if self.padding is None else self.padding.to(device),
        )

    def summary(self) -> str:
        parts = [f"{m}:{len(b)}x{list(b.data.shape[1:])}" for m, b in sorted(self.modalities.items())]
        return f"B={len(self)} events={int(self.num_events.sum())} " + " ".join(parts)


def dumps(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no whitespace drift) so shards are byte-identical."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()
