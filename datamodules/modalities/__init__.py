"""The modality registry: each modality is declared once, in its own module of this package.

A declaration (:class:`Modality`) says everything the data side knows about a modality: its canonical
layout and default values (a :class:`~datamodules.specs.Spec`), the readers of its native file formats
by suffix, how the synthetic cohort renders it and how often a visit measures it, and the registry name
of its default encoder (a string: ``datamodules`` never imports ``encoders``). Every list of modalities
(``MODALITIES``, default specs, readers, the synthetic cohort, the model's default encoders, the Hydra
encoder configs) derives from this registry.

Adding a modality: a module here that calls :func:`register` (it is imported with the package), its
encoder under ``encoders/``, a config and a test. Readers and renderers are named by ``"module:function"``
and imported on first use, so importing the registry stays cheap (rendering workers import it).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..specs import DataError, Spec, replace_fields

#: a directory of DICOM files given as one measurement's path
DICOM_DIR = "<directory of .dcm files>"
#: the start of every "cannot decode" hint
BROKEN = "the file is damaged, truncated or not in the format its extension says; "
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Modality:
    """One modality, declared once.

    ``readers``: file suffix (``".nii.gz"``, or :data:`DICOM_DIR`) -> ``"module:function"`` with signature
    ``read(path, spec, options) -> array`` (or ``(array, notes)``: lines for the build report); empty for a
    modality given as rows of the events table (clinical). ``render``: the synthetic renderer
    ``"module:function"`` (``RenderContext -> relative path``), None for rows. ``order``: position in every
    listing and within a visit.
    """

    name: str
    order: int
    spec: Spec
    default_encoder: str
    readers: Mapping[str, str] = field(default_factory=dict)
    decode_hint: str = ""
    visit_rate: float = 0.0
    render: str | None = None
    render_params: Callable[[], dict[str, Any]] | None = None
    preload: tuple[str, ...] = ()
    description: str = ""
    #: how long recordings are cut into windows (None: the layout kind's default, ``datamodules.windows``)
    windows: Any = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"modality name {self.name!r}: lower case letters, digits and '_', starting with a letter")
        if not self.default_encoder.startswith(self.name + "/"):
            raise ValueError(
                f"modality {self.name!r}: default_encoder {self.default_encoder!r} must be "
                f"'{self.name}/<variant>' (an encoder registry name)"
            )
        if not 0.0 <= self.visit_rate <= 1.0:
            raise ValueError(f"modality {self.name!r}: visit_rate {self.visit_rate} is not in [0, 1]")

    @property
    def has_files(self) -> bool:
        return bool(self.readers)

    @property
    def suffixes(self) -> tuple[str, ...]:
        return tuple(self.readers)

    def reader(self, suffix: str) -> Callable[..., Any]:
        return resolve(self.readers[suffix])


_REGISTRY: dict[str, Modality] = {}
_LOADED = False
_ORDERED: dict[str, Modality] | None = None  # registry() of the current declarations


def register(modality: Modality) -> Modality:
    """Add a declaration to the registry (called by the modules of this package, or by a site's own)."""
    old = _REGISTRY.get(modality.name)
    if old is not None and old != modality:
        raise ValueError(f"modality {modality.name!r} is already declared (order {old.order})")
    global _ORDERED
    _REGISTRY[modality.name] = modality
    _ORDERED = None
    return modality


def unregister(name: str) -> None:
    """Remove a declaration (tests that register a modality of their own)."""
    global _ORDERED
    _REGISTRY.pop(name, None)
    _ORDERED = None


def _load() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            importlib.import_module(f"{__name__}.{info.name}")


def _ordered() -> dict[str, Modality]:
    global _ORDERED
    _load()
    if _ORDERED is None:
        _ORDERED = dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))
    return _ORDERED


def registry() -> dict[str, Modality]:
    """Every declared modality by name, in declared order."""
    return dict(_ordered())


_NAMES: tuple[tuple[str, ...], dict[str, Modality] | None] = ((), None)


def names() -> tuple[str, ...]:
    """The declared modality names, in order (no copy: the loader asks for them per measurement)."""
    global _NAMES
    ordered = _ordered()
    if _NAMES[1] is not ordered:
        _NAMES = (tuple(ordered), ordered)
    return _NAMES[0]


def get(name: str, where: str = "") -> Modality:
    """The declaration of ``name``; a :class:`DataError` naming the known ones otherwise."""
    mods = registry()
    if name not in mods:
        raise DataError(f"unknown modality {name!r}", where=where, hint=f"use one of {', '.join(mods)}")
    return mods[name]


def resolve(ref: str) -> Any:
    """``"package.module:attribute"`` -> the attribute (imported on first use)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def default_specs(**overrides: Mapping[str, Any]) -> dict[str, Spec]:
    """Canonical specs of every registered modality; ``overrides={"ecg": {"rate_hz": 500}}`` changes fields
    (each checked against the spec's fields and their types: :func:`replace_fields`)."""
    mods = registry()
    unknown = set(overrides) - set(mods)
    if unknown:
        raise DataError(f"unknown modality {sorted(unknown)} in spec overrides", hint=f"use one of {list(mods)}")
    return {m: replace_fields(d.spec, overrides.get(m, {}), where=f"spec {m}") for m, d in mods.items()}


def check_modality(modality: str, where: str = "") -> str:
    """``modality`` if it is registered (:mod:`datamodules.modalities`), else a :class:`DataError`."""
    if modality not in names():
        raise DataError(f"unknown modality {modality!r}", where=where, hint=f"use one of {', '.join(names())}")
    return modality


__all__ = [
    "BROKEN",
    "DICOM_DIR",
    "Modality",
    "check_modality",
    "default_specs",
    "get",
    "names",
    "register",
    "registry",
    "resolve",
    "unregister",
]
