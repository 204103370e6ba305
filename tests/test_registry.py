"""The modality registry: every list of modalities derives from it, a modality added at run time reaches every
layer, and a model made before it (nine modalities, embeddings sized by the framework's list of then) still
loads and gives identical outputs (tests/assets/legacy9/, made by the code of commit 79e4318)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from legacy_batch import legacy_timelines

import omnimodal  # noqa: F401 - registers the release classes and the Hydra options
from datamodules.collate import Collator
from datamodules.modalities import Modality, names, register, registry, unregister
from datamodules.schema import MODALITIES, WearableSpec, default_specs
from encoders import build_encoder, list_encoders
from encoders import register as register_encoder
from encoders.wearable import WearableConvEncoder
from omnimodal.infra.config_store import register_configs
from omnimodal.model.omni import LEGACY_EMBEDDING_ROWS
from omnimodal.pretraining.task import PretrainTask
from omnimodal.release import export, load_release

LEGACY = Path(__file__).parent / "assets" / "legacy9"
USED = ["ecg", "wearable", "clinical"]


def _compose(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="omnimodal.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_every_list_of_modalities_derives_from_the_registry() -> None:
    declared = registry()
    assert list(MODALITIES) == list(names()) == list(declared)
    assert set(default_specs()) == set(declared)
    assert set(_compose().model.encoder) == set(declared)  # the Hydra defaults (omnimodal/hydra_configs.py)
    from datamodules.synthetic.state import visit_rates

    assert list(visit_rates()) == list(declared)
    for m, d in declared.items():
        assert d.default_encoder in list_encoders(m), m
        assert type(default_specs()[m]) is type(d.spec)


@pytest.fixture()
def tenth() -> str:
    """One more modality, declared at run time with an encoder of its own (a copy of the wearable one)."""
    name = "sleep"
    register(
        Modality(
            name=name,
            order=75,
            spec=WearableSpec(channels=("spo2",), window_minutes=480),
            default_encoder=f"{name}/conv1d",
            readers={".csv": "datamodules.readers.wearable:read_wearable"},
            visit_rate=0.1,
        )
    )
    cls = type("SleepEncoder", (WearableConvEncoder,), {"__qualname__": "SleepEncoder"})
    register_encoder(f"{name}/conv1d")(cls)
    register_configs()
    yield name
    unregister(name)
    from hydra.core.config_store import ConfigStore

    from encoders import base

    base._REGISTRY.pop(f"{name}/conv1d", None)
    ConfigStore.instance().repo["model"]["encoder"].pop(name, None)
    register_configs()


def test_a_modality_declared_at_run_time_reaches_every_layer(tenth: str) -> None:
    assert tenth in MODALITIES and MODALITIES.index(tenth) == MODALITIES.index("wearable") + 1
    spec = default_specs()[tenth]
    assert spec.shape() == (1, 480)
    assert _compose().model.encoder[tenth].name == f"{tenth}/conv1d"
    enc = build_encoder(f"{tenth}/conv1d", **spec.encoder_layout(), d_model=16)
    batch = Collator({tenth: spec})(legacy_timelines({tenth: spec}, [], [tenth]))
    assert enc(batch.modalities[tenth].data, batch.modalities[tenth].mask).shape[1:] == (enc.num_tokens, 16)


def _outputs(model: torch.nn.Module, batch) -> dict:
    with torch.no_grad():
        o = model.omni(batch) if hasattr(model, "omni") else model(batch)
        embed = model.embed(batch)
    return {"embed": embed, "context": o.context, "encoded": o.encoded}


#: the stored outputs were computed with 2 threads; another thread count or CPU kind changes float rounding by
#: ~1e-6 (bitwise equal here on 2 threads). A wrong embedding row moves every output by > 1e-3.
ATOL = 1e-5


def _assert_identical(got: dict, want: dict) -> None:
    torch.testing.assert_close(got["embed"], want["embed"], rtol=0, atol=ATOL)
    for part in ("context", "encoded"):
        assert set(got[part]) == set(want[part]) == set(USED)
        for m in USED:
            torch.testing.assert_close(got[part][m], want[part][m], rtol=0, atol=ATOL, msg=f"{part} {m}")


def _legacy_batch(release):
    prep = release.preprocessing
    return prep.collator()(legacy_timelines(prep.specs, prep.clinical_codes, USED))


@pytest.mark.parametrize("with_tenth", [False, True], ids=["as-is", "after-a-tenth-modality"])
def test_a_release_made_with_nine_modalities_loads_with_identical_outputs(
    request: pytest.FixtureRequest, with_tenth: bool
) -> None:
    if with_tenth:
        request.getfixturevalue("tenth")
    want = torch.load(LEGACY / "outputs.pt", weights_only=True)
    release = load_release(LEGACY / "release")
    # its embeddings have the rows of then (9), though it has three encoders
    assert release.model.omni.modality_emb.num_embeddings == len(LEGACY_EMBEDDING_ROWS) == 9
    assert release.model.config.embedding_rows == list(LEGACY_EMBEDDING_ROWS)
    batch = _legacy_batch(release)
    _assert_identical(_outputs(release.model, batch), want)
    auto = transformers.AutoModel.from_pretrained(LEGACY / "release").eval()
    _assert_identical(_outputs(auto, batch), want)
    # sharp: the modality embedding rows read in today's encoder order (the bug this guards) move the outputs
    with torch.no_grad():
        emb = release.model.omni.modality_emb.weight
        emb[[1, 6, 8]] = emb[[6, 8, 1]].clone()  # rows of ecg, wearable, clinical, rotated
    wrong = _outputs(release.model, batch)
    assert (wrong["embed"] - want["embed"]).abs().max() > 1e-3


def test_a_training_checkpoint_made_with_nine_modalities_loads_and_exports(tmp_path: Path, tenth: str) -> None:
    from omnimodal.infra.checkpoints import load

    ckpt = load(LEGACY / "weights.ckpt")
    assert "embedding_rows" not in ckpt["hyper_parameters"]["model"]  # written before the registry
    task = PretrainTask(**ckpt["hyper_parameters"])
    task.load_state_dict(ckpt["state_dict"], strict=True)
    task.eval()
    want = torch.load(LEGACY / "outputs.pt", weights_only=True)
    release = load_release(LEGACY / "release")
    batch = _legacy_batch(release)
    _assert_identical(_outputs(task.model, batch), want)
    # re-exported today: the release records its rows and still gives the same numbers
    again = load_release(export(LEGACY / "weights.ckpt", tmp_path / "again"))
    assert again.model.config.embedding_rows == list(LEGACY_EMBEDDING_ROWS)
    _assert_identical(_outputs(again.model, batch), want)


def test_a_new_model_has_one_embedding_row_per_encoder(tmp_path: Path) -> None:
    ckpt_hp = torch.load(LEGACY / "weights.ckpt", weights_only=True)["hyper_parameters"]
    model = {**ckpt_hp["model"], "embedding_rows": ["wearable", "clinical", "ecg"]}
    task = PretrainTask(**{**ckpt_hp, "model": model})
    assert task.model.modality_emb.num_embeddings == 3 and task.model.order == ["wearable", "clinical", "ecg"]
    with pytest.raises(ValueError, match="must name each encoder's modality once"):
        PretrainTask(**{**ckpt_hp, "model": {**model, "embedding_rows": ["ecg", "clinical"]}})


def test_a_release_whose_files_came_back_with_sorted_keys_keeps_its_token_order(tmp_path: Path) -> None:
    """Token order follows embedding_rows (a list), not the encoders mapping (JSON files sort keys)."""
    rel = tmp_path / "rel"
    shutil.copytree(LEGACY / "release", rel)
    release = load_release(rel)
    assert list(release.model.config.encoders) == sorted(USED)  # config.json sorted them
    assert release.model.omni.order == USED  # the legacy rows' order: ecg, wearable, clinical


def test_declarations_are_checked() -> None:
    base = dict(order=1, spec=WearableSpec(), visit_rate=0.1)
    with pytest.raises(ValueError, match="modality name"):
        Modality(name="Bad-Name", default_encoder="Bad-Name/x", **base)
    with pytest.raises(ValueError, match="must be 'eye/<variant>'"):
        Modality(name="eye", default_encoder="ecg/conv1d", **base)
    with pytest.raises(ValueError, match="visit_rate"):
        Modality(name="eye", default_encoder="eye/x", **{**base, "visit_rate": 2.0})
    with pytest.raises(ValueError, match="already declared"):
        register(dataclasses.replace(registry()["ecg"], order=999))
