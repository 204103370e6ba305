"""Benchmark: peak memory and time of one training step vs timeline length, with and without activation
checkpointing, up to a year (and more) of daily wearable windows.

A long recording becomes many windows at build time, each its own event (a year of a wearable: ~365 daily
``[channels, 1440]`` windows). Here one subject's timeline (the synthetic cohort's training timeline with
the most events, among those with a wearable day) is made ``n`` events long as such a timeline would be
(:func:`daily`): ``n - visits`` consecutive daily wearable windows (the subject's own wearable days, reused in
turn) with its visits (every event, its wearable measurements left out) spread evenly over them. With
``--tiled`` it is the subject's events repeated in time instead (:func:`tiled`, the first version of this
benchmark). The timeline is collated as the loader does and given to a ``small`` backbone (d=256, 4 layers;
``--size``) with the default encoders of the cheaper modalities (``--modalities``; with all of them the
video and MRI encoders' activations dominate), ``row_len`` = the timeline.

Each configuration runs in a fresh process (forked after the imports and the data): it builds the model
and runs one forward (objectives) + backward in training mode, on CPU; its peak is the growth of the
process's peak resident memory (``VmHWM``, reset just before the step through ``/proc/self/clear_refs``; a
1 ms ``psutil`` sampler where that is not allowed) over the resident memory before it, with glibc's mmap
threshold fixed at 128 KiB so that a freed tensor leaves the resident set at once (with its default,
growing threshold the figures wandered by +-10% from one length to the next). Includes the gradients
(constant) and the encoders' activations (the same with and without checkpointing, which covers the
backbone blocks only: ``model.backbone.activation_checkpointing``, each block under
``torch.utils.checkpoint`` in training mode). Step time: the median wall-clock seconds of ``--steps`` more
forward + backward passes after that first one, in the same process.

Prints events, wearable days, tokens, peak MiB and step seconds without / with checkpointing, and the peak
ratio; checkpointing should cut the backbone's share, more so the longer the timeline. The default run
(6 lengths up to 512 events, 1 thread) takes 1-2 minutes on a CPU; ``--events``, ``--size`` and
``--steps`` for more.

    python scripts/bench/memory.py [--events 16 64 128 256 365 512] [--size small] [--steps 2] [--tiled]
        [--modalities all] [--threads 1]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import multiprocessing as mp
import statistics
import threading
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import torch
from common import RESULTS, build_task, cohort, model_config, token_metadata, tokens_per_instance, write_results

from datamodules.collate import Collator
from datamodules.loader import ShardDataset
from datamodules.schema import Event, OmniBatch, Timeline
from omnimodal.pretraining.task import PretrainTask


def tiled(tl: Timeline, n_events: int, gap_days: float = 30.0) -> Timeline:
    """``tl``'s events repeated in time to ``n_events``: copy c is shifted by c x (span + gap)."""
    span = tl.events[-1].time_days - tl.events[0].time_days + gap_days
    events = [
        Event(ev.time_days + c * span, ev.age_days + c * span, ev.measurements)
        for c in range(-(-n_events // len(tl.events)))
        for ev in tl.events
    ][:n_events]
    return Timeline(tl.key, tl.static, events, tl.labels)


def daily(tl: Timeline, n_days: int, modality: str = "wearable") -> Timeline:
    """``tl`` as it would be with a long ``modality`` recording cut into ``n_days`` day windows: ``n_days``
    consecutive daily windows (``tl``'s own ``modality`` instances, reused in turn; none if it has none) and
    ``tl``'s visits (its events without their ``modality`` measurements) spread evenly over them, half a day
    after a window (separate events)."""
    days = [m for ev in tl.events for m in ev.measurements if m.modality == modality]
    visits = [ms for ev in tl.events if (ms := [m for m in ev.measurements if m.modality != modality])]
    n_days = n_days if days else 0
    t0, age0 = tl.events[0].time_days, tl.events[0].age_days
    at = [i * max(n_days, len(visits)) // max(len(visits), 1) + 0.5 for i in range(len(visits))]
    events = [Event(t0 + d, age0 + d, [days[d % len(days)]]) for d in range(n_days)]
    events += [Event(t0 + t, age0 + t, ms) for t, ms in zip(at, visits)]
    return Timeline(tl.key, tl.static, sorted(events, key=lambda ev: ev.time_days), tl.labels)


def long_timeline(tl: Timeline, n_events: int, tiled_events: bool) -> Timeline:
    """``n_events`` events of ``tl``: tiled in time, or its visits and daily windows (:func:`daily`)."""
    if tiled_events:
        return tiled(tl, n_events)
    visits = len(daily(tl, 0).events)
    out = daily(tl, max(n_events - visits, 0))
    return replace(out, events=out.events[:n_events])


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def step(task: PretrainTask, batch: OmniBatch, gen: torch.Generator) -> None:
    task.zero_grad(set_to_none=True)
    task.objectives(task.model, batch, gen)["loss"].backward()


def step_peak(task: PretrainTask, batch: OmniBatch, gen: torch.Generator) -> int:
    """Bytes the process's resident memory peaks above its level before one forward + backward."""
    gc.collect()
    exact = reset_peak()
    proc, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:  # where VmHWM cannot be reset
        while not done.wait(0.001):
            peak[0] = max(peak[0], proc.memory_info().rss)

    sampler = None if exact else threading.Thread(target=sample, daemon=True)
    before = status_kib("VmRSS") * 1024
    if sampler:
        sampler.start()
    step(task, batch, gen)
    done.set()
    if sampler:
        sampler.join()
    return (status_kib("VmHWM") * 1024 if exact else max(peak[0], proc.memory_info().rss)) - before


def child(conn: Connection, model: dict[str, Any], batch: OmniBatch, steps: int) -> None:
    """In a fresh process: the first step's peak memory, then the median time of ``steps`` more."""
    task = build_task(model)
    task.train()  # checkpointing applies in training mode only
    gen = torch.Generator().manual_seed(0)
    peak = step_peak(task, batch, gen)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step(task, batch, gen)
        seconds.append(time.perf_counter() - start)
    conn.send((peak, statistics.median(seconds) if seconds else float("nan")))


def fixed_mmap_threshold() -> bool:
    """glibc: allocations over 128 KiB always mmap'd, so freed tensors leave the resident set at once (its
    default threshold grows after each large free, and the heap then keeps freed tensors, which blurs peaks)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=128)
    p.add_argument("--shards", help="a shard folder to take the subject from (default: the built-in cohort)")
    p.add_argument("--events", type=int, nargs="+", default=[16, 64, 128, 256, 365, 512])
    p.add_argument("--size", default="small", help="backbone size (configs/model/backbone)")
    p.add_argument("--steps", type=int, default=2, help="timed steps after the first (peak) one")
    p.add_argument("--tiled", action="store_true", help="the subject's events repeated, no daily windows")
    p.add_argument(
        "--modalities",
        nargs="+",
        default=["clinical", "omics", "wearable", "ecg"],
        help="'all' for every modality (then the encoders' activations dominate)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "memory.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    fixed_mmap_threshold()
    mods = None if a.modalities == ["all"] else a.modalities
    root = Path(a.shards) if a.shards else cohort(a.subjects)
    ds = ShardDataset(root, "train", shuffle=False, modalities=mods)
    # the most events (for daily windows, among those with some of the wearable days to reuse)
    longest = max(ds, key=lambda t: (a.tiled or "wearable" in t.count(), len(t.events)))
    collate = Collator(ds.specs, ds.index["clinical_codes"])
    models = {
        c: model_config(root, a.size, activation_checkpointing=c, row_len=None, modalities=mods) for c in (False, True)
    }
    probe = build_task(models[False])
    k = tokens_per_instance(probe)
    params = sum(p.numel() * p.element_size() for p in probe.parameters()) / 2**20
    del probe
    ctx = mp.get_context("fork")  # a fresh heap per configuration, without re-importing torch
    rows = []
    print(f"modalities: {', '.join(mods or ['all'])}; tokens per instance: {k}")
    print(
        f"{'events':>6} {'wear':>5} {'tokens':>6} {'no ckpt MiB':>11} {'ckpt MiB':>9} {'ratio':>6} "
        f"{'no ckpt s':>9} {'ckpt s':>7}"
    )
    for n in a.events:
        tl = long_timeline(longest, n, a.tiled)
        batch = collate([tl])
        peak, secs = {}, {}
        for c, model in models.items():
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=child, args=(send, model, batch, a.steps))
            proc.start()
            got, secs[c] = recv.recv()
            peak[c] = got / 2**20
            proc.join()
        tokens = token_metadata(batch, k)[0].numel()
        rows.append(
            {
                "events": n,
                "wearable": tl.count().get("wearable", 0),
                "tokens": tokens,
                "peak_mib": round(peak[False], 1),
                "peak_mib_checkpointing": round(peak[True], 1),
                "ratio": round(peak[True] / peak[False], 3),
                "step_s": round(secs[False], 3),
                "step_s_checkpointing": round(secs[True], 3),
            }
        )
        print(
            f"{n:>6} {rows[-1]['wearable']:>5} {tokens:>6} {peak[False]:>11.1f} {peak[True]:>9.1f} "
            f"{peak[True] / peak[False]:>6.3f} {secs[False]:>9.2f} {secs[True]:>7.2f}"
        )
    print(
        f"parameters: {params:.1f} MiB (their gradients are part of every peak); peak from "
        f"{'VmHWM' if reset_peak() else 'RSS sampled every 1 ms'}"
    )
    write_results(
        a.out,
        {
            "backbone": a.size,
            "timeline": "tiled" if a.tiled else "daily wearable windows + visits",
            "timed_steps": a.steps,
            "modalities": mods or "all",
            "threads": a.threads,
            "param_mib": round(params, 1),
            "table": rows,
        },
    )


if __name__ == "__main__":
    main()
