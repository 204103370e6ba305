"""``FinetuneTask``: a released model + a head, fine-tuned on a cohort's own outcome.

Modes: ``frozen`` (backbone and encoders fixed, only the head learns), ``full`` (everything, the
pretrained part at ``optim.backbone_lr_ratio`` x the head's learning rate), ``lora`` (peft LoRA adapters
on the backbone's linear layers + the head). The release's preprocessing is enforced: shards whose
specs differ for a used modality are refused, naming the modality and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from datamodules.schema import OmniBatch

from ..infra import checkpoints
from ..infra.optim import OptimConfig, adamw_cosine, schedule_length
from ..model.omni import subject_embedding
from ..pretraining.task import PretrainTask
from ..release import OmniConfig, OmniForTimelines, Preprocessing, ReleaseError, check_release, load_release
from .heads import Head, HeadConfig, covariates
from .landmarks import LandmarkConfig

MODES = ("frozen", "full", "lora")


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["qkv", "out", "mlp.0", "mlp.2"])


class FinetuneTask(L.LightningModule):
    """A released model + a head. Rebuilt from plain-data hparams (a checkpoint never needs the release
    folder: ``model_config`` and ``preprocessing`` travel with it)."""

    def __init__(
        self,
        model_config: dict[str, Any],
        preprocessing: dict[str, Any],
        head: dict[str, Any],
        mode: str = "frozen",
        lora: dict[str, Any] | None = None,
        modalities: list[str] | None = None,
        optim: dict[str, Any] | None = None,
        seed: int = 0,
        release_path: str | None = None,
        load_release_weights: bool = False,
        landmark: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if mode not in MODES:
            raise ValueError(f"config key mode: {mode!r}; use one of {list(MODES)}")
        self.head_cfg = HeadConfig(**head)
        self.landmark = LandmarkConfig(**(landmark or {}))
        self.prep = Preprocessing.from_json(preprocessing, "checkpoint preprocessing")
        optim = dict(optim or {})
        self.backbone_lr_ratio = float(optim.pop("backbone_lr_ratio", 0.01))
        self.optim_cfg = OptimConfig(**{**optim, "betas": tuple(optim.get("betas", (0.9, 0.95)))})
        self.mode = mode
        #: where the weights started: the release's ("release") or a fresh initialisation ("scratch")
        self.init = "release" if load_release_weights else "scratch"
        torch.manual_seed(seed)
        self.model = OmniForTimelines(OmniConfig.from_model_dict(model_config))
        if load_release_weights:
            if not release_path:
                raise ValueError("load_release_weights needs release_path")
            release = load_release(release_path)
            if release.model.config.model_dict() != self.model.config.model_dict():
                raise ReleaseError(
                    f"{release_path}: config.json differs from the model config this task was built with"
                )
            self.model.load_state_dict(release.model.state_dict())
        if modalities:
            for m in list(self.model.omni.encoders):
                if m not in modalities:
                    del self.model.omni.encoders[m]  # a cohort without them: no compute, no parameters to train
            missing = set(modalities) - set(self.model.omni.encoders)
            if missing:
                raise ReleaseError(
                    f"config key modalities: {sorted(missing)} not in the release "
                    f"(it has {sorted(self.model.config.encoders)})"
                )
        self.head = Head(self.head_cfg, self.model.omni.d_model)
        if mode == "frozen":
            self.model.requires_grad_(False)
        elif mode == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            s = LoraSettings(**(lora or {}))
            cfg = LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=list(s.target_modules))
            inject_adapter_in_model(cfg, self.model.omni.backbone)
            for n, p in self.model.named_parameters():
                p.requires_grad_("lora_" in n)

    # -- forward --------------------------------------------------------------------------------------
    def head_inputs(self, batch: OmniBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the head reads: each person's embedding ``[B, d]`` and their covariates ``[B, c]`` (or None)."""
        if self.mode == "frozen":
            with torch.no_grad():
                self.model.eval()
                emb = subject_embedding(self.model(batch), len(batch))
        else:
            emb = subject_embedding(self.model(batch), len(batch))
        return emb, covariates(self.head_cfg.covariates, batch)

    def forward(self, batch: OmniBatch) -> torch.Tensor:
        return self.head(*self.head_inputs(batch))

    def predict_risk(self, batch: OmniBatch, cause: int = 1) -> torch.Tensor:
        return self.head.risk(self(batch), cause)

    def trainable_parameters(self) -> dict[str, int]:
        count = lambda mod: sum(p.numel() for p in mod.parameters() if p.requires_grad)  # noqa: E731
        return {
            "model": count(self.model),
            "head": count(self.head),
            "total": sum(p.numel() for p in self.parameters()),
        }

    def _step(self, batch: tuple[OmniBatch, dict[str, torch.Tensor]], stage: str) -> torch.Tensor:
        x, tgt = batch
        loss = self.head.loss(self(x), tgt)
        self.log(
            f"{stage}/loss",
            loss.detach(),
            prog_bar=True,
            batch_size=len(x),
            on_step=stage == "train",
            on_epoch=stage != "train",
            sync_dist=stage != "train",
        )
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        model_params = [p for p in self.model.parameters() if p.requires_grad]
        ratio = 1.0 if self.mode == "lora" else self.backbone_lr_ratio
        groups = [
            {"params": list(self.head.parameters()), "weight_decay": self.optim_cfg.weight_decay},
            {"params": model_params, "weight_decay": self.optim_cfg.weight_decay, "lr_ratio": ratio},
        ]
        return adamw_cosine(groups, self.optim_cfg, schedule_length(self.trainer))

    configure_gradient_clipping = PretrainTask.configure_gradient_clipping  # clip by optim.grad_clip

    @classmethod
    def from_release(cls, release: str | Path, head: dict[str, Any], init: str = "release", **kw: Any) -> FinetuneTask:
        """``init="release"``: the released weights; ``"scratch"``: the same architecture, freshly initialised."""
        if init not in ("release", "scratch"):
            raise ValueError(f"config key init: {init!r}; use 'release' or 'scratch'")
        config, prep = check_release(release)
        return cls(
            config.model_dict(),
            prep.to_json(),
            head,
            release_path=str(release),
            load_release_weights=init == "release",
            **kw,
        )


def load_finetuned(path: str | Path) -> FinetuneTask:
    """A fine-tuned checkpoint, read with ``weights_only=True``; no release folder needed."""
    try:
        ckpt = checkpoints.load(path, what="fine-tuned checkpoint")
    except checkpoints.CheckpointError as err:
        raise ReleaseError(str(err)) from None
    hp = dict(ckpt.get("hyper_parameters") or {})
    if "head" not in hp or "model_config" not in hp:
        raise ReleaseError(f"{path}: not an omnimodal-finetune checkpoint (no hyper_parameters.head/model_config)")
    pretrained = bool(hp.get("load_release_weights"))
    hp["load_release_weights"] = False  # the fine-tuned weights are in the checkpoint
    task = FinetuneTask(**hp)
    task.init = "release" if pretrained else "scratch"
    task.load_state_dict(ckpt["state_dict"])
    task.eval()
    return task
