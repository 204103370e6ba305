"""The released model as a ``transformers`` model: its config (:class:`OmniConfig`, plain data only) and
:class:`OmniForTimelines`, registered with the Auto classes. Every path that reads a ``config.json`` checks
the whole file first (:func:`check_config_json`): nothing in a release is ever executed as code.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from datamodules.schema import MODALITIES, OmniBatch
from encoders import list_encoders

from ..model.backbone import BackboneConfig
from ..model.omni import EncoderSpec, ModelConfig, OmniModel, with_embedding_rows

MODEL_TYPE = "omnimodal"
# "pkg.module.Name" / "pkg.module:func": what an import path looks like (a release never holds one)
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+(:[A-Za-z_]\w*)?$")
_CODE_KEYS = {"auto_map", "_target_", "_partial_", "_recursive_", "custom_pipelines"}


class ReleaseError(ValueError):
    """A release folder that cannot be used as it is; the message names the file and what to do."""


def _check_plain(value: Any, where: str, file: str) -> None:
    """JSON data only: no key that asks a loader to run code, no string that is an import path."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in _CODE_KEYS:
                raise ReleaseError(
                    f"{file}: {where}.{k} asks to load code; omnimodal releases never run code "
                    "from a release folder. Remove the key (re-export the model with omnimodal-export)."
                )
            _check_plain(v, f"{where}.{k}", file)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]", file)
    elif isinstance(value, str) and _IMPORT_PATH.match(value) and not value.replace(".", "").isdigit():
        raise ReleaseError(
            f"{file}: {where} = {value!r} looks like an import path; encoder settings are plain "
            "numbers, strings and lists. Remove it or re-export the model."
        )
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise ReleaseError(f"{file}: {where} has a {type(value).__name__}; only JSON values are allowed")


#: what a release's config.json may hold at its top level (what save_pretrained writes for OmniConfig)
CONFIG_KEYS = {
    "architectures",
    "backbone",
    "encoders",
    "row_len",
    "max_tokens_per_instance",
    "embedding_rows",
    "model_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "_name_or_path",
    "_commit_hash",
}
PREPROCESSING_KEYS = {"specs", "clinical_codes"}
_DTYPES = {"float32", "float16", "bfloat16", "float64"}


def check_config_json(raw: dict[str, Any], file: str = "config.json") -> None:
    """The whole of a release's ``config.json``: only :data:`CONFIG_KEYS` at the top, JSON data everywhere, no
    key or string that asks a loader for code; ``architectures`` (if any) is ``["OmniForTimelines"]``."""
    if not isinstance(raw, dict):
        raise ReleaseError(f"{file}: not a JSON object")
    _check_plain(raw, "config", file)
    unknown = sorted(set(raw) - CONFIG_KEYS)
    if unknown:
        raise ReleaseError(
            f"{file}: unknown top-level keys {unknown}; an omnimodal release's config.json holds only "
            f"{sorted(CONFIG_KEYS)}. Remove them, or re-export the model with omnimodal-export."
        )
    if raw.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise ReleaseError(
            f"{file}: model_type is {raw.get('model_type')!r}, not {MODEL_TYPE!r}; this is not an omnimodal release"
        )
    if raw.get("architectures") not in (None, ["OmniForTimelines"]):
        raise ReleaseError(
            f"{file}: architectures = {raw['architectures']!r}; an omnimodal release is "
            '["OmniForTimelines"] (the class is never taken from the file)'
        )
    for k in ("dtype", "torch_dtype"):
        if raw.get(k) is not None and str(raw[k]).removeprefix("torch.") not in _DTYPES:
            raise ReleaseError(f"{file}: {k} = {raw[k]!r}; use one of {sorted(_DTYPES)}")


def check_weights_file(path: Path) -> None:
    """A release's ``model.safetensors`` must be a safetensors file (a pickle under that name is refused
    before transformers reads it)."""
    from safetensors import safe_open  # noqa: PLC0415

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, ...
        raise ReleaseError(
            f"{path}: not a safetensors file ({type(err).__name__}: {err}); releases hold their "
            "weights as safetensors only (omnimodal-export writes them)"
        ) from None


class OmniConfig(PretrainedConfig):
    """Architecture of an :class:`OmniModel` as plain data (see :class:`ModelConfig`)."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        backbone: dict[str, Any] | None = None,
        encoders: dict[str, dict[str, Any]] | None = None,
        row_len: int | None = None,
        max_tokens_per_instance: int = 16,
        embedding_rows: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.backbone = dict(backbone or asdict(BackboneConfig()))
        self.encoders = {
            m: {"name": e["name"], "kwargs": dict(e.get("kwargs") or {})} for m, e in (encoders or {}).items()
        }
        self.row_len = row_len
        self.max_tokens_per_instance = max_tokens_per_instance
        # the modality of each row of the modality/mask embeddings (ModelConfig.embedding_rows), always written
        self.embedding_rows = list(embedding_rows) if embedding_rows is not None else list(self.encoders)
        super().__init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> OmniConfig:  # type: ignore[override]
        """Every path that reads a ``config.json`` (``AutoModel.from_pretrained``, :func:`load_release`,
        fine-tuning) comes here: the whole file is checked before anything is built from it."""
        where = kwargs.get("name_or_path") or config_dict.get("_name_or_path")
        check_config_json(config_dict, str(Path(where) / "config.json") if where else "config.json")
        return super().from_dict(with_embedding_rows(dict(config_dict)), **kwargs)  # a release from before v2

    def validate_release(self, file: str = "config.json") -> None:
        """Refuse anything but known encoders with JSON settings (called on every load)."""
        if getattr(self, "auto_map", None):
            raise ReleaseError(
                f"{file}: has auto_map (remote code); omnimodal releases never run code from a "
                "release folder. Use a release written by omnimodal-export."
            )
        _check_plain(
            {"backbone": self.backbone, "encoders": self.encoders, "embedding_rows": self.embedding_rows},
            "config",
            file,
        )
        known = set(list_encoders())
        if not self.encoders:
            raise ReleaseError(f"{file}: config.encoders is empty; a release needs at least one modality encoder")
        for m, e in self.encoders.items():
            if m not in MODALITIES:
                raise ReleaseError(f"{file}: encoders.{m}: unknown modality; known: {list(MODALITIES)}")
            if e["name"] not in known:
                raise ReleaseError(
                    f"{file}: encoders.{m}.name = {e['name']!r} is not a registered encoder "
                    f"(registered: {', '.join(sorted(known))}). A release names encoders by registry "
                    "name only; install the omnimodal version that defines it."
                )
        absent = [m for m in self.encoders if m not in self.embedding_rows]
        if absent:
            raise ReleaseError(f"{file}: embedding_rows {self.embedding_rows} lacks the encoders' modalities {absent}")
        fields = set(BackboneConfig.__dataclass_fields__)
        unknown = set(self.backbone) - fields
        if unknown:
            raise ReleaseError(f"{file}: config.backbone has unknown keys {sorted(unknown)}; known: {sorted(fields)}")

    def model_config(self) -> ModelConfig:
        self.validate_release()
        return ModelConfig(
            backbone=BackboneConfig(**self.backbone),
            encoders={m: EncoderSpec(e["name"], dict(e["kwargs"])) for m, e in self.encoders.items()},
            row_len=self.row_len,
            max_tokens_per_instance=self.max_tokens_per_instance,
            embedding_rows=list(self.embedding_rows),
        )

    def model_dict(self) -> dict[str, Any]:
        """The architecture as plain data (the inverse of :meth:`from_model_dict`)."""
        return {
            "backbone": dict(self.backbone),
            "encoders": {m: dict(e) for m, e in self.encoders.items()},
            "row_len": self.row_len,
            "max_tokens_per_instance": self.max_tokens_per_instance,
            "embedding_rows": list(self.embedding_rows),
        }

    @classmethod
    def from_model_dict(cls, d: dict[str, Any]) -> OmniConfig:
        """From the plain-data model config a training or fine-tuning checkpoint keeps (one written before the
        modality registry has no ``embedding_rows``: :func:`with_embedding_rows`)."""
        d = with_embedding_rows(d)
        return cls(
            backbone=dict(d["backbone"]),
            encoders=d["encoders"],
            row_len=d.get("row_len"),
            max_tokens_per_instance=d.get("max_tokens_per_instance", 16),
            embedding_rows=d["embedding_rows"],
        )


class OmniPreTrainedModel(PreTrainedModel):
    config_class = OmniConfig
    base_model_prefix = "omni"
    main_input_name = "batch"
    supports_gradient_checkpointing = False

    def _init_weights(self, module: torch.nn.Module) -> None:
        # weights come from model.safetensors; a fresh model is initialised by OmniModel itself
        pass

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):  # type: ignore[override]
        """``transformers`` builds the model on the meta device and fills in only what the weights file
        holds; buffers that are not saved (the rotary frequencies) are recomputed here. Weights are read from
        safetensors only, and a local ``model.safetensors`` is checked to be one first."""
        if args and Path(str(args[0])).is_dir() and (Path(str(args[0])) / "model.safetensors").exists():
            check_weights_file(Path(str(args[0])) / "model.safetensors")
        kwargs.setdefault("use_safetensors", True)
        model = super().from_pretrained(*args, **kwargs)
        model.reset_unsaved_buffers()
        return model

    @torch.no_grad()
    def reset_unsaved_buffers(self) -> None:
        for module in self.modules():
            if module._non_persistent_buffers_set and callable(getattr(module, "reset_parameters", None)):
                if next(module.parameters(recurse=False), None) is not None:
                    raise TypeError(
                        f"{type(module).__name__} has parameters and unsaved buffers: give it a "
                        "reset method that leaves its parameters alone"
                    )
                module.reset_parameters()


class OmniForTimelines(OmniPreTrainedModel):
    """The released model: ``forward(batch)`` returns the :class:`ModelOutput` of :class:`OmniModel`;
    ``embed(batch)`` one vector per person."""

    def __init__(self, config: OmniConfig) -> None:
        super().__init__(config)
        self.omni = OmniModel(config.model_config())
        self.post_init()

    def forward(self, batch: OmniBatch, **kwargs: Any):  # type: ignore[override]
        return self.omni(batch, **kwargs)

    @torch.no_grad()
    def embed(self, batch: OmniBatch) -> torch.Tensor:
        return self.omni.embed(batch)


AutoConfig.register(MODEL_TYPE, OmniConfig)
AutoModel.register(OmniConfig, OmniForTimelines)
