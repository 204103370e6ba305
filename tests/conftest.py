"""Shared fixtures: a small synthetic cohort and its shards, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMNIMODAL_CACHE", str(Path(__file__).resolve().parent.parent / ".cache-tests"))

SECRET = "test-secret-0123456789abcdef"


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from datamodules.synthetic import synthesize_cohort

    out = tmp_path_factory.mktemp("cohort")
    synthesize_cohort(out, n_subjects=24, seed=7, workers=2)
    return out


def build(cohort: Path, out: Path, **kw) -> BuildReport:  # noqa: F821
    from datamodules.shards.builder import BuildConfig, build_shards

    kw.setdefault("secret", SECRET)
    kw.setdefault("max_samples_per_shard", 4)
    return build_shards(
        BuildConfig(
            subjects=str(cohort / "subjects.csv"),
            events=str(cohort / "events.csv"),
            labels=str(cohort / "labels.csv"),
            out=str(out),
            **kw,
        )
    )


@pytest.fixture(scope="session")
def shards(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    build(cohort, out, workers=2)
    return out


def train_config(shards: Path, run_dir: Path, *overrides: str) -> DictConfig:  # noqa: F821
    """``omnimodal-train``'s config on ``shards`` for a CPU test run in ``run_dir`` (no TensorBoard)."""
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
                "data.batch_size=4",
                "data.synthetic=null",
                "trainer.accelerator=cpu",
                "trainer.precision=32-true",
                "trainer.enable_progress_bar=false",
                "~logger.tensorboard",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg


@pytest.fixture(scope="session")
def pretrained_ckpt(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly pretrained model's checkpoint (4 steps on the test cohort)."""
    from omnimodal.pretraining.run import build as build_run

    run = tmp_path_factory.mktemp("pretrain")
    cfg = train_config(
        shards,
        run,
        "experiment=quick",
        "trainer.max_steps=4",
        "data.max_events=4",
        "resume=null",
        "callbacks.checkpoint.every_n_train_steps=4",
    )
    task, dm, trainer = build_run(cfg)
    trainer.fit(task, datamodule=dm)
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def release_dir(pretrained_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That checkpoint exported as a release folder (omnimodal-export)."""
    from omnimodal.release import export

    return export(pretrained_ckpt, tmp_path_factory.mktemp("release") / "omni-test", data_note="synthetic test cohort")
