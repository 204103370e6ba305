"""A pretraining run from a composed ``train`` config (what ``omnimodal-train`` calls): the data (the built-in
synthetic cohort or shards), the model config from the shards' specs, the task, the trainer, the resume."""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from datamodules.builtin_cohort import demo_shards
from datamodules.datamodule import OmniDataModule
from datamodules.modalities import registry
from datamodules.schema import DataError, specs_from_json
from datamodules.shards.store import read_index, shard_root
from encoders.base import encoder_options

from ..infra import checkpoints
from ..infra.checkpoints import check_resume
from ..infra.config_check import ConfigError, check_section
from ..infra.console import after_pretraining
from ..infra.optim import OptimConfig
from ..infra.saving import clean_partial
from ..infra.trainer import make_trainer
from ..model.backbone import SIZES
from .consolidate import load_weights
from .objectives import ObjectiveConfig
from .task import PretrainTask, fit_value_scaling

# ShardLoader's length is exact per rank and worker (datamodules/loader.py); Lightning cannot know that.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined")


def data_root(cfg: DictConfig) -> Path | str:
    """The shard folder: the built-in synthetic cohort's, or ``data.root`` (a path, or a URL: http(s)://, an
    fsspec URL, a ``pipe:`` command; :class:`datamodules.shards.store.ShardStore`)."""
    if cfg.data.get("synthetic"):
        s = cfg.data.synthetic
        return demo_shards(int(s.n_subjects), int(s.seed), int(s.workers))
    if not cfg.data.get("root"):
        raise DataError("no data: set data.root=/path/to/shards (or data=synthetic)", where="config key data.root")
    return shard_root(cfg.data.root)


def model_dict(cfg: DictConfig, index: dict[str, Any]) -> dict[str, Any]:
    """Plain-data model config: encoder registry names + kwargs (layouts from the shard index). The
    modalities are ``model.modalities``, or every registered modality the shards hold."""
    specs = specs_from_json(index["specs"])
    declared = registry()
    modalities = list(cfg.model.get("modalities") or [m for m in declared if m in specs])
    enc_cfg = OmegaConf.to_container(cfg.model.get("encoder") or OmegaConf.create(), resolve=True)
    encoders = {}
    for m in modalities:
        if m not in declared:
            raise ValueError(f"config key model.modalities: unknown modality {m!r}; use some of {list(declared)}")
        if m not in specs:
            raise ValueError(
                f"config key model.modalities: the shards have no {m!r} (they hold {sorted(specs)}); "
                "rebuild them with omnimodal-shard or drop the modality"
            )
        e = enc_cfg.get(m) or {"name": declared[m].default_encoder, "kwargs": {}}
        kwargs = {**specs[m].encoder_layout(vocab_size=len(index["clinical_codes"]) + 1), **(e.get("kwargs") or {})}
        if "value_scaling" in encoder_options(e["name"]):  # a new model scales values per code (fit_value_scaling)
            kwargs.setdefault("value_scaling", True)
        encoders[m] = {"name": e["name"], "kwargs": kwargs}
    b = cfg.model.backbone
    if b.size not in SIZES:
        raise ValueError(f"config key model.backbone.size: unknown size {b.size!r}; use one of {list(SIZES)}")
    backbone = {
        **SIZES[b.size],
        "dropout": b.dropout,
        "activation_checkpointing": b.activation_checkpointing,
        "attention": b.attention,
    }
    return {
        "backbone": backbone,
        "encoders": encoders,
        "row_len": cfg.model.get("row_len"),
        "embedding_rows": list(encoders),
    }


@dataclass
class BackboneChoice:
    """``model.backbone``: a size from :data:`~omnimodal.model.backbone.SIZES` and its run settings."""

    size: str = "tiny"
    dropout: float = 0.0
    activation_checkpointing: bool = False
    compile: bool = False
    attention: str = "auto"


def check_config(cfg: DictConfig) -> None:
    """Every section of a ``train`` config against what consumes it (:mod:`omnimodal.infra.config_check`)."""
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"config key seed = {cfg.seed!r}: expected an int")
    check_section(cfg.trainer, L.Trainer, "trainer")
    check_section(cfg.data, OmniDataModule, "data", extra=("synthetic", "root"))
    check_section(cfg.optim, OptimConfig, "optim")
    check_section(cfg.objective, ObjectiveConfig, "objective")
    check_section(cfg.model.backbone, BackboneChoice, "model.backbone")


def build(cfg: DictConfig) -> tuple[PretrainTask, OmniDataModule, L.Trainer]:
    """Everything a run needs, from a composed config (used by the CLI and the tests)."""
    check_config(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    root = data_root(cfg)
    index = read_index(root)
    modalities = list(cfg.model.get("modalities") or []) or None
    task = PretrainTask(
        model_dict(cfg, index),
        OmegaConf.to_container(cfg.objective, resolve=True),
        OmegaConf.to_container(cfg.optim, resolve=True),
        seed=int(cfg.seed),
        compile=bool(cfg.model.backbone.get("compile", False)),
        preprocessing={"specs": index["specs"], "clinical_codes": index["clinical_codes"]},
    )
    fit_value_scaling(task.model, root, index["clinical_codes"])
    dm = data_module(cfg, root, task.model, modalities=modalities)
    if dm.dataset("train").num_samples == 0:
        raise DataError(
            f"the train split holds no sample (index.json: {_split_counts(index)})",
            where=f"data.root={root}",
            hint="rebuild the shards with people in the train split "
            "(the subjects table's split column, or none for the default 80/10/10)",
        )
    trainer = make_trainer(cfg)
    return task, dm, trainer


def data_kwargs(d: DictConfig) -> dict[str, Any]:
    """``OmniDataModule`` keywords from a ``data`` config section (all but the root, seed and token counts)."""
    caps = d.get("max_instances")
    return dict(
        batch_size=d.batch_size,
        num_workers=d.num_workers,
        shuffle_buffer=d.shuffle_buffer,
        max_events=d.max_events,
        max_tokens=d.get("max_tokens"),
        select=d.get("select", "window"),
        max_instances=OmegaConf.to_container(caps) if caps else None,
        on_error=d.on_error,
    )


def data_module(cfg: DictConfig, root: Any, model: Any, **kw: Any) -> OmniDataModule:
    """The run's data module from ``cfg.data``; ``data.max_tokens`` counts each instance as the tokens its
    encoder makes (``model.encoders[m].num_tokens``). ``kw`` overrides (e.g. ``modalities``)."""
    tokens = {m: int(e.num_tokens) for m, e in model.encoders.items()}
    return OmniDataModule(root, **{**data_kwargs(cfg.data), "seed": int(cfg.seed), "tokens_per_instance": tokens, **kw})


def _split_counts(index: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v.get('samples', 0)}" for k, v in index.get("splits", {}).items()) or "no splits"


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: ``resume=auto`` the newest one of the run folder that loads (saying which,
    and why any newer one was passed over), a path that one, null none."""
    if cfg.resume in (None, "none", "null", False):
        return None
    if cfg.resume == "auto":
        found, notes = checkpoints.newest_checkpoint(cfg.run_dir)
        for note in notes:  # printed as the other resume lines are (once: not also logged, which Hydra prints)
            print(f"resume=auto: {note}")
        return str(found) if found else None
    if not Path(cfg.resume).exists():  # a file, or a folder (DeepSpeed, FSDP)
        raise FileNotFoundError(f"config key resume: no checkpoint at {cfg.resume}")
    return str(cfg.resume)


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def run(cfg: DictConfig) -> dict[str, float]:
    t0 = time.perf_counter()
    task, dm, trainer = build(cfg)
    print(task.parameter_summary())
    if _rank() == 0:  # what interrupted saves left behind
        for p in clean_partial(Path(cfg.run_dir) / "checkpoints"):
            print(f"removed {p} (left by an interrupted save)")
    ckpt = resume_path(cfg)
    if ckpt:
        checkpoints.verify(ckpt)  # every pickle in it, before Lightning or DeepSpeed reads it
        check_resume(ckpt, trainer.num_devices * trainer.num_nodes)
        print(f"resuming from {ckpt}")
    elif cfg.get("init_from"):
        load_weights(task, cfg.init_from)
        print(f"weights from {cfg.init_from}")
    start = int(checkpoints.checkpoint_meta(ckpt).get("global_step", 0)) if ckpt else 0
    with checkpoints.no_code_from_checkpoints() if ckpt else contextlib.nullcontext():
        trainer.fit(task, datamodule=dm, ckpt_path=ckpt)
    if trainer.global_step == start and not ckpt:
        raise ConfigError(
            f"training ran 0 steps (trainer.max_steps={cfg.trainer.max_steps}, trainer.max_epochs="
            f"{cfg.trainer.max_epochs}, trainer.limit_train_batches={cfg.trainer.limit_train_batches}); "
            "give the run at least one step"
        )
    if trainer.global_step == start:
        print(
            f"nothing to train: {ckpt} is at step {start}, where this run ends (raise trainer.max_steps or "
            "trainer.max_epochs to go on)"
        )
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(
        f"done in {time.perf_counter() - t0:.0f}s: {trainer.global_step} steps; "
        + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k.endswith("loss"))
    )
    if trainer.is_global_zero:
        print(after_pretraining(cfg.run_dir, dm.root, trainer.loggers))
    return metrics
