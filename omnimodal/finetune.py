"""``omnimodal-finetune``: adapt a released model to a cohort's own outcome.

    omnimodal-finetune release=releases/omni-tiny data.root=/data/cardio_shards head=survival
    omnimodal-finetune release=... data.root=... mode=lora modalities=[ecg,wearable] head=classification
    omnimodal-finetune release=... data.root=... init=scratch        # same architecture, no pretrained weights

Each person is seen at a *landmark*: the history up to it (the most recent ``data.max_events`` events)
is embedded, and the head predicts the outcome after it (see :mod:`omnimodal.heads`). Training draws a
random landmark among each person's eligible events every epoch; validation, testing and
``omnimodal-eval`` use a fixed one, ``landmark.eval_days`` after the person's first event. People not
at risk at their landmark are left out and counted, with the reason.

Modes: ``frozen`` (backbone and encoders fixed, only the head learns), ``full`` (everything, the
pretrained part at ``optim.backbone_lr_ratio`` x the head's learning rate), ``lora`` (peft LoRA adapters
on the backbone's linear layers + the head). The release's preprocessing is enforced: shards whose
specs differ for a used modality are refused, naming the modality and field.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, IterableDataset

from datamodules.loader import CropConfig, ShardDataset, _seed, crop_timeline
from datamodules.schema import OmniBatch, Timeline

from .heads import Head, HeadConfig, covariates, target
from .infra import checkpoints
from .model.omni import subject_embedding
from .release import OmniConfig, OmniForTimelines, Preprocessing, ReleaseError, check_release, load_release
from .task import OptimConfig, PretrainTask, adamw_cosine, schedule_length
from .train import make_trainer

log = logging.getLogger("omnimodal.finetune")
MODES = ("frozen", "full", "lora")


# --------------------------------------------------------------------------------------------------------
# data: (history at a landmark, target)
# --------------------------------------------------------------------------------------------------------
@dataclass
class LandmarkConfig:
    eval_days: float = 365.25      # fixed landmark (val/test/eval): days after the first event
    train: str = "random"          # "random": a random eligible event per person and epoch; "fixed": eval_days
    max_events: int = 16           # history window: the most recent events up to the landmark


def at_landmark(tl: Timeline, landmark_days: float, max_events: int | None) -> Timeline | None:
    """The history up to ``landmark_days`` (events at or before it), most recent ``max_events``."""
    before = [ev for ev in tl.events if ev.time_days <= landmark_days]
    if not before:
        return None
    return crop_timeline(Timeline(tl.key, tl.static, before, {}), CropConfig(max_events=max_events, random=False),
                         np.random.default_rng(0))


def landmark_sample(tl: Timeline, head: HeadConfig, lm: LandmarkConfig, rng: np.random.Generator | None,
                    ) -> tuple[tuple[Timeline, dict[str, float]] | None, str]:
    """(history, target) for one person; ``rng`` given: a random eligible landmark (training)."""
    label = tl.labels.get(head.label)
    if rng is None:
        tgt, why = target(head, label, lm.eval_days)
        if tgt is None:
            return None, why
        hist = at_landmark(tl, lm.eval_days, lm.max_events)
        return ((hist, tgt), "") if hist is not None else (None, "no event before the landmark")
    options, why = [], "no event before the outcome"
    for i, ev in enumerate(tl.events):
        tgt, w = target(head, label, ev.time_days)
        if tgt is None:
            why = w if not options else why
            continue
        options.append((i, tgt))
    if not options:
        return None, why
    i, tgt = options[int(rng.integers(len(options)))]
    return (at_landmark(tl, tl.events[i].time_days, lm.max_events), tgt), ""


class LandmarkDataset(IterableDataset):
    """Wraps a :class:`ShardDataset` (uncropped): yields ``(history, target)`` and counts who is left out."""

    def __init__(self, shards: ShardDataset, head: HeadConfig, lm: LandmarkConfig, random_landmark: bool) -> None:
        self.shards, self.head, self.lm, self.random_landmark = shards, head, lm, random_landmark
        self.excluded: collections.Counter[str] = collections.Counter()
        self.included = 0

    def __len__(self) -> int:  # an upper bound: people not at risk are left out
        return len(self.shards)

    def set_epoch(self, epoch: int) -> None:
        self.shards.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[Timeline, dict[str, float]]]:
        self.excluded.clear()
        self.included = 0
        for tl in self.shards:
            rng = np.random.default_rng(_seed(self.shards.seed, self.shards.epoch, tl.key, "landmark")) \
                if self.random_landmark else None
            sample, why = landmark_sample(tl, self.head, self.lm, rng)
            if sample is None:
                self.excluded[why] += 1
                continue
            self.included += 1
            yield sample


class LandmarkCollator:
    def __init__(self, prep: Preprocessing) -> None:
        self.collate = prep.collator()

    def __call__(self, items: Sequence[tuple[Timeline, dict[str, float]]]) -> tuple[OmniBatch, dict[str, torch.Tensor]]:
        batch = self.collate([h for h, _ in items])
        keys = items[0][1].keys()
        return batch, {k: torch.tensor([t[k] for _, t in items], dtype=torch.float32) for k in keys}


class _EpochLoader(DataLoader):
    """A DataLoader that moves its dataset to the next epoch (new shuffle, new landmarks) on every pass."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch = 0

    def __iter__(self):  # type: ignore[override]
        self.dataset.set_epoch(self._epoch)
        self._epoch += 1
        return super().__iter__()


class LandmarkData(L.LightningDataModule):
    def __init__(self, root: str | Path, prep: Preprocessing, head: HeadConfig, landmark: LandmarkConfig,
                 batch_size: int = 16, num_workers: int = 0, seed: int = 0, modalities: list[str] | None = None,
                 shuffle_buffer: int = 64) -> None:
        super().__init__()
        self.root, self.prep, self.head, self.lm = Path(root), prep, head, landmark
        self.batch_size, self.num_workers, self.seed, self.modalities = batch_size, num_workers, seed, modalities
        self.shuffle_buffer = shuffle_buffer
        probe = ShardDataset(self.root, "train", shuffle=False)
        used = modalities or [m for m in prep.specs if m in probe.specs]
        prep.check_data(probe.specs, used, where=f"data.root={self.root}")

    def dataset(self, split: str, train: bool | None = None) -> LandmarkDataset:
        train = split == "train" if train is None else train
        shards = ShardDataset(self.root, split, shuffle=train, shuffle_buffer=self.shuffle_buffer, seed=self.seed,
                              crop=CropConfig(random=False), modalities=self.modalities)
        return LandmarkDataset(shards, self.head, self.lm, random_landmark=train and self.lm.train == "random")

    def loader(self, split: str, train: bool | None = None) -> DataLoader:
        return _EpochLoader(self.dataset(split, train), batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=LandmarkCollator(self.prep))

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")


# --------------------------------------------------------------------------------------------------------
# the task
# --------------------------------------------------------------------------------------------------------
@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["qkv", "out", "mlp.0", "mlp.2"])


class FinetuneTask(L.LightningModule):
    """A released model + a head. Rebuilt from plain-data hparams (a checkpoint never needs the release
    folder: ``model_config`` and ``preprocessing`` travel with it)."""

    def __init__(self, model_config: dict[str, Any], preprocessing: dict[str, Any], head: dict[str, Any],
                 mode: str = "frozen", lora: dict[str, Any] | None = None, modalities: list[str] | None = None,
                 optim: dict[str, Any] | None = None, seed: int = 0, release_path: str | None = None,
                 load_release_weights: bool = False, landmark: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        if mode not in MODES:
            raise ValueError(f"config key mode: {mode!r}; use one of {list(MODES)}")
        self.head_cfg = HeadConfig(**head)
        self.landmark = LandmarkConfig(**(landmark or {}))
        self.prep = Preprocessing.from_json(preprocessing, "checkpoint preprocessing")
        optim = dict(optim or {})
        self.backbone_lr_ratio = float(optim.pop("backbone_lr_ratio", 0.1))
        self.optim_cfg = OptimConfig(**{**optim, "betas": tuple(optim.get("betas", (0.9, 0.95)))})
        self.mode = mode
        torch.manual_seed(seed)
        self.model = OmniForTimelines(OmniConfig.from_model_dict(model_config))
        if load_release_weights:
            if not release_path:
                raise ValueError("load_release_weights needs release_path")
            release = load_release(release_path)
            if release.model.config.model_dict() != self.model.config.model_dict():
                raise ReleaseError(f"{release_path}: config.json differs from the model config this task was built with")
            self.model.load_state_dict(release.model.state_dict())
        if modalities:
            for m in list(self.model.omni.encoders):
                if m not in modalities:
                    del self.model.omni.encoders[m]  # a cohort without them: no compute, no parameters to train
            missing = set(modalities) - set(self.model.omni.encoders)
            if missing:
                raise ReleaseError(f"config key modalities: {sorted(missing)} not in the release "
                                   f"(it has {sorted(self.model.config.encoders)})")
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
    def forward(self, batch: OmniBatch) -> torch.Tensor:
        if self.mode == "frozen":
            with torch.no_grad():
                self.model.eval()
                emb = subject_embedding(self.model(batch), len(batch))
        else:
            emb = subject_embedding(self.model(batch), len(batch))
        return self.head(emb, covariates(self.head_cfg.covariates, batch))

    def predict_risk(self, batch: OmniBatch, cause: int = 1) -> torch.Tensor:
        return self.head.risk(self(batch), cause)

    def trainable_parameters(self) -> dict[str, int]:
        count = lambda mod: sum(p.numel() for p in mod.parameters() if p.requires_grad)  # noqa: E731
        return {"model": count(self.model), "head": count(self.head),
                "total": sum(p.numel() for p in self.parameters())}

    def _step(self, batch: tuple[OmniBatch, dict[str, torch.Tensor]], stage: str) -> torch.Tensor:
        x, tgt = batch
        loss = self.head.loss(self(x), tgt)
        self.log(f"{stage}/loss", loss.detach(), prog_bar=True, batch_size=len(x), on_step=stage == "train",
                 on_epoch=stage != "train", sync_dist=stage != "train")
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
        groups = [{"params": list(self.head.parameters()), "weight_decay": self.optim_cfg.weight_decay},
                  {"params": model_params, "weight_decay": self.optim_cfg.weight_decay, "lr_ratio": ratio}]
        return adamw_cosine(groups, self.optim_cfg, schedule_length(self.trainer))

    configure_gradient_clipping = PretrainTask.configure_gradient_clipping  # clip by optim.grad_clip

    @classmethod
    def from_release(cls, release: str | Path, head: dict[str, Any], init: str = "release", **kw: Any) -> "FinetuneTask":
        """``init="release"``: the released weights; ``"scratch"``: the same architecture, freshly initialised."""
        if init not in ("release", "scratch"):
            raise ValueError(f"config key init: {init!r}; use 'release' or 'scratch'")
        config, prep = check_release(release)
        return cls(config.model_dict(), prep.to_json(), head, release_path=str(release),
                   load_release_weights=init == "release", **kw)


def load_finetuned(path: str | Path) -> FinetuneTask:
    """A fine-tuned checkpoint, read with ``weights_only=True``; no release folder needed."""
    try:
        ckpt = checkpoints.load(path, what="fine-tuned checkpoint")
    except checkpoints.CheckpointError as err:
        raise ReleaseError(str(err)) from None
    hp = dict(ckpt.get("hyper_parameters") or {})
    if "head" not in hp or "model_config" not in hp:
        raise ReleaseError(f"{path}: not an omnimodal-finetune checkpoint (no hyper_parameters.head/model_config)")
    hp["load_release_weights"] = False
    task = FinetuneTask(**hp)
    task.load_state_dict(ckpt["state_dict"])
    task.eval()
    return task


# --------------------------------------------------------------------------------------------------------
# command
# --------------------------------------------------------------------------------------------------------
def build(cfg: DictConfig) -> tuple[FinetuneTask, LandmarkData, L.Trainer]:
    L.seed_everything(int(cfg.seed), workers=True)
    if not cfg.get("release"):
        raise ReleaseError("config key release: set release=/path/to/release (written by omnimodal-export)")
    if not cfg.data.get("root"):
        raise ReleaseError("config key data.root: set data.root=/path/to/shards of the downstream cohort")
    head = OmegaConf.to_container(cfg.head, resolve=True)
    modalities = list(cfg.get("modalities") or []) or None
    task = FinetuneTask.from_release(cfg.release, head, init=cfg.init, mode=cfg.mode,
                                     lora=OmegaConf.to_container(cfg.lora, resolve=True), modalities=modalities,
                                     optim=OmegaConf.to_container(cfg.optim, resolve=True), seed=int(cfg.seed),
                                     landmark=OmegaConf.to_container(cfg.landmark, resolve=True))
    # the checkpoint records the landmark design: omnimodal-eval and forecasts use the one it was trained for
    dm = LandmarkData(cfg.data.root, task.prep, task.head_cfg, task.landmark, batch_size=int(cfg.data.batch_size),
                      num_workers=int(cfg.data.num_workers), seed=int(cfg.seed), modalities=modalities)
    trainer = make_trainer(cfg)
    if trainer.world_size > 1:
        raise ValueError(
            f"omnimodal-finetune runs on one process; this config asks for {trainer.world_size} (config keys "
            "trainer.devices, trainer.num_nodes): people not at risk at a landmark are left out, so processes would "
            "get different numbers of batches and DDP would hang at the epoch end. A downstream cohort fits one "
            "device: set trainer.devices=1 trainer.num_nodes=1 (and a larger data.batch_size for throughput)")
    return task, dm, trainer


def run(cfg: DictConfig) -> dict[str, float]:
    t0 = time.perf_counter()
    task, dm, trainer = build(cfg)
    n = task.trainable_parameters()
    print(f"fine-tuning ({cfg.mode}, init={cfg.init}, head={task.head_cfg.kind}): {n['model'] + n['head']:,} trainable "
          f"of {n['total']:,} parameters (model {n['model']:,}, head {n['head']:,})")
    trainer.fit(task, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    ds = dm.dataset("val")
    print(f"done in {time.perf_counter() - t0:.0f}s: {trainer.global_step} steps; "
          + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k.endswith("loss")))
    print(f"checkpoints: {cfg.run_dir}/checkpoints (evaluate with omnimodal-eval <checkpoint> data.root=... ); "
          f"landmark at {ds.lm.eval_days:g} days for val/test")
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://omnimodal.configs", config_name="finetune")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    except ReleaseError as err:
        raise SystemExit(f"omnimodal-finetune: {err}") from None
    return metrics.get("val/loss")


if __name__ == "__main__":
    main()


__all__ = ["FinetuneTask", "LandmarkConfig", "LandmarkData", "LandmarkDataset", "at_landmark", "landmark_sample",
           "load_finetuned"]
