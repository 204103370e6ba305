"""Training: every experiment composes and trains on CPU; resuming reproduces the uninterrupted run;
the command works from any directory, with a site's --config-dir and -m sweeps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
from conftest import train_config as config

from omnimodal.pretraining.run import build, resume_path

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "configs" / "experiment").glob("*.yaml"))


def test_experiment_list_is_not_empty() -> None:
    assert {"quick", "ecg_wearable", "large_encoders", "base_gpu"} <= set(EXPERIMENTS)


#: experiments whose backbone is too big for the default CPU suite: run there with a tiny backbone, and
#: as they are under -m slow
GPU_SIZED = {"base_gpu"}
#: experiments that take a minute on 2 CPU cores: -m slow (CI runs them)
SLOW = {"large_encoders"}
CASES = [pytest.param(e, False, id=e, marks=[pytest.mark.slow] if e in SLOW else []) for e in EXPERIMENTS] + [
    pytest.param(e, True, id=f"{e}-full", marks=pytest.mark.slow) for e in sorted(GPU_SIZED)
]


@pytest.mark.parametrize(("experiment", "full_size"), CASES)
def test_every_experiment_composes_and_trains(shards: Path, tmp_path: Path, experiment: str, full_size: bool) -> None:
    shrink = ["model/backbone=tiny"] if experiment in GPU_SIZED and not full_size else []
    cfg = config(
        shards,
        tmp_path,
        f"experiment={experiment}",
        *shrink,
        "trainer.max_steps=2",
        "trainer.max_epochs=1",
        "data.batch_size=2",
        "data.max_events=4",
        "model.row_len=null",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "callbacks.checkpoint.every_n_train_steps=2",
    )
    task, dm, trainer = build(cfg)
    trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 2
    assert _metrics(tmp_path)["train/loss"].notna().sum() >= 1
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    if experiment == "ecg_wearable":
        assert set(task.model.encoders) == {"ecg", "wearable", "clinical"}


def _metrics(run_dir: Path) -> pd.DataFrame:
    """Every attempt's metrics (a resumed run logs to the next version folder)."""
    return pd.concat([pd.read_csv(p) for p in sorted((run_dir / "logs").glob("version_*/metrics.csv"))])


def _losses(run_dir: Path) -> pd.Series:
    m = _metrics(run_dir)
    m = m[m["train/loss"].notna()]
    return m.set_index("step")["train/loss"]


class StopAt(L.Callback):
    """Simulates a preempted job: stop right after a given step (its checkpoint is on disk)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_resume_mid_epoch_reproduces_the_uninterrupted_run(shards: Path, tmp_path: Path) -> None:
    common = (
        "trainer.max_steps=8",
        "trainer.max_epochs=3",
        "trainer.log_every_n_steps=1",
        "callbacks.checkpoint.every_n_train_steps=3",
        "trainer.check_val_every_n_epoch=100",
        "data.max_events=4",
        "model.row_len=null",
    )
    full = tmp_path / "full"
    task, dm, trainer = build(config(shards, full, *common))
    trainer.fit(task, datamodule=dm)
    ref = _losses(full)
    assert len(ref) == 8 and len(dm.train_dataloader()) > 3  # step 3 is mid-epoch

    part = tmp_path / "part"
    cfg = config(shards, part, *common)
    task, dm, trainer = build(cfg)
    trainer.callbacks.append(StopAt(3))
    trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 3
    ckpt = resume_path(cfg)  # resume=auto finds checkpoints/last.ckpt
    assert ckpt and ckpt.endswith("last.ckpt")
    task, dm, trainer = build(cfg)
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt)
    got = _losses(part)
    assert trainer.global_step == 8
    pd.testing.assert_series_equal(got.sort_index(), ref.sort_index(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_cli_from_any_directory_with_site_configs_and_a_sweep(shards: Path, tmp_path: Path) -> None:
    site = tmp_path / "site" / "experiment"
    site.mkdir(parents=True)
    (site / "site_tiny.yaml").write_text("# @package _global_\ntrainer:\n  max_steps: 1\ndata:\n  batch_size: 2\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "omnimodal.cli.train",
        "-m",
        f"--config-dir={tmp_path / 'site'}",
        "experiment=site_tiny",
        "data=shards",
        f"data.root={shards}",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
        "~logger.tensorboard",
        "objective.masked_weight=0.5,1.0",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "checkpoints" / "last.ckpt").is_file()
    assert res.stdout.count("done in") == 2 and "parameters:" in res.stdout


def test_last_checkpoint_is_the_final_state_when_the_interval_does_not_divide_the_run(
    shards: Path, tmp_path: Path
) -> None:
    from omnimodal.infra.checkpoints import load

    cfg = config(
        shards,
        tmp_path,
        "trainer.max_steps=5",
        "callbacks.checkpoint.every_n_train_steps=3",
        "data.max_events=4",
        "model.row_len=null",
        "trainer.limit_val_batches=0",
    )
    task, dm, trainer = build(cfg)
    trainer.fit(task, datamodule=dm)
    assert load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 5  # not 3, the last interval
    assert (tmp_path / "checkpoints" / "epoch=0-step=3.ckpt").is_file()
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("tmp*last.ckpt*"))


def test_resume_auto_takes_the_newest_checkpoint_that_loads(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A kill between writing a step checkpoint and last.ckpt, or during a write: the newest complete one is
    taken (by training step, not by name), the damaged one is passed over with a note, leftovers removed."""
    from omnimodal.infra.checkpoints import load, newest_checkpoint
    from omnimodal.pretraining.run import run

    cfg = config(
        shards,
        tmp_path,
        "trainer.max_steps=4",
        "callbacks.checkpoint.every_n_train_steps=2",
        "data.max_events=4",
        "model.row_len=null",
        "trainer.limit_val_batches=0",
    )
    task, dm, trainer = build(cfg)
    trainer.fit(task, datamodule=dm)
    ck = tmp_path / "checkpoints"
    # as if killed after epoch=0-step=4 but before last.ckpt: last.ckpt still holds step 2
    (ck / "last.ckpt").write_bytes((ck / "epoch=0-step=2.ckpt").read_bytes())
    assert resume_path(cfg) == str(ck / "epoch=0-step=4.ckpt")
    # the step-4 file cut short by a kill mid-write: passed over, step 2 taken
    data = (ck / "epoch=0-step=4.ckpt").read_bytes()
    (ck / "epoch=0-step=4.ckpt").write_bytes(data[: len(data) // 2])
    found, notes = newest_checkpoint(tmp_path)
    assert found is not None and load(found)["global_step"] == 2
    assert any("epoch=0-step=4.ckpt" in n for n in notes)
    # an interrupted atomic save leaves a hidden partial file beside its target: removed at the next start
    (ck / ".last.ckpt.partial-12345").write_bytes(b"half a checkpoint")
    assert run(cfg)["train/loss"] > 0
    out = capsys.readouterr().out
    assert "removed" in out and ".last.ckpt.partial-12345" in out and "passed over" in out
    assert not (ck / ".last.ckpt.partial-12345").exists()
    assert load(ck / "last.ckpt")["global_step"] == 4
