"""Streaming shard loader: WebDataset tar samples -> checked :class:`Timeline` records.

Splitting: shards are dealt to (rank, worker) slots when there are at least as many shards as slots;
otherwise every slot reads all shards and keeps every n-th sample. Either way each sample is seen
exactly once per epoch across ranks x workers, and a slot with nothing to read ends at once (no hang).

Determinism and resume: the shard order and the shuffle buffer are seeded by (seed, epoch, slot),
cropping by (seed, epoch, key). The iterator is ``Stateful`` (torchdata's ``StatefulDataLoader`` saves
and restores it): on restore it skips the samples already yielded *before* decoding them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from .schema import MODALITIES, SCHEMA_VERSION, DataError, Event, Label, Measurement, Spec, Timeline, check_modality, \
    specs_from_json, validate_canonical
from .shards.format import decode_array, load_index

log = logging.getLogger(__name__)


@dataclass
class CropConfig:
    """Cropping of long timelines to a window of consecutive events.

    ``max_events`` / ``max_tokens`` bound the window (None = no bound); ``tokens_per_instance`` gives
    each modality's token count (the encoder's k; default 1). ``random`` picks the window start at
    random (training); otherwise the most recent window is kept (evaluation, forecasting).
    """

    max_events: int | None = None
    max_tokens: int | None = None
    tokens_per_instance: dict[str, int] = field(default_factory=dict)
    random: bool = True


def rank_and_world() -> tuple[int, int]:
    """Rank and world size: from torch.distributed if initialised, else the launcher's environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    for r, w in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if r in os.environ and w in os.environ:
            return int(os.environ[r]), int(os.environ[w])
    return 0, 1


def _seed(*parts: int | str) -> int:
    """A seed from ints and strings, stable across processes (unlike ``hash``)."""
    words = [p % 2**32 if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


class ShardDataset(IterableDataset):
    """Timelines of one split of a shard folder, as an ``IterableDataset``.

    ``on_error``: ``"raise"`` stops with a :class:`DataError` naming shard, key and member; ``"skip"``
    logs it, counts it in ``skipped`` and goes on.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *, shuffle: bool = True,
                 shuffle_buffer: int = 64, seed: int = 0, crop: CropConfig | None = None,
                 on_error: str = "raise", validate: bool = True, modalities: Sequence[str] | None = None) -> None:
        if on_error not in ("raise", "skip"):
            raise DataError(f"on_error={on_error!r}", hint="use 'raise' or 'skip'")
        self.root = Path(root)
        self.index = load_index(self.root)
        if self.index.get("schema_version") != SCHEMA_VERSION:
            raise DataError(f"shards have schema version {self.index.get('schema_version')}, this code reads "
                            f"{SCHEMA_VERSION}", where=str(self.root), hint="rebuild them with omnimodal-shard")
        if split not in self.index["splits"]:
            raise DataError(f"no split {split!r}", where=str(self.root),
                            hint=f"splits here: {sorted(self.index['splits'])}")
        self.split = split
        self.specs: dict[str, Spec] = specs_from_json(self.index["specs"])
        self.urls = [str(self.root / s["name"]) for s in self.index["splits"][split]["shards"]]
        self.num_samples = int(self.index["splits"][split]["samples"])
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, shuffle_buffer, seed
        self.crop = crop or CropConfig(random=shuffle)
        self.on_error, self.validate = on_error, validate
        self.modalities = tuple(modalities) if modalities else None
        for m in self.modalities or ():
            check_modality(m, where="modalities")
        self.epoch = 0
        self.skipped = 0

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # Stateful protocol (torchdata): the epoch travels with the worker's snapshot.
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])

    def __iter__(self) -> _TimelineIterator:
        return _TimelineIterator(self)

    # ------------------------------------------------------------------------------------------
    def slot(self) -> tuple[int, int]:
        rank, world = rank_and_world()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        return rank * nw + wid, world * nw

    def samples_per_worker(self, num_workers: int) -> list[int]:
        """How many samples each of this rank's ``num_workers`` workers yields per epoch (before skips)."""
        rank, world = rank_and_world()
        nslots = world * num_workers
        sizes = [s["samples"] for s in self.index["splits"][self.split]["shards"]]
        if len(sizes) >= nslots:  # shard order is shuffled per epoch, so count for the epoch at hand
            order = list(range(len(sizes)))
            if self.shuffle:
                random.Random(_seed(self.seed, self.epoch, "shards")).shuffle(order)
            return [sum(sizes[i] for i in order[rank * num_workers + w::nslots]) for w in range(num_workers)]
        total = sum(sizes)
        return [len(range(rank * num_workers + w, total, nslots)) for w in range(num_workers)]

    def raw_samples(self, epoch: int) -> Iterator[dict[str, Any]]:
        """This slot's raw tar samples for ``epoch``, in (seeded, shuffled) order, not decoded."""
        slot, nslots = self.slot()
        urls = list(self.urls)
        if self.shuffle:  # same order on every rank and worker: they then take disjoint slices
            random.Random(_seed(self.seed, epoch, "shards")).shuffle(urls)
        by_shard = len(urls) >= nslots
        mine = urls[slot::nslots] if by_shard else urls
        samples = wds.tarfile_samples([{"url": u} for u in mine], handler=self._tar_error)
        if not by_shard:
            samples = (s for i, s in enumerate(samples) if i % nslots == slot)
        if self.shuffle:
            samples = wds.filters._shuffle(samples, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer,
                                           rng=random.Random(_seed(self.seed, epoch, slot)))
        return samples

    def _tar_error(self, exn: Exception) -> bool:
        where = next((str(a) for a in exn.args[1:] if isinstance(a, str) and a.endswith(".tar")), "a shard")
        err = DataError(f"unreadable tar data ({type(exn).__name__}: {exn.args[0] if exn.args else exn})",
                        where=where, hint="the shard is corrupt or truncated: check it against index.json "
                                          "(datamodules.shards.format.verify_shards) and rebuild it")
        if self.on_error == "skip":
            self.skipped += 1
            log.warning("skipping: %s", err)
            return True
        raise err from exn

    def decode(self, sample: dict[str, Any], epoch: int) -> Timeline | None:
        """Raw tar sample -> cropped Timeline; None if skipped (``on_error='skip'``)."""
        where = f"{Path(sample.get('__url__', '?')).name}, key {sample.get('__key__')}"
        try:
            tl = decode_timeline(sample, self.specs, where, validate=self.validate, modalities=self.modalities)
        except DataError as err:
            if self.on_error == "skip":
                self.skipped += 1
                log.warning("skipping: %s", err)
                return None
            raise
        if not tl.events:  # nothing of the selected modalities: not an error, nothing to train on
            return None
        return crop_timeline(tl, self.crop, np.random.default_rng(_seed(self.seed, epoch, tl.key)))


class _TimelineIterator:
    """One pass over a slot's samples; ``Stateful`` so a loader can resume it mid-epoch."""

    def __init__(self, ds: ShardDataset) -> None:
        self.ds, self.epoch, self.yielded = ds, ds.epoch, 0
        self._raw: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> _TimelineIterator:
        return self

    def __next__(self) -> Timeline:
        if self._raw is None:
            self._raw = self.ds.raw_samples(self.epoch)
        while True:
            tl = self.ds.decode(next(self._raw), self.epoch)
            self.yielded += 1
            if tl is not None:
                return tl

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.yielded = int(state["epoch"]), int(state["yielded"])
        self._raw = self.ds.raw_samples(self.epoch)
        for _ in range(self.yielded):  # skip raw (undecoded) samples: cheap
            next(self._raw, None)


def decode_timeline(sample: dict[str, Any], specs: dict[str, Spec], where: str = "",
                    validate: bool = True, modalities: Sequence[str] | None = None) -> Timeline:
    """Raw WebDataset sample (``{"meta.json": bytes, "e0000.ecg.npy": bytes, ...}``) -> Timeline.

    ``modalities``: keep (and decode) only these; events left empty are dropped."""
    if "meta.json" not in sample:
        raise DataError("sample has no meta.json member", where=where, hint="rebuild the shard")
    try:
        meta = json.loads(sample["meta.json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"meta.json is not valid JSON ({exc})", where=f"{where}, member meta.json") from exc
    events = []
    for ev in meta["events"]:
        ms = []
        for m in ev["measurements"]:
            modality = m["modality"]
            if modality not in MODALITIES or (modality != "clinical" and modality not in specs):
                raise DataError(f"unknown modality {modality!r}", where=f"{where}, meta.json",
                                hint="the shards were written by a newer omnimodal; upgrade")
            if modalities is not None and modality not in modalities:
                continue
            if modality == "clinical":
                ms.append(Measurement("clinical", code=m["code"],
                                      value=float("nan") if m["value"] is None else float(m["value"])))
                continue
            ms.append(Measurement(modality, _member(sample, m["member"], modality, specs[modality],
                                                    f"{where}, member {m['member']}", validate)))
        if ms:
            events.append(Event(float(ev["time_days"]), float(ev["age_days"]), ms))
    static = {k: float("nan") if v is None else float(v) for k, v in meta.get("static", {}).items()}
    labels = {k: Label(float(v["value"]), float("nan") if v["time_days"] is None else float(v["time_days"]))
              for k, v in meta.get("labels", {}).items()}
    return Timeline(meta["key"], static, events, labels)


def _member(sample: dict[str, Any], name: str, modality: str, spec: Spec, where: str, validate: bool) -> np.ndarray:
    if name not in sample:
        raise DataError("member listed in meta.json is missing from the shard", where=where, hint="rebuild the shard")
    try:
        arr = decode_array(sample[name])
    except Exception as exc:  # noqa: BLE001 - numpy raises several types for bad bytes
        raise DataError(f"cannot decode member ({type(exc).__name__}: {exc})", where=where,
                        hint="the shard is corrupt: rebuild it") from exc
    arr = arr.astype(spec.dtype, copy=False)
    if validate:
        validate_canonical(modality, spec, arr, where=where)
    return arr


def crop_timeline(tl: Timeline, crop: CropConfig, rng: np.random.Generator) -> Timeline:
    """Keep a window of consecutive events within ``max_events`` and ``max_tokens``."""
    n = len(tl.events)
    if crop.max_events is None and crop.max_tokens is None:
        return tl
    cost = [sum(crop.tokens_per_instance.get(m.modality, 1) for m in ev.measurements) for ev in tl.events]
    max_ev = crop.max_events or n
    max_tok = crop.max_tokens or sum(cost) or 1
    # For each start, the longest window that fits; windows that end at the last event are "recent".
    ends = []
    for s in range(n):
        e, tok = s, 0
        while e < n and e - s < max_ev and tok + cost[e] <= max_tok:
            tok += cost[e]
            e += 1
        ends.append(max(e, s + 1))
    if ends[0] >= n:
        return tl
    starts = [s for s in range(n) if ends[s] - s == max(ends[t] - t for t in range(n))] if crop.random else None
    s = int(rng.choice(starts)) if crop.random else next(s for s in range(n) if ends[s] >= n)
    events = tl.events[s:ends[s]]
    if len(events) == 1 and cost[s] > max_tok:  # a single event larger than the budget: keep its first instances
        kept, tok = [], 0
        for m in events[0].measurements:
            tok += crop.tokens_per_instance.get(m.modality, 1)
            if tok > max_tok:
                break
            kept.append(m)
        events = [Event(events[0].time_days, events[0].age_days, kept)]
    return Timeline(tl.key, tl.static, events, tl.labels)
