"""Benchmark: a Lightning training step vs the same step in a plain PyTorch loop.

The same :class:`PretrainTask` (tiny backbone, default encoders) is built twice from one seed and trained
on the same batches of the synthetic cohort, pre-loaded into memory:

- plain loop: ``objectives(model, batch, generator)`` -> backward -> grad-norm clipping -> AdamW step ->
  LR schedule step, with the optimiser and schedule of ``PretrainTask.configure_optimizers`` and the
  clipping value of ``optim.grad_clip``;
- Lightning: ``Trainer(max_steps=N, accelerator="cpu", ...)`` fitting the task on a DataLoader over the
  same list of batches (``batch_size=None``, identity collate).

The two run in lockstep, one plain step next to each Lightning step (after it, or before it in odd
repeats), so both see the same load on a shared machine. Both draw masks from
``Generator().manual_seed(seed * 1_000_003 + step * 2)``, so their per-step losses must be identical
(max abs difference printed). Prints the median time per step after warm-up (a Lightning step is all
the time between the ends of its consecutive steps, less the plain step run in between, so it includes
the Trainer's loop, hooks, logging and data fetching), and the ratio Lightning / plain of process CPU
time (wall-clock too): per repeat the median of the per-step ratios, then the geometric mean over
repeats, which cancels the advantage of running second (keep --repeats even). Target: <= 1.03x.

    python scripts/bench/train_step.py [--steps 12] [--batch-size 8] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from common import RESULTS, build_task, cohort, load_batches, model_config, write_results
from torch.utils.data import DataLoader

from datamodules.schema import OmniBatch
from omnimodal.pretraining.task import PretrainTask

TARGET = 1.03
TRAINER_KW: dict[str, Any] = dict(
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    accelerator="cpu",
    devices=1,
)


def now() -> tuple[float, float]:
    """Wall-clock and process CPU seconds."""
    return time.perf_counter(), time.process_time()


def plain_steps(task: PretrainTask, batches: list[OmniBatch]) -> Iterator[float]:
    """A hand-written loop with the task's optimiser, schedule and clipping; yields each step's loss."""
    task.trainer = L.Trainer(max_steps=len(batches), max_epochs=-1, **TRAINER_KW)  # for estimated_stepping_batches
    conf = task.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    params = [p for g in opt.param_groups for p in g["params"]]  # Lightning clips over the optimiser's params
    task.train()
    for step, batch in enumerate(batches):
        opt.zero_grad()
        gen = torch.Generator().manual_seed(task.seed * 1_000_003 + step * 2)
        loss = task.objectives(task.model, batch, gen)["loss"]
        loss.backward()
        if task.optim_cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, task.optim_cfg.grad_clip)
        opt.step()
        sched.step()
        yield loss.item()


class Lockstep(L.Callback):
    """Runs one plain step next to each Lightning step (before it if ``plain_first``, else after it), so
    both see the same machine load; records losses and (wall, CPU) step times of each, the Lightning
    step's time being everything between the ends of its consecutive steps but the plain step."""

    def __init__(self, plain: Iterator[float], plain_first: bool) -> None:
        self.plain, self.plain_first = plain, plain_first
        self.losses: dict[str, list[float]] = {"plain": [], "lightning": []}
        self.times: dict[str, list[tuple[float, float]]] = {"plain": [], "lightning": []}
        self.threads = 0

    def _plain_step(self) -> None:
        t0 = now()
        self.losses["plain"].append(next(self.plain))
        t1 = now()
        self.times["plain"].append((t1[0] - t0[0], t1[1] - t0[1]))
        self.acc = (self.acc[0] - (t1[0] - t0[0]), self.acc[1] - (t1[1] - t0[1]))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.threads = torch.get_num_threads()
        self.acc = (0.0, 0.0)  # Lightning's time so far this step, as a negative offset from `start`
        self.start = now()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.plain_first:
            self._plain_step()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        t = now()
        self.losses["lightning"].append(float(outputs["loss"]))
        self.times["lightning"].append((t[0] - self.start[0] + self.acc[0], t[1] - self.start[1] + self.acc[1]))
        self.acc, self.start = (0.0, 0.0), t
        if not self.plain_first:
            self._plain_step()


def run_pair(model: dict[str, Any], batches: list[OmniBatch], seed: int, plain_first: bool) -> Lockstep:
    """Two tasks from one seed: one fitted by Lightning, the other stepped by hand alongside it."""
    plain_task, lightning_task = build_task(model, seed), build_task(model, seed)
    rec = Lockstep(plain_steps(plain_task, batches), plain_first)
    trainer = L.Trainer(max_steps=len(batches), callbacks=[rec], **TRAINER_KW)
    trainer.fit(lightning_task, DataLoader(batches, batch_size=None, collate_fn=lambda b: b))  # type: ignore[arg-type]
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=128)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-events", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="even: half with the plain step first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "train_step.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for name in ("lightning.pytorch", "lightning.fabric"):  # banners and tips, once per Trainer
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*(many workers|no `val_dataloader`|LeafSpec).*")
    root = cohort(a.subjects)
    model = model_config(root)
    batches = load_batches(root, batch_size=a.batch_size, max_events=a.max_events, n_batches=a.steps, seed=a.seed)
    steps: dict[str, list[tuple[float, float]]] = {"plain": [], "lightning": []}
    ratios: dict[str, list[float]] = {"wall": [], "cpu": []}  # per repeat: median of the per-step ratios
    diffs, threads, w = [], set(), a.warmup
    for r in range(a.repeats):
        rec = run_pair(model, batches, a.seed, plain_first=r % 2 == 1)
        threads.add(rec.threads)
        lp, ll = rec.losses["plain"], rec.losses["lightning"]
        if len(ll) != len(lp) or len(lp) != len(batches):
            raise RuntimeError(f"Lightning ran {len(ll)} steps, the plain loop {len(lp)}, of {len(batches)}")
        diffs.append(max(abs(x - y) for x, y in zip(lp, ll)))
        tp, tl = rec.times["plain"][w:], rec.times["lightning"][w:]
        steps["plain"] += tp
        steps["lightning"] += tl
        for i, c in enumerate(ratios):
            ratios[c].append(statistics.median(y[i] / x[i] for x, y in zip(tp, tl)))
        cpu = [statistics.median(t[1] for t in ts) * 1e3 for ts in (tp, tl)]
        print(
            f"repeat {r} (plain step {'before' if r % 2 else 'after'} each Lightning step): CPU ms/step plain "
            f"{cpu[0]:7.1f}, lightning {cpu[1]:7.1f}, ratio {ratios['cpu'][-1]:.3f}x; "
            f"losses {lp[0]:.4f} .. {lp[-1]:.4f}, max |diff| {diffs[-1]:.2e}"
        )
    med = {
        c: {k: statistics.median(t[i] for t in v) * 1e3 for k, v in steps.items()}
        for i, c in enumerate(("wall", "cpu"))
    }
    ratio = {c: statistics.geometric_mean(v) for c, v in ratios.items()}  # order effects cancel over pairs
    res = {
        "batch_size": a.batch_size,
        "steps": a.steps,
        "warmup": w,
        "repeats": a.repeats,
        "threads": a.threads,
        **{f"{k}_{c}_ms_per_step": round(med[c][k], 2) for c in med for k in med[c]},
        **{f"ratio_{c}": round(ratio[c], 4) for c in ratio},
        "target_ratio": TARGET,
        "max_abs_loss_diff": max(diffs),
        "losses_identical": max(diffs) == 0.0,
    }
    if threads != {a.threads}:
        print(f"warning: Lightning ran with {threads} threads, the plain loop with {a.threads}")
    print(f"{'ms/step (median)':<18} {'CPU':>8} {'wall':>8}   ({len(steps['plain'])} steps each)")
    for k in ("plain", "lightning"):
        print(f"{k:<18} {med['cpu'][k]:8.1f} {med['wall'][k]:8.1f}")
    print(
        f"ratio (Lightning / plain, geometric mean over repeats): CPU {ratio['cpu']:.3f}x, wall {ratio['wall']:.3f}x"
        f"  (target <= {TARGET}x on CPU time: {'met' if ratio['cpu'] <= TARGET else 'NOT met'})"
    )
    print(
        f"per-step losses: max |Lightning - plain| = {max(diffs):.3g} "
        f"({'identical' if max(diffs) == 0 else 'DIFFERENT'})"
    )
    write_results(a.out, res)


if __name__ == "__main__":
    main()
