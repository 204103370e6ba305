"""Writing checkpoints so that a crash at any moment leaves every checkpoint under its final name complete,
and ``last.ckpt`` the state training ended in.

- :class:`AtomicCheckpointIO`: a file checkpoint is written to a hidden ``.<name>.partial-<pid>`` beside its
  target, flushed to disk, then renamed over it (Lightning's own writer stages it in ``$TMPDIR``, where an
  interrupted save is never cleaned up).
- :func:`atomic_folder_save`: the same for sharded checkpoints (DeepSpeed ZeRO, torch distributed
  checkpoint): every rank writes into ``<name>.partial``, then rank 0 renames it into place.
- :func:`clean_partial`: removes what interrupted saves left (called when a run starts).
- :class:`RunCheckpoint`: Lightning's ``ModelCheckpoint`` with retention (the newest ``keep_last`` step
  checkpoints and the best ``keep_best`` by ``monitor``; ``last.ckpt`` always) that also writes ``last.ckpt`` when
  training ends (at ``max_steps``, ``max_epochs`` or an early stop), not only at its save interval.
- :func:`remove_checkpoint`: deletes a checkpoint so that no half of one is left under its final name.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info

PARTIAL = ".partial"
log = logging.getLogger("omnimodal.checkpoints")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, ``fsync``, ``os.replace``: the target is either the
    previous checkpoint or the new one, never half of one. Remote paths (``s3://``, ...) go to Lightning's."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}{PARTIAL}-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return None


def atomic_folder_save(strategy: Any, filepath: Any, save: Callable[[Path], None]) -> None:
    """A sharded checkpoint written by every rank into ``<filepath>.partial``, then renamed into place by rank 0
    (the previous folder of that name is moved aside first and removed after)."""
    final = Path(strategy.broadcast(str(filepath)))
    partial = final.with_name(final.name + PARTIAL)
    if strategy.is_global_zero:
        shutil.rmtree(partial, ignore_errors=True)
    strategy.barrier("omnimodal-save-start")
    save(partial)
    strategy.barrier("omnimodal-save-written")
    if strategy.is_global_zero:
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    strategy.barrier("omnimodal-save-done")


def clean_partial(folder: str | os.PathLike) -> list[Path]:
    """Remove the leftovers of interrupted saves in ``folder`` (temporary files and folders); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = [
        p
        for p in folder.iterdir()
        if (p.name.startswith(".") and f"{PARTIAL}-" in p.name) or p.name.endswith((PARTIAL, ".old"))
    ]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return gone


def remove_checkpoint(path: str | os.PathLike) -> bool:
    """Delete a checkpoint file or folder; False if there was none. A file goes in one ``unlink``; a folder (a
    sharded checkpoint) is first renamed to ``<name>.old``, so a kill while it is being removed leaves no partial
    checkpoint under a name ``resume=auto`` would read (:func:`clean_partial` removes the rest at the next start)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        old = p.with_name(p.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(p, old)
        shutil.rmtree(old, ignore_errors=True)
        return True
    if p.is_file() or p.is_symlink():
        p.unlink(missing_ok=True)
        return True
    return False


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps a bounded number of checkpoints, and whose ``last.ckpt`` is the final state.

    - Step checkpoints (every ``every_n_train_steps``, Lightning's filename, e.g. ``epoch=0-step=20.ckpt``): the
      newest ``keep_last`` are kept (None: all; 0: none written).
    - Best checkpoints: after each validation, if ``monitor`` (a logged metric, e.g. ``val/loss``) is among the
      ``keep_best`` best values so far (``mode`` min or max; ties keep the earlier), the state is saved as
      ``best-<filename>.ckpt``; the one it displaces is deleted. Judged there, on the weights just validated, not
      at a step save (where a validation metric is up to an epoch old). ``best_model_path`` / ``best_model_score``
      name the best one (``trainer.test(ckpt_path="best")``).
    - ``last.ckpt`` (``save_last``) is always written and never deleted; ``save_top_k=0`` (Lightning's "none but
      last", e.g. fine-tuning, which keeps its own best.ckpt) writes only it, and keep_last/keep_best are unused.

    A checkpoint is deleted only after the one that replaces it is complete (written atomically, :class:`
    AtomicCheckpointIO`), by global rank 0 only, with :func:`remove_checkpoint`. The kept lists are part of the
    callback's state in every checkpoint, so a resumed run goes on with them (a checkpoint it resumed from is
    deleted like any other once newer ones replace it: a later resume takes those). Each deletion is logged
    (debug, info with ``verbose``); the policy once, when training starts.
    """

    KEY = "callbacks.checkpoint"  # where omnimodal-train and omnimodal-finetune configure it (error messages)

    def __init__(
        self,
        *args: Any,
        keep_last: int | None = None,
        keep_best: int = 0,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int | None = None,
        **kwargs: Any,
    ) -> None:
        k = self.KEY
        for name, value in (("keep_last", keep_last), ("keep_best", keep_best)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{k}.{name} must be a count >= 0 (null for keep_last: keep all), got {value!r}")
        if keep_best is None:
            raise ValueError(f"{k}.keep_best must be a count >= 0, got None")
        if mode not in ("min", "max"):
            raise ValueError(f"{k}.mode must be min (lower {monitor or 'monitor'} is better) or max, got {mode!r}")
        if save_top_k not in (None, -1, 0):
            raise ValueError(
                f"{k}.save_top_k={save_top_k}: this callback keeps checkpoints by {k}.keep_last (the newest K step "
                f"checkpoints) and {k}.keep_best (the best N by {k}.monitor); set those instead"
            )
        if save_top_k == -1 and keep_last is not None:
            raise ValueError(f"{k}.save_top_k=-1 (keep all) contradicts {k}.keep_last={keep_last}; set one of them")
        if save_top_k == 0:
            keep_last, keep_best = 0, 0
        if keep_best and not monitor:
            raise ValueError(
                f"{k}.keep_best={keep_best} needs {k}.monitor: a metric the run logs, judged after each validation "
                f"(e.g. val/loss); or set {k}.keep_best=0"
            )
        # Lightning's own top-k is off (monitor=None, save_top_k -1 or 0): it writes, this class deletes
        super().__init__(*args, save_top_k=0 if keep_last == 0 else -1, mode=mode, **kwargs)
        self.keep_last, self.keep_best = keep_last, keep_best
        self.best_monitor = monitor if keep_best else None
        self.best_mode = mode
        self.step_checkpoints: list[tuple[int, str]] = []  # (step, path), oldest first
        self.best_checkpoints: list[tuple[float, int, str]] = []  # (score, step, path), best first
        self._validated = False

    # ------------------------------------------------------------------------------------------------
    # what is kept

    def _step_checkpoint(self, step: int, path: str) -> list[str]:
        """Add a step checkpoint (about to be written); returns those it pushes out of ``keep_last``."""
        self.step_checkpoints = sorted([e for e in self.step_checkpoints if e[1] != path] + [(step, path)])
        return self._trim()

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.best_mode == "min" else a > b

    def _best_checkpoint(self, score: float, step: int, path: str) -> list[str]:
        """Add a best checkpoint (about to be written); returns those it pushes out of ``keep_best``."""
        kept = [e for e in self.best_checkpoints if e[2] != path]
        i = next((j for j, e in enumerate(kept) if self._better(score, e[0])), len(kept))
        self.best_checkpoints = [*kept[:i], (score, step, path), *kept[i:]]
        gone = self._trim()
        self._name_best()
        return gone

    def _trim(self) -> list[str]:
        """Cut the kept lists to ``keep_last`` and ``keep_best``; returns the paths let go."""
        cut = 0 if self.keep_last is None else max(len(self.step_checkpoints) - self.keep_last, 0)
        gone = [p for _, p in self.step_checkpoints[:cut]] + [e[2] for e in self.best_checkpoints[self.keep_best :]]
        self.step_checkpoints, self.best_checkpoints = (
            self.step_checkpoints[cut:],
            self.best_checkpoints[: self.keep_best],
        )
        return gone

    def _name_best(self) -> None:
        if self.best_checkpoints:
            score, _, self.best_model_path = self.best_checkpoints[0]
            self.best_model_score = torch.tensor(score)

    def _remove(self, trainer: L.Trainer, paths: list[str], why: str) -> None:
        """Delete checkpoints that retention let go (rank 0; never ``last.ckpt`` or one still kept)."""
        if not trainer.is_global_zero:
            return
        kept = {self.last_model_path, *(p for _, p in self.step_checkpoints), *(e[2] for e in self.best_checkpoints)}
        say = rank_zero_info if self.verbose else log.debug
        for path in paths:
            if path in kept:
                continue
            if "://" in str(path):
                trainer.strategy.remove_checkpoint(path)
            elif not remove_checkpoint(path):
                continue
            say(f"removed {path} ({why})")

    # ------------------------------------------------------------------------------------------------
    # Lightning hooks

    def _save_none_monitor_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        # a step checkpoint (Lightning's top-k without a monitor, save_top_k=-1 here): written, then the oldest
        # beyond keep_last deleted. The kept list is updated first: the file holds the list it belongs to.
        filepath = self._get_metric_interpolated_filepath_name(monitor_candidates, trainer, self.best_model_path)
        if not self.keep_best:
            self.best_model_path = filepath  # Lightning's meaning without a monitor: the latest
        gone = self._step_checkpoint(trainer.global_step, filepath)
        self._save_checkpoint(trainer, filepath)
        self._remove(trainer, gone, f"{self.KEY}.keep_last={self.keep_last}: the newest are kept")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # a run resumed with lower limits than its checkpoint's lists: down to them now
        self._remove(trainer, self._trim(), f"{self.KEY}.keep_last / keep_best are lower than when it was written")
        kept = []
        if self.save_top_k and self.keep_last is not None:
            kept.append(f"the newest {self.keep_last} step checkpoints")
        if self.keep_best:
            kept.append(f"the best {self.keep_best} by {self.best_monitor} ({self.best_mode}, after each validation)")
        if kept:
            rank_zero_info(
                f"checkpoints: keeping {' and '.join(kept)}, and last.ckpt; older ones are deleted as newer ones "
                f"are written ({self.KEY}.keep_last, {self.KEY}.keep_best)"
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self.keep_best or trainer.sanity_checking or trainer.fast_dev_run:
            return
        if trainer.state.fn != TrainerFn.FITTING:
            return
        self._validated = True
        step = trainer.global_step
        if any(s == step for _, s, _ in self.best_checkpoints):
            return  # this state is judged already (two validations at one step)
        candidates = self._monitor_candidates(trainer)
        value = candidates.get(self.best_monitor)
        if value is None:
            logged = sorted(k for k in trainer.callback_metrics if k not in ("epoch", "step"))
            raise ValueError(
                f"{self.KEY}.monitor={self.best_monitor!r} was not logged by the validation at step {step}; the "
                f"run logs {logged}. Set {self.KEY}.monitor to one of them, or {self.KEY}.keep_best=0"
            )
        score = float(value)
        if math.isnan(score):  # never better than a number
            score = math.inf if self.best_mode == "min" else -math.inf
        full = len(self.best_checkpoints) >= self.keep_best
        better = not full or self._better(score, self.best_checkpoints[-1][0])
        if not trainer.strategy.reduce_boolean_decision(better):
            return
        filepath = self.format_checkpoint_name(candidates, prefix="best")
        gone = self._best_checkpoint(score, step, filepath)
        trainer.save_checkpoint(filepath, self.save_weights_only)  # not _save_checkpoint: last.ckpt is not due
        say = rank_zero_info if self.verbose else log.debug
        say(f"best {self.best_monitor}={score:.6g} at step {step}: {filepath}")
        self._remove(trainer, gone, f"{self.KEY}.keep_best={self.keep_best}: better ones are kept")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and trainer.global_step and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if self.keep_best and not self._validated and not self.best_checkpoints:
            rank_zero_info(
                f"checkpoints: no best checkpoint: no validation ran, so {self.KEY}.monitor={self.best_monitor} "
                "was never judged (trainer.limit_val_batches=0, or no validation split)"
            )
        super().on_train_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "step_checkpoints": [list(e) for e in self.step_checkpoints],
            "best_checkpoints": [list(e) for e in self.best_checkpoints],
            "best_monitor": self.best_monitor,
            "best_mode": self.best_mode,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("dirpath", self.dirpath) != self.dirpath:
            return  # another run's folder: its files are not this run's to delete
        self.step_checkpoints = [(int(s), str(p)) for s, p in state_dict.get("step_checkpoints", [])]
        best = [(float(v), int(s), str(p)) for v, s, p in state_dict.get("best_checkpoints", [])]
        judged = (state_dict.get("best_monitor"), state_dict.get("best_mode"))
        if judged == (self.best_monitor, self.best_mode):
            self.best_checkpoints = best
            self._name_best()
        elif best:
            now = f"by {self.best_monitor} ({self.best_mode})" if self.keep_best else f"none ({self.KEY}.keep_best=0)"
            rank_zero_info(
                f"checkpoints: the {len(best)} best checkpoint(s) of the resumed run, by {judged[0]} ({judged[1]}), "
                f"are left as they are; best ones from now on: {now}"
            )


__all__ = ["AtomicCheckpointIO", "RunCheckpoint", "atomic_folder_save", "clean_partial", "remove_checkpoint"]
