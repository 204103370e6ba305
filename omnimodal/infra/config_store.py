"""Hydra config nodes that derive from the registries, so no config file lists the modalities.

- ``model/encoder/<modality>/<variant>``: one option per registered encoder (``{name, kwargs: {}}``), so
  ``model/encoder/mri=resnet`` picks ``mri/resnet``; a site's own YAML options sit beside them.
- ``model/encoders``: the defaults list ``encoder/<modality>: <variant of its default encoder>`` for every
  declared modality (``configs/model/default.yaml`` includes it).

Registered when ``omnimodal`` is imported, before any config is composed.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from datamodules.modalities import registry
from encoders import list_encoders


def register_configs() -> None:
    cs = ConfigStore.instance()
    for name in list_encoders():
        modality, _, variant = name.partition("/")
        cs.store(
            group=f"model/encoder/{modality}", name=variant, node={"name": name, "kwargs": {}}, provider="omnimodal"
        )
    defaults = [{f"encoder/{m}": d.default_encoder.partition("/")[2]} for m, d in registry().items()]
    cs.store(group="model", name="encoders", node={"defaults": defaults}, provider="omnimodal")
