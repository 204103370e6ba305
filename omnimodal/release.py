"""Released models: a ``transformers`` model with its own config, safetensors weights, the preprocessing
spec it expects, and a model card. Nothing in a release is ever executed as code.

A release folder holds::

    config.json          OmniConfig: backbone sizes, encoders by registry name + JSON kwargs
    model.safetensors    the OmniModel weights
    preprocessing.json   the canonical specs (rates, spacing, lead set, frame size, ...) and the clinical
                         vocabulary the encoders were trained on
    README.md            the model card

    omnimodal-export outputs/.../checkpoints/last.ckpt releases/omni-tiny
    model = transformers.AutoModel.from_pretrained("releases/omni-tiny")   # after ``import omnimodal``
    release = load_release("releases/omni-tiny")                            # model + preprocessing

Loading refuses, with the reason, a config that asks for code (``auto_map``, ``_target_``, import
paths), names an encoder the registry does not hold, or has a model type other than ``omnimodal``.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from datamodules.collate import Collator
from datamodules.schema import MODALITIES, OmniBatch, Spec, specs_from_json
from encoders import list_encoders

from .infra import checkpoints
from .model.backbone import BackboneConfig
from .model.omni import EncoderSpec, ModelConfig, OmniModel, count_parameters, with_embedding_rows

MODEL_TYPE = "omnimodal"
PREPROCESSING = "preprocessing.json"
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
                raise ReleaseError(f"{file}: {where}.{k} asks to load code; omnimodal releases never run code "
                                   "from a release folder. Remove the key (re-export the model with omnimodal-export).")
            _check_plain(v, f"{where}.{k}", file)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]", file)
    elif isinstance(value, str) and _IMPORT_PATH.match(value) and not value.replace(".", "").isdigit():
        raise ReleaseError(f"{file}: {where} = {value!r} looks like an import path; encoder settings are plain "
                           "numbers, strings and lists. Remove it or re-export the model.")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise ReleaseError(f"{file}: {where} has a {type(value).__name__}; only JSON values are allowed")


#: what a release's config.json may hold at its top level (what save_pretrained writes for OmniConfig)
CONFIG_KEYS = {"architectures", "backbone", "encoders", "row_len", "max_tokens_per_instance", "embedding_rows",
               "model_type",
               "transformers_version", "dtype", "torch_dtype", "_name_or_path", "_commit_hash"}
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
        raise ReleaseError(f"{file}: unknown top-level keys {unknown}; an omnimodal release's config.json holds only "
                           f"{sorted(CONFIG_KEYS)}. Remove them, or re-export the model with omnimodal-export.")
    if raw.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise ReleaseError(f"{file}: model_type is {raw.get('model_type')!r}, not {MODEL_TYPE!r}; "
                           "this is not an omnimodal release")
    if raw.get("architectures") not in (None, ["OmniForTimelines"]):
        raise ReleaseError(f"{file}: architectures = {raw['architectures']!r}; an omnimodal release is "
                           "[\"OmniForTimelines\"] (the class is never taken from the file)")
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
        raise ReleaseError(f"{path}: not a safetensors file ({type(err).__name__}: {err}); releases hold their "
                           "weights as safetensors only (omnimodal-export writes them)") from None


class OmniConfig(PretrainedConfig):
    """Architecture of an :class:`OmniModel` as plain data (see :class:`ModelConfig`)."""

    model_type = MODEL_TYPE

    def __init__(self, backbone: dict[str, Any] | None = None, encoders: dict[str, dict[str, Any]] | None = None,
                 row_len: int | None = None, max_tokens_per_instance: int = 16,
                 embedding_rows: list[str] | None = None, **kwargs: Any) -> None:
        self.backbone = dict(backbone or asdict(BackboneConfig()))
        self.encoders = {m: {"name": e["name"], "kwargs": dict(e.get("kwargs") or {})} for m, e in (encoders or {}).items()}
        self.row_len = row_len
        self.max_tokens_per_instance = max_tokens_per_instance
        # the modality of each row of the modality/mask embeddings (ModelConfig.embedding_rows), always written
        self.embedding_rows = list(embedding_rows) if embedding_rows is not None else list(self.encoders)
        super().__init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> "OmniConfig":  # type: ignore[override]
        """Every path that reads a ``config.json`` (``AutoModel.from_pretrained``, :func:`load_release`,
        fine-tuning) comes here: the whole file is checked before anything is built from it."""
        where = kwargs.get("name_or_path") or config_dict.get("_name_or_path")
        check_config_json(config_dict, str(Path(where) / "config.json") if where else "config.json")
        return super().from_dict(with_embedding_rows(dict(config_dict)), **kwargs)  # a release from before v2

    def validate_release(self, file: str = "config.json") -> None:
        """Refuse anything but known encoders with JSON settings (called on every load)."""
        if getattr(self, "auto_map", None):
            raise ReleaseError(f"{file}: has auto_map (remote code); omnimodal releases never run code from a "
                               "release folder. Use a release written by omnimodal-export.")
        _check_plain({"backbone": self.backbone, "encoders": self.encoders, "embedding_rows": self.embedding_rows},
                     "config", file)
        known = set(list_encoders())
        if not self.encoders:
            raise ReleaseError(f"{file}: config.encoders is empty; a release needs at least one modality encoder")
        for m, e in self.encoders.items():
            if m not in MODALITIES:
                raise ReleaseError(f"{file}: encoders.{m}: unknown modality; known: {list(MODALITIES)}")
            if e["name"] not in known:
                raise ReleaseError(f"{file}: encoders.{m}.name = {e['name']!r} is not a registered encoder "
                                   f"(registered: {', '.join(sorted(known))}). A release names encoders by registry "
                                   "name only; install the omnimodal version that defines it.")
        absent = [m for m in self.encoders if m not in self.embedding_rows]
        if absent:
            raise ReleaseError(f"{file}: embedding_rows {self.embedding_rows} lacks the encoders' modalities {absent}")
        fields = set(BackboneConfig.__dataclass_fields__)
        unknown = set(self.backbone) - fields
        if unknown:
            raise ReleaseError(f"{file}: config.backbone has unknown keys {sorted(unknown)}; known: {sorted(fields)}")

    def model_config(self) -> ModelConfig:
        self.validate_release()
        return ModelConfig(backbone=BackboneConfig(**self.backbone),
                           encoders={m: EncoderSpec(e["name"], dict(e["kwargs"])) for m, e in self.encoders.items()},
                           row_len=self.row_len, max_tokens_per_instance=self.max_tokens_per_instance,
                           embedding_rows=list(self.embedding_rows))

    def model_dict(self) -> dict[str, Any]:
        """The architecture as plain data (the inverse of :meth:`from_model_dict`)."""
        return {"backbone": dict(self.backbone), "encoders": {m: dict(e) for m, e in self.encoders.items()},
                "row_len": self.row_len, "max_tokens_per_instance": self.max_tokens_per_instance,
                "embedding_rows": list(self.embedding_rows)}

    @classmethod
    def from_model_dict(cls, d: dict[str, Any]) -> "OmniConfig":
        """From the plain-data model config a training or fine-tuning checkpoint keeps (one written before the
        modality registry has no ``embedding_rows``: :func:`with_embedding_rows`)."""
        d = with_embedding_rows(d)
        return cls(backbone=dict(d["backbone"]), encoders=d["encoders"], row_len=d.get("row_len"),
                   max_tokens_per_instance=d.get("max_tokens_per_instance", 16), embedding_rows=d["embedding_rows"])


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
                    raise TypeError(f"{type(module).__name__} has parameters and unsaved buffers: give it a "
                                    "reset method that leaves its parameters alone")
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


# --------------------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------------------
@dataclass
class Preprocessing:
    """What the encoders expect: canonical specs per modality and the clinical vocabulary."""

    specs: dict[str, Spec]
    clinical_codes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"specs": {m: s.to_json() for m, s in self.specs.items()}, "clinical_codes": list(self.clinical_codes)}

    @classmethod
    def from_json(cls, d: dict[str, Any], file: str = PREPROCESSING) -> "Preprocessing":
        _check_plain(d, "preprocessing", file)
        unknown = sorted(set(d) - PREPROCESSING_KEYS) if isinstance(d, dict) else ["<not an object>"]
        if unknown:
            raise ReleaseError(f"{file}: unknown top-level keys {unknown}; preprocessing.json holds only "
                               f"{sorted(PREPROCESSING_KEYS)}. Remove them, or re-export the model.")
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
                raise ReleaseError(f"{where}: modality {m!r} is not in the release (it has {sorted(self.specs)}); "
                                   "drop it from finetune.modalities")
            if m not in data_specs:
                raise ReleaseError(f"{where}: the data has no {m!r} spec; rebuild the shards or drop {m!r}")
            mine, theirs = self.specs[m].to_json(), data_specs[m].to_json()
            if mine != theirs:
                diff = {k: (theirs.get(k), mine.get(k)) for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)}
                detail = "; ".join(f"{k}: data {a!r} vs release {b!r}" for k, (a, b) in diff.items())
                raise ReleaseError(f"{where}: modality {m!r} was preprocessed differently from what the release "
                                   f"expects ({detail}). Rebuild the shards with the release's specs (omnimodal-shard --config "
                                   "<file with `specs:` copied from the release's preprocessing.json>) or drop the modality.")


@dataclass
class Release:
    model: OmniForTimelines
    preprocessing: Preprocessing
    path: Path


def read_release_json(path: Path) -> dict[str, Any]:
    """One JSON file of a release folder; a missing or broken file is a :class:`ReleaseError` naming it."""
    if path.parent.is_file():
        raise ReleaseError(f"{path.parent} is a file; a release is a folder written by omnimodal-export "
                           "(a training checkpoint becomes one with `omnimodal-export CKPT OUT`)")
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


# --------------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------------
def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A single-file training checkpoint, loaded with ``weights_only=True`` (no pickled code runs)."""
    path = Path(path)
    if path.is_dir():
        raise ReleaseError(f"{path} is a folder (a sharded DeepSpeed/FSDP checkpoint?): consolidate it first with "
                           "omnimodal-consolidate, then export the file it writes")
    try:
        ckpt = checkpoints.load(path, what="training checkpoint")
    except checkpoints.CheckpointError as err:
        raise ReleaseError(str(err)) from None
    hp = ckpt.get("hyper_parameters") or {}
    if "model" not in hp or "state_dict" not in ckpt:
        raise ReleaseError(f"{path}: not an omnimodal-train checkpoint (no hyper_parameters.model / state_dict)")
    return ckpt


def export(checkpoint: str | Path, out: str | Path, *, preprocessing: dict[str, Any] | None = None,
           name: str | None = None, data_note: str = "") -> Path:
    """Training checkpoint -> release folder (config.json, model.safetensors, preprocessing.json, README.md)."""
    ckpt = read_checkpoint(checkpoint)
    hp = ckpt["hyper_parameters"]
    prep_json = preprocessing or hp.get("preprocessing")
    if not prep_json:
        raise ReleaseError(f"{checkpoint}: the checkpoint does not record its preprocessing (trained before it was "
                           "kept); pass --shards <the shard folder it was trained on>")
    prep = Preprocessing.from_json(prep_json, f"{checkpoint} (preprocessing)")
    config = OmniConfig.from_model_dict(hp["model"])
    model = OmniForTimelines(config)
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.omni.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ReleaseError(f"{checkpoint}: weights do not fit the recorded model config (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / PREPROCESSING).write_text(json.dumps(prep.to_json(), indent=1, sort_keys=True))
    (out / "README.md").write_text(model_card(model, prep, hp, ckpt, name or out.name, data_note))
    return out


def model_card(model: OmniForTimelines, prep: Preprocessing, hp: dict[str, Any], ckpt: dict[str, Any], name: str,
               data_note: str) -> str:
    counts = count_parameters(model.omni)
    metrics = ckpt.get("omnimodal_metrics") or {}
    objective = hp.get("objective") or {}
    rows = []
    for m, e in model.config.encoders.items():
        n = sum(p.numel() for p in model.omni.encoders[m].parameters())
        spec = prep.specs.get(m)
        shown = {k: v for k, v in (spec.to_json() if spec else {}).items() if k not in ("kind", "features", "leads")}
        if spec is not None and hasattr(spec, "leads"):
            shown["leads"] = f"{len(spec.leads)} ({', '.join(spec.leads)})"
        if spec is not None and hasattr(spec, "features"):
            shown["features"] = len(spec.features)
        rows.append(f"| {m} | `{e['name']}` | {n:,} | {json.dumps(shown)} |")
    b = model.config.backbone
    lines = [
        "---", "library_name: transformers", "tags: [omnimodal, health, longitudinal, multimodal]", "license: apache-2.0",
        "---", f"# {name}", "",
        "An omnimodal longitudinal health model: per-modality encoders feed one continuous-time transformer over "
        "a person's timeline (block-causal across events, time in days).", "",
        "## Use", "```python", "import omnimodal", "from omnimodal.release import load_release",
        f'release = load_release("{name}")  # or transformers.AutoModel.from_pretrained(...) after import omnimodal',
        "batch = release.preprocessing.collator()(timelines)   # timelines from omnimodal shards",
        "embeddings = release.model.embed(batch)", "```",
        "Fine-tune with `omnimodal-finetune release=<this folder>`; evaluate with `omnimodal-eval`.", "",
        "## Architecture", f"- parameters: {counts['total']:,} (encoders {counts['encoders']:,})",
        f"- backbone: d_model {b['d_model']}, {b['n_layers']} layers, {b['n_heads']} heads", "",
        "| modality | encoder | parameters | preprocessing |", "|---|---|---|---|", *rows, "",
        f"Clinical vocabulary: {len(prep.clinical_codes)} codes (`preprocessing.json`). Data must be converted to "
        "these canonical layouts with `omnimodal-shard`; fine-tuning refuses shards preprocessed differently.", "",
        "## Training", "- objectives (weights): " + ", ".join(f"{k} {v}" for k, v in objective.items() if k.endswith("weight")),
        f"- steps: {ckpt.get('global_step', '?')}, epoch {ckpt.get('epoch', '?')}",
        "- last logged metrics: " + (", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())) or "none recorded"),
        f"- data: {data_note or 'see the training run (not recorded in the checkpoint)'}", "",
        "## Intended use",
        "Research on representation learning from longitudinal multimodal health records, and as a starting point "
        "for fine-tuning on a cohort's own outcomes. Not a medical device; not for individual clinical decisions.", "",
        "## Limitations",
        "- Embeddings reflect the cohort and preprocessing it was trained on; other scanners, ECG devices or "
        "populations shift them. Validate on your own data before any use.",
        "- A model trained on the built-in synthetic cohort has learned synthetic physiology only.",
        "- Subjects are pseudonymised by keyed hashes in the shards; the weights may still memorise rare "
        "training examples. Do not release weights trained on data whose consent does not allow it.", "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="omnimodal-export", description="Turn a training checkpoint into a release "
                                "folder (config.json, model.safetensors, preprocessing.json, README.md model card).")
    p.add_argument("checkpoint", help="single-file checkpoint (e.g. outputs/.../checkpoints/last.ckpt)")
    p.add_argument("out", help="release folder to write")
    p.add_argument("--shards", help="shard folder the model was trained on (only for checkpoints that do not record "
                   "their preprocessing)")
    p.add_argument("--name", help="model name in the card (default: the folder name)")
    p.add_argument("--data-note", default="", help="one line on the training data for the model card")
    a = p.parse_args(argv)
    prep = None
    if a.shards:
        from datamodules.shards.format import load_index
        index = load_index(a.shards)
        prep = {"specs": index["specs"], "clinical_codes": index["clinical_codes"]}
    try:
        out = export(a.checkpoint, a.out, preprocessing=prep, name=a.name, data_note=a.data_note)
    except ReleaseError as err:
        raise SystemExit(f"omnimodal-export: {err}") from None
    print(f"release written to {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))


__all__ = ["OmniConfig", "OmniForTimelines", "Preprocessing", "Release", "ReleaseError", "check_release", "export",
           "load_release", "read_checkpoint"]
