"""Test-only pieces for running the distributed strategies on CPU (tests/test_distributed.py).

``CPUDeepSpeedStrategy`` is Lightning's ``DeepSpeedStrategy`` minus its CUDA-only checks, so real ZeRO-2/3
(DeepSpeed's CPU accelerator, gloo) runs on a CI box; the config (``configs/strategy/deepspeed_*.yaml``)
is used unchanged, only its ``_target_`` is swapped. ``RankInterleaved`` is the 1-process reference of a
2-process run: it feeds rank 0's batch, then rank 1's, for each step (with ``accumulate_grad_batches=2``
that is the same global batch and the same averaged gradient).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datamodules.datamodule import OmniDataModule, ShardLoader
from datamodules.loader import ShardDataset
from omnimodal.infra.strategies import DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """DeepSpeedStrategy on CPU processes: skips the CUDA accelerator check and the CUDA device-index
    validation; the root device carries the local rank as index (DeepSpeed's ``device_rank``)."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", self.local_rank)

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()


class _SlotDataset(ShardDataset):
    """A ShardDataset that reads the slot of a given rank of a given world (no process group needed)."""

    def __init__(self, *args: Any, rank: int, world: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rank, self._world = rank, world

    def slot(self) -> tuple[int, int]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        return self._rank * nw + wid, self._world * nw


class _Interleave(IterableDataset):
    def __init__(self, loaders: list[ShardLoader]) -> None:
        self.loaders = loaders

    def __iter__(self) -> Iterator[Any]:
        for batches in zip(*self.loaders):
            yield from batches


def _identity(x: Any) -> Any:
    return x


class RankInterleaved(L.LightningDataModule):
    """Train batches of ``world`` simulated ranks of ``dm``, one step's batches back to back (num_workers=0).
    ``modalities``: rank -> the modalities that rank reads (default: ``dm``'s)."""

    def __init__(self, dm: OmniDataModule, world: int, modalities: dict[int, list[str]] | None = None) -> None:
        super().__init__()
        self.dm, self.world, self.modalities = dm, world, modalities or {}

    def train_dataloader(self) -> DataLoader:
        loaders = []
        for r in range(self.world):
            ds = _SlotDataset(
                self.dm.root,
                "train",
                shuffle=True,
                shuffle_buffer=self.dm.shuffle_buffer,
                seed=self.dm.seed,
                crop=self.dm.dataset("train").crop,
                on_error=self.dm.on_error,
                modalities=self.modalities.get(r, self.dm.modalities),
                rank=r,
                world=self.world,
            )
            loaders.append(ShardLoader(ds, self.dm.batch_size, 0))
        return DataLoader(_Interleave(loaders), batch_size=None, collate_fn=_identity)


class LossRecorder(L.Callback):
    """Each train batch's logged loss and sample keys on this process: ``records`` = [(batch_idx, loss, keys)]."""

    def __init__(self) -> None:
        self.records: list[tuple[int, float, list[str]]] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.records.append((batch_idx, float(trainer.callback_metrics["train/loss"]), list(batch.keys)))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


#: the small run every distributed test compares: tiny model, 4 steps of 2 samples per process
COMMON = (
    "experiment=quick",
    "model/backbone=tiny",
    "data.batch_size=2",
    "data.max_events=4",
    "model.row_len=null",
    "trainer.max_steps=4",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=0",
    "trainer.log_every_n_steps=1",
    "callbacks.checkpoint.every_n_train_steps=2",
    "optim.warmup_steps=1",
    "trainer.precision=32-true",
)
#: the modalities rank 1 reads (rank 0 reads all): its batches leave most encoders unused
RANK1_MODALITIES = ["ecg", "wearable", "clinical"]
#: strategy config -> overrides that run it on 2 CPU processes
STRATEGIES = {
    "ddp": ["strategy=ddp"],
    "fsdp": ["strategy=fsdp"],
    "deepspeed_zero2": ["strategy=deepspeed_zero2", "trainer.strategy._target_=dist_strategies.CPUDeepSpeedStrategy"],
    # ZeRO-3 with CPU offload, and activation checkpointing on (same maths as the reference without it)
    "deepspeed_zero3_offload": [
        "strategy=deepspeed_zero3_offload",
        "trainer.strategy._target_=dist_strategies.CPUDeepSpeedStrategy",
        "trainer.strategy.config.zero_optimization.offload_optimizer.pin_memory=false",
        "trainer.strategy.config.zero_optimization.offload_param.pin_memory=false",
        "model.backbone.activation_checkpointing=true",
    ],
}
#: the same with 2 micro-batches per process and step (DeepSpeed's gradient_accumulation_steps): 2 steps
ACCUMULATE = ["trainer.accumulate_grad_batches=2", "trainer.max_steps=2", "callbacks.checkpoint.every_n_train_steps=1"]
for _case in ("deepspeed_zero2", "deepspeed_zero3_offload"):
    STRATEGIES[f"{_case}_accumulate"] = [*STRATEGIES[_case], *ACCUMULATE]


def compose_config(shards: Any, run_dir: Any, *overrides: str) -> Any:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="omnimodal.configs", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "data=shards",
                f"data.root={shards}",
                "data.num_workers=0",
                "data.synthetic=null",
                "trainer.accelerator=cpu",
                "trainer.enable_progress_bar=false",
                "~logger.tensorboard",
                *COMMON,
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg
