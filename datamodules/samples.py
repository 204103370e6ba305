"""One shard sample -> a checked :class:`~datamodules.schema.Timeline`: ``meta.json`` against its checksum and
key, every member against the checksum ``meta.json`` lists, stored dtype, then shape and values. Nothing in a
sample is unpickled."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from .schema import MODALITIES, DataError, Event, Label, Measurement, Spec, Timeline, dumps, validate_canonical
from .shards.format import REBUILD, cast_array, checksum, decode_array


def decode_timeline(
    sample: dict[str, Any],
    specs: dict[str, Spec],
    where: str = "",
    validate: bool = True,
    modalities: Sequence[str] | None = None,
) -> Timeline:
    """Raw shard sample (``{"meta.json": bytes, "e0000.ecg.npy": bytes, ...}``) -> Timeline.

    ``meta.json`` must match its checksum and the sample's key and list every member; each member must
    match its checksum and is checked before use (:func:`_member`). ``modalities``: keep (and decode) only
    these; events left empty are dropped."""
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
        meta = json.loads(sample["meta.json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"not valid JSON ({exc})", where=at, hint=REBUILD) from None
    if not isinstance(meta, dict):
        raise DataError("not a JSON object", where=at, hint=REBUILD)
    crc = meta.pop("crc32", None)  # the checksum of the rest (written by omnimodal-shard since checksums)
    if crc is not None and not _signed(sample["meta.json"], crc) and checksum(dumps(meta)) != crc:
        raise DataError("does not match its checksum: its bytes were changed", where=at, hint=REBUILD)
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
    events = []
    for ev in meta["events"]:
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
            name = m["member"]
            ms.append(
                Measurement(
                    modality,
                    _member(
                        sample,
                        name,
                        modality,
                        specs[modality],
                        inventory.get(name) or {},
                        f"{where}, member {name}",
                        validate,
                    ),
                )
            )
        if ms:
            events.append(Event(float(ev["time_days"]), float(ev["age_days"]), ms))
    static = {k: float("nan") if v is None else float(v) for k, v in meta.get("static", {}).items()}
    labels = {
        k: Label(float(v["value"]), float("nan") if v["time_days"] is None else float(v["time_days"]))
        for k, v in meta.get("labels", {}).items()
    }
    return Timeline(str(meta["key"]), static, events, labels)


def _member(
    sample: dict[str, Any], name: str, modality: str, spec: Spec, inventory: dict[str, Any], where: str, validate: bool
) -> np.ndarray:
    """One member's canonical array: its bytes match the checksum ``meta.json`` lists, it is a plain ``.npy``
    (never unpickled) stored as the spec's ``storage_dtype``, checked (shape, finiteness) only after that,
    when the cast to ``spec.dtype`` is exact (float16 -> float32, or none); the cast is its one copy."""
    if name not in sample:
        raise DataError("member listed in meta.json is missing from the shard", where=where, hint=REBUILD)
    if "crc32" in inventory and checksum(sample[name]) != inventory["crc32"]:
        raise DataError(
            "member does not match its checksum in meta.json: its bytes were changed", where=where, hint=REBUILD
        )
    arr = decode_array(sample[name], where, copy=False)  # copied once below, by the cast (or copy)
    if arr.dtype != np.dtype(spec.storage_dtype):
        raise DataError(
            f"{modality} member is stored as {arr.dtype}, its spec stores {spec.storage_dtype}",
            where=where,
            hint=REBUILD,
        )
    arr = cast_array(arr, spec.dtype)  # a copy: writable, owning its memory, not holding the tar's bytes alive
    if validate:
        validate_canonical(modality, spec, arr, where=where)
    return arr
