"""Reading checkpoints without running anything stored in them.

A checkpoint is a pickle, and a pickle can name any function to call while it is read (``os.system``,
``builtins.eval``, ``torch.fx.graph_module._exec_with_source``, ...). Checkpoints travel between teams and
clusters, so every read here is ``torch.load(weights_only=True)`` with an explicit allow-list of the few
classes our checkpoints hold besides tensors and plain data (:data:`ALLOWED`): no module-wide roots. A file
that holds anything else is refused with :class:`CheckpointError`, which names the file and the global.

- :func:`load`: one checkpoint file (Lightning ``.ckpt``, a DeepSpeed ``*_states.pt``, a DCP ``meta.pt``).
- :func:`verify`: every pickle of a checkpoint file or folder (DeepSpeed ZeRO, torch distributed checkpoint),
  read this way before any other library is given the path.
- :func:`checkpoint_kind`, :func:`checkpoint_meta`, :func:`written_by`, :func:`check_resume`: any strategy's
  checkpoint (a Lightning file, a DeepSpeed ZeRO folder, a torch distributed checkpoint folder); a resume
  with another number of processes is refused before anything starts, with what to do instead.
- :func:`no_code_from_checkpoints`: a scope for the libraries that read checkpoints themselves (Lightning,
  DeepSpeed's engine and ``zero_to_fp32``, which ask for ``weights_only=False``, and torch distributed
  checkpoint, which reads its ``.metadata`` with plain ``pickle.load``): inside it every ``torch.load`` is
  ``weights_only`` with the same allow-list, and ``.metadata`` is read by :class:`RestrictedUnpickler`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

#: Globals, besides what ``torch.load(weights_only=True)`` allows by itself, that checkpoints written by
#: omnimodal-train hold (found by listing every global of every strategy's checkpoints; tests/test_checkpoints.py).
ALLOWED: tuple[str, ...] = (
    # DeepSpeed ZeRO optimizer-state files (*_optim_states.pt): loss scaling, ZeRO stage, bf16 fragment maps
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
    # torch distributed checkpoint (FSDP2): the .metadata file's records
    "torch.distributed.checkpoint.metadata.Metadata",
    "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
    "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
    "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
    "torch.distributed.checkpoint.metadata.TensorProperties",
    "torch.distributed.checkpoint.metadata.MetadataIndex",
    "torch.distributed.checkpoint.metadata.StorageMeta",
    "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    "torch.Size",
    "torch.serialization._get_layout",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "collections.OrderedDict",
)
_ALLOWED = frozenset(ALLOWED)
_FORCE, _FORCE_NO = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_GLOBAL_IN_ERROR = re.compile(r"(?:GLOBAL|global) ([\w.]+)")


class CheckpointError(ValueError):
    """A checkpoint that is refused or cannot be read; the message names the file and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that holds a global outside :data:`ALLOWED`: never read, never skipped over silently."""


def refusal(path: str | Path, name: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path}: refused: it holds the Python global `{name}`, which no omnimodal checkpoint contains; reading it "
        "could run code stored in the file, so nothing in it was read. Use checkpoints written by omnimodal-train "
        "or omnimodal-finetune; a model trained elsewhere enters as plain tensors (torch.save(model.state_dict()))."
    )


def _resolve(name: str) -> Any:
    """``"pkg.module.Attr"`` -> the object (the longest importable module prefix, then attributes)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def _loaded(names: frozenset[str] | tuple[str, ...] = ALLOWED) -> list[Any]:
    """The allowed globals whose top-level package is already imported (DeepSpeed only where it runs)."""
    out = []
    for n in names:
        if n.split(".")[0] in sys.modules:
            with contextlib.suppress(ImportError, AttributeError):
                out.append(_resolve(n))
    return out


def _globals_in(path: Path) -> list[str]:
    """Globals a ``torch.save`` file names outside torch's own weights-only list (for the refusal message; the
    unpickler itself, not this listing, is what enforces the allow-list)."""
    try:
        from torch.serialization import get_unsafe_globals_in_checkpoint  # noqa: PLC0415 - torch >= 2.5

        return list(get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - not a zip checkpoint: torch.load below says what it is
        return []


def load(path: str | Path, *, mmap: bool = True, what: str = "checkpoint") -> Any:
    """One ``torch.save`` file, read with ``weights_only=True`` and :data:`ALLOWED` only (tensors memory-mapped).
    Raises :class:`CheckpointError` naming the file: a global outside the list, or not a readable checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a {what} file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    names = _globals_in(path)
    for n in names:
        if n not in _ALLOWED:
            raise refusal(path, n)
    allowed = [_resolve(n) for n in names]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        m = _GLOBAL_IN_ERROR.search(str(err))
        if m and m.group(1) not in _ALLOWED:
            raise refusal(path, m.group(1)) from None
        raise CheckpointError(f"{path}: not a readable {what} ({_first_line(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable {what}: damaged or cut short ({_first_line(err)}); "
            "use an earlier checkpoint of the run"
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


class RestrictedUnpickler(pickle.Unpickler):
    """A plain pickle reader (any protocol) that resolves only :data:`ALLOWED` globals and torch dtypes/layouts:
    for files that torch distributed checkpoint writes with ``pickle.dump`` (``.metadata``)."""

    def __init__(self, file: Any, where: str = "a checkpoint") -> None:
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in _ALLOWED:
            return _resolve(full)
        if module == "torch" and isinstance(
            getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)
        ):
            return getattr(torch, name)
        raise refusal(self.where, full)


def restricted_load(file: Any, where: str = "a checkpoint") -> Any:
    return RestrictedUnpickler(file, where).load()


class _SafePickle:
    """What torch distributed checkpoint's ``filesystem`` module sees as ``pickle`` inside the scope:
    ``load`` restricted, everything else (``dump`` when it saves) the real module."""

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)

    @staticmethod
    def load(file: Any, *args: Any, **kwargs: Any) -> Any:
        return restricted_load(file, getattr(file, "name", "a torch distributed checkpoint's .metadata"))


@contextlib.contextmanager
def no_code_from_checkpoints() -> Iterator[None]:
    """Within: every ``torch.load`` is ``weights_only`` (also where a library asks for ``weights_only=False``)
    with :data:`ALLOWED`, and torch distributed checkpoint reads ``.metadata`` with :class:`RestrictedUnpickler`."""
    env = {k: os.environ.get(k) for k in (_FORCE, _FORCE_NO)}
    os.environ[_FORCE] = "1"
    os.environ.pop(_FORCE_NO, None)
    fs = sys.modules.get("torch.distributed.checkpoint.filesystem")
    if fs is None and torch.distributed.is_available():
        import torch.distributed.checkpoint.filesystem as fs  # noqa: PLC0415
    real = getattr(fs, "pickle", None)
    if fs is not None and real is not None:
        fs.pickle = _SafePickle()
    try:
        with torch.serialization.safe_globals(_loaded()):
            yield
    finally:
        if fs is not None and real is not None:
            fs.pickle = real
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pickles_in(path: Path) -> list[Path]:
    """The files of a checkpoint that are pickles: the file itself, or a DeepSpeed folder's ``*.pt`` and a torch
    distributed checkpoint's ``.metadata`` and ``*.pt`` (its ``*.distcp`` data files hold raw tensor bytes)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and (p.suffix in (".pt", ".ckpt") or p.name == ".metadata"))


def verify(path: str | Path) -> None:
    """Read every pickle of a checkpoint file or folder the safe way; :class:`CheckpointError` on the first one
    that holds a global outside :data:`ALLOWED` or cannot be read. Memory-mapped: tensors are not read."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    for p in pickles_in(path):
        if p.name == ".metadata":
            with p.open("rb") as f:
                try:
                    restricted_load(io.BufferedReader(f), str(p))
                except CheckpointError:
                    raise
                except Exception as err:  # noqa: BLE001 - pickle raises many kinds on damaged input
                    raise CheckpointError(f"{p}: not a readable checkpoint index ({_first_line(err)})") from None
        else:
            load(p)


#: key of the checkpoint entry where PretrainTask records the run's number of processes
WORLD_SIZE_KEY = "omnimodal_world_size"
_DCP_META = "meta.pt"  # Lightning's ModelParallelStrategy: the non-tensor part of a distributed checkpoint


# ------------------------------------------------------------------------------------------------
# checkpoints across strategies: a Lightning file, a DeepSpeed ZeRO folder, a torch distributed checkpoint


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
    raise ValueError(
        f"{p} is a folder but neither a DeepSpeed ZeRO checkpoint (no 'latest' file) nor a torch "
        f"distributed checkpoint (no '.metadata'); pass the checkpoint itself, e.g. checkpoints/last.ckpt"
    )


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
        return load(_deepspeed_states_file(p))
    if kind == "dcp":
        return load(p / _DCP_META)
    return load(p)


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
        f"`omnimodal-train ... resume=null init_from=weights.ckpt`."
    )


def newest_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint of a run folder that loads, by training step: ``checkpoints/*.ckpt`` (``last.ckpt``
    and the step checkpoints; files or sharded folders) and SLURM's ``hpc_ckpt_*.ckpt``. Damaged or cut-short
    ones are passed over, each with a note saying why; one that holds code is an error, never passed over."""
    run_dir = Path(run_dir)
    notes: list[str] = []
    found: list[tuple[int, int, Path]] = []
    for p in sorted([*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]):
        try:
            step = int(checkpoint_meta(p).get("global_step", -1))
        except UnsafeCheckpointError:
            raise
        except (CheckpointError, OSError, ValueError, KeyError) as err:
            notes.append(f"passed over {p}: {err}")
            continue
        found.append((step, p.stat().st_mtime_ns, p))
    for step, _, p in sorted(found, reverse=True):
        try:
            verify(p)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as err:
            notes.append(f"passed over {p} (step {step}): {err}")
            continue
        return p, notes
    return None, notes


__all__ = [
    "ALLOWED",
    "WORLD_SIZE_KEY",
    "CheckpointError",
    "UnsafeCheckpointError",
    "newest_checkpoint",
    "RestrictedUnpickler",
    "check_resume",
    "checkpoint_kind",
    "checkpoint_meta",
    "load",
    "no_code_from_checkpoints",
    "pickles_in",
    "restricted_load",
    "verify",
    "written_by",
]
