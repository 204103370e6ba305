"""The optimizer and learning-rate schedule every task shares: AdamW with linear warm-up and cosine decay."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import lightning as L
import torch

from .strategies import adamw


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


def adamw_cosine(groups: list[dict[str, Any]], cfg: OptimConfig, total: int, strategy: Any = None) -> dict[str, Any]:
    """AdamW over parameter ``groups`` with linear warm-up then cosine decay to ``min_lr_ratio``, per step.
    A group may carry ``lr_ratio`` (its learning rate relative to ``cfg.lr``)."""
    for g in groups:
        g["lr"] = cfg.lr * g.pop("lr_ratio", 1.0)
    opt = adamw([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, strategy=strategy)

    def schedule(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = min((step - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1), 1.0)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def schedule_length(t: L.Trainer) -> int:
    """Length of the LR schedule. Not ``trainer.estimated_stepping_batches``: asking for it in
    ``configure_optimizers`` sets up the train loader before a checkpoint's loader state is restored, and
    Lightning then never applies that state, so a mid-epoch resume would restart the epoch (Lightning 2.6)."""
    if t.max_steps and t.max_steps > 0:
        return t.max_steps
    dm = getattr(t, "datamodule", None)
    if dm is None or t.max_epochs is None or t.max_epochs < 0:
        return max(int(t.estimated_stepping_batches), 1)
    per_epoch = math.ceil(len(dm.train_dataloader()) / max(t.accumulate_grad_batches, 1))
    return max(per_epoch * t.max_epochs, 1)
