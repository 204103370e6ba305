"""Reading checkpoints without running anything stored in them.

A checkpoint is a pickle, and a pickle can name any function to call while it is read (``os.system``,
``builtins.eval``, ``torch.fx.graph_module._exec_with_source``, ...). Checkpoints travel between teams and
clusters, so every read here is ``torch.load(weights_only=True)`` with an explicit allow-list of the few
classes our checkpoints hold besides tensors and plain data (:data:`ALLOWED`): no module-wide roots. A file
that holds anything else is refused with :class:`CheckpointError`, which names the file and the global.

- :func:`load`: one checkpoint file (Lightning ``.ckpt``, a DeepSpeed ``*_states.pt``, a DCP ``meta.pt``).
- :func:`verify`: every pickle of a checkpoint file or folder (DeepSpeed ZeRO, torch distributed checkpoint),
  read this way before any other library is given the path.
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
from pathlib import Path
from typing import Any, Iterator

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


def refusal(path: str | Path, name: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: refused: it holds the Python global `{name}`, which no omnimodal checkpoint contains; reading it "
        "could run code stored in the file, so nothing in it was read. Use checkpoints written by omnimodal-train "
        "or omnimodal-finetune; a model trained elsewhere enters as plain tensors (torch.save(model.state_dict())).")


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
        raise CheckpointError(f"{path}: not a readable {what}: damaged or cut short ({_first_line(err)}); "
                              "use an earlier checkpoint of the run") from None


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
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
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


__all__ = ["ALLOWED", "CheckpointError", "RestrictedUnpickler", "load", "no_code_from_checkpoints", "pickles_in",
           "restricted_load", "verify"]
