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

from .export import export, model_card, read_checkpoint
from .folder import PREPROCESSING, Preprocessing, Release, check_release, load_release, read_release_json
from .model import MODEL_TYPE, OmniConfig, OmniForTimelines, ReleaseError, check_config_json, check_weights_file

__all__ = [
    "MODEL_TYPE",
    "PREPROCESSING",
    "OmniConfig",
    "OmniForTimelines",
    "Preprocessing",
    "Release",
    "ReleaseError",
    "check_config_json",
    "check_release",
    "check_weights_file",
    "export",
    "load_release",
    "model_card",
    "read_checkpoint",
    "read_release_json",
]
