"""``OmniDataModule``: shard folder -> resumable train/val/test loaders of :class:`OmniBatch`."""

from __future__ import annotations

import logging
import math
import os
import warnings
from typing import Any

import lightning as L
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from .collate import Collator
from .crop import CropConfig, Select
from .loader import ShardDataset, in_worker, rank_and_world
from .schema import DataError

log = logging.getLogger(__name__)

# torchdata 0.11 calls a torch API deprecated since 2.9 on every iteration; harmless, and not ours to fix.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")


class WorkerSafe:
    """A collate function whose :class:`DataError` leaves a DataLoader worker as one line
    (:class:`~datamodules.loader.WorkerDataError`), like the dataset's own."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, batch: Any) -> Any:
        try:
            return self.fn(batch)
        except DataError as err:
            clean = in_worker(err)
            if clean is err:
                raise
            raise clean from None


class ShardLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` over a :class:`ShardDataset` that advances the dataset's epoch on every
    pass (new shuffle each epoch) and keeps that epoch in its state, so a resumed run continues the
    same epoch at the same sample. A :class:`DataError` in a worker reaches the caller as a ``DataError``
    with the worker's message alone (no wall of worker traceback)."""

    def __init__(self, dataset: ShardDataset, batch_size: int, num_workers: int = 0, **kwargs: Any) -> None:
        collate = kwargs.get("collate_fn") or Collator(dataset.specs, dataset.index["clinical_codes"])
        kwargs["collate_fn"] = WorkerSafe(collate)
        super().__init__(dataset, batch_size=batch_size, num_workers=num_workers, **kwargs)
        self._next_epoch = self._epoch = 0

    def __iter__(self):  # type: ignore[override]
        self._epoch = self._next_epoch
        self.dataset.set_epoch(self._epoch)
        self._next_epoch = self._epoch + 1
        return super().__iter__()

    def __len__(self) -> int:
        """Batches this rank yields in one epoch (each worker batches its own samples): exact, and the same
        on every rank, for a dataset with ``even=True``; without it, an upper bound (skipped samples)."""
        counts = self.dataset.samples_per_worker(max(self.num_workers, 1))
        return sum(math.ceil(c / self.batch_size) for c in counts)

    def state_dict(self) -> dict[str, Any]:
        """This rank's position; under torch.distributed, every rank's (a checkpoint is written by rank 0
        alone, and each rank reads its own shards: rank 0's position is wrong for the others)."""
        state = {**super().state_dict(), "omnimodal_epoch": self._epoch}
        rank, world = rank_and_world()
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks: list[Any] = [None] * world
            torch.distributed.all_gather_object(ranks, state)  # every rank saves a checkpoint together
            return {"omnimodal_ranks": ranks}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "omnimodal_ranks" in state_dict:
            rank, world = rank_and_world()
            ranks = state_dict["omnimodal_ranks"]
            if len(ranks) != world:
                raise DataError(
                    f"the checkpoint holds the train loader's position for {len(ranks)} processes, "
                    f"this run has {world}",
                    where="checkpoint loops.fit_loop",
                    hint=f"resume with {len(ranks)} processes (devices x nodes), or start a new run from its weights",
                )
            state_dict = ranks[rank]
        state = dict(state_dict)
        epoch = int(state.pop("omnimodal_epoch", 0))
        self._epoch = epoch
        self._next_epoch = epoch + 1 if state.get("_iterator_finished") else epoch
        super().load_state_dict(state)


class OmniDataModule(L.LightningDataModule):
    """Loaders for the ``train``/``val``/``test`` splits of a shard folder written by ``omnimodal-shard``: a local
    path, or a remote folder (an http(s):// URL, an fsspec URL, a ``pipe:`` command; :mod:`datamodules.shards.store`).

    Timelines are bounded at load time (:mod:`datamodules.crop`): ``max_instances`` caps a modality's
    instances (``{"wearable": 60}``), then ``max_events`` / ``max_tokens`` (tokens per instance from
    ``tokens_per_instance``) bound the rest, chosen by ``select``: ``window`` (a random window of
    consecutive events for training, the most recent for evaluation), ``recent`` (the most recent), ``even``
    (evenly spaced over the whole timeline, first and last kept; jittered for training).
    ``on_error='skip'`` skips and counts bad samples instead of stopping; ``verify`` checks each shard's sha256
    before reading it (sizes, sample counts and member checksums are always checked). Every split is read
    with ``ShardDataset(even=True)``: each rank gets the same number of batches per epoch (no hang at the
    epoch end under DDP / FSDP / DeepSpeed) at the cost of fewer than ``world x num_workers`` repeated
    timelines per epoch (plus one per skipped sample), flagged in ``OmniBatch.padding``; the pretraining
    losses count them like any sample.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        batch_size: int = 8,
        num_workers: int = 0,
        *,
        shuffle_buffer: int = 64,
        seed: int = 0,
        max_events: int | None = None,
        max_tokens: int | None = None,
        tokens_per_instance: dict[str, int] | None = None,
        select: Select = "window",
        max_instances: dict[str, int] | None = None,
        on_error: str = "raise",
        pin_memory: bool = False,
        modalities: list[str] | None = None,
        verify: bool = False,
    ) -> None:
        super().__init__()
        self.root, self.batch_size, self.num_workers = root, batch_size, num_workers
        self.shuffle_buffer, self.seed, self.on_error, self.pin_memory = shuffle_buffer, seed, on_error, pin_memory
        self.modalities, self.verify = modalities, verify
        self.crop = dict(
            max_events=max_events,
            max_tokens=max_tokens,
            tokens_per_instance=dict(tokens_per_instance or {}),
            select=select,
            max_instances=dict(max_instances or {}),
        )
        CropConfig(**self.crop)  # a bad select or cap is an error now, not in a worker

    def dataset(self, split: str) -> ShardDataset:
        train = split == "train"
        return ShardDataset(
            self.root,
            split,
            shuffle=train,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            crop=CropConfig(**self.crop, random=train),
            on_error=self.on_error,
            modalities=self.modalities,
            even=True,
            verify=self.verify,
        )

    def loader(self, split: str) -> ShardLoader:
        ds = self.dataset(split)
        rank, world = rank_and_world()
        nslots = world * max(self.num_workers, 1)
        repeats = ds.padding_per_epoch(nslots)
        if rank == 0 and repeats:
            log.info(
                "%s: %d samples over %d ranks x workers: %d repeated per epoch so that every rank gets "
                "the same number of batches (flagged in OmniBatch.padding)",
                split,
                ds.num_samples,
                nslots,
                repeats,
            )
        return ShardLoader(ds, self.batch_size, self.num_workers, pin_memory=self.pin_memory)

    def train_dataloader(self) -> ShardLoader:
        return self.loader("train")

    def val_dataloader(self) -> ShardLoader:
        return self.loader("val")

    def test_dataloader(self) -> ShardLoader:
        return self.loader("test")


__all__ = ["OmniDataModule", "ShardLoader", "rank_and_world"]
