"""Batch memory for DataLoader workers: every tensor of a batch in one shared-memory buffer (an arena), and
arenas reused once the main process has let go of them.

Why: torch sends each tensor a worker makes through its own shared-memory file and file descriptor. For a
batch of ``OmniBatch`` that is some 65 descriptors (each a connection to the worker's resource sharer) and
fresh shared pages for every megabyte of data (a page fault and zeroing per 4 KiB), which cost more CPU than
decoding the batch (``scripts/bench/feed.py``). Here a worker carves a batch's tensors out of one arena, so a
batch crosses as one descriptor, and writes the next batches into arenas whose pages are already mapped.

Reuse is safe, not timed: the main process keeps a weak reference to each arena it receives and marks it free
(a byte in a small shared flag array of the worker's pool) only once that reference has expired, i.e. once no
tensor, view or NumPy array of that batch is alive anywhere in the main process. A worker writes only into an
arena so marked; with none free it makes a new one (up to ``slots``), and beyond that a one-off arena, as
before. A tensor that does not fit the arena is made on its own, and the arena's size grows to the largest
batch seen, so only a worker's first batches (and a larger one) cross tensor by tensor.

A worker also keeps the memory it frees (:func:`retain_heap`): glibc's malloc hands large blocks back to the
kernel and maps them again for the next sample, and every 4 KiB page mapped afresh is a page fault that zeroes
it, 50 times the cost of copying it (``scripts/bench/feed.py``: ~100-250 faults a sample, 0 with it).

Only the pickling that carries worker results to the main process (``multiprocessing``'s ``ForkingPickler``)
is changed; ``torch.save`` and plain ``pickle`` see a batch as before. Outside a DataLoader worker nothing of
this runs: tensors are plain ``torch.empty``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import sys
import threading
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import get_worker_info

ALIGN = 64  # bytes: each tensor of an arena starts on a cache line
SLOTS = 6  # arenas a worker keeps: the batches in the prefetch queue, the ones the main process holds, one more
GROWTH = 1.25  # a new arena holds the largest batch seen this much over


#: glibc's ``mallopt`` parameters (malloc.h), and what a loader worker sets them to
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # blocks below this come from the heap, not a mapping of their own (glibc's maximum)
TRIM_THRESHOLD = 512 << 20  # free memory at the heap's top kept up to this, not handed back to the kernel

_retained = False


def retain_heap() -> bool:
    """Makes this process's malloc keep the memory it frees for its next allocations, instead of handing it back
    to the kernel and faulting it in again (module docstring). Called once in each DataLoader worker, whose
    allocations repeat batch after batch, so its heap settles at its peak (a few hundred MiB; the batch arenas
    are apart). glibc only (Linux); elsewhere, or if ``mallopt`` refuses, nothing changes. True when set."""
    global _retained
    if _retained or not sys.platform.startswith("linux"):
        return _retained
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _retained = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _retained


def shared_empty(nbytes: int) -> torch.Tensor:
    """``nbytes`` of shared memory as a flat uint8 tensor (what torch makes for a worker's tensors)."""
    t = torch.empty(0, dtype=torch.uint8)
    return t.new(t._typed_storage()._new_shared(max(nbytes, 1))).view(-1)[:nbytes]


class Pool:
    """A worker's arenas, and the flags by which the main process hands them back (1: free)."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.flags = torch.zeros(slots, dtype=torch.uint8).share_memory_()
        self.arenas: list[torch.Tensor | None] = [None] * slots
        self.size = 0  # bytes of the largest batch seen

    def acquire(self) -> tuple[int, torch.Tensor | None]:
        """A free arena of at least the largest batch's size: ``(slot, buffer)``; ``(-1, buffer)`` for a
        one-off arena when every slot is in use; ``(-1, None)`` before the first batch's size is known."""
        if not self.size:
            return -1, None
        want = math.ceil(self.size * GROWTH / ALIGN) * ALIGN
        flags = self.flags.numpy()
        for slot, arena in enumerate(self.arenas):
            if arena is not None and flags[slot] == 1:
                flags[slot] = 0
                if arena.numel() >= self.size:
                    return slot, arena
                self.arenas[slot] = None  # too small for today's batches: its slot gets a larger one
        for slot, arena in enumerate(self.arenas):
            if arena is None:
                self.arenas[slot] = shared_empty(want)
                return slot, self.arenas[slot]
        return -1, shared_empty(want)


class Allocator:
    """Makes one batch's tensors: in a DataLoader worker from an arena of the worker's :class:`Pool` (a tensor
    that does not fit is made on its own, in shared memory); elsewhere plain ``torch.empty``."""

    def __init__(self) -> None:
        info = get_worker_info()
        self.pool: Pool | None = None
        self.slot, self.buffer, self.used, self.need = -1, None, 0, 0
        if info is not None:
            self.pool = _worker_pool()
            self.slot, self.buffer = self.pool.acquire()

    def empty(self, shape: tuple[int, ...], dtype: str | np.dtype) -> tuple[torch.Tensor, np.ndarray]:
        """An uninitialised tensor and a NumPy view of it to fill."""
        empty = np.empty(0 if self.pool is not None else shape, dtype=dtype)
        if self.pool is None:
            t = torch.from_numpy(empty)
            return t, empty
        nbytes = math.prod(shape) * empty.itemsize
        start = math.ceil(self.used / ALIGN) * ALIGN
        self.need = math.ceil(self.need / ALIGN) * ALIGN + nbytes
        if self.buffer is not None and start + nbytes <= self.buffer.numel():
            self.used = start + nbytes
            raw = self.buffer[start : start + nbytes]
        else:  # no arena yet, or it is full: this tensor alone, in shared memory
            raw = shared_empty(nbytes)
        t = raw.view(torch.from_numpy(empty).dtype).view(shape)
        return t, t.numpy()

    def tensor(self, values: Any, dtype: str | np.dtype) -> torch.Tensor:
        """``torch.tensor(values)`` as ``dtype``, made by :meth:`empty`."""
        a = np.asarray(values, dtype=dtype)
        t, out = self.empty(a.shape, a.dtype)
        out[...] = a
        return t

    def seal(self, batch: Any) -> Any:
        """Marks ``batch`` as made in this allocator's arena (so it crosses to the main process as one buffer
        and its arena comes back) and records its size for the next arenas; returns it."""
        if self.pool is not None:
            self.pool.size = max(self.pool.size, self.need)
            if self.buffer is not None:
                object.__setattr__(batch, "_arena", (self.pool.flags, self.slot, self.buffer))
        return batch


_pool: Pool | None = None


def _worker_pool() -> Pool:
    global _pool
    if _pool is None:
        _pool = Pool()
    return _pool


# ---- the main process: a received arena is handed back once nothing of its batch is alive -------------------

_lock = threading.Lock()  # batches are rebuilt in the pin-memory thread when there is one
_held: list[tuple[StorageWeakRef, torch.Tensor, int]] = []


def _hand_back() -> None:
    with _lock:
        alive = []
        for ref, flags, slot in _held:
            if ref.expired():
                flags[slot] = 1
            else:
                alive.append((ref, flags, slot))
        _held[:] = alive


def held() -> int:
    """Arenas received by this process whose batches are still alive."""
    _hand_back()
    return len(_held)


def _rebuild(cls: type, fields: dict[str, Any], arena: tuple[torch.Tensor, int, torch.Tensor] | None) -> Any:
    _hand_back()
    if arena is not None:
        flags, slot, buffer = arena
        if slot >= 0:
            with _lock:
                _held.append((StorageWeakRef(buffer.untyped_storage()), flags, slot))
    return cls(**fields)


def _reduce(batch: Any) -> tuple[Any, tuple[Any, ...]]:
    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return _rebuild, (type(batch), fields, getattr(batch, "_arena", None))


def register(cls: type) -> None:
    """Send ``cls`` (a dataclass whose tensors an :class:`Allocator` made) from worker to main process with
    its arena."""
    ForkingPickler.register(cls, _reduce)
