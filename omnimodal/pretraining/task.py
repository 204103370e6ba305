"""``PretrainTask``: the LightningModule that pretrains an :class:`OmniModel` with the objectives.

Everything it needs to rebuild itself is plain data in ``hparams`` (encoder registry names and
kwargs, sizes, weights): a checkpoint never holds code or ``_target_`` paths.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from datamodules.code_stats import CodeValueStats, code_value_stats
from datamodules.schema import OmniBatch

from ..infra.checkpoints import WORLD_SIZE_KEY
from ..infra.optim import OptimConfig, adamw_cosine, schedule_length
from ..infra.strategies import shard_model
from ..model.backbone import BackboneConfig
from ..model.omni import EncoderSpec, ModelConfig, OmniModel, count_parameters, with_embedding_rows
from .objectives import ObjectiveConfig, Objectives


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """A stored (plain-data) model config; one written before the modality registry reads as such."""
    d = with_embedding_rows(dict(d))
    d["backbone"] = BackboneConfig(**d["backbone"])
    d["encoders"] = {m: EncoderSpec(**e) for m, e in d["encoders"].items()}
    return ModelConfig(**d)


def fit_value_scaling(model: OmniModel, root: str | os.PathLike, codes: Sequence[str]) -> CodeValueStats | None:
    """A model built from scratch on the shards in ``root``: its clinical encoder's per-code value scaling (if
    it has one) from the numeric clinical values of their train split (``datamodules.code_stats``); ``codes``
    is the vocabulary the model reads (its collator's). None where there is nothing to scale."""
    enc = model.encoders["clinical"] if "clinical" in model.encoders else None
    if enc is None or not getattr(enc, "value_scaling", False):
        return None
    stats = code_value_stats(root, codes)
    enc.set_value_scaling(stats.center, stats.scale)
    logging.getLogger("omnimodal").info(
        "clinical values scaled per code (%s) for %d of %d codes, from the train split of %s",
        stats.method,
        int((stats.count > 0).sum()),
        len(codes),
        root,
    )
    return stats


class PretrainTask(L.LightningModule):
    def __init__(
        self,
        model: dict[str, Any],
        objective: dict[str, Any],
        optim: dict[str, Any],
        seed: int = 0,
        compile: bool = False,
        preprocessing: dict[str, Any] | None = None,
    ) -> None:
        """``preprocessing``: the shard index's ``specs`` and ``clinical_codes`` the model was trained on;
        kept in the checkpoint so ``omnimodal-export`` can ship it with the weights."""
        super().__init__()
        self.save_hyperparameters()
        self.model = OmniModel(model_config_from_dict(model))
        codes = getattr(self.model.encoders["clinical"], "vocab_size", 0) if "clinical" in self.model.encoders else 0
        self.objectives = Objectives(ObjectiveConfig(**objective), self.model.d_model, num_codes=codes)
        self.optim_cfg = OptimConfig(**{**optim, "betas": tuple(optim.get("betas", (0.9, 0.95)))})
        self.seed = seed
        if compile:
            for block in self.model.backbone.blocks:
                block.compile()

    def parameter_summary(self) -> str:
        c = count_parameters(self.model)
        heads = sum(p.numel() for p in self.objectives.parameters())
        return (
            f"parameters: {c['total'] + heads:,} (encoders {c['encoders']:,}, backbone+embeddings "
            f"{c['backbone_and_heads']:,}, objective heads {heads:,})"
        )

    def _losses(self, batch: OmniBatch, stage: str, batch_idx: int) -> dict[str, torch.Tensor]:
        # masking randomness from (seed, step): a resumed run draws the same masks as an uninterrupted one
        step = self.global_step if stage == "train" else batch_idx
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 2 + (stage != "train"))
        losses = self.objectives(self.model, batch, gen)
        for k, v in losses.items():
            self.log(
                f"{stage}/{k}",
                v.detach(),
                prog_bar=(k == "loss"),
                batch_size=len(batch),
                on_step=stage == "train",
                on_epoch=stage != "train",
                sync_dist=stage != "train",
            )
        return losses

    def training_step(self, batch: OmniBatch, batch_idx: int) -> torch.Tensor:
        return self._losses(batch, "train", batch_idx)["loss"]

    def validation_step(self, batch: OmniBatch, batch_idx: int) -> torch.Tensor:
        return self._losses(batch, "val", batch_idx)["loss"]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # what a model card reports: the latest logged metrics (plain floats: loadable with weights_only)
        checkpoint["omnimodal_metrics"] = {
            k: float(v) for k, v in self.trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1
        }
        checkpoint[WORLD_SIZE_KEY] = self.trainer.world_size  # resuming with another number is refused

    def configure_model(self) -> None:
        if self.device_mesh is not None:  # strategy=fsdp (FSDP2Strategy): shard before the optimizer is built
            shard_model(self, self.device_mesh)

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for n, p in self.named_parameters():
            (decay if p.ndim >= 2 and "emb" not in n else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.optim_cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return adamw_cosine(groups, self.optim_cfg, schedule_length(self.trainer), self.trainer.strategy)

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        if self.optim_cfg.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.optim_cfg.grad_clip, gradient_clip_algorithm="norm")
