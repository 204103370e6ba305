"""A fine-tuning run from a composed ``finetune`` config (what ``omnimodal-finetune`` calls)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from ..infra.config_check import ConfigError, check_section
from ..infra.console import after_finetuning
from ..infra.optim import OptimConfig
from ..infra.trainer import make_trainer
from ..pretraining.task import fit_value_scaling
from ..release import ReleaseError
from . import aces, aces_eval
from .heads import HeadConfig
from .landmarks import LandmarkConfig, LandmarkData
from .task import FinetuneTask, LoraSettings, load_finetuned


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
    for key in ("task", "task_data"):
        if cfg.get(key) is not None and not isinstance(cfg.get(key), str):
            raise ConfigError(f"config key {key} = {cfg.get(key)!r}: expected a path")


def build(cfg: DictConfig) -> tuple[FinetuneTask, LandmarkData, L.Trainer]:
    check_config(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    if not cfg.get("release"):
        raise ReleaseError("config key release: set release=/path/to/release (written by omnimodal-export)")
    if not cfg.data.get("root"):
        raise ReleaseError("config key data.root: set data.root=/path/to/shards of the downstream cohort")
    head = OmegaConf.to_container(cfg.head, resolve=True)
    landmarks = aces.prepare(cfg) if cfg.get("task") else None
    if landmarks is not None:  # an ACES task's label is boolean: a binary classification head
        head.update(kind="classification", num_classes=2, label=Path(cfg.task).stem)
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
    if cfg.init == "scratch":  # a fresh model: its clinical values are scaled by this cohort's train split
        fit_value_scaling(task.model.omni, cfg.data.root, task.prep.clinical_codes)
    # the checkpoint records the landmark design: omnimodal-eval and forecasts use the one it was trained for
    data_kw = dict(
        batch_size=int(cfg.data.batch_size),
        num_workers=int(cfg.data.num_workers),
        seed=int(cfg.seed),
        modalities=modalities,
    )
    if landmarks is None:
        dm = LandmarkData(cfg.data.root, task.prep, task.head_cfg, task.landmark, **data_kw)
    else:
        dm = aces.AcesLandmarkData(
            cfg.data.root, task.prep, task.head_cfg, task.landmark, landmarks=landmarks, **data_kw
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
    if isinstance(dm, aces.AcesLandmarkData):
        print(dm.landmarks.summary())
    print(
        f"fine-tuning ({cfg.mode}, init={cfg.init}, head={task.head_cfg.kind}): {n['model'] + n['head']:,} trainable "
        f"of {n['total']:,} parameters (model {n['model']:,}, head {n['head']:,})"
    )
    trainer.fit(task, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if isinstance(dm, aces.AcesLandmarkData):  # predictions of the best checkpoint, scored two ways
        best = Path(cfg.run_dir) / "checkpoints" / "best.ckpt"
        report = aces_eval.evaluate_splits(load_finetuned(best) if best.is_file() else task, dm, cfg.run_dir)
        print(f"ACES task scores ({'best.ckpt' if best.is_file() else 'last weights'}; {cfg.run_dir}/predictions):")
        print(aces_eval.format_scores(report))
        scores = aces_eval.headline(report)
        metrics.update(scores)
        for lg in trainer.loggers:  # beside the losses in CSV, TensorBoard, W&B, MLflow
            lg.log_metrics(scores, step=trainer.global_step)
            lg.save()
    ds = dm.dataset("val")
    print(
        f"done in {time.perf_counter() - t0:.0f}s: {trainer.global_step} steps; "
        + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k.endswith("loss"))
    )
    aces_run = isinstance(dm, aces.AcesLandmarkData)
    predictions = Path(cfg.run_dir) / "predictions" if aces_run else None
    print(after_finetuning(cfg.run_dir, cfg.data.root, trainer.loggers, ds.lm.eval_days, predictions))
    return metrics
