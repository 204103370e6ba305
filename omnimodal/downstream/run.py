"""A fine-tuning run from a composed ``finetune`` config (what ``omnimodal-finetune`` calls)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import lightning as L
from omegaconf import DictConfig, OmegaConf

from ..infra.config_check import ConfigError, check_section
from ..infra.optim import OptimConfig
from ..infra.trainer import make_trainer
from ..release import ReleaseError
from .heads import HeadConfig
from .landmarks import LandmarkConfig, LandmarkData
from .task import FinetuneTask, LoraSettings


@dataclass
class FinetuneData:
    """``data`` of a ``finetune`` config."""

    root: str | None = None
    batch_size: int = 16
    num_workers: int = 0


def check_config(cfg: DictConfig) -> None:
    """Every section of a ``finetune`` config against what consumes it (:mod:`omnimodal.infra.config_check`)."""
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"config key seed = {cfg.seed!r}: expected an int")
    check_section(cfg.trainer, L.Trainer, "trainer")
    check_section(cfg.data, FinetuneData, "data")
    check_section(cfg.optim, OptimConfig, "optim", extra=("backbone_lr_ratio",))
    check_section(cfg.head, HeadConfig, "head")
    check_section(cfg.landmark, LandmarkConfig, "landmark")
    check_section(cfg.lora, LoraSettings, "lora")


def build(cfg: DictConfig) -> tuple[FinetuneTask, LandmarkData, L.Trainer]:
    check_config(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    if not cfg.get("release"):
        raise ReleaseError("config key release: set release=/path/to/release (written by omnimodal-export)")
    if not cfg.data.get("root"):
        raise ReleaseError("config key data.root: set data.root=/path/to/shards of the downstream cohort")
    head = OmegaConf.to_container(cfg.head, resolve=True)
    modalities = list(cfg.get("modalities") or []) or None
    task = FinetuneTask.from_release(
        cfg.release,
        head,
        init=cfg.init,
        mode=cfg.mode,
        lora=OmegaConf.to_container(cfg.lora, resolve=True),
        modalities=modalities,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        seed=int(cfg.seed),
        landmark=OmegaConf.to_container(cfg.landmark, resolve=True),
    )
    # the checkpoint records the landmark design: omnimodal-eval and forecasts use the one it was trained for
    dm = LandmarkData(
        cfg.data.root,
        task.prep,
        task.head_cfg,
        task.landmark,
        batch_size=int(cfg.data.batch_size),
        num_workers=int(cfg.data.num_workers),
        seed=int(cfg.seed),
        modalities=modalities,
    )
    trainer = make_trainer(cfg)
    if trainer.world_size > 1:
        raise ValueError(
            f"omnimodal-finetune runs on one process; this config asks for {trainer.world_size} (config keys "
            "trainer.devices, trainer.num_nodes): people not at risk at a landmark are left out, so processes would "
            "get different numbers of batches and DDP would hang at the epoch end. A downstream cohort fits one "
            "device: set trainer.devices=1 trainer.num_nodes=1 (and a larger data.batch_size for throughput)"
        )
    return task, dm, trainer


def run(cfg: DictConfig) -> dict[str, float]:
    t0 = time.perf_counter()
    task, dm, trainer = build(cfg)
    n = task.trainable_parameters()
    print(
        f"fine-tuning ({cfg.mode}, init={cfg.init}, head={task.head_cfg.kind}): {n['model'] + n['head']:,} trainable "
        f"of {n['total']:,} parameters (model {n['model']:,}, head {n['head']:,})"
    )
    trainer.fit(task, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    ds = dm.dataset("val")
    print(
        f"done in {time.perf_counter() - t0:.0f}s: {trainer.global_step} steps; "
        + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k.endswith("loss"))
    )
    print(
        f"checkpoints: {cfg.run_dir}/checkpoints (evaluate with omnimodal-eval <checkpoint> data.root=... ); "
        f"landmark at {ds.lm.eval_days:g} days for val/test"
    )
    return metrics
