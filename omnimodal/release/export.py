"""Training checkpoint -> release folder (config.json, model.safetensors, preprocessing.json, README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..infra import checkpoints
from ..model.omni import count_parameters
from .folder import PREPROCESSING, Preprocessing
from .model import OmniConfig, OmniForTimelines, ReleaseError


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A single-file training checkpoint, loaded with ``weights_only=True`` (no pickled code runs)."""
    path = Path(path)
    if path.is_dir():
        raise ReleaseError(
            f"{path} is a folder (a sharded DeepSpeed/FSDP checkpoint?): consolidate it first with "
            "omnimodal-consolidate, then export the file it writes"
        )
    try:
        ckpt = checkpoints.load(path, what="training checkpoint")
    except checkpoints.CheckpointError as err:
        raise ReleaseError(str(err)) from None
    hp = ckpt.get("hyper_parameters") or {}
    if "model" not in hp or "state_dict" not in ckpt:
        raise ReleaseError(f"{path}: not an omnimodal-train checkpoint (no hyper_parameters.model / state_dict)")
    return ckpt


def export(
    checkpoint: str | Path,
    out: str | Path,
    *,
    preprocessing: dict[str, Any] | None = None,
    name: str | None = None,
    data_note: str = "",
) -> Path:
    """Training checkpoint -> release folder (config.json, model.safetensors, preprocessing.json, README.md)."""
    ckpt = read_checkpoint(checkpoint)
    hp = ckpt["hyper_parameters"]
    prep_json = preprocessing or hp.get("preprocessing")
    if not prep_json:
        raise ReleaseError(
            f"{checkpoint}: the checkpoint does not record its preprocessing (trained before it was "
            "kept); pass --shards <the shard folder it was trained on>"
        )
    prep = Preprocessing.from_json(prep_json, f"{checkpoint} (preprocessing)")
    config = OmniConfig.from_model_dict(hp["model"])
    model = OmniForTimelines(config)
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.omni.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ReleaseError(
            f"{checkpoint}: weights do not fit the recorded model config (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / PREPROCESSING).write_text(json.dumps(prep.to_json(), indent=1, sort_keys=True))
    (out / "README.md").write_text(model_card(model, prep, hp, ckpt, name or out.name, data_note))
    return out


def model_card(
    model: OmniForTimelines, prep: Preprocessing, hp: dict[str, Any], ckpt: dict[str, Any], name: str, data_note: str
) -> str:
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
        "---",
        "library_name: transformers",
        "tags: [omnimodal, health, longitudinal, multimodal]",
        "license: apache-2.0",
        "---",
        f"# {name}",
        "",
        "An omnimodal longitudinal health model: per-modality encoders feed one continuous-time transformer over "
        "a person's timeline (block-causal across events, time in days).",
        "",
        "## Use",
        "```python",
        "import omnimodal",
        "from omnimodal.release import load_release",
        f'release = load_release("{name}")  # or transformers.AutoModel.from_pretrained(...) after import omnimodal',
        "batch = release.preprocessing.collator()(timelines)   # timelines from omnimodal shards",
        "embeddings = release.model.embed(batch)",
        "```",
        "Fine-tune with `omnimodal-finetune release=<this folder>`; evaluate with `omnimodal-eval`.",
        "",
        "## Architecture",
        f"- parameters: {counts['total']:,} (encoders {counts['encoders']:,})",
        f"- backbone: d_model {b['d_model']}, {b['n_layers']} layers, {b['n_heads']} heads",
        "",
        "| modality | encoder | parameters | preprocessing |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Clinical vocabulary: {len(prep.clinical_codes)} codes (`preprocessing.json`). Data must be converted to "
        "these canonical layouts with `omnimodal-shard`; fine-tuning refuses shards preprocessed differently.",
        "",
        "## Training",
        "- objectives (weights): " + ", ".join(f"{k} {v}" for k, v in objective.items() if k.endswith("weight")),
        f"- steps: {ckpt.get('global_step', '?')}, epoch {ckpt.get('epoch', '?')}",
        "- last logged metrics: " + (", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())) or "none recorded"),
        f"- data: {data_note or 'see the training run (not recorded in the checkpoint)'}",
        "",
        "## Intended use",
        "Research on representation learning from longitudinal multimodal health records, and as a starting point "
        "for fine-tuning on a cohort's own outcomes. Not a medical device; not for individual clinical decisions.",
        "",
        "## Limitations",
        "- Embeddings reflect the cohort and preprocessing it was trained on; other scanners, ECG devices or "
        "populations shift them. Validate on your own data before any use.",
        "- A model trained on the built-in synthetic cohort has learned synthetic physiology only.",
        "- Subjects are pseudonymised by keyed hashes in the shards; the weights may still memorise rare "
        "training examples. Do not release weights trained on data whose consent does not allow it.",
        "",
    ]
    return "\n".join(lines)
