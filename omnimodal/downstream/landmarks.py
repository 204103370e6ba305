"""Landmark data for fine-tuning and evaluation: each person seen at a landmark, with the outcome after it.

The history up to the landmark (the most recent ``landmark.max_events`` events) is embedded, and the head
predicts the outcome after it (:mod:`omnimodal.downstream.heads`). Training draws a random landmark among
each person's eligible events every epoch (``landmark.train=random``), or takes every eligible event as a landmark
of its own (``landmark.train=all``: each history seen at each of its events, so an event that changes what comes
after, such as a treatment's START, is also seen at the end of a history); validation, testing and
``omnimodal-eval`` use a fixed one, ``landmark.eval_days`` after the person's first event. People not at risk at
their landmark are left out and counted, with the reason.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from datamodules.loader import CropConfig, ShardDataset, _seed, crop_timeline
from datamodules.schema import Event, OmniBatch, Timeline
from datamodules.shards.store import shard_root

from ..release import Preprocessing
from .heads import HeadConfig, target

log = logging.getLogger("omnimodal.finetune")


@dataclass
class LandmarkConfig:
    eval_days: float = 365.25  # fixed landmark (val/test/eval): days after the first event
    #: "random": a random eligible event per person and epoch; "all": every eligible event, each its own example
    #: (shuffled through a buffer); "fixed": eval_days
    train: str = "random"
    max_events: int = 16  # history window: the most recent events up to the landmark
    #: which events the history keeps when longer: "recent" (the most recent), or "even" (spread over it)
    select: str = "recent"
    #: per-modality caps applied first, e.g. {"wearable": 4}: the most recent wearable days, so a week of
    #: daily wearable windows does not fill the history
    max_instances: dict[str, int] | None = None


TRAIN_LANDMARKS = ("random", "all", "fixed")


def bounded_history(tl: Timeline, events: Sequence[Event], lm: LandmarkConfig) -> Timeline:
    """``events`` (a person's, up to a landmark) as the history the head reads: the per-modality caps, then the
    most recent ``lm.max_events`` (or spread over it, ``lm.select``); no labels. Fine-tuning, evaluation and
    the per-person forecaster all cut histories here, so a forecast reads what the model was trained on."""
    crop = CropConfig(max_events=lm.max_events, select=lm.select, max_instances=lm.max_instances or {}, random=False)
    return crop_timeline(Timeline(tl.key, tl.static, list(events), {}), crop, np.random.default_rng(0))


def at_landmark(tl: Timeline, landmark_days: float, lm: LandmarkConfig) -> Timeline | None:
    """The history up to ``landmark_days`` (events at or before it), bounded as ``lm`` says."""
    before = [ev for ev in tl.events if ev.time_days <= landmark_days]
    return bounded_history(tl, before, lm) if before else None


def landmark_sample(
    tl: Timeline,
    head: HeadConfig,
    lm: LandmarkConfig,
    rng: np.random.Generator | None,
) -> tuple[tuple[Timeline, dict[str, float]] | None, str]:
    """(history, target) for one person; ``rng`` given: a random eligible landmark (training)."""
    label = tl.labels.get(head.label)
    if rng is None:
        tgt, why = target(head, label, lm.eval_days)
        if tgt is None:
            return None, why
        hist = at_landmark(tl, lm.eval_days, lm)
        return ((hist, tgt), "") if hist is not None else (None, "no event before the landmark")
    options, why = _eligible(tl, head)
    if not options:
        return None, why
    i, tgt = options[int(rng.integers(len(options)))]
    return (at_landmark(tl, tl.events[i].time_days, lm), tgt), ""


def _eligible(tl: Timeline, head: HeadConfig) -> tuple[list[tuple[int, dict[str, float]]], str]:
    """(event index, target) of each of the person's events that can be a landmark (at risk after it), in time
    order; with none, why."""
    label = tl.labels.get(head.label)
    options, why = [], "no event before the outcome"
    for i, ev in enumerate(tl.events):
        tgt, w = target(head, label, ev.time_days)
        if tgt is None:
            why = w if not options else why
            continue
        options.append((i, tgt))
    return options, ("" if options else why)


def landmark_samples(
    tl: Timeline, head: HeadConfig, lm: LandmarkConfig
) -> tuple[list[tuple[Timeline, dict[str, float]]], str]:
    """(history, target) at every eligible event of one person (``landmark.train=all``), in time order."""
    options, why = _eligible(tl, head)
    return [(at_landmark(tl, tl.events[i].time_days, lm), tgt) for i, tgt in options], why


class LandmarkDataset(IterableDataset):
    """Wraps a :class:`ShardDataset` (uncropped): yields ``(history, target)`` and counts who is left out."""

    def __init__(
        self,
        shards: ShardDataset,
        head: HeadConfig,
        lm: LandmarkConfig,
        random_landmark: bool,
        all_landmarks: bool = False,
        shuffle_buffer: int = 256,
    ) -> None:
        self.shards, self.head, self.lm, self.random_landmark = shards, head, lm, random_landmark
        #: every eligible event of each person, each its own example, mixed through ``shuffle_buffer`` examples so
        #: that one batch is not one person's
        self.all_landmarks, self.shuffle_buffer = all_landmarks, shuffle_buffer
        self._examples: int | None = None
        self.excluded: collections.Counter[str] = collections.Counter()
        self.included = 0

    def __len__(self) -> int:  # an upper bound: people not at risk are left out
        if not self.all_landmarks:
            return len(self.shards)
        if self._examples is None:  # every eligible event's: one pass over the split (the LR schedule's length)
            self._examples = sum(len(_eligible(tl, self.head)[0]) for tl in self.shards)
        return max(self._examples, 1)

    def set_epoch(self, epoch: int) -> None:
        self.shards.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[Timeline, dict[str, float]]]:
        self.excluded.clear()
        self.included = 0
        if self.all_landmarks:
            yield from self._all()
            return
        for tl in self.shards:
            rng = (
                np.random.default_rng(_seed(self.shards.seed, self.shards.epoch, tl.key, "landmark"))
                if self.random_landmark
                else None
            )
            sample, why = landmark_sample(tl, self.head, self.lm, rng)
            if sample is None:
                self.excluded[why] += 1
                continue
            self.included += 1
            yield sample

    def _all(self) -> Iterator[tuple[Timeline, dict[str, float]]]:
        rng = np.random.default_rng(_seed(self.shards.seed, self.shards.epoch, "landmarks"))
        buf: list[tuple[Timeline, dict[str, float]]] = []
        for tl in self.shards:
            samples, why = landmark_samples(tl, self.head, self.lm)
            if not samples:
                self.excluded[why] += 1
                continue
            self.included += 1
            for s in samples:
                if len(buf) < self.shuffle_buffer:
                    buf.append(s)
                    continue
                i = int(rng.integers(len(buf)))
                yield buf[i]
                buf[i] = s
        rng.shuffle(buf)
        yield from buf


class LandmarkCollator:
    def __init__(self, prep: Preprocessing) -> None:
        self.collate = prep.collator()

    def __call__(self, items: Sequence[tuple[Timeline, dict[str, float]]]) -> tuple[OmniBatch, dict[str, torch.Tensor]]:
        batch = self.collate([h for h, _ in items])
        keys = items[0][1].keys()
        return batch, {k: torch.tensor([t[k] for _, t in items], dtype=torch.float32) for k in keys}


class _EpochLoader(DataLoader):
    """A DataLoader that moves its dataset to the next epoch (new shuffle, new landmarks) on every pass."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch = 0

    def __iter__(self):  # type: ignore[override]
        self.dataset.set_epoch(self._epoch)
        self._epoch += 1
        return super().__iter__()


class LandmarkData(L.LightningDataModule):
    def __init__(
        self,
        root: str | Path,
        prep: Preprocessing,
        head: HeadConfig,
        landmark: LandmarkConfig,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        modalities: list[str] | None = None,
        shuffle_buffer: int = 64,
    ) -> None:
        super().__init__()
        if landmark.train not in TRAIN_LANDMARKS:
            raise ValueError(f"config key landmark.train: {landmark.train!r}; use one of {list(TRAIN_LANDMARKS)}")
        # a local folder as a Path, a URL or pipe: command as it is (datamodules.shards.store)
        self.root, self.prep, self.head, self.lm = shard_root(root), prep, head, landmark
        self.batch_size, self.num_workers, self.seed, self.modalities = batch_size, num_workers, seed, modalities
        self.shuffle_buffer = shuffle_buffer
        probe = ShardDataset(self.root, "train", shuffle=False)
        used = modalities or [m for m in prep.specs if m in probe.specs]
        prep.check_data(probe.specs, used, where=f"data.root={self.root}")

    def shards(self, split: str, train: bool) -> ShardDataset:
        """A split's whole timelines (landmarks cut them), shuffled for training."""
        return ShardDataset(
            self.root,
            split,
            shuffle=train,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            crop=CropConfig(random=False),
            modalities=self.modalities,
        )

    def dataset(self, split: str, train: bool | None = None) -> LandmarkDataset:
        train = split == "train" if train is None else train
        shards = self.shards(split, train)
        return LandmarkDataset(
            shards,
            self.head,
            self.lm,
            random_landmark=train and self.lm.train == "random",
            all_landmarks=train and self.lm.train == "all",
        )

    def loader(self, split: str, train: bool | None = None) -> DataLoader:
        return _EpochLoader(
            self.dataset(split, train),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=LandmarkCollator(self.prep),
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
