"""Tasks from ACES: labels extracted by es-aces from a MEDS export of the test cohort, matched to its shards,
a fine-tune on them, predictions in meds-evaluation's schema scored by meds-evaluation and by us."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import SECRET

from datamodules.meds_export import write_meds
from datamodules.schema import DataError
from datamodules.shards.format import SECRET_ENV
from omnimodal.downstream import aces
from omnimodal.infra.config_check import ConfigError

HR, SBP = "LOINC:8867-4", "LOINC:8480-6"  # heart rate (every visit); systolic blood pressure
TASK = f"""
description: a systolic blood pressure of 125 mmHg or more within two years after a visit (heart rate taken)
predicates:
  hr:
    code: "{HR}"
  outcome:
    code: "{SBP}"
    value_min: 125
    value_min_inclusive: true
trigger: hr
windows:
  input:
    start: null
    end: trigger
    start_inclusive: true
    end_inclusive: true
    index_timestamp: end
  target:
    start: input.end
    end: start + 730d
    start_inclusive: false
    end_inclusive: true
    label: outcome
"""


@pytest.fixture(scope="module")
def meds_dir(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test cohort exported as a MEDS dataset (its shards, the session ``shards``, have the same keys)."""
    out = tmp_path_factory.mktemp("meds") / "cohort"
    write_meds(cohort / "subjects.csv", cohort / "events.csv", out)
    return out


@pytest.fixture
def task_yaml(tmp_path: Path) -> Path:
    p = tmp_path / "sbp_125.yaml"
    p.write_text(TASK)
    return p


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


def expected_labels(meds_dir: Path) -> pl.DataFrame:
    """The task computed independently: every (subject, time) with a heart rate; positive when a systolic
    pressure >= 125 follows within (t, t + 730 days]."""
    data = pl.read_parquet(meds_dir / "data")
    trig = data.filter(pl.col("code") == HR).select("subject_id", "time").unique()
    out = data.filter((pl.col("code") == SBP) & (pl.col("numeric_value") >= 125))
    out = out.select("subject_id", pl.col("time").alias("t_out"))
    lab = (
        trig.join(out, on="subject_id", how="left")
        .with_columns(
            hit=(pl.col("t_out") > pl.col("time")) & (pl.col("t_out") <= pl.col("time") + pl.duration(days=730))
        )
        .group_by("subject_id", "time")
        .agg(pl.col("hit").fill_null(False).any())
    )
    return lab.sort("subject_id", "time")


def test_aces_labels_match_an_independent_computation(meds_dir: Path, task_yaml: Path) -> None:
    labels = aces.extract_labels(task_yaml, meds_dir)
    want = expected_labels(meds_dir)
    assert labels.schema["subject_id"] == pl.Int64 and labels.schema["boolean_value"] == pl.Boolean
    assert len(labels) == len(want) > 50
    assert labels["boolean_value"].sum() == want["hit"].sum() > 0
    got = labels.select("subject_id", pl.col("prediction_time").alias("time"), "boolean_value")
    assert got.equals(want.rename({"hit": "boolean_value"}).select(got.columns))


def test_prediction_times_left_out_are_counted_with_the_reason(meds_dir: Path, task_yaml: Path, shards: Path) -> None:
    labels = aces.extract_labels(task_yaml, meds_dir)
    birth, names = aces.births(meds_dir), aces.key_names(meds_dir, labels["subject_id"])
    full = aces.match(labels, birth, names, shards)
    assert not full.excluded and sum(full.count(s)[1] for s in full.splits) == len(labels)
    meds_ids = set(labels["subject_id"])
    pseudonyms = {t.subject_id for ts in full.splits.values() for tt in ts.values() for t in tt}
    assert len(pseudonyms) == len(meds_ids) and pseudonyms.isdisjoint(meds_ids)  # never the MEDS id
    first, other = labels["subject_id"].unique().sort()[:2]
    t0 = labels.filter(pl.col("subject_id") == first)["prediction_time"].min()
    odd = pl.DataFrame(
        {
            "subject_id": [123, first, first],  # not in the shards; ten years before its first visit; at it
            "prediction_time": [t0, t0 - timedelta(days=3650), t0],
            "boolean_value": [True, False, True],
        },
        schema=labels.schema,
    )
    got = aces.match(pl.concat([labels, odd]), {k: v for k, v in birth.items() if k != other}, names, shards)
    n_other = len(labels.filter(pl.col("subject_id") == other))
    assert got.excluded == {
        aces.LEFT_OUT_NOT_IN_SHARDS: 1,
        aces.LEFT_OUT_NO_HISTORY: 1,
        aces.LEFT_OUT_NO_BIRTH: n_other,
    }
    assert sum(got.count(s)[1] for s in got.splits) == len(labels) + 1 - n_other
    assert "left out: " in got.summary() and "no MEDS_BIRTH" in got.summary()


@pytest.mark.slow
def test_aces_task_fine_tuned_and_scored_by_meds_evaluation(
    shards: Path, release_dir: Path, meds_dir: Path, task_yaml: Path, tmp_path: Path, capsys
) -> None:
    from meds_evaluation.schema import PredictionSchema
    from test_finetune import finetune_config

    from omnimodal.downstream.run import build, run
    from omnimodal.evaluation.metrics import binary_metrics

    overrides = (f"task={task_yaml}", f"task_data={meds_dir}", "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    cfg = finetune_config(release_dir, shards, tmp_path, *overrides)
    task, dm, _ = build(cfg)
    assert task.head_cfg.kind == "classification" and task.head.net[-1].out_features == 1  # one logit: boolean label
    labels = aces.extract_labels(task_yaml, meds_dir)
    lms = dm.landmarks
    # every ACES prediction time is a sample (the export and the shards hold the same consenting people)
    assert not lms.excluded and sum(lms.count(s)[1] for s in lms.splits) == len(labels)
    # the history ends at the prediction time: each is a visit, so its last event is that visit, to the second
    items, times, excluded = dm.items("val")
    birth = aces.births(meds_dir)
    meds_ids, pseudonyms = _keys(meds_dir, labels)
    ids = dict(zip(pseudonyms, meds_ids, strict=True))
    for (hist, tgt), pt in zip(items, times, strict=True):
        age = (pt.time - birth[ids[pt.subject_id]]).total_seconds() / 86400
        assert abs(hist.events[-1].age_days - age) < 1 / 86400 and tgt["y"] == float(pt.label)
    assert not excluded and len(items) == lms.count("val")[1] >= 20

    metrics = run(cfg)
    out = capsys.readouterr().out
    assert "ACES task: " in out and "meds-evaluation roc_auc_score=" in out and "left out: " in out
    # the closing block's next command is meds-evaluation's own, on this run's test predictions
    assert f"meds-evaluation-cli predictions_path={tmp_path / 'predictions' / 'test.parquet'}" in out
    assert "omnimodal-eval" not in out  # it reads landmark labels of the shards, not ACES labels
    report = json.loads((tmp_path / "aces_metrics.json").read_text())
    for split in ("val", "test"):
        path = tmp_path / "predictions" / f"{split}.parquet"
        table = PredictionSchema.align(pq.read_table(path))  # meds-evaluation's own schema check
        df = pl.from_arrow(table)
        assert len(df) == lms.count(split)[1] and df["subject_id"].dtype == pl.Int64
        # the subject_id is the pseudonym, never the MEDS id; times and labels are ACES's
        want = labels.with_columns(subject_id=pl.col("subject_id").replace_strict(dict(zip(meds_ids, pseudonyms))))
        joined = df.join(want, on=["subject_id", "prediction_time"], how="left", suffix="_aces")
        assert joined["boolean_value_aces"].null_count() == 0
        assert joined["boolean_value"].equals(joined["boolean_value_aces"], check_names=False)
        assert set(df["subject_id"]).isdisjoint(labels["subject_id"])
        y = df["boolean_value"].cast(pl.Float64).to_numpy()
        p = df["predicted_boolean_probability"].cast(pl.Float64).to_numpy()
        ours = binary_metrics(y, p, n_boot=10)["auroc"].value
        assert report[split]["omnimodal"]["auroc"]["value"] == pytest.approx(ours, abs=1e-12)
        samples = report[split]["meds_evaluation"].get("samples_equally_weighted")
        if split == "val" or samples:  # test: one person here, whose resample may hold one class
            assert samples["roc_auc_score"] == pytest.approx(ours, abs=1e-6)
    assert metrics["val/auroc"] == pytest.approx(metrics["val/meds_evaluation_auroc"], abs=1e-6)
    assert report["counts"]["val"] == dict(zip(("people", "prediction_times", "positive"), lms.count("val")))
    assert "too few to trust" in report["test"]["note"]  # one person, 8 prediction times: said so


def _keys(meds_dir: Path, labels: pl.DataFrame) -> tuple[list[int], list[int]]:
    """MEDS ids and the int64 pseudonyms the predictions carry (from the export's id map and the secret)."""
    from datamodules.shards.format import subject_key

    names = pd.read_csv(meds_dir / "subject_id_map.csv").set_index("meds_subject_id")["subject_id"]
    ids = labels["subject_id"].unique().sort().to_list()
    return ids, [aces.pseudonym_id(subject_key(names[i], SECRET.encode())) for i in ids]


def test_bad_task_input_is_refused_with_what_to_fix(
    shards: Path, meds_dir: Path, task_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_finetune import finetune_config

    from omnimodal.downstream.run import build

    def refused(*overrides: str) -> None:
        build(finetune_config(tmp_path / "no-release-needed", shards, tmp_path / "run", *overrides))

    broken = tmp_path / "broken.yaml"
    broken.write_text("predicates:\n  hr: {code: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"config key task = '{broken}': not a valid ACES task config"):
        refused(f"task={broken}", f"task_data={meds_dir}")
    no_time = tmp_path / "no_time.yaml"
    no_time.write_text(TASK.replace("    index_timestamp: end\n", ""))
    with pytest.raises(ConfigError, match="no window has index_timestamp"):
        refused(f"task={no_time}", f"task_data={meds_dir}")
    with pytest.raises(ConfigError, match="config key task_data: set task_data="):
        refused(f"task={task_yaml}")
    with pytest.raises(DataError, match=r"task_data=.*nowhere: no such directory"):
        refused(f"task={task_yaml}", f"task_data={tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a MEDS dataset: no data/"):
        refused(f"task={task_yaml}", f"task_data={tmp_path / 'empty'}")
    monkeypatch.setenv(SECRET_ENV, "another-secret-0123456789")
    with pytest.raises(DataError, match=r"none of the \d+ people .* built from this MEDS dataset .*with this secret"):
        refused(f"task={task_yaml}", f"task_data={meds_dir}")
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(DataError, match=f"no pseudonymisation secret. .*set {SECRET_ENV} to the secret the shards"):
        refused(f"task={task_yaml}", f"task_data={meds_dir}")
