"""Distributed training: FSDP2 sharding, DeepSpeed ZeRO with a deterministic gradient reduction, the optimizer
under ZeRO-Offload.

Strategies are chosen by config (``configs/strategy/``); this module holds the few pieces they need in code:

- :class:`FSDP2Strategy`: Lightning's ``ModelParallelStrategy`` with every process on one data-parallel
  dimension, and :func:`shard_model` (``fully_shard`` per encoder, per backbone block, then the model and
  the objective heads), called from ``PretrainTask.configure_model``.
- :class:`DeepSpeedStrategy`: Lightning's DeepSpeed ZeRO strategy with gradients reduced in parameter order,
  so processes whose batches hold different modalities still sum matching gradients.
- :func:`adamw`: ``torch.optim.AdamW``, or DeepSpeed's CPU AdamW when ZeRO offloads the optimizer state.

Checkpoints across strategies: :mod:`omnimodal.infra.checkpoints`; one file from any of them:
:mod:`omnimodal.pretraining.consolidate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy as _LightningDeepSpeedStrategy
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn

from .saving import atomic_folder_save

if TYPE_CHECKING:
    from ..pretraining.task import PretrainTask


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all processes (``trainer.devices`` x ``trainer.num_nodes``). Lightning's default mesh puts
    the processes of a node on a tensor-parallel dimension, which omnimodal does not use. Checkpoint folders
    are written whole or not at all (:func:`~omnimodal.infra.saving.atomic_folder_save`)."""

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        return atomic_folder_save(
            self, filepath, lambda p: super(FSDP2Strategy, self).save_checkpoint(checkpoint, p, storage_options)
        )


class DeepSpeedStrategy(_LightningDeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` (ZeRO 1/2/3, configs/strategy/deepspeed_*.yaml) whose gradient reduction
    does not depend on the order in which a process's backward produces its gradients.

    ZeRO packs each gradient into its reduction bucket as soon as autograd produces it, and sums the buckets
    across processes position by position; so every process must produce its gradients in the same order.
    Here the autograd graph depends on the batch (which modalities, which instances are held out, which
    objectives have pairs), and a parameter's gradient can come early on one process and late, or never, on
    another: one parameter's gradient is then silently added to another's. (This is what made ZeRO-2 drift
    from the 1-process run when the encoders of absent modalities were tied to the loss by a bare parameter
    sum.) So the backwards of one optimizer step run inside DeepSpeed's ``coalesce_grad_reduction``: gradients
    stay on their parameters until the accumulation boundary and are then reduced in parameter order, a missing
    one as zeros, the same on every process. The cost is that this communication no longer overlaps the backward.

    With ``trainer.accumulate_grad_batches`` > 1 one step spans several backwards, and DeepSpeed's flush
    *overwrites* the reduced gradients: so the block is opened at the window's first backward and closed (one
    flush) after its last; ``engine.step()`` between them, which at a non-boundary micro-step only counts it,
    runs with the block's no-sync flag lowered (DeepSpeed refuses ``step()`` inside the block)."""

    _window: Any = None  # the open coalesce_grad_reduction block of the current accumulation window

    def backward(self, closure_loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        engine = self.model
        stage = engine.zero_optimization_stage()
        if stage == 0:  # plain data parallel: DeepSpeed all-reduces whole buffers in parameter order
            return super().backward(closure_loss, optimizer, *args, **kwargs)
        if not hasattr(engine, "coalesce_grad_reduction"):  # DeepSpeed before PR 7992 (2026-05)
            import deepspeed  # noqa: PLC0415 - DeepSpeed only when configured

            rank_zero_warn(
                f"deepspeed {deepspeed.__version__} has no "
                "DeepSpeedEngine.coalesce_grad_reduction: ZeRO reduces gradients in the order the backward "
                "produces them, which is only right while every process's backward has the same shape; "
                "install the deepspeed of constraints.txt"
            )
            return super().backward(closure_loss, optimizer, *args, **kwargs)
        if self._window is None:
            self._window = engine.coalesce_grad_reduction()
            self._window.__enter__()
        boundary = engine.is_gradient_accumulation_boundary()
        engine.inside_no_sync_ctxt = True  # lowered after a non-boundary backward (below)
        closure_loss = super().backward(closure_loss, optimizer, *args, **kwargs)
        if boundary:
            if stage < 3:  # under ZeRO-3 a parameter is a partition here; OmniModel ties every one to the loss
                for p in engine.module.parameters():
                    if p.requires_grad and p.grad is None:  # reduced by every process or by none
                        p.grad = torch.zeros_like(p)
            self._close_window()
        else:
            engine.inside_no_sync_ctxt = False  # engine.step() only counts this micro-step
        return closure_loss

    def _close_window(self) -> None:
        window, self._window = self._window, None
        if window is not None:
            self.model.inside_no_sync_ctxt = True
            window.__exit__(None, None, None)  # the one reduction of the step

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """A ZeRO checkpoint folder, written whole or not at all (:func:`.saving.atomic_folder_save`)."""
        return atomic_folder_save(
            self, filepath, lambda p: super(DeepSpeedStrategy, self).save_checkpoint(checkpoint, p, storage_options)
        )

    def teardown(self) -> None:
        # a run that stops inside a window (max_steps between micro-steps) leaves DeepSpeed's flags as they were
        if self._window is not None and self.model is not None:
            self._close_window()
        super().teardown()


def shard_model(task: PretrainTask, mesh: Any) -> None:
    """Apply FSDP2 to a task: one unit per encoder and per backbone block, then the model and the objective
    heads. Idempotent (Lightning may call ``configure_model`` more than once)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard  # noqa: PLC0415 - torch >= 2.6 public path

    if isinstance(task.model, FSDPModule):
        return
    dp = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    for enc in task.model.encoders.values():
        fully_shard(enc, mesh=dp)
    for block in task.model.backbone.blocks:
        fully_shard(block, mesh=dp)
    fully_shard(task.model, mesh=dp)
    fully_shard(task.objectives, mesh=dp)


def offloads_optimizer(strategy: Any) -> bool:
    """Whether a DeepSpeed strategy's config puts the optimizer state on the CPU (or NVMe)."""
    zero = (getattr(strategy, "config", None) or {}).get("zero_optimization") or {}
    return (zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")


def adamw(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], strategy: Any) -> torch.optim.Optimizer:
    """AdamW; under ZeRO-Offload DeepSpeed's vectorised CPU AdamW (same update), which it requires there."""
    if offloads_optimizer(strategy):
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # noqa: PLC0415 - DeepSpeed only when configured

        return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
