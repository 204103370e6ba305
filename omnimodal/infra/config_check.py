"""Type checks of a composed config against what consumes it, before anything is built: a wrong value is an
error naming its key (``config key trainer.max_steps = 'abc': expected an int``), not a ``TypeError`` deep in
Lightning or a worker.

Each section is checked against the type hints of the dataclass or constructor that receives it
(``OptimConfig``, ``ObjectiveConfig``, ``lightning.Trainer``, ...); nodes with a ``_target_`` (a strategy, a
callback) are Hydra's to instantiate and are left to it.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union

from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A config value of the wrong type or an unknown key; the message names the key."""


def _hints(target: type | Callable[..., Any]) -> dict[str, Any]:
    fn = target.__init__ if isinstance(target, type) and not dataclasses.is_dataclass(target) else target
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):  # a hint that names what its module imports only for type checking
        hints = {
            k: p.annotation
            for k, p in inspect.signature(fn).parameters.items()
            if p.annotation is not inspect.Parameter.empty and not isinstance(p.annotation, str)
        }
    hints.pop("return", None)
    return hints


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple, ListConfig)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if origin is tuple and len(args) > 1:  # a fixed-length tuple
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, args[0]) for v in value) if args else True
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return isinstance(value, (dict, Mapping, DictConfig))
    if isinstance(hint, type):
        return isinstance(value, hint) or isinstance(value, (str, int, float, dict, DictConfig))  # built later
    return True  # a hint we do not reason about (a TypeVar, a Protocol): the consumer checks it


def _describe(hint: Any) -> str:
    names = {int: "an int", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(h) for h in typing.get_args(hint)))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return "a list"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_section(
    values: Mapping[str, Any] | DictConfig | None,
    target: type | Callable[..., Any],
    prefix: str,
    *,
    extra: Sequence[str] = (),
    closed: bool = True,
) -> None:
    """Each value of ``values`` against ``target``'s type hint for it; ``extra`` keys are someone else's;
    ``closed``: a key ``target`` does not take is an error too (with the ones it takes)."""
    if values is None:
        return
    data = OmegaConf.to_container(values, resolve=True) if isinstance(values, DictConfig) else dict(values)
    hints = _hints(target)
    params = set(hints) | (set(inspect.signature(target).parameters) if callable(target) else set())
    for key, value in data.items():
        if key in extra or key.startswith("_"):
            continue
        if isinstance(value, dict) and "_target_" in value:  # Hydra instantiates it
            continue
        if key not in params:
            if closed:
                raise ConfigError(f"config key {prefix}.{key}: unknown key; {prefix} takes {sorted(params - {'self'})}")
            continue
        if key in hints and not _matches(value, hints[key]):
            raise ConfigError(f"config key {prefix}.{key} = {value!r}: expected {_describe(hints[key])}")


__all__ = ["ConfigError", "check_section"]
