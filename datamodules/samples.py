"""One shard sample -> a checked :class:`~datamodules.schema.Timeline`: ``meta.json`` against its checksum and
key, every member against the checksum ``meta.json`` lists, stored dtype, then shape and values. Nothing in a
sample is unpickled."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .schema import (
    MODALITIES,
    SCHEMA_VERSION,
    DataError,
    Event,
    Label,
    Measurement,
    Spec,
    Timeline,
    dumps,
    loads,
    validate_canonical,
)
from .shards.format import REBUILD, cast_array, checksum, decode_array, member_name
from .specs import shape_expected, shape_fits


def decode_timeline(
    sample: dict[str, Any],
    specs: dict[str, Spec],
    where: str = "",
    validate: bool = True,
    modalities: Sequence[str] | None = None,
) -> Timeline:
    """Raw shard sample (``{"meta.json": bytes, "ecg.npy": bytes, ...}``) -> Timeline.

    ``meta.json`` must match its checksum and the sample's key and list every member; each member must
    match its checksum and is checked before use (:func:`_member`), and each measurement of it too
    (:class:`_Packed`). ``modalities``: keep (and decode) only these; events left empty are dropped."""
    meta = _meta(sample, where)
    try:
        return _timeline(meta, sample, specs, where, validate, modalities)
    except DataError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(
            f"meta.json is malformed ({type(exc).__name__}: {exc})", where=f"{where}, member meta.json", hint=REBUILD
        ) from None


def _meta(sample: dict[str, Any], where: str) -> dict[str, Any]:
    at = f"{where}, member meta.json"
    if "meta.json" not in sample:
        raise DataError("sample has no meta.json member", where=where, hint=REBUILD)
    try:
        meta = loads(sample["meta.json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"not valid JSON ({exc})", where=at, hint=REBUILD) from None
    if not isinstance(meta, dict):
        raise DataError("not a JSON object", where=at, hint=REBUILD)
    crc = meta.pop("crc32", None)  # the checksum of the rest (written by omnimodal-shard since checksums)
    if crc is not None and not _signed(sample["meta.json"], crc) and checksum(dumps(meta)) != crc:
        raise DataError("does not match its checksum: its bytes were changed", where=at, hint=REBUILD)
    if meta.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise DataError(
            f"written with shard schema version {meta['schema_version']}, this code reads {SCHEMA_VERSION}",
            where=at,
            hint="rebuild the shards with omnimodal-shard",
        )
    if meta.get("key") != sample.get("__key__"):
        raise DataError(
            f"names key {meta.get('key')!r}, its tar members key {sample.get('__key__')!r}", where=at, hint=REBUILD
        )
    if isinstance(meta.get("inventory"), dict):
        extra = sorted(set(sample) - {"__key__", "__url__", "__padding__", "meta.json"} - set(meta["inventory"]))
        if extra:
            raise DataError(f"member(s) {extra} are not listed in meta.json", where=where, hint=REBUILD)
    return meta


def _signed(raw: bytes, crc: str) -> bool:
    """Do the bytes of ``meta.json`` match its checksum as the builder wrote them (canonical JSON, whose first
    key is ``crc32``)? Then the rest is those bytes less that key, and need not be written out again to be
    checked; False for any other form (the caller then checks the re-encoded rest)."""
    head = b'{"crc32":"'
    return (
        raw[: len(head)] == head
        and raw[len(head) + 8 : len(head) + 10] == b'",'
        and (checksum(b"{" + raw[len(head) + 10 :]) == crc and raw[len(head) : len(head) + 8] == crc.encode())
    )


def _timeline(
    meta: dict[str, Any],
    sample: dict[str, Any],
    specs: dict[str, Spec],
    where: str,
    validate: bool,
    modalities: Sequence[str] | None,
) -> Timeline:
    inventory = meta.get("inventory") or {}
    known = set(MODALITIES)
    packed: dict[str, _Packed] = {}
    events = []
    for e, ev in enumerate(meta["events"]):
        ms = []
        for m in ev["measurements"]:
            modality = m["modality"]
            if modality not in known or (modality != "clinical" and modality not in specs):
                raise DataError(
                    f"unknown modality {modality!r}",
                    where=f"{where}, member meta.json",
                    hint="the shards were written by a newer omnimodal; upgrade",
                )
            if modalities is not None and modality not in modalities:
                continue
            if modality == "clinical":
                ms.append(
                    Measurement(
                        "clinical", code=str(m["code"]), value=float("nan") if m["value"] is None else float(m["value"])
                    )
                )
                continue
            p = packed.get(modality)
            if p is None:
                p = packed[modality] = _Packed(sample, modality, specs[modality], inventory, where, validate)
            ms.append(Measurement(modality, p.take(m["offset"], m["shape"], e)))
        if ms:
            events.append(Event(float(ev["time_days"]), float(ev["age_days"]), ms))
    for p in packed.values():
        p.finish()
    if modalities is None and (unused := sorted(set(inventory) - {p.name for p in packed.values()})):
        raise DataError(
            f"member(s) {unused} listed in meta.json's inventory hold no measurement of its events",
            where=f"{where}, member meta.json",
            hint=REBUILD,
        )
    static = {k: float("nan") if v is None else float(v) for k, v in meta.get("static", {}).items()}
    labels = {
        k: Label(float(v["value"]), float("nan") if v["time_days"] is None else float(v["time_days"]))
        for k, v in meta.get("labels", {}).items()
    }
    return Timeline(str(meta["key"]), static, events, labels)


class _Packed:
    """A sample's member of one modality (:func:`~datamodules.shards.format.member_name`), checked and cast once,
    handed out measurement by measurement: each is a view of it at the ``offset`` and ``shape`` that
    ``meta.json`` gives, in order, end to end: a gap, an overlap or values left over are a :class:`DataError`.

    Values are checked for the whole member at once: all finite (the common case), or NaN where the spec lets
    entries be missing, each measurement then holding an observed value (one ``reduceat``, in :meth:`finish`).
    Only a member with a value no measurement may hold (Inf, or NaN where none may be missing) is checked
    measurement by measurement, so that the error names the one that holds it."""

    def __init__(
        self, sample: dict[str, Any], modality: str, spec: Spec, inventory: dict[str, Any], where: str, validate: bool
    ) -> None:
        self.name = member_name(modality)
        self.where = f"{where}, member {self.name}"
        self.modality, self.spec = modality, spec
        self.flat = _member(sample, self.name, modality, spec, inventory.get(self.name) or {}, self.where)
        if self.flat.ndim != 1:
            raise DataError(
                f"member has shape {self.flat.shape}, expected a flat array", where=self.where, hint=REBUILD
            )
        self.full = spec.shape()
        self.full_size = math.prod(self.full)
        self.used = 0
        self.missing: np.ndarray | None = None  # finiteness per value, kept where NaN marks missing entries
        self.starts: list[tuple[int, int]] = []  # (offset, event) of each measurement, then
        self.each = False  # values checked measurement by measurement
        if validate and self.flat.dtype.kind == "f":
            finite, inf = finiteness(self.flat)
            if finite is not None:
                if spec.nan_is_missing and not inf:
                    self.missing = finite
                else:
                    self.each = True

    def _at(self, offset: Any, event: int) -> str:
        return f"{self.where}, measurement at offset {offset} (event {event})"

    def take(self, offset: Any, shape: Any, event: int) -> np.ndarray:
        dims = tuple(shape) if isinstance(shape, list) else None
        if dims == self.full:  # the common case: the spec's full shape
            size = self.full_size
        else:
            if dims is None or not all(type(d) is int and d >= 0 for d in dims):
                raise DataError(
                    f"meta.json gives shape {shape!r}, not a list of sizes", where=self._at(offset, event), hint=REBUILD
                )
            if not shape_fits(self.spec, dims):
                raise DataError(
                    f"meta.json gives a {self.modality} measurement shape {shape}, expected "
                    f"{shape_expected(self.spec)}",
                    where=self._at(offset, event),
                    hint=REBUILD,
                )
            size = math.prod(dims)
        end = self.used + size
        if type(offset) is not int or offset != self.used or end > self.flat.size:
            raise DataError(
                f"meta.json places a measurement of {size} values at offset {offset!r}; the member's next value is "
                f"{self.used} of {self.flat.size}",
                where=self._at(offset, event),
                hint=REBUILD,
            )
        try:
            arr = self.flat[offset:end].reshape(dims)
        except TypeError:  # sizes equal to the spec's but not integers (12.0)
            raise DataError(
                f"meta.json gives shape {shape!r}, not a list of sizes", where=self._at(offset, event), hint=REBUILD
            ) from None
        self.used = end
        if self.each:
            validate_canonical(self.modality, self.spec, arr, self._at(offset, event), self.spec.batch_dtype)
        elif self.missing is not None:
            self.starts.append((offset, event))
        return arr

    def finish(self) -> None:
        if self.used != self.flat.size:
            raise DataError(
                f"member holds {self.flat.size} values, its measurements in meta.json {self.used}",
                where=self.where,
                hint=REBUILD,
            )
        if self.starts:
            observed = np.logical_or.reduceat(self.missing, [o for o, _ in self.starts])
            if not observed.all():
                offset, event = self.starts[int(np.argmin(observed))]
                raise DataError(
                    f"{self.modality} array holds no observed value (all missing)", where=self._at(offset, event)
                )


def finiteness(flat: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """``(None, False)`` when every value of the float array ``flat`` is finite (the common case, one pass);
    else ``(finite per value, whether any is Inf)``. float16 from its bits (exponent all ones: Inf where the
    mantissa is 0, NaN otherwise): NumPy's ``isfinite`` has no vectorised loop for float16 and takes some
    fifteen times as long; the magnitude bits are computed once for all three answers."""
    if flat.dtype == np.float16:
        magnitude = np.bitwise_and(flat.view(np.uint16), 0x7FFF)
        if magnitude.max(initial=0) < 0x7C00:
            return None, False
        return np.less(magnitude, 0x7C00), bool((magnitude == 0x7C00).any())
    finite = np.isfinite(flat)
    if finite.all():
        return None, False
    return finite, bool(np.isinf(flat).any())


def _member(
    sample: dict[str, Any], name: str, modality: str, spec: Spec, inventory: dict[str, Any], where: str
) -> np.ndarray:
    """One member's array: its bytes match the checksum ``meta.json`` lists, it is a plain ``.npy`` (never
    unpickled) stored as the spec's ``storage_dtype``, cast to ``spec.batch_dtype`` (its one copy), or a view
    of the member's bytes where it is stored as that (float16 MRI, audio, ECG and wearable, uint8 video, ...):
    read-only when they are ``bytes``, as the tar reader gives them; nothing in the loader writes into a
    measurement."""
    if name not in sample:
        raise DataError("member listed in meta.json is missing from the shard", where=where, hint=REBUILD)
    if "crc32" in inventory and checksum(sample[name]) != inventory["crc32"]:
        raise DataError(
            "member does not match its checksum in meta.json: its bytes were changed", where=where, hint=REBUILD
        )
    data = sample[name]
    arr = decode_array(data, where, copy=False)  # a view of the member's bytes; cast (or copied) below
    if arr.dtype != np.dtype(spec.storage_dtype):
        raise DataError(
            f"{modality} member is stored as {arr.dtype}, its spec stores {spec.storage_dtype}",
            where=where,
            hint=REBUILD,
        )
    if arr.dtype == np.dtype(spec.batch_dtype):
        return arr  # a view of the member's bytes (read-only where the tar reader's): no copy
    return cast_array(arr, spec.batch_dtype)  # a copy: writable, owning its memory
