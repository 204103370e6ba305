"""Distributed training: FSDP2 sharding, the optimizer under ZeRO-Offload, checkpoints across strategies.

Strategies are chosen by config (``configs/strategy/``); this module holds the few pieces they need in code:

- :class:`FSDP2Strategy`: Lightning's ``ModelParallelStrategy`` with every process on one data-parallel
  dimension, and :func:`shard_model` (``fully_shard`` per encoder, per backbone block, then the model and
  the objective heads), called from ``PretrainTask.configure_model``.
- :class:`DeepSpeedStrategy`: Lightning's DeepSpeed ZeRO strategy with gradients reduced in parameter order,
  so processes whose batches hold different modalities still sum matching gradients.
- :func:`adamw`: ``torch.optim.AdamW``, or DeepSpeed's CPU AdamW when ZeRO offloads the optimizer state.
- :func:`consolidate`: a DeepSpeed ZeRO folder, an FSDP2 (torch distributed-checkpoint) folder or a plain
  Lightning file -> ONE file ``{"state_dict", "hyper_parameters", ...}`` that ``torch.load(weights_only=True)``
  reads and ``PretrainTask(**hyper_parameters).load_state_dict(strict=True)`` accepts
  (``omnimodal-consolidate CKPT OUT``); ``omnimodal-export`` reads that file.
- :func:`check_resume`: a checkpoint written by a different number of processes is refused before
  anything starts, with what to do instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy as _LightningDeepSpeedStrategy
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn

from .infra import checkpoints

if TYPE_CHECKING:
    from .task import PretrainTask

#: key of the checkpoint entry where PretrainTask records the run's number of processes
WORLD_SIZE_KEY = "omnimodal_world_size"
_DCP_META = "meta.pt"  # Lightning's ModelParallelStrategy: the non-tensor part of a distributed checkpoint


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all processes (``trainer.devices`` x ``trainer.num_nodes``). Lightning's default mesh puts
    the processes of a node on a tensor-parallel dimension, which omnimodal does not use."""

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


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

            rank_zero_warn(f"deepspeed {deepspeed.__version__} has no "
                           "DeepSpeedEngine.coalesce_grad_reduction: ZeRO reduces gradients in the order the backward "
                           "produces them, which is only right while every process's backward has the same shape; "
                           "install the deepspeed of constraints.txt")
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


# ------------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_kind(path: str | Path) -> str:
    """``"deepspeed"`` (ZeRO folder), ``"dcp"`` (torch distributed-checkpoint folder) or ``"file"``."""
    p = Path(path)
    if p.is_file():
        return "file"
    if p.is_dir() and ((p / "latest").is_file() or any(p.glob("*/*mp_rank_*_model_states.pt"))):
        return "deepspeed"
    if p.is_dir() and (p / ".metadata").is_file():
        return "dcp"
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p}")
    raise ValueError(f"{p} is a folder but neither a DeepSpeed ZeRO checkpoint (no 'latest' file) nor a torch "
                     f"distributed checkpoint (no '.metadata'); pass the checkpoint itself, e.g. checkpoints/last.ckpt")


def _deepspeed_states_file(path: Path) -> Path:
    tag = (path / "latest").read_text().strip() if (path / "latest").is_file() else "checkpoint"
    files = sorted((path / tag).glob("*mp_rank_*_model_states.pt"))  # ZeRO-3: zero_pp_rank_<r>_mp_rank_*
    if not files:
        raise ValueError(f"{path / tag}: no *mp_rank_*_model_states.pt; the DeepSpeed checkpoint is incomplete")
    return files[0]


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The non-tensor part of a checkpoint (hyper-parameters, step, loops; Lightning keys)."""
    p, kind = Path(path), checkpoint_kind(path)
    if kind == "deepspeed":
        return checkpoints.load(_deepspeed_states_file(p))
    if kind == "dcp":
        return checkpoints.load(p / _DCP_META)
    return checkpoints.load(p)


def written_by(path: str | Path) -> int | None:
    """Number of processes of the run that wrote a checkpoint (None when it does not say)."""
    p, kind = Path(path), checkpoint_kind(path)
    if kind == "deepspeed":  # one optimizer partition per data-parallel process
        tag_dir = _deepspeed_states_file(p).parent
        return len(list(tag_dir.glob("*optim_states.pt"))) or None
    meta = checkpoint_meta(p)
    return meta.get(WORLD_SIZE_KEY)


def check_resume(path: str | Path, world_size: int) -> None:
    """Refuse, with what to do, a resume whose number of processes differs from the checkpoint's: the data
    loaders' positions (and ZeRO's optimizer partitions) belong to the old number of processes."""
    n = written_by(path)
    if n is None or n == world_size:
        return
    raise RuntimeError(
        f"cannot resume from {path}: it was written by a run with {n} processes and this run has {world_size}. "
        f"Each process's place in the data (and a DeepSpeed ZeRO optimizer partition) belongs to that number. "
        f"Either resume with {n} processes (trainer.devices x trainer.num_nodes = {n}), or continue training "
        f"from its weights with a fresh optimizer: `omnimodal-consolidate {path} weights.ckpt`, then "
        f"`omnimodal-train ... resume=null init_from=weights.ckpt`.")


def _plain(obj: Any) -> Any:
    """Hyper-parameters as plain data (dicts, lists, str, numbers), so ``weights_only=True`` reads them."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj) if isinstance(obj, tuple) else [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    try:  # OmegaConf containers
        from omegaconf import OmegaConf  # noqa: PLC0415

        return _plain(OmegaConf.to_container(obj, resolve=True))
    except Exception as exc:  # noqa: BLE001
        raise TypeError(f"hyper-parameter of type {type(obj).__name__} is not plain data") from exc


def _tensor_state(path: Path, kind: str, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if kind == "deepspeed":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # noqa: PLC0415

        tag = (path / "latest").read_text().strip() if (path / "latest").is_file() else "checkpoint"
        return dict(get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag))
    if kind == "dcp":
        import torch.distributed.checkpoint as dcp  # noqa: PLC0415

        state = {"state_dict": {k: v.detach().clone() for k, v in template.items()}}
        dcp.load(state, checkpoint_id=str(path), no_dist=True)  # reads the shards into full tensors
        return state["state_dict"]
    ckpt = checkpoints.load(path)
    if "state_dict" not in ckpt:
        raise ValueError(f"{path}: no 'state_dict'; not a Lightning checkpoint")
    return ckpt["state_dict"]


def consolidate(path: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Any training checkpoint -> one single-file checkpoint (written to ``out`` atomically when given).

    Returns ``{"state_dict": PretrainTask state dict ('model.'/'objectives.' keys, fp32), "hyper_parameters":
    plain data, "epoch", "global_step", WORLD_SIZE_KEY, "consolidated_from"}``; the weights are checked by
    loading them strictly into ``PretrainTask(**hyper_parameters)``. No optimizer state."""
    from .task import PretrainTask  # noqa: PLC0415 - task imports this module

    p = Path(path)
    kind = checkpoint_kind(p)
    checkpoints.verify(p)  # every pickle of it, before DeepSpeed or torch distributed checkpoint reads any
    meta = checkpoint_meta(p)
    if "hyper_parameters" not in meta:
        raise ValueError(f"{p}: no hyper_parameters; it was not written by omnimodal-train (PretrainTask)")
    hparams = _plain(meta["hyper_parameters"])
    task = PretrainTask(**hparams)
    with checkpoints.no_code_from_checkpoints():  # DeepSpeed's reader asks for weights_only=False
        state = _tensor_state(p, kind, task.state_dict())
    try:
        task.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{p}: its weights do not fit the model its hyper_parameters describe: {exc}") from exc
    result = {
        "state_dict": {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
                       for k, v in task.state_dict().items()},
        "hyper_parameters": hparams,
        "epoch": int(meta.get("epoch", 0)),
        "global_step": int(meta.get("global_step", 0)),
        WORLD_SIZE_KEY: written_by(p),
        "consolidated_from": kind,
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        torch.save(result, tmp)
        tmp.replace(out)  # atomic: a crash leaves no half-written file under the final name
    return result


def load_weights(task: PretrainTask, path: str | Path) -> None:
    """Initialise a task from a (consolidated) checkpoint's weights, strictly (``init_from=``)."""
    p = Path(path)
    state = checkpoints.load(p)["state_dict"] if checkpoint_kind(p) == "file" else consolidate(p)["state_dict"]
    try:
        task.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"config key init_from: {p} does not fit this model ({exc}); use a checkpoint of the "
                         f"same model config (model.*, objective.*)") from exc


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="omnimodal-consolidate",
        description="Turn a training checkpoint (DeepSpeed ZeRO folder, FSDP folder or Lightning file) into one "
                    "file of fp32 weights + hyper-parameters, the input of omnimodal-export and init_from=.")
    ap.add_argument("checkpoint", help="e.g. outputs/<date>/<time>/checkpoints/last.ckpt (a file or a folder)")
    ap.add_argument("out", help="single-file checkpoint to write, e.g. weights.ckpt")
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        res = consolidate(args.checkpoint, args.out)
    except (FileNotFoundError, ValueError) as exc:  # CheckpointError is a ValueError
        print(f"omnimodal-consolidate: {exc}", file=sys.stderr)
        return 2
    n = sum(v.numel() for v in res["state_dict"].values())
    print(f"{args.out}: {n:,} parameters from a {res['consolidated_from']} checkpoint at step {res['global_step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
