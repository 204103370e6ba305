"""Benchmark: the cost of the encoders whose modality is absent from a batch, per training step.

Every encoder must take part in each step with a zero gradient (DDP, ZeRO and FSDP wait for all
parameters). Sharded encoders (ZeRO-3, FSDP2) do it by running on one all-zero instance, so that every
process gathers the same weights; others tie their parameters to the loss by a zero multiple
(``Encoder.empty_tokens``). This runs the same training steps (objectives -> backward, tiny backbone,
default encoders, the synthetic cohort's batches) with the absent encoders on each path, interleaved in
one process: baseline = the dummy instance (what every run paid before), ours = the zero multiple.
Prints the median CPU time per step of each, the ratio, and the max loss difference (must be 0: the
paths differ only in work that contributes nothing).

    python scripts/bench/absent_encoders.py [--steps 10] [--batch-size 1] [--max-events 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch
from common import RESULTS, build_task, cohort, load_batches, model_config, write_results

from encoders.base import Encoder


def step(task, batch, seed: int) -> float:
    task.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(seed)
    loss = task.objectives(task.model, batch, gen)["loss"]
    loss.backward()
    return loss.item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--max-events", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = cohort()
    batches = load_batches(root, batch_size=args.batch_size, max_events=args.max_events, n_batches=args.steps + 2)
    task = build_task(model_config(root))
    absent = [len(task.model.encoders) - len(b.modalities) for b in batches]
    times: dict[str, list[float]] = {"dummy instance": [], "zero multiple": []}
    diff = 0.0
    for i, batch in enumerate(batches):
        losses = {}
        order = list(times) if i % 2 == 0 else list(reversed(times))
        for name in order:
            with mock.patch.object(Encoder, "sharded", lambda self, name=name: name == "dummy instance"):
                t0 = time.process_time()
                losses[name] = step(task, batch, seed=i)
                if i >= 2:  # warm-up
                    times[name].append(time.process_time() - t0)
        diff = max(diff, abs(losses["dummy instance"] - losses["zero multiple"]))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["dummy instance"] / med["zero multiple"]
    print(
        f"{len(times['zero multiple'])} steps of batch {args.batch_size} (<= {args.max_events} events each), "
        f"{statistics.mean(absent):.1f} of "
        f"{len(task.model.encoders)} encoders absent per batch on average"
    )
    for k, v in med.items():
        print(f"  {k:15s} {1000 * v:8.1f} ms CPU per step")
    print(f"  speed-up {ratio:.2f}x; max loss difference {diff:.2e}")
    write_results(
        RESULTS / "absent_encoders.json",
        {
            "ms_per_step": {k: 1000 * v for k, v in med.items()},
            "speedup": ratio,
            "max_loss_diff": diff,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "max_events": args.max_events,
            "threads": args.threads,
        },
    )


if __name__ == "__main__":
    main()
