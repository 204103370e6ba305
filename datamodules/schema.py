"""The data contract: modality names, canonical layouts, and the records that carry them.

Each modality is declared once in :mod:`datamodules.modalities` (its spec kind and defaults, readers,
synthetic renderer, default encoder); the table below lists the layout kinds of those declared here.

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
gait/face/    ``[T, 3, H, W]``            uint8      RGB, fixed fps and size, ``T <= max_frames``;
medical_video                                        padded at collation, ``mask [T]``
wearable      ``[channels, minutes]``     float32    one value per minute; a gap is NaN in
                                                     storage, ``mask [channels, minutes]``
omics         ``[features]``              float32    values on the spec's feature panel; an
                                                     unmeasured feature is NaN, ``mask [features]``
clinical      (no array)                  -          MEDS-style ``code`` + ``numeric_value``
============  ==========================  =========  ============================================

Storage rule: *missing entries are NaN in the stored array*, and in the batch: the encoder turns them into
zeros plus a boolean mask (True = observed) on the device. Any other NaN or Inf is bad input and is rejected.
Readers give float32. The shards store MRI and audio as float16, ECG and wearable as their spec's ``storage``
(float16 by default, float32 where values need it: the builder refuses a value beyond float16's range rather
than store Inf); the batch holds them as stored (``Spec.batch_dtype``), cast by their encoders on the device.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import torch

from .modalities import check_modality, default_specs, names  # noqa: F401 - the data contract in one import
from .specs import (  # noqa: F401 - specs, errors, checks
    SPEC_KINDS,
    STANDARD_12_LEADS,
    AudioSpec,
    ClinicalSpec,
    DataError,
    DataWarning,
    OmicsSpec,
    Spec,
    VideoSpec,
    VolumeSpec,
    WaveformSpec,
    WearableSpec,
    replace_fields,
    specs_from_json,
    specs_to_json,
    validate_canonical,
)

SCHEMA_VERSION = 2  # 2: one member per modality and sample (1: one per measurement)


class _Modalities(Sequence[str]):
    """The registered modality names in their declared order (:mod:`datamodules.modalities`), read live."""

    def _names(self) -> tuple[str, ...]:
        return names()

    def __getitem__(self, i):  # type: ignore[override] # noqa: ANN001, ANN204
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self):  # noqa: ANN204
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def index(self, name: str, *args: int) -> int:  # type: ignore[override]
        return self._names().index(name, *args)

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, (tuple, list, _Modalities)) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


#: every registered modality, in declaration order (a live view of the registry)
MODALITIES: Sequence[str] = _Modalities()


# ----------------------------------------------------------------------------------------------
# Records: a person's timeline (numpy, one subject) and a collated batch (torch, many subjects).
# ----------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One measurement of one modality. ``data`` is the canonical array (None for clinical); decoded from a shard it
    is a read-only view of the member's bytes (copy it to write into it)."""

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

    ``mask`` (bool, True = observed) has the modality's mask layout (see module docstring) or is None (ECG,
    wearable and omics: their NaN entries are the missing ones, masked by the encoder on the device);
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
        return dataclasses.replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)
            },
        )


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


def loads(data: bytes | bytearray | str) -> Any:
    """JSON -> Python by orjson (some 2.5 times json's speed: the loader parses every sample's ``meta.json``);
    what orjson refuses and json reads (NaN and Infinity, which :func:`dumps` may write) by json."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no whitespace drift) so shards are byte-identical."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()
