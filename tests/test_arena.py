"""Batches from DataLoader workers cross in one reused shared buffer (datamodules/arena.py): the same batches
as without workers, a batch the caller keeps is never written over, and the buffers are reused."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
from torch.multiprocessing.reductions import fd_id

from datamodules import arena
from datamodules.datamodule import ShardLoader
from datamodules.loader import ShardDataset
from datamodules.schema import OmniBatch


def _digest(batch: OmniBatch) -> str:
    h = hashlib.sha256(",".join(batch.keys).encode())
    for m, mb in sorted(batch.modalities.items()):
        for t in (mb.data, mb.mask, mb.value, mb.subject, mb.event, mb.time_days, mb.age_days):
            if t is not None:
                h.update(m.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode() + t.numpy().tobytes())
    labels = [x for vt in batch.labels.values() for x in vt]
    for t in [batch.num_events, batch.padding, *batch.static.values(), *labels]:
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _loader(shards: Path, workers: int) -> ShardLoader:
    ds = ShardDataset(shards, "train", seed=5)
    return ShardLoader(ds, batch_size=2, num_workers=workers, persistent_workers=workers > 0)


def test_worker_batches_are_the_in_process_batches_and_kept_ones_stay_intact(shards: Path) -> None:
    # in one process: each sample's tensors, by key
    def by_key(batches: list[OmniBatch]) -> dict[str, str]:
        out = {}
        for b in batches:
            for i, k in enumerate(b.keys):
                out[k] = hashlib.sha256(
                    b"".join(
                        mb.data[mb.subject == i].numpy().tobytes()
                        + (b"" if mb.mask is None else mb.mask[mb.subject == i].numpy().tobytes())
                        for _, mb in sorted(b.modalities.items())
                    )
                ).hexdigest()
        return out

    plain = by_key(list(_loader(shards, 0)))

    loader = _loader(shards, 2)
    streamed, inodes, batches = [], set(), 0
    for _ in range(3):  # epochs: the workers' arenas come back and are written again
        for b in loader:
            streamed.append(_digest(b))
            inodes.add(fd_id(b.modalities["clinical"].data.untyped_storage()._share_fd_cpu_()[0]))
            batches += 1
    # one buffer per batch, and far fewer buffers than batches: they were reused
    assert len(inodes) <= 2 * arena.SLOTS < batches

    kept_loader = _loader(shards, 2)
    kept = [b for _ in range(3) for b in kept_loader]  # all held at once: no arena may be reused under them
    assert [_digest(b) for b in kept] == streamed  # same batches, in the same order, none written over
    assert by_key(kept[: len(kept) // 3]) == plain  # and the same samples as without workers
    del kept, b  # b: the last streamed batch
    assert arena.held() == 0  # every arena of a dropped batch is handed back


def test_a_batch_pickles_plainly_outside_the_worker_path() -> None:
    batch = OmniBatch(keys=["a"], modalities={}, num_events=torch.tensor([0]))
    object.__setattr__(batch, "_arena", None)
    again = pickle.loads(pickle.dumps(batch))
    assert again.keys == ["a"] and torch.equal(again.num_events, batch.num_events)
