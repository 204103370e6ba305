"""Batches from DataLoader workers cross in one reused shared buffer (datamodules/arena.py): the same batches
as without workers, a batch the caller keeps is never written over, and the buffers are reused."""

from __future__ import annotations

import hashlib
import pickle
import platform
from pathlib import Path

import psutil
import pytest
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


def _page_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])  # minflt, proc(5)


def _worker_faults_per_sample(shards: Path) -> float:
    """Page faults a DataLoader worker takes per sample in an epoch after two: the least of four (an epoch
    with a batch larger than any before also maps a larger arena, once)."""
    others = {p.pid for p in psutil.Process().children()}
    loader = ShardLoader(ShardDataset(shards, "train", seed=5), batch_size=8, num_workers=1, persistent_workers=True)
    for _ in range(2):
        sum(len(b) for b in loader)
    (worker,) = [p for p in psutil.Process().children() if p.pid not in others]
    per_epoch = []
    for _ in range(4):
        before = _page_faults(worker.pid)
        samples = sum(len(b) for b in loader)
        per_epoch.append((_page_faults(worker.pid) - before) / samples)
    del loader
    return min(per_epoch)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_a_worker_keeps_the_memory_it_frees_so_a_sample_costs_no_page_faults(
    shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a page mapped afresh (zeroed) costs ~50 times copying it: without retain_heap glibc hands a worker's freed
    # blocks back to the kernel and each sample faults its buffers in again
    kept = _worker_faults_per_sample(shards)
    monkeypatch.setattr(arena, "retain_heap", lambda: False)
    monkeypatch.setattr(arena, "_retained", False)
    given_back = _worker_faults_per_sample(shards)
    print(f"page faults per sample in a worker: {kept:.1f} with the heap kept, {given_back:.1f} without")
    assert kept < 20  # without it: 170-520 in most runs here (glibc's own threshold settles in some)
