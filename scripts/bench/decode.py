"""Benchmark: a loader worker's own work per sample (read the tar, check and decode the members, crop, collate), the
current loader against what it did before, in this process, rounds alternating (CPU seconds, the best and the median).

Arms, each adding one change to the one before:

- ``before``: MRI and audio cast from the shard's float16 to float32 in decode (the batch holds float32), and
  ``meta.json`` parsed by ``json``;
- ``float16 batch``: MRI and audio handed out as stored (``Spec.batch_dtype``: a view of the tar reader's
  buffer, no cast; half their bytes in the batch), their finiteness checked on the float16 bits;
- ``+ masks on the device``: ECG, wearable and omics sent with NaN where missing and no mask (the encoder
  masks them on the device); before, the worker made the mask (``isfinite``, ECG's per-lead ``any``) and
  zeroed the NaN (``nan_to_num``), as :func:`host_masks` does;
- ``+ orjson``: ``meta.json`` parsed by orjson (``datamodules.schema.loads``);
- ``+ read unzeroed``: each tar member read into a new ``bytes`` (one copy) where it was read into a
  ``bytearray``, which is zeroed first (:func:`read_zeroed`); arrays are then read-only views;
- ``+ float16 ECG and wearable``: ECG and wearable stored (and batched) as float16 (``StoredSpec.storage``, the
  default), where they were float32 (the arms before read shards of the same cohort built with
  ``storage=float32``, as the loader still reads them): a fifth fewer bytes a sample; the current loader.

Prints ms per sample of each and the ratio to ``before``, and writes them to ``--out`` (JSON).

    python scripts/bench/decode.py [--subjects 128] [--rounds 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
import torch
from common import RESULTS, cohort, float32_shards, write_results

from datamodules import arena, samples
from datamodules.collate import Collator
from datamodules.loader import CropConfig, ShardDataset
from datamodules.schema import OmniBatch, Spec
from datamodules.shards import format as shard_format
from datamodules.specs import AudioSpec, VolumeSpec

ARMS = ("before", "float16 batch", "+ masks on the device", "+ orjson", "+ read unzeroed", "+ float16 ECG and wearable")


def read_zeroed(f: BinaryIO, n: int, name: str) -> bytearray:
    """How the tar reader read a member before (datamodules/shards/format.py then): into a zeroed ``bytearray``."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n and (k := f.readinto(view[got:])):
        got += k
    view.release()
    del buf[got:]
    return buf


def host_masks(batch: OmniBatch, specs: dict[str, Spec]) -> None:
    """What the worker's collation did before masks were made on the device (datamodules/collate.py then)."""
    for m, mb in batch.modalities.items():
        if m == "clinical" or not specs[m].nan_is_missing:
            continue
        out = mb.data.numpy()
        finite = np.isfinite(out)
        mb.mask = torch.from_numpy(np.any(finite, axis=-1) if specs[m].kind == "waveform" else finite)
        torch.nan_to_num_(mb.data, nan=0.0, posinf=0.0, neginf=0.0)


@contextmanager
def arm(name: str) -> Iterator[bool]:
    """The loader as it was before the changes ``name`` does not have yet."""
    kept = VolumeSpec.batch_dtype, AudioSpec.batch_dtype, samples.loads, shard_format._read_member
    at = ARMS.index(name)
    if at < ARMS.index("float16 batch"):
        VolumeSpec.batch_dtype = AudioSpec.batch_dtype = "float32"
    if at < ARMS.index("+ orjson"):
        samples.loads = json.loads
    if at < ARMS.index("+ read unzeroed"):
        shard_format._read_member = read_zeroed
    try:
        yield at < ARMS.index("+ masks on the device")  # the worker makes the masks
    finally:
        VolumeSpec.batch_dtype, AudioSpec.batch_dtype, samples.loads, shard_format._read_member = kept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=128, help="size of the synthetic demo cohort")
    p.add_argument("--rounds", type=int, default=40, help="timed train epochs of each arm, alternating")
    p.add_argument("--out", default=str(RESULTS / "decode.json"))
    a = p.parse_args()
    torch.set_num_threads(1)  # a loader worker's share: one core
    arena.retain_heap()
    root = cohort(a.subjects)
    now, before = (
        ShardDataset(r, "train", shuffle=True, seed=0, crop=CropConfig(max_events=32))
        for r in (root, float32_shards(root))
    )
    assert now.index["clinical_codes"] == before.index["clinical_codes"]

    def epoch(ds: ShardDataset, masks_on_host: bool) -> tuple[float, float, int]:
        """CPU ms per sample of a worker's work (read, shuffle buffer, decode, crop, collate in batches of 16, as
        the training loader's worker does it: ``ShardDataset``'s own iterator); the batch's MiB per sample; the
        samples."""
        collate = Collator(ds.specs, ds.index["clinical_codes"])  # outside the timing: a dict of the codes
        t = time.process_time()
        tls, batches = [], []
        for tl in ds:
            tls.append(tl)
            if len(tls) == 16:
                batches.append(collate(tls))
                tls = []
        batches += [collate(tls)] if tls else []
        for b in batches if masks_on_host else ():
            host_masks(b, ds.specs)
        n = sum(len(b.keys) for b in batches)
        ms = (time.process_time() - t) / n * 1e3
        tensors = [x for b in batches for mb in b.modalities.values() for x in (mb.data, mb.mask) if x is not None]
        mib = sum(x.nbytes for x in tensors)
        return ms, mib / n / 2**20, n

    times: dict[str, list[float]] = {name: [] for name in ARMS}
    mib: dict[str, float] = {}
    for _ in range(a.rounds):
        for name in ARMS:
            with arm(name) as masks_on_host:
                ms, mib[name], n = epoch(now if name == ARMS[-1] else before, masks_on_host)
            times[name].append(ms)
    base = min(times["before"])
    print(f"read + decode + crop + collate, one process, {n} train samples of the demo cohort, {a.rounds} rounds:")
    rows = {}
    for name in ARMS:
        best, med = min(times[name]), statistics.median(times[name])
        rows[name] = {"best_ms": best, "median_ms": med, "batch_mib_per_sample": mib[name], "speedup": base / best}
        print(
            f"  {name:22s} {best:6.3f} ms/sample (median {med:6.3f}), {mib[name]:.2f} MiB/sample in the batch, "
            f"x{base / best:.2f} against before"
        )
    write_results(a.out, {"samples": n, "rounds": a.rounds, "arms": rows})


if __name__ == "__main__":
    main()
