"""Checkpoint retention (``callbacks.checkpoint.keep_last`` / ``keep_best`` / ``monitor`` / ``mode``).

A long run of a tiny model (a checkpoint every step, a validation every third) keeps the newest step
checkpoints, the best by the monitored metric (really the best: the value logged, the step and the weights that
were validated), and ``last.ckpt``; it resumes from what is kept and goes on keeping the same way; each
deletion is logged once. Only global rank 0 deletes; a sharded checkpoint folder never stands half-deleted
under its name. The configs compose to the defaults, and misconfigurations say which key to change.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from omnimodal.infra import checkpoints
from omnimodal.infra.saving import AtomicCheckpointIO, RunCheckpoint, clean_partial, remove_checkpoint

pytestmark = [  # what Lightning says of resuming into a run folder, and of the plain DataLoader of the tiny model
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
    pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended"),
]
VAL_EVERY = 3


def val_loss(step: int) -> float:
    """The metric a validation at ``step`` logs: scattered, its lowest in the middle of a 60-step run."""
    return 1.0 + (step * 37 % 23) / 10 + abs(step - 33) / 20


class Tiny(L.LightningModule):
    """A linear model; records what each validation logged and the weights it validated."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.validated: dict[int, tuple[float, torch.Tensor]] = {}

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).square().mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        score = val_loss(self.global_step)
        self.log("val/loss", score)
        self.validated[self.global_step] = (score, self.layer.weight.detach().clone())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        loss = self.trainer.callback_metrics.get("val/loss")
        checkpoint["val_loss"] = float(loss) if loss is not None else math.nan

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.randn(256, 4, generator=torch.Generator().manual_seed(0)), batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(torch.randn(2, 4), batch_size=2)


def fit(run: Path, max_steps: int, resume: bool = False, **retention: object) -> tuple[Tiny, RunCheckpoint]:
    """Train ``Tiny`` in ``run`` as omnimodal-train does: a checkpoint every step, atomic writes, and
    ``resume=auto``'s choice of checkpoint (the newest that loads), read the safe way."""
    retention = {"keep_last": 3, "keep_best": 2, "monitor": "val/loss", "mode": "min", **retention}
    cb = RunCheckpoint(
        dirpath=run / "checkpoints", save_last=True, every_n_train_steps=1, enable_version_counter=False, **retention
    )
    trainer = L.Trainer(
        default_root_dir=run,
        max_steps=max_steps,
        val_check_interval=VAL_EVERY,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[cb],
        plugins=[AtomicCheckpointIO()],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Tiny()
    ckpt = None
    if resume:
        found, notes = checkpoints.newest_checkpoint(run)
        assert found is not None and not notes, notes
        checkpoints.verify(found)
        ckpt = str(found)
    with checkpoints.no_code_from_checkpoints():
        trainer.fit(model, ckpt_path=ckpt)
    assert trainer.global_step == max_steps
    return model, cb


def step_of(path: Path) -> int:
    return int(checkpoints.checkpoint_meta(path)["global_step"])


def test_a_long_run_keeps_the_newest_and_the_best_and_resumes_from_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="omnimodal.checkpoints")
    model, cb = fit(tmp_path, 40)
    ck = tmp_path / "checkpoints"
    names = {p.name for p in ck.iterdir()}
    best = sorted(model.validated, key=lambda s: (model.validated[s][0], s))[:2]  # lowest; ties: the earlier
    assert len(model.validated) == 40 // VAL_EVERY
    assert names == {
        "last.ckpt",
        *(f"epoch=0-step={s}.ckpt" for s in (38, 39, 40)),
        *(f"best-epoch=0-step={s}.ckpt" for s in best),
    }, best
    for s in best:  # the state that was validated, with the value it scored
        c = checkpoints.load(ck / f"best-epoch=0-step={s}.ckpt")
        assert c["global_step"] == s and c["val_loss"] == pytest.approx(model.validated[s][0])
        torch.testing.assert_close(c["state_dict"]["layer.weight"], model.validated[s][1], rtol=0, atol=0)
    assert cb.best_model_path == str(ck / f"best-epoch=0-step={best[0]}.ckpt")
    assert cb.best_model_score == pytest.approx(model.validated[best[0]][0])
    # every deletion logged once: 37 step checkpoints, and the best ones that better ones displaced
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed ")]
    assert len(removed) == len(set(removed)) and sum("step=" in m and "best-" not in m for m in removed) == 37
    assert not any(Path(m.split()[1]).exists() for m in removed)

    # a kill after the step-40 checkpoint but before last.ckpt: resume=auto takes the newest complete one
    (ck / "last.ckpt").unlink()
    assert checkpoints.newest_checkpoint(tmp_path)[0] == ck / "epoch=0-step=40.ckpt"
    more, cb = fit(tmp_path, 61, resume=True)
    scores = {s: v for s, (v, _) in {**model.validated, **more.validated}.items()}
    assert set(more.validated) == set(range(42, 61, VAL_EVERY))  # went on from step 40
    best = sorted(scores, key=lambda s: (scores[s], s))[:2]
    assert {p.name for p in ck.iterdir()} == {
        "last.ckpt",
        *(f"epoch=0-step={s}.ckpt" for s in (59, 60, 61)),
        *(f"best-epoch=0-step={s}.ckpt" for s in best),
    }
    assert [s for _, s, _ in cb.best_checkpoints] == best
    assert step_of(ck / "last.ckpt") == 61
    for p in ck.iterdir():  # everything kept loads the safe way (what resume=auto reads)
        checkpoints.verify(p)


def test_mode_max_and_lower_limits_on_resume(tmp_path: Path) -> None:
    """``mode: max`` keeps the highest; a run resumed with lower limits trims what it kept to them."""
    model, _ = fit(tmp_path, 24, mode="max", keep_best=3)
    top = sorted(model.validated, key=lambda s: (-model.validated[s][0], s))[:3]
    ck = tmp_path / "checkpoints"
    assert sorted(p.name for p in ck.glob("best-*")) == sorted(f"best-epoch=0-step={s}.ckpt" for s in top)
    fit(tmp_path, 25, resume=True, mode="max", keep_best=1, keep_last=1)
    assert {p.name for p in ck.iterdir()} == {"last.ckpt", "epoch=0-step=25.ckpt", f"best-epoch=0-step={top[0]}.ckpt"}


def test_keep_last_null_keeps_every_step_and_keep_best_0_no_best(tmp_path: Path) -> None:
    fit(tmp_path, 7, keep_last=None, keep_best=0)
    names = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert names == {"last.ckpt", *(f"epoch=0-step={s}.ckpt" for s in range(1, 8))}


def test_a_monitor_that_validation_does_not_log_is_an_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"callbacks\.checkpoint\.monitor='val/auroc' was not logged.*val/loss"):
        fit(tmp_path, 4, monitor="val/auroc")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep_best": 1}, r"keep_best=1 needs callbacks\.checkpoint\.monitor"),
        ({"keep_last": -2}, r"callbacks\.checkpoint\.keep_last must be a count >= 0"),
        ({"monitor": "val/loss", "keep_best": 1, "mode": "lowest"}, r"callbacks\.checkpoint\.mode must be min"),
        ({"save_top_k": 3}, r"save_top_k=3: .*keep_last .*keep_best"),
        ({"save_top_k": -1, "keep_last": 3}, r"save_top_k=-1 \(keep all\) contradicts"),
    ],
)
def test_misconfigurations_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunCheckpoint(**kwargs)


def test_only_global_rank_0_deletes(tmp_path: Path) -> None:
    class Rank:
        def __init__(self, zero: bool) -> None:
            self.is_global_zero = zero

    f = tmp_path / "epoch=0-step=1.ckpt"
    f.write_bytes(b"x")
    cb = RunCheckpoint(keep_last=1)
    cb._remove(Rank(False), [str(f)], "test")
    assert f.exists()
    cb._remove(Rank(True), [str(f)], "test")
    assert not f.exists()


def test_a_sharded_checkpoint_is_never_half_deleted_under_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder (DeepSpeed, FSDP) is renamed aside before it is removed: a kill mid-removal leaves
    ``<name>.old``, which resume=auto never reads and the next start removes."""
    ck = tmp_path / "checkpoints"
    folder = ck / "epoch=0-step=2.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    (folder / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"weights")

    class Killed(BaseException):
        pass

    def killed(path: object, **kw: object) -> None:
        if Path(str(path)).exists():
            raise Killed  # as if killed while removing the renamed folder

    monkeypatch.setattr("omnimodal.infra.saving.shutil.rmtree", killed)
    with pytest.raises(Killed):
        remove_checkpoint(folder)
    monkeypatch.undo()
    assert not folder.exists() and (ck / "epoch=0-step=2.ckpt.old").is_dir()
    assert checkpoints.newest_checkpoint(tmp_path) == (None, [])
    assert [p.name for p in clean_partial(ck)] == ["epoch=0-step=2.ckpt.old"] and not any(ck.iterdir())
    assert remove_checkpoint(ck / "gone.ckpt") is False


def test_the_configs_keep_3_steps_and_the_best_by_val_loss_and_fine_tuning_only_last(tmp_path: Path) -> None:
    import hydra
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="omnimodal.configs", version_base="1.3"):
        train = compose("train", overrides=[f"run_dir={tmp_path}"])
        tune = compose("finetune", overrides=[f"run_dir={tmp_path}"])
    GlobalHydra.instance().clear()
    cb = hydra.utils.instantiate(train.callbacks.checkpoint)
    assert (cb.keep_last, cb.keep_best, cb.best_monitor, cb.best_mode) == (3, 1, "val/loss", "min")
    assert cb.save_last and cb.save_top_k == -1
    cb = hydra.utils.instantiate(tune.callbacks.checkpoint)  # best.ckpt is its own callback's
    assert (cb.keep_last, cb.keep_best, cb.save_top_k) == (0, 0, 0) and cb.save_last
