"""omnimodal: omnimodal longitudinal health foundation models.

Importing the package registers the released-model classes with ``transformers``' Auto classes, so
``transformers.AutoModel.from_pretrained(<release folder>)`` works after ``import omnimodal``.
"""

from . import release as release  # noqa: F401  (registers OmniConfig / OmniForTimelines)

__version__ = "0.1.0"
