"""SLURM preemption: on the requeue signal, checkpoint at a step boundary, requeue, resume where it stopped.

Under ``srun`` Lightning detects its SLURM environment (``auto_requeue=True``, requeue signal ``SIGUSR1``;
``sbatch --signal=USR1@120`` sends it two minutes before the time limit). Lightning's own handler saves
``run_dir/hpc_ckpt_<n>.ckpt`` and runs ``scontrol requeue`` from inside the signal handler, i.e. wherever
in the step the signal lands (between backward and optimizer step, with the loader a batch ahead, on each
rank at a different point, each rank numbering the file itself). Such a checkpoint does not resume to the
losses of an uninterrupted run. :class:`RequeueAtStepEnd` (in the default callbacks) replaces that handler:
the signal only sets a flag; at the end of the training step the ranks agree (any rank signalled), save
``hpc_ckpt_<n>.ckpt`` together at that step boundary (where ``ModelCheckpoint`` saves too), rank 0 runs
``scontrol requeue``, and the processes exit. The requeued job (same job id, same arguments, same run
folder) resumes from the newest of ``checkpoints/last.ckpt`` and ``hpc_ckpt_<n>.ckpt``
(``resume=auto``, :func:`omnimodal.pretraining.run.resume_path`). Outside SLURM it does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from types import FrameType
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.rank_zero import rank_zero_info

log = logging.getLogger("omnimodal.slurm")


class Requeued(SystemExit):
    """Ends the process after the requeue checkpoint (exit status 0: the requeued job carries on)."""


def requeue() -> bool:
    """``scontrol requeue`` this job (or array task); False (and a warning) where that fails."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    try:
        r = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        why = f"exit status {r.returncode}: {r.stderr.strip()}" if r.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        why = str(e)
    if why:
        log.warning(
            f"`scontrol requeue {job}` failed ({why}): resubmit the job with the same run folder to "
            f"resume (sbatch --requeue, and JobRequeue=1 in slurm.conf, allow requeueing)"
        )
    return not why


class RequeueAtStepEnd(L.Callback):
    """Lightning's SLURM auto-requeue (hpc checkpoint, ``scontrol requeue``) at the end of a training step,
    on all ranks at the same step, instead of wherever the signal lands.

    ``every_n_steps``: how often the ranks check for the signal (one all-reduce of a flag each time);
    the signal comes minutes before the time limit (``--signal=USR1@120``), so 1 costs little.
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.requeue.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.signalled = self._saved = False
        self._signum: int | None = None
        self._previous: Any = None

    @staticmethod
    def _environment(trainer: L.Trainer) -> Any:
        # the environment Lightning's signal connector itself consults
        return trainer._accelerator_connector.cluster_environment

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registers its handlers just before training starts (after on_fit_start): replace its
        # requeue handler with one that only records the signal.
        env = self._environment(trainer)
        if not (isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal is not None):
            return
        self._signum = int(env.requeue_signal)
        self.signalled = self._saved = False
        self._previous = signal.signal(self._signum, self._record)
        rank_zero_info(
            f"SLURM requeue: on signal {signal.Signals(self._signum).name} this run checkpoints at the "
            f"end of the step, requeues and exits; the requeued job resumes from that checkpoint"
        )

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._signum is None or self._saved or trainer.global_step % self.every_n_steps:
            return
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        # one path for all ranks (sharded strategies write from every rank; each counting the folder's files
        # itself, as Lightning's handler does, can disagree), then the checkpoint, then `scontrol requeue`
        path = trainer.strategy.broadcast(trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir))
        rank_zero_info(f"SLURM requeue signal: saving {path} at step {trainer.global_step} and requeueing the job")
        trainer.save_checkpoint(path, weights_only=False)  # the full training state
        for logger in trainer.loggers:
            logger.save()
        # `scontrol requeue` makes SLURM send SIGTERM now: nothing is left to do but exit (Lightning's handler
        # would broadcast to ranks that may be gone)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        trainer.strategy.barrier("requeue")
        if trainer.is_global_zero:
            requeue()
        self._saved = True  # exit at the next hook, once this step's metrics are logged

    def _exit_if_saved(self, *args: Any) -> None:
        if self._saved:
            rank_zero_info("SLURM requeue: checkpoint saved and job requeued; exiting")
            raise Requeued(0)

    # the first hook after the step that saved: the next batch, a validation run, the epoch's or run's end (before
    # ModelCheckpoint's epoch-end save, which Lightning runs after the other callbacks)
    on_train_batch_start = on_validation_start = on_train_epoch_end = on_train_end = _exit_if_saved

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._signum is not None and signal.getsignal(self._signum) == self._record:
            signal.signal(self._signum, self._previous if self._previous is not None else signal.SIG_DFL)
        self._signum = None
