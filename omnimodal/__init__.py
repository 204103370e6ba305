"""omnimodal: omnimodal longitudinal health foundation models.

Importing the package registers the released-model classes with ``transformers``' Auto classes, so
``transformers.AutoModel.from_pretrained(<release folder>)`` works after ``import omnimodal``, and the
Hydra config options that derive from the modality and encoder registries (:mod:`omnimodal.infra.config_store`).
"""

from . import release as release  # noqa: F401  (registers OmniConfig / OmniForTimelines)
from .infra.config_store import register_configs

register_configs()

__version__ = "0.1.0"
