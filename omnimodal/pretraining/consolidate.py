"""One file from any training checkpoint: a DeepSpeed ZeRO folder, an FSDP2 (torch distributed checkpoint)
folder or a plain Lightning file -> ``{"state_dict", "hyper_parameters", ...}`` that ``torch.load(weights_only=True)``
reads and ``PretrainTask(**hyper_parameters).load_state_dict(strict=True)`` accepts (``omnimodal-consolidate
CKPT OUT``); ``omnimodal-export`` and ``init_from=`` read that file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..infra import checkpoints
from ..infra.checkpoints import WORLD_SIZE_KEY, checkpoint_kind, checkpoint_meta, written_by
from .task import PretrainTask


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
        "state_dict": {
            k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
            for k, v in task.state_dict().items()
        },
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
        raise ValueError(
            f"config key init_from: {p} does not fit this model ({exc}); use a checkpoint of the "
            f"same model config (model.*, objective.*)"
        ) from exc
