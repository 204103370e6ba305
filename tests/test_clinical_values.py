"""Clinical values scaled per code: the encoder's scaling (identity by default, the encoder of before), the
per-code statistics of a shard folder's train split (datamodules/code_stats.py), the buffers that carry them in
a release, and the hook that fills them where a model is built from scratch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from datamodules.code_stats import center_scale, code_value_stats
from datamodules.shards.builder import BuildConfig, build_shards
from datamodules.shards.format import load_index
from encoders import build_encoder
from encoders.base import signed_log1p
from omnimodal.release import OmniConfig, OmniForTimelines, load_release

LEGACY = Path(__file__).parent / "assets" / "legacy9" / "release"
SBP = np.array([100.0, 112.0, 120.0, 126.0, 130.0, 134.0, 140.0, 150.0, 165.0, 190.0])  # train split's values


def _encoder(**kw):
    torch.manual_seed(0)
    return build_encoder("clinical/embedding", vocab_size=4, hidden=16, d_model=8, **kw)


def test_default_is_the_encoder_before_per_code_scaling() -> None:
    enc = _encoder()
    assert not enc.value_scaling and {"value_center", "value_scale"}.isdisjoint(enc.state_dict())  # old ones load
    codes, values = torch.tensor([1, 2, 3]), torch.tensor([140.0, -3.0, 0.5])
    assert torch.equal(enc.scale_values(codes, values), signed_log1p(values))
    scaled = _encoder(value_scaling=True)
    assert torch.equal(scaled.value_center, torch.zeros(4)) and torch.equal(scaled.value_scale, torch.ones(4))
    # identity statistics: the same log scale, weighted sqrt(hidden) at the MLP input
    torch.testing.assert_close(scaled.scale_values(codes, values), signed_log1p(values) * math.sqrt(16))


def test_140_and_160_mmhg_differ_clearly_once_scaled_by_their_code() -> None:
    center, scale = center_scale(SBP)
    assert center == 132.0 and scale == pytest.approx((147.5 - 121.5) / 1.3489795)
    enc = _encoder(value_scaling=True)
    enc.set_value_scaling([0.0, center, 0.0, 0.0], [1.0, scale, 1.0, 1.0])
    codes, pair = torch.tensor([1, 1]), torch.tensor([140.0, 160.0])
    unscaled = signed_log1p(pair)
    assert float(unscaled[1] - unscaled[0]) == pytest.approx(0.133, abs=1e-3)  # the figure
    scaled = enc.scale_values(codes, pair) / enc.value_gain
    assert float(scaled[1] - scaled[0]) > 0.4  # ~0.48: three times the log scale's difference
    assert float(scaled[0]) > 0 > float(enc.scale_values(torch.tensor([1]), torch.tensor([120.0])))  # centred
    out = enc(codes, torch.ones(2, dtype=torch.bool), pair)
    assert out.shape == (2, 1, 8) and torch.isfinite(out).all()


def test_scaling_is_checked() -> None:
    with pytest.raises(ValueError, match="built without value_scaling"):
        _encoder().set_value_scaling([0.0] * 4, [1.0] * 4)
    enc = _encoder(value_scaling=True)
    with pytest.raises(ValueError, match=r"one entry per code id \(4, the vocab_size\), got shape \[3\]"):
        enc.set_value_scaling([0.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError, match=r"value scale must be > 0; it is not at code ids \[2\]"):
        enc.set_value_scaling([0.0] * 4, [1.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="value center has NaN/inf"):
        enc.set_value_scaling([0.0, float("nan"), 0.0, 0.0], [1.0] * 4)
    assert center_scale(np.array([]), "robust") == (0.0, 1.0)
    assert center_scale(np.array([0.0, 0.0, 0.0, 0.0, 5.0]))[1] == pytest.approx(2.0)  # IQR 0: the SD
    assert center_scale(np.array([7.0, 7.0])) == (7.0, 1.0)  # one value: scale 1
    with pytest.raises(ValueError, match="method 'quantile'"):
        center_scale(SBP, "quantile")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten people in train (one SBP each), two in val with outlying SBP, a code without values, one known only
    in val."""
    d = tmp_path_factory.mktemp("code-stats")
    n = len(SBP) + 2
    ids = [f"s{i}" for i in range(n)]
    split = ["train"] * len(SBP) + ["val"] * 2
    pd.DataFrame({"subject_id": ids, "birth_year": 1950, "sex": "F", "split": split, "consent": "true"}).to_csv(
        d / "subjects.csv", index=False
    )
    rows = [(s, "2020-01-01", "clinical", "SBP", v) for s, v in zip(ids, [*SBP, 900.0, 1000.0])]
    rows += [(s, "2020-01-01", "clinical", "SMOKER//yes", None) for s in ids]
    rows += [(ids[-1], "2020-01-02", "clinical", "CRP", 50.0)]
    pd.DataFrame(rows, columns=["subject_id", "time", "modality", "code", "numeric_value"]).to_csv(
        d / "events.csv", index=False
    )
    build_shards(
        BuildConfig(
            subjects=str(d / "subjects.csv"), events=str(d / "events.csv"), out=str(d / "shards"), secret="x" * 16
        )
    )
    return d / "shards"


def test_per_code_statistics_come_from_the_train_split(shards: Path) -> None:
    codes = load_index(shards)["clinical_codes"]
    assert codes == ["SBP", "SMOKER//yes"]  # CRP is seen only in val: not in the vocabulary
    stats = code_value_stats(shards, codes)
    assert stats.of("SBP") == center_scale(SBP)  # the val split's 900 and 1000 left out
    assert stats.of("SMOKER//yes") == (0.0, 1.0) and stats.of("CRP") == (0.0, 1.0)  # no values / unknown
    assert stats.count.tolist() == [0, 10, 0] and stats.center[0] == 0.0 and stats.scale[0] == 1.0
    assert code_value_stats(shards, codes, "val").of("SBP") == (950.0, pytest.approx(50.0 / 1.3489795))
    few = code_value_stats(shards, codes, max_values=4)  # a seeded sample of 4 of the 10 values
    assert few.count[1] == 10 and few.center[1] != center_scale(SBP)[0] and SBP.min() <= few.center[1] <= SBP.max()
    assert code_value_stats(shards, codes, max_values=4).of("SBP") == few.of("SBP")  # the same sample again


def test_a_model_built_from_the_shards_is_scaled_and_carries_its_scaling(shards: Path, tmp_path: Path) -> None:
    from omnimodal.infra.config_store import compose
    from omnimodal.pretraining import run as pretrain

    cfg = compose(
        "train", ["data=shards", f"data.root={shards}", "+model.modalities=[clinical]", "trainer.accelerator=cpu"]
    )
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "run")
    task, _, _ = pretrain.build(cfg)
    enc = task.model.encoders["clinical"]
    assert enc.value_scaling and task.hparams["model"]["encoders"]["clinical"]["kwargs"]["value_scaling"] is True
    center, scale = center_scale(SBP)
    assert enc.value_center.tolist() == pytest.approx([0.0, center, 0.0])
    assert enc.value_scale.tolist() == pytest.approx([1.0, scale, 1.0])
    # a release carries the buffers: from_pretrained restores them
    model = OmniForTimelines(OmniConfig.from_model_dict(task.hparams["model"]))
    model.omni.load_state_dict(task.model.state_dict())
    model.save_pretrained(tmp_path / "release", safe_serialization=True)
    again = OmniForTimelines.from_pretrained(tmp_path / "release").omni.encoders["clinical"]
    assert torch.equal(again.value_center, enc.value_center) and torch.equal(again.value_scale, enc.value_scale)


def test_a_release_from_before_per_code_scaling_loads_as_it_was() -> None:
    enc = load_release(LEGACY).model.omni.encoders["clinical"]  # outputs checked in tests/test_registry.py
    assert not enc.value_scaling and not hasattr(enc, "value_center")
