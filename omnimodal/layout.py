"""Where the two layers meet: a shard index's canonical specs -> each encoder's layout arguments.

``datamodules`` and ``encoders`` never import each other; this module (in ``omnimodal``) reads the data
contract of a shard folder and tells each encoder the layout it will receive.
"""

from __future__ import annotations

from typing import Any

from datamodules.schema import AudioSpec, OmicsSpec, Spec, VideoSpec, VolumeSpec, WaveformSpec, WearableSpec


def layout_kwargs(modality: str, spec: Spec, clinical_vocab_size: int) -> dict[str, Any]:
    """Constructor kwargs that fix an encoder's input layout to the cohort's canonical ``spec``."""
    if isinstance(spec, VolumeSpec):
        return {"size": list(spec.size)}
    if isinstance(spec, WaveformSpec):
        return {"leads": len(spec.leads), "samples": spec.samples}
    if isinstance(spec, AudioSpec):
        return {"sample_rate": spec.rate_hz, "max_samples": spec.max_samples}
    if isinstance(spec, VideoSpec):
        return {"frames": spec.max_frames, "size": list(spec.size)}
    if isinstance(spec, WearableSpec):
        return {"channels": len(spec.channels), "minutes": spec.window_minutes}
    if isinstance(spec, OmicsSpec):
        return {"features": len(spec.features)}
    if modality == "clinical":
        return {"vocab_size": clinical_vocab_size}
    raise ValueError(f"no encoder layout known for modality {modality!r} with spec {type(spec).__name__}")
