"""A release folder: the model, the preprocessing its encoders expect, checked whole before any weight is read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.collate import Collator
from datamodules.schema import Spec, specs_from_json

from .model import PREPROCESSING_KEYS, OmniConfig, OmniForTimelines, ReleaseError, _check_plain, check_weights_file

PREPROCESSING = "preprocessing.json"


@dataclass
class Preprocessing:
    """What the encoders expect: canonical specs per modality and the clinical vocabulary."""

    specs: dict[str, Spec]
    clinical_codes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"specs": {m: s.to_json() for m, s in self.specs.items()}, "clinical_codes": list(self.clinical_codes)}

    @classmethod
    def from_json(cls, d: dict[str, Any], file: str = PREPROCESSING) -> Preprocessing:
        _check_plain(d, "preprocessing", file)
        unknown = sorted(set(d) - PREPROCESSING_KEYS) if isinstance(d, dict) else ["<not an object>"]
        if unknown:
            raise ReleaseError(
                f"{file}: unknown top-level keys {unknown}; preprocessing.json holds only "
                f"{sorted(PREPROCESSING_KEYS)}. Remove them, or re-export the model."
            )
        try:
            return cls(specs_from_json(d["specs"]), list(d.get("clinical_codes") or []))
        except (KeyError, TypeError, ValueError) as err:
            raise ReleaseError(f"{file}: not a valid preprocessing spec ({err}); re-export the model") from err

    def collator(self) -> Collator:
        return Collator(self.specs, self.clinical_codes)

    def check_data(self, data_specs: dict[str, Spec], modalities: list[str], where: str) -> None:
        """The downstream data must be preprocessed exactly as the release expects, for each modality used."""
        for m in modalities:
            if m not in self.specs:
                raise ReleaseError(
                    f"{where}: modality {m!r} is not in the release (it has {sorted(self.specs)}); "
                    "drop it from finetune.modalities"
                )
            if m not in data_specs:
                raise ReleaseError(f"{where}: the data has no {m!r} spec; rebuild the shards or drop {m!r}")
            mine, theirs = self.specs[m].layout_json(), data_specs[m].layout_json()
            if mine != theirs:
                diff = {
                    k: (theirs.get(k), mine.get(k))
                    for k in sorted(set(mine) | set(theirs))
                    if mine.get(k) != theirs.get(k)
                }
                detail = "; ".join(f"{k}: data {a!r} vs release {b!r}" for k, (a, b) in diff.items())
                raise ReleaseError(
                    f"{where}: modality {m!r} was preprocessed differently from what the release "
                    f"expects ({detail}). Rebuild the shards with the release's specs (omnimodal-shard --config "
                    "<file with `specs:` copied from the release's preprocessing.json>) or drop the modality."
                )


@dataclass
class Release:
    model: OmniForTimelines
    preprocessing: Preprocessing
    path: Path


def read_release_json(path: Path) -> dict[str, Any]:
    """One JSON file of a release folder; a missing or broken file is a :class:`ReleaseError` naming it."""
    if path.parent.is_file():
        raise ReleaseError(
            f"{path.parent} is a file; a release is a folder written by omnimodal-export "
            "(a training checkpoint becomes one with `omnimodal-export CKPT OUT`)"
        )
    if not path.is_file():
        raise ReleaseError(f"{path.parent}: no {path.name}; a release folder is written by omnimodal-export")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReleaseError(f"{path}: not valid JSON ({err})") from None


def check_release(path: str | Path) -> tuple[OmniConfig, Preprocessing]:
    """Everything in a release folder checked before any weights are read: ``config.json`` and
    ``preprocessing.json`` whole (:func:`check_config_json`, :meth:`Preprocessing.from_json`), and
    ``model.safetensors`` a safetensors file."""
    path = Path(path)
    config = OmniConfig.from_dict(read_release_json(path / "config.json"), name_or_path=str(path))
    config.validate_release(str(path / "config.json"))
    prep = Preprocessing.from_json(read_release_json(path / PREPROCESSING), str(path / PREPROCESSING))
    if not (path / "model.safetensors").is_file():
        raise ReleaseError(f"{path}: no model.safetensors; a release folder is written by omnimodal-export")
    check_weights_file(path / "model.safetensors")
    return config, prep


def load_release(path: str | Path, **kwargs: Any) -> Release:
    """Model + preprocessing from a release folder (validated; see the module docstring)."""
    path = Path(path)
    _, prep = check_release(path)
    model = OmniForTimelines.from_pretrained(path, **kwargs)
    model.eval()
    return Release(model, prep, path)
