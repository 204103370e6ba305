"""Hydra config nodes that derive from the registries, so no config file lists the modalities.

- ``model/encoder/<modality>/<variant>``: one option per registered encoder (``{name, kwargs: {}}``), so
  ``model/encoder/mri=resnet`` picks ``mri/resnet``; a site's own YAML options sit beside them.
- ``model/encoders``: the defaults list ``encoder/<modality>: <variant of its default encoder>`` for every
  declared modality (``configs/model/default.yaml`` includes it).

Registered when ``omnimodal`` is imported, before any config is composed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def compose(name: str, overrides: Sequence[str] = ()) -> Any:
    """The packaged config ``name`` (``train``, ``finetune``, ...) of ``omnimodal.configs`` with ``overrides``, as
    the command would compose it (outside a Hydra run: what the benchmarks call in process)."""
    from hydra import compose as hydra_compose  # noqa: PLC0415
    from hydra import initialize_config_module  # noqa: PLC0415
    from hydra.core.global_hydra import GlobalHydra  # noqa: PLC0415

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="omnimodal.configs", version_base="1.3"):
        return hydra_compose(name, overrides=list(overrides))
