"""``omnimodal-train``: pretrain an omnimodal model from Hydra configs.

    omnimodal-train                                  # default experiment on the built-in synthetic cohort
    omnimodal-train experiment=quick trainer.max_steps=50
    omnimodal-train data=shards data.root=/data/shards model/backbone=small
    omnimodal-train -m objective.masked_weight=0.5,1.0
    omnimodal-train --config-dir /site/configs experiment=my_site_experiment
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from datamodules.datamodule import OmniDataModule
from datamodules.demo import demo_shards
from datamodules.modalities import registry
from datamodules.schema import DataError, specs_from_json
from datamodules.shards.format import load_index

from .distributed import check_resume, load_weights
from .infra import checkpoints
from .model.backbone import SIZES
from .task import PretrainTask

log = logging.getLogger("omnimodal.train")
# ShardLoader's length is exact per rank and worker (datamodules/loader.py); Lightning cannot know that.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined")


def data_root(cfg: DictConfig) -> Path:
    if cfg.data.get("synthetic"):
        s = cfg.data.synthetic
        return demo_shards(int(s.n_subjects), int(s.seed), int(s.workers))
    if not cfg.data.get("root"):
        raise DataError("no data: set data.root=/path/to/shards (or data=synthetic)", where="config key data.root")
    return Path(cfg.data.root)


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
            raise ValueError(f"config key model.modalities: the shards have no {m!r} (they hold {sorted(specs)}); "
                             "rebuild them with omnimodal-shard or drop the modality")
        e = enc_cfg.get(m) or {"name": declared[m].default_encoder, "kwargs": {}}
        kwargs = {**specs[m].encoder_layout(vocab_size=len(index["clinical_codes"]) + 1), **(e.get("kwargs") or {})}
        encoders[m] = {"name": e["name"], "kwargs": kwargs}
    b = cfg.model.backbone
    if b.size not in SIZES:
        raise ValueError(f"config key model.backbone.size: unknown size {b.size!r}; use one of {list(SIZES)}")
    backbone = {**SIZES[b.size], "dropout": b.dropout, "activation_checkpointing": b.activation_checkpointing,
                "attention": b.attention}
    return {"backbone": backbone, "encoders": encoders, "row_len": cfg.model.get("row_len"),
            "embedding_rows": list(encoders)}


def make_trainer(cfg: DictConfig) -> L.Trainer:
    """The Lightning Trainer of a composed config: its ``trainer`` (with the strategy), ``logger`` and
    ``callbacks`` groups, writing under ``run_dir`` (shared by omnimodal-train and omnimodal-finetune)."""
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    return hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                   default_root_dir=cfg.run_dir)


def build(cfg: DictConfig) -> tuple[PretrainTask, OmniDataModule, L.Trainer]:
    """Everything a run needs, from a composed config (used by the CLI and the tests)."""
    L.seed_everything(int(cfg.seed), workers=True)
    root = data_root(cfg)
    index = load_index(root)
    d = cfg.data
    modalities = list(cfg.model.get("modalities") or []) or None
    dm = OmniDataModule(root, batch_size=d.batch_size, num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer,
                        seed=int(cfg.seed), max_events=d.max_events, max_tokens=d.get("max_tokens"),
                        on_error=d.on_error, modalities=modalities)
    task = PretrainTask(model_dict(cfg, index), OmegaConf.to_container(cfg.objective, resolve=True),
                        OmegaConf.to_container(cfg.optim, resolve=True), seed=int(cfg.seed),
                        compile=bool(cfg.model.backbone.get("compile", False)),
                        preprocessing={"specs": index["specs"], "clinical_codes": index["clinical_codes"]})
    trainer = make_trainer(cfg)
    return task, dm, trainer


def resume_path(cfg: DictConfig) -> str | None:
    if cfg.resume in (None, "none", "null", False):
        return None
    if cfg.resume == "auto":
        # the newer of checkpoints/last.ckpt and a SLURM requeue checkpoint (hpc_ckpt_<n>.ckpt, omnimodal/slurm.py)
        run_dir = Path(cfg.run_dir)
        found = [p for p in [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")] if p.exists()]
        return str(max(found, key=lambda p: p.stat().st_mtime_ns)) if found else None
    if not Path(cfg.resume).exists():  # a file, or a folder (DeepSpeed, FSDP)
        raise FileNotFoundError(f"config key resume: no checkpoint at {cfg.resume}")
    return str(cfg.resume)


def run(cfg: DictConfig) -> dict[str, float]:
    t0 = time.perf_counter()
    task, dm, trainer = build(cfg)
    print(task.parameter_summary())
    ckpt = resume_path(cfg)
    if ckpt:
        checkpoints.verify(ckpt)  # every pickle in it, before Lightning or DeepSpeed reads it
        check_resume(ckpt, trainer.num_devices * trainer.num_nodes)
        print(f"resuming from {ckpt}")
    elif cfg.get("init_from"):
        load_weights(task, cfg.init_from)
        print(f"weights from {cfg.init_from}")
    with checkpoints.no_code_from_checkpoints() if ckpt else contextlib.nullcontext():
        trainer.fit(task, datamodule=dm, ckpt_path=ckpt)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(f"done in {time.perf_counter() - t0:.0f}s: {trainer.global_step} steps; "
          + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k.endswith("loss")))
    print(f"run folder: {cfg.run_dir} (checkpoints/, logs/version_*/metrics.csv, tb/)")
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://omnimodal.configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    except checkpoints.CheckpointError as err:
        raise SystemExit(f"omnimodal-train: {err}") from None
    return metrics.get("val/loss")  # the value a sweeper optimises


if __name__ == "__main__":
    main()
