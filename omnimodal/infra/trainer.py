"""The Lightning ``Trainer`` of a composed config, shared by pretraining and fine-tuning."""

from __future__ import annotations

import hydra
import lightning as L
from omegaconf import DictConfig

from .loggers import make_loggers
from .saving import AtomicCheckpointIO


def make_trainer(cfg: DictConfig) -> L.Trainer:
    """The Lightning Trainer of a composed config: its ``trainer`` (with the strategy), ``logger`` and
    ``callbacks`` groups, writing under ``run_dir`` (shared by omnimodal-train and omnimodal-finetune)."""
    loggers = make_loggers(cfg)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    return hydra.utils.instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=cfg.run_dir,
        plugins=[AtomicCheckpointIO()],
    )
