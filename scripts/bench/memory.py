"""Benchmark: peak memory of one training step vs timeline length, with and without activation checkpointing.

One subject's timeline (the synthetic cohort's training timeline with the most events) is tiled in time
(its events repeated, each copy later than the last) to ``n`` events, collated as the loader does, and
given to a ``small`` backbone (d=256, 4 layers) with the default encoders of the cheaper modalities
(``--modalities``; with all of them the video and MRI encoders' activations dominate), ``row_len`` =
the timeline. Each configuration runs in a fresh process (forked after the imports and the data): it
builds the model and runs one forward (objectives) + backward in training mode, on CPU; its peak is the
growth of the process's peak resident memory (``VmHWM``, reset just before the step through
``/proc/self/clear_refs``; a 1 ms ``psutil`` sampler where that is not allowed) over the resident
memory before it. Includes the gradients (constant) and the encoders' activations (the same with and
without checkpointing, which covers the backbone blocks only).

Prints tokens, peak MiB without / with checkpointing, and their ratio; checkpointing should cut the
backbone's share, more so the longer the timeline.

    python scripts/bench/memory.py [--events 16 32 64 128 256 512] [--modalities all]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import threading
from multiprocessing.connection import Connection
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


def step_peak(task: PretrainTask, batch: OmniBatch) -> int:
    """Bytes the process's resident memory peaks above its level before one forward + backward."""
    gen = torch.Generator().manual_seed(0)
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
    task.objectives(task.model, batch, gen)["loss"].backward()
    done.set()
    if sampler:
        sampler.join()
    return (status_kib("VmHWM") * 1024 if exact else max(peak[0], proc.memory_info().rss)) - before


def child(conn: Connection, model: dict[str, Any], batch: OmniBatch) -> None:
    task = build_task(model)
    task.train()  # checkpointing applies in training mode only
    conn.send(step_peak(task, batch))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=128)
    p.add_argument("--events", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
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
    mods = None if a.modalities == ["all"] else a.modalities
    root = cohort(a.subjects)
    ds = ShardDataset(root, "train", shuffle=False, modalities=mods)
    longest = max(ds, key=lambda t: len(t.events))
    collate = Collator(ds.specs, ds.index["clinical_codes"])
    models = {
        c: model_config(root, "small", activation_checkpointing=c, row_len=None, modalities=mods) for c in (False, True)
    }
    probe = build_task(models[False])
    k = tokens_per_instance(probe)
    params = sum(p.numel() * p.element_size() for p in probe.parameters()) / 2**20
    del probe
    ctx = mp.get_context("fork")  # a fresh heap per configuration, without re-importing torch
    rows = []
    print(f"modalities: {', '.join(mods or ['all'])}; tokens per instance: {k}")
    print(f"{'events':>6} {'tokens':>6} {'no ckpt MiB':>11} {'ckpt MiB':>9} {'ratio':>6}")
    for n in a.events:
        batch = collate([tiled(longest, n)])
        peak = {}
        for c, model in models.items():
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=child, args=(send, model, batch))
            proc.start()
            peak[c] = recv.recv() / 2**20
            proc.join()
        tokens = token_metadata(batch, k)[0].numel()
        rows.append(
            {
                "events": n,
                "tokens": tokens,
                "peak_mib": round(peak[False], 1),
                "peak_mib_checkpointing": round(peak[True], 1),
                "ratio": round(peak[True] / peak[False], 3),
            }
        )
        print(f"{n:>6} {tokens:>6} {peak[False]:>11.1f} {peak[True]:>9.1f} {peak[True] / peak[False]:>6.3f}")
    print(
        f"parameters: {params:.1f} MiB (their gradients are part of every peak); peak from "
        f"{'VmHWM' if reset_peak() else 'RSS sampled every 1 ms'}"
    )
    write_results(
        a.out,
        {
            "backbone": "small",
            "modalities": mods or "all",
            "threads": a.threads,
            "param_mib": round(params, 1),
            "table": rows,
        },
    )


if __name__ == "__main__":
    main()
