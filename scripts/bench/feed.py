"""Benchmark: the shard loader against a GPU's appetite. How many loader CPU cores does one GPU need?

Appetite: the samples per second one H200 consumes training the base backbone (``experiment=base_gpu``: its
batch size, ``max_events`` and ``row_len``) at 40% MFU of its dense bf16 peak (989.4 TFLOP/s): the model FLOPs
per token of a training step, counted as ``scripts/gpu_check.py`` counts them (a forward under FlopCounterMode,
attention on the pairs the block-causal mask allows, x3), times the tokens per sample of the built-in synthetic
demo cohort as the training loader crops it.

Supply: the loader's samples per CPU second: what a DataLoader worker does (read the tar, check and decode the
members, crop, collate) through ``OmniDataModule``'s own train loader, with 0 (in the main process) to N workers
(N: the cores this process may use), counted in CPU seconds of the main process and its workers, so that other
work on a shared machine does not skew it (the wall-clock rate is printed too). Then where that time goes: each
stage in one process, and decode and collate per modality.

Prints how many loader cores one GPU needs (target: <= 4) and writes the figures to ``--out`` (JSON).

    python scripts/bench/feed.py [--subjects 128] [--rounds 4] [--flop-batches 2] [--workers N] [--storage float32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from common import (
    RESULTS,
    build_task,
    cohort,
    float32_shards,
    load_batches,
    model_config,
    timed,
    tokens_per_instance,
    write_results,
)
from omegaconf import OmegaConf

from datamodules import arena
from datamodules.collate import Collator
from datamodules.datamodule import OmniDataModule, ShardLoader
from datamodules.loader import CropConfig, ShardDataset, crop_timeline
from datamodules.samples import decode_timeline
from datamodules.schema import MODALITIES, OmniBatch, Timeline

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts/: gpu_check.py, the FLOPs count of MFU
import gpu_check  # noqa: E402

EXPERIMENT = Path(__file__).resolve().parents[2] / "configs" / "experiment" / "base_gpu.yaml"
SIZE = "base"  # the backbone experiment=base_gpu selects
MFU = 0.40
TARGET_CORES = 4


def settings() -> dict[str, int]:
    """``experiment=base_gpu``'s batch size, ``max_events`` and ``row_len``."""
    exp = OmegaConf.load(EXPERIMENT)
    return {"batch_size": exp.data.batch_size, "max_events": exp.data.max_events, "row_len": exp.model.row_len}


def instance_tokens(batch: OmniBatch, k: dict[str, int]) -> int:
    """Backbone tokens of a batch: each instance gives its encoder's ``k``."""
    return sum(len(mb) * k[m] for m, mb in batch.modalities.items())


def appetite(root: Path, s: dict[str, int], flop_batches: int, peak_tflops: float) -> dict[str, Any]:
    """Samples per second one GPU consumes at :data:`MFU`: FLOPs per token x tokens per sample."""
    task = build_task(model_config(root, SIZE, row_len=s["row_len"]))
    k = tokens_per_instance(task)
    batches = load_batches(root, batch_size=s["batch_size"], max_events=s["max_events"])  # one epoch, training crop
    tokens = sum(instance_tokens(b, k) for b in batches)
    samples = sum(len(b) for b in batches)
    flops = counted = 0.0
    for b in batches[:flop_batches]:
        f, t, _ = gpu_check.count_step_flops(task, b)
        assert t == instance_tokens(b, k), "the model's tokens are its instances' k"
        flops, counted = flops + f, counted + t
    per_token = flops / counted
    per_sample = per_token * tokens / samples
    return {
        "backbone": SIZE,
        **s,
        "parameters": sum(p.numel() for p in task.parameters()),
        "model_flops_per_token": per_token,
        "tokens_per_sample": tokens / samples,
        "model_flops_per_sample": per_sample,
        "mfu": MFU,
        "peak_tflops": peak_tflops,
        "gpu_samples_per_s": MFU * peak_tflops * 1e12 / per_sample,
    }


def cpu_seconds() -> tuple[float, int]:
    """CPU seconds (user + system) of this process and its live children (DataLoader workers), and their page
    faults (minor: a page mapped afresh, zeroed or copied; in a microVM each costs ~50 times copying the page)."""
    me = psutil.Process()
    total, faults = 0.0, 0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            with open(f"/proc/{p.pid}/stat") as f:
                faults += int(f.read().rsplit(")", 1)[1].split()[7])  # minflt (proc(5))
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            continue
        total += t.user + t.system
    return total, faults


#: CPU seconds of one timed round at least (whole epochs): process CPU times tick in 10 ms, so a round of one
#: epoch of the demo cohort (~0.15 s) would be read to +-7%
ROUND_S = 1.0


def supply(root: Path, s: dict[str, int], workers: int, rounds: int) -> dict[str, Any]:
    """The training loader's steady rate with ``workers`` workers (persistent, after a warm-up epoch): its best
    round (whole epochs, at least :data:`ROUND_S` CPU seconds) by CPU seconds per sample (the least disturbed by
    other work), and the median wall-clock rate."""
    dm = OmniDataModule(root, batch_size=s["batch_size"], num_workers=workers, max_events=s["max_events"], seed=0)
    loader = ShardLoader(dm.dataset("train"), s["batch_size"], workers, persistent_workers=workers > 0)
    sum(len(b) for b in loader)  # warm-up: workers started, shards in the page cache
    cpu, rate, faults = [], [], []
    for _ in range(rounds):
        (c, f), t, n = cpu_seconds(), time.perf_counter(), 0
        while not n or cpu_seconds()[0] - c < ROUND_S:
            n += sum(len(b) for b in loader)
        c1, f1 = cpu_seconds()
        cpu.append((c1 - c) / n)
        faults.append((f1 - f) / n)
        rate.append(n / (time.perf_counter() - t))
    del loader
    return {
        "workers": workers,
        "samples_per_round": n,
        "samples_per_s": statistics.median(rate),
        "cpu_ms_per_sample": min(cpu) * 1e3,
        "samples_per_cpu_s": 1 / min(cpu),
        "page_faults_per_sample": faults[int(np.argmin(cpu))],
    }


def stages(root: Path, s: dict[str, int], repeats: int) -> dict[str, Any]:
    """CPU ms per sample of each loader stage in one process (one train epoch, the best of ``repeats``), decode
    and collate per modality (decoding only ``clinical`` and that modality, less ``clinical`` alone; collate
    likewise)."""
    ds = ShardDataset(root, "train", shuffle=True, seed=0, crop=CropConfig(max_events=s["max_events"]))
    collate = Collator(ds.specs, ds.index["clinical_codes"])
    bs = s["batch_size"]

    def decode(modalities: Sequence[str] | None) -> list[Timeline]:
        return [decode_timeline(x, ds.specs, "", modalities=modalities) for x in raw]

    def crop(timelines: list[Timeline]) -> list[Timeline]:
        return [crop_timeline(tl, ds.crop, np.random.default_rng(i)) for i, tl in enumerate(timelines)]

    def batches(timelines: list[Timeline]) -> list[OmniBatch]:
        return [collate(timelines[i : i + bs]) for i in range(0, len(timelines), bs)]

    raw, t_read = timed(lambda: list(ds.raw_samples(0)), repeats)
    n = len(raw)
    full, t_decode = timed(lambda: decode(None), repeats)
    cropped, t_crop = timed(lambda: crop(full), repeats)
    collated, t_collate = timed(lambda: batches(cropped), repeats)
    out = sum(t.nbytes for b in collated for mb in b.modalities.values() for t in (mb.data, mb.mask) if t is not None)
    base, t_base = timed(lambda: decode(["clinical"]), repeats)
    base = crop(base)
    _, c_base = timed(lambda: batches(base), repeats)
    per: dict[str, dict[str, float]] = {"clinical + meta.json": {"decode_ms": t_base, "collate_ms": c_base}}
    for m in [m for m in MODALITIES if m in ds.specs and m != "clinical"]:
        tls, t = timed(lambda m=m: decode(["clinical", m]), repeats)
        cr = crop(tls)
        _, c = timed(lambda cr=cr: batches(cr), repeats)
        mb = sum(x.data.nbytes for tl in full for e in tl.events for x in e.measurements if x.modality == m)
        per[m] = {"decode_ms": t - t_base, "collate_ms": c - c_base, "decoded_mb": mb / 2**20}
    ms = 1e3 / n
    per = {m: {k: v * (ms if k.endswith("_ms") else 1 / n) for k, v in d.items()} for m, d in per.items()}
    stored = sum(len(v) for x in raw for v in x.values() if isinstance(v, (bytes, bytearray)))
    return {
        "samples": n,
        "stored_mb_per_sample": stored / n / 2**20,
        "batch_mb_per_sample": out / n / 2**20,
        "ms_per_sample": {
            "read (tar, shuffle)": t_read * ms,
            "decode (checks, .npy)": t_decode * ms,
            "crop": t_crop * ms,
            "collate": t_collate * ms,
        },
        "per_modality_per_sample": per,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=128, help="size of the synthetic demo cohort")
    p.add_argument(
        "--rounds",
        type=int,
        default=4,
        help=f"timed rounds per worker count (after a warm-up epoch), each whole epochs of at least {ROUND_S:g} CPU s",
    )
    p.add_argument("--repeats", type=int, default=3, help="runs of each stage timed in one process (the least kept)")
    p.add_argument("--flop-batches", type=int, default=2, help="batches whose FLOPs are counted (base model, CPU)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="the most workers tried")
    p.add_argument("--peak-tflops", type=float, default=gpu_check.H200_BF16_DENSE_TFLOPS)
    p.add_argument(
        "--storage",
        choices=["float16", "float32"],
        default="float16",
        help="how ECG and wearable are stored: float16 (the default build) or float32 (the shards before it)",
    )
    p.add_argument("--out", help="results JSON (default: results/feed.json, feed-float32.json with --storage float32)")
    a = p.parse_args()
    a.out = a.out or str(RESULTS / ("feed.json" if a.storage == "float16" else "feed-float32.json"))
    torch.set_num_threads(1)  # a loader worker's share: one core
    arena.retain_heap()  # and its malloc (as ShardDataset sets it in each worker), for the stages and 0 workers
    root = cohort(a.subjects)
    if a.storage == "float32":
        root = float32_shards(root)
    s = settings()

    gpu = appetite(root, s, a.flop_batches, a.peak_tflops)
    print(
        f"GPU: base backbone ({gpu['parameters'] / 1e6:.0f}M parameters), {gpu['model_flops_per_token'] / 1e9:.2f} "
        f"GFLOP/token x {gpu['tokens_per_sample']:.0f} tokens/sample = {gpu['model_flops_per_sample'] / 1e9:.0f} "
        f"GFLOP/sample; at {MFU:.0%} MFU of {a.peak_tflops:.0f} TFLOP/s: {gpu['gpu_samples_per_s']:,.0f} samples/s"
    )
    prof = stages(root, s, a.repeats)
    total = sum(prof["ms_per_sample"].values())
    print(
        f"\nloader stages, one process ({prof['stored_mb_per_sample']:.2f} MiB stored per sample, "
        f"{prof['batch_mb_per_sample']:.2f} MiB in the batch):"
    )
    for stage, ms in prof["ms_per_sample"].items():
        print(f"  {stage:24s} {ms:7.2f} ms/sample  {ms / total:5.1%}")
    print(f"  {'total':24s} {total:7.2f} ms/sample  -> {1e3 / total:.0f} samples/s per core")
    print("per modality, per sample:   decode ms  collate ms  decoded MiB")
    for m, d in prof["per_modality_per_sample"].items():
        mib = f"{d['decoded_mb']:11.3f}" if "decoded_mb" in d else ""
        print(f"  {m:24s} {d['decode_ms']:9.2f} {d['collate_ms']:11.2f} {mib}")

    runs = []
    print("\nthe training loader (OmniDataModule), steady state:")
    for w in range(0, a.workers + 1):
        r = supply(root, s, w, a.rounds)
        r["cores_per_gpu"] = gpu["gpu_samples_per_s"] / r["samples_per_cpu_s"]
        runs.append(r)
        print(
            f"  {w} worker(s): {r['samples_per_cpu_s']:6.1f} samples per CPU second ({r['cpu_ms_per_sample']:5.1f} "
            f"ms/sample, {r['page_faults_per_sample']:4.0f} page faults) -> {r['cores_per_gpu']:5.1f} cores per GPU; "
            f"{r['samples_per_s']:6.1f} samples/s wall"
        )
    need = runs[-1]["cores_per_gpu"]
    verdict = "meets" if need <= TARGET_CORES else "misses"
    print(f"\none GPU needs {need:.1f} loader cores ({a.workers} workers): {verdict} the target of <= {TARGET_CORES}")
    write_results(
        a.out,
        {
            "cpu": os.uname().machine,
            "cores": len(os.sched_getaffinity(0)),
            "load_average": os.getloadavg(),  # a shared machine: the CPU-second figures are less disturbed than wall
            "gpu": gpu,
            "stages": prof,
            "loader": runs,
            "cores_per_gpu": need,
            "target_cores": TARGET_CORES,
        },
    )


if __name__ == "__main__":
    main()
