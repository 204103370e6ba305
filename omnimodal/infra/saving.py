"""Writing checkpoints so that a crash at any moment leaves every checkpoint under its final name complete,
and ``last.ckpt`` the state training ended in.

- :class:`AtomicCheckpointIO`: a file checkpoint is written to a hidden ``.<name>.partial-<pid>`` beside its
  target, flushed to disk, then renamed over it (Lightning's own writer stages it in ``$TMPDIR``, where an
  interrupted save is never cleaned up).
- :func:`atomic_folder_save`: the same for sharded checkpoints (DeepSpeed ZeRO, torch distributed
  checkpoint): every rank writes into ``<name>.partial``, then rank 0 renames it into place.
- :func:`clean_partial`: removes what interrupted saves left (called when a run starts).
- :class:`RunCheckpoint`: Lightning's ``ModelCheckpoint`` that also writes ``last.ckpt`` when training ends
  (at ``max_steps``, ``max_epochs`` or an early stop), not only at its save interval.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

PARTIAL = ".partial"


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


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is the final state: when training ends at a step it did not save
    at (its interval does not divide the run), it saves ``last.ckpt`` there too."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and trainer.global_step and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)


__all__ = ["AtomicCheckpointIO", "RunCheckpoint", "atomic_folder_save", "clean_partial"]
