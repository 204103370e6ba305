"""Streaming shard loader: WebDataset tar samples -> checked :class:`Timeline` records.

Splitting: the split's samples, in this epoch's (seeded) shard order, are cut into ``world x workers``
contiguous ranges whose sizes differ by at most one; a (rank, worker) slot reads only the shards that
hold its range (a shard on a range boundary is read by both neighbours, each keeping its own part), so
each sample is seen exactly once per epoch across ranks x workers, and a slot with nothing to read
ends at once (no hang).

Even epochs (``even=True``, what :class:`~datamodules.datamodule.OmniDataModule` uses): under DDP / FSDP
/ DeepSpeed a rank that runs out of batches first leaves the others waiting at the epoch end, so every
slot then yields exactly ``ceil(samples / slots)`` timelines: after its own range it repeats samples of
the split (its own first ones, wrapping round), marked ``Timeline.padding`` / ``OmniBatch.padding``.
Padding is deterministic per (seed, epoch), fewer than ``world x workers`` timelines per epoch, plus
one for each sample skipped (``on_error='skip'``) or left without events by ``modalities``.

Where from: a local folder, or a remote one streamed shard by shard: an http(s):// URL, an fsspec URL or a
``pipe:`` command (:mod:`datamodules.shards.store`), with the same checks, errors (naming the URL) and
accounting; only the shards a slot needs are fetched.

Trust nothing from disk or network: each shard's size (and with ``verify`` its sha256) is checked against
``index.json`` before any of its samples is used (a remote shard's size as it streams where the server does not
announce it), its sample count and tar structure as it streams
(:func:`datamodules.shards.format.tar_samples`), each member against the checksum ``meta.json`` lists, its
dtype as stored, then its shape and values; a promised sample that does not come is an error naming shard
and key, or with ``on_error='skip'`` one more in ``skipped``. A :class:`DataError` in a DataLoader worker
reaches the main process as one line
(:class:`WorkerDataError`). ``omnimodal-shard verify DIR`` runs every check on every shard
(:func:`verify_folder`).

Determinism and resume: the shard order and the shuffle buffer are seeded by (seed, epoch, slot),
cropping by (seed, epoch, key). The iterator is ``Stateful`` (torchdata's ``StatefulDataLoader`` saves
and restores it): on restore it skips the samples already yielded *before* decoding them (a remote slot streams
its shards again up to its position: the samples are not decoded, but their bytes are fetched).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from . import arena
from .crop import CropConfig, crop_timeline  # (their home was here: still importable from this module)
from .samples import decode_timeline
from .schema import (
    MODALITIES,
    SCHEMA_VERSION,
    DataError,
    Spec,
    Timeline,
    check_modality,
    specs_from_json,
)
from .shards.format import INDEX_NAME, REBUILD, index_problems, tar_samples
from .shards.store import ShardStore

log = logging.getLogger(__name__)


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

    Everything read is checked against ``index.json`` as it streams: each shard's size (and with ``verify``
    its sha256, before any of its samples is used), its sample count, its tar structure, and each member
    (checksum, dtype as stored, shape, finiteness). ``on_error``: ``"raise"`` stops with a :class:`DataError`
    naming shard, key and member; ``"skip"`` logs it, records it in ``errors``, counts the samples the index
    promises that are lost in ``skipped`` (exactly: a missing 16-sample shard counts 16) and goes on, so a
    pass yields ``len(self) - skipped`` timelines (with all modalities, and without ``even``).
    ``even``: every (rank, worker) slot yields the same
    number of timelines per epoch, :meth:`slot_length`, padding with flagged repeats (module docstring);
    ``padded`` counts the repeats this process yielded (per worker process when there are workers).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        shuffle: bool = True,
        shuffle_buffer: int = 64,
        seed: int = 0,
        crop: CropConfig | None = None,
        on_error: str = "raise",
        validate: bool = True,
        modalities: Sequence[str] | None = None,
        even: bool = False,
        verify: bool = False,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise DataError(f"on_error={on_error!r}", hint="use 'raise' or 'skip'")
        self.store = ShardStore(root)
        self.root = self.store.root  # a Path, or a remote root's URL / command
        self.index = self.store.index()
        if self.index.get("schema_version") != SCHEMA_VERSION:
            raise DataError(
                f"shards have schema version {self.index.get('schema_version')}, this code reads {SCHEMA_VERSION}",
                where=self.store.shown(),
                hint="rebuild them with omnimodal-shard",
            )
        if split not in self.index["splits"]:
            raise DataError(
                f"no split {split!r}", where=self.store.shown(), hint=f"splits here: {sorted(self.index['splits'])}"
            )
        self.split = split
        for problem in index_problems(self.index, split):
            raise DataError(
                problem,
                where=self.store.shown(INDEX_NAME),
                hint="the index is inconsistent: rebuild the shards with omnimodal-shard",
            )
        self.specs: dict[str, Spec] = specs_from_json(self.index["specs"])
        info = self.index["splits"][split]
        self.entries = {self.store.url(s["name"]): s for s in info["shards"]}
        self.shards = [(url, int(s["samples"])) for url, s in self.entries.items()]
        self.urls = [u for u, _ in self.shards]
        self.num_samples = int(info["samples"])
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, shuffle_buffer, seed
        self.crop = crop or CropConfig(random=shuffle)
        self.on_error, self.validate, self.even, self.verify = on_error, validate, even, verify
        self.modalities = tuple(modalities) if modalities else None
        for m in self.modalities or ():
            check_modality(m, where="modalities")
        self.epoch = 0
        self.skipped = 0
        self.padded = 0
        self.errors: list[str] = []
        unlisted = [n for n in self.store.unlisted(self.index) if n.startswith(f"{split}-")]
        if unlisted:
            self._fail(
                DataError(
                    f"shard(s) {unlisted} of split {split!r} are not listed in {INDEX_NAME}",
                    where=self.store.shown(),
                    hint="their samples would never be read: rebuild the shards with omnimodal-shard",
                ),
                0,
            )

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
        if get_worker_info() is not None:
            arena.retain_heap()  # a worker's allocations repeat batch after batch: keep what it frees
        return _TimelineIterator(self)

    # ------------------------------------------------------------------------------------------
    def slot(self) -> tuple[int, int]:
        rank, world = rank_and_world()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        return rank * nw + wid, world * nw

    def slot_range(self, slot: int, nslots: int) -> tuple[int, int]:
        """Positions ``[start, stop)`` of the epoch's sample order that ``slot`` of ``nslots`` reads."""
        return slot * self.num_samples // nslots, (slot + 1) * self.num_samples // nslots

    def slot_length(self, slot: int, nslots: int) -> int:
        """Timelines ``slot`` yields per epoch: its range's size, or with ``even`` ceil(samples / nslots)
        for every slot (minus skipped and event-less samples when not ``even``)."""
        if self.even:
            return -(-self.num_samples // nslots)
        start, stop = self.slot_range(slot, nslots)
        return stop - start

    def samples_per_worker(self, num_workers: int) -> list[int]:
        """How many timelines each of this rank's ``num_workers`` workers yields per epoch (see :meth:`slot_length`)."""
        rank, world = rank_and_world()
        return [self.slot_length(rank * num_workers + w, world * num_workers) for w in range(num_workers)]

    def padding_per_epoch(self, nslots: int) -> int:
        """Repeats that even out one epoch over ``nslots`` slots (all ranks x workers; before skips): < nslots."""
        return nslots * self.slot_length(0, nslots) - self.num_samples if self.even else 0

    def epoch_shards(self, epoch: int) -> list[tuple[str, int]]:
        """``(url, samples)`` of the split's shards in ``epoch``'s order: the same on every rank and worker."""
        shards = list(self.shards)
        if self.shuffle:
            random.Random(_seed(self.seed, epoch, "shards")).shuffle(shards)
        return shards

    def raw_samples(self, epoch: int) -> Iterator[dict[str, Any]]:
        """This slot's raw tar samples for ``epoch``, in (seeded, shuffled) order, not decoded; with
        ``even``, followed by an endless stream of repeats flagged ``__padding__``."""
        slot, nslots = self.slot()
        shards = self.epoch_shards(epoch)
        start, stop = self.slot_range(slot, nslots)
        samples = self._read(shards, start, stop)
        if self.shuffle:
            samples = wds.filters._shuffle(
                samples,
                bufsize=self.shuffle_buffer,
                initial=self.shuffle_buffer,
                rng=random.Random(_seed(self.seed, epoch, slot)),
            )
        if self.even and self.num_samples:
            samples = itertools.chain(samples, self._repeats(shards, start))
        return samples

    def _read(
        self, shards: list[tuple[str, int]], start: int, stop: int, padding: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Raw samples at positions ``[start, stop)`` of ``shards``' order, opening only the shards that
        hold them (one at a time, so a short or corrupt shard never shifts another's positions)."""
        offset = 0
        for url, n in shards:
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            if lo < hi:
                yield from self._shard(url, n, lo, hi, padding)
            offset += n
            if offset >= stop:
                return

    def _shard(self, url: str, n: int, lo: int, hi: int, padding: bool) -> Iterator[dict[str, Any]]:
        """Samples ``[lo, hi)`` of the shard at ``url`` (``n`` in the index), checked as they stream: the file's
        size (and sha256 with ``verify``) first (:meth:`ShardStore.open_shard`), then that it holds exactly ``n``
        samples (a slot that reads up to the end checks there is no more) and is sound tar data throughout."""
        name, got, last = self.store.where(url), 0, None
        try:
            with self.store.open_shard(url, self.entries[url], sha256=self.verify) as stream:
                count = 0
                samples = tar_samples(url) if stream is None else tar_samples(url, stream)
                for count, sample in enumerate(samples, 1):
                    if count > n:
                        raise DataError(
                            f"holds more samples than the {n} {INDEX_NAME} lists (key {sample['__key__']} "
                            f"is sample {count})",
                            where=name,
                            hint=REBUILD,
                        )
                    last = sample["__key__"]
                    if count > lo:
                        got += 1
                        yield sample
                    if count == hi < n:
                        return
            if count < hi:
                after = f" (the last is key {last})" if last else ""
                raise DataError(
                    f"holds {count} samples{after}, {INDEX_NAME} lists {n}: {hi - max(count, lo)} "
                    f"promised sample(s) are missing",
                    where=name,
                    hint=REBUILD,
                )
        except DataError as err:
            self._fail(err, hi - lo - got, padding)

    def _fail(self, err: DataError, lost: int, padding: bool = False) -> None:
        """``on_error='raise'``: raise ``err``; ``'skip'``: count the ``lost`` samples (not again for a padding
        repeat, counted when first read) and go on."""
        if self.on_error == "raise":
            raise err
        if padding:
            return
        self.skipped += lost
        self.errors.append(str(err))
        log.warning("skipping %d sample(s): %s", lost, err)

    def _repeats(self, shards: list[tuple[str, int]], start: int) -> Iterator[dict[str, Any]]:
        """Padding: the samples again from position ``start`` on, wrapping round, for ever."""
        while True:
            read = 0
            for sample in self._read(shards, start, self.num_samples, padding=True):
                read += 1
                yield {**sample, "__padding__": True}
            if not read and not start:  # every shard unreadable (on_error='skip'): nothing to repeat
                raise self.no_timelines()
            start = 0

    def no_timelines(self) -> DataError:
        return DataError(
            f"no sample of split {self.split!r} gives a timeline: all are unreadable or skipped, or "
            f"none has events of modalities {list(self.modalities or MODALITIES)}",
            where=self.store.shown(),
            hint="check the shards (on_error='raise' names the first bad one) and the modalities",
        )

    def decode(self, sample: dict[str, Any], epoch: int) -> Timeline | None:
        """Raw tar sample -> cropped Timeline; None if skipped (``on_error='skip'``)."""
        where = f"{Path(sample.get('__url__', '?')).name}, key {sample.get('__key__')}"
        try:
            tl = decode_timeline(sample, self.specs, where, validate=self.validate, modalities=self.modalities)
        except DataError as err:
            self._fail(err, 1, bool(sample.get("__padding__")))
            return None
        if not tl.events:  # nothing of the selected modalities: not an error, nothing to train on
            return None
        tl = crop_timeline(tl, self.crop, np.random.default_rng(_seed(self.seed, epoch, tl.key)))
        return replace(tl, padding=True) if sample.get("__padding__") else tl


class _TimelineIterator:
    """One pass over a slot's samples; ``Stateful`` so a loader can resume it mid-epoch. With ``even`` it
    stops after exactly :meth:`ShardDataset.slot_length` timelines."""

    def __init__(self, ds: ShardDataset) -> None:
        self.ds, self.epoch, self.yielded, self.produced = ds, ds.epoch, 0, 0
        self._raw: Iterator[dict[str, Any]] | None = None
        self._length: int | None = None

    def __iter__(self) -> _TimelineIterator:
        return self

    def __next__(self) -> Timeline:
        try:
            return self._next()
        except DataError as err:
            clean = in_worker(err)
            if clean is err:
                raise
            raise clean from None

    def _next(self) -> Timeline:
        if self._raw is None:
            self._raw = self.ds.raw_samples(self.epoch)
        if self._length is None:
            self._length = self.ds.slot_length(*self.ds.slot()) if self.ds.even else -1
        if self.produced == self._length:
            raise StopIteration
        misses = 0
        while True:
            tl = self.ds.decode(next(self._raw), self.epoch)
            self.yielded += 1
            if tl is not None:
                self.produced += 1
                self.ds.padded += tl.padding
                return tl
            misses += 1
            if misses > 2 * self.ds.num_samples:  # only with even: a whole round of repeats gave nothing
                raise self.ds.no_timelines()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "yielded": self.yielded, "produced": self.produced}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.yielded = int(state["epoch"]), int(state["yielded"])
        self.produced = int(state.get("produced", self.yielded))
        self._raw = self.ds.raw_samples(self.epoch)
        for _ in range(self.yielded):  # skip raw (undecoded) samples: cheap
            next(self._raw, None)


class WorkerDataError(DataError):
    """A :class:`DataError` raised in a DataLoader worker. torch re-raises it in the main process as
    ``WorkerDataError("Caught WorkerDataError in DataLoader worker process N. Original Traceback ...")``;
    this keeps the worker's message alone, so the user reads one clear line, not the worker's traceback."""

    def __init__(self, reason: str, *, where: str = "", hint: str = "") -> None:
        tag = f"{type(self).__name__}: "
        if reason.startswith("Caught ") and tag in reason:  # torch.utils._utils.ExceptionWrapper.reraise
            reason = reason.rsplit(tag, 1)[1].strip()
        super().__init__(reason, where=where, hint=hint)


def in_worker(err: DataError) -> DataError:
    """``err`` as it should leave this process: a :class:`WorkerDataError` inside a DataLoader worker."""
    info = get_worker_info()
    if info is None or isinstance(err, WorkerDataError):
        return err
    return WorkerDataError(f"{err} [DataLoader worker {info.id}]")


def verify_folder(root: str | os.PathLike) -> tuple[int, list[str]]:
    """What ``omnimodal-shard verify`` checks: ``index.json``, then every shard of every split (size, sha256,
    sample count, tar structure) and every member (checksum, decoded, validated), and that no key is in two
    places. Returns (samples that passed, problems), each problem naming shard, key and member. ``root`` may be
    remote (:mod:`datamodules.shards.store`; a remote folder cannot be listed for shards left out of the index)."""
    store = ShardStore(root)
    index = store.index()
    splits = list(index.get("splits", {})) if isinstance(index.get("splits"), dict) else []
    problems = [] if splits else [f"{store.shown(INDEX_NAME)}: lists no split"]
    problems += [
        f"{store.shown()}: shard {n} is not listed in {INDEX_NAME}"
        for n in store.unlisted(index)
        if not any(n.startswith(f"{s}-") for s in splits)
    ]
    seen: dict[str, str] = {}
    passed = 0
    for split in splits:
        try:
            ds = ShardDataset(root, split, shuffle=False, on_error="skip", verify=True)
        except DataError as err:
            problems.append(str(err))
            continue
        for url, n in ds.shards:
            for sample in ds._shard(url, n, 0, n, padding=False):
                where = f"{Path(url).name}, key {sample['__key__']}"
                if sample["__key__"] in seen:
                    problems.append(f"{where}: the key is also in {seen[sample['__key__']]}")
                seen[sample["__key__"]] = Path(url).name
                passed += ds.decode(sample, 0) is not None
        problems += ds.errors
    return passed, problems
