"""MEDS v0.4 in and out: datasets made by meds-testing-helpers become shards whose counts match the data
(computed here with polars), a model trains on them; bad MEDS files stop with the file, row and fix; our
cohort tables export to a MEDS dataset that the meds schemas and meds_reader accept, and that builds back
into the same shards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SECRET, build, train_config

from datamodules.meds import ID_MAP, read_meds
from datamodules.meds_export import meds_ids, write_meds
from datamodules.schema import DataError
from datamodules.shards.builder import BuildConfig, build_shards
from datamodules.shards.format import subject_key

BIN = Path(sys.executable).parent  # meds_reader_convert is installed beside the interpreter
DAY_US = 86400 * 10**6


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MEDS dataset from meds-testing-helpers' generator: 40 subjects in 4 files, a tenth without MEDS_BIRTH,
    half with MEDS_DEATH, static codes, duplicate rows (as the generator makes them), train/tuning/held_out."""
    from meds_testing_helpers.dataset_generator import MEDSDataDFGenerator, MEDSDatasetGenerator
    from meds_testing_helpers.rvs import (
        DatetimeGenerator,
        PositiveIntGenerator,
        PositiveTimeDeltaGenerator,
        ProportionGenerator,
    )

    days = [np.timedelta64(d, "D") for d in (1, 3)]
    gen = MEDSDataDFGenerator(
        birth_datetime_per_subject=DatetimeGenerator([np.datetime64(y, "us") for y in ("1950-03-01", "1968-07-15")]),
        start_data_datetime_per_subject=DatetimeGenerator([np.datetime64("2010-01-01", "us")]),
        time_between_birth_and_data_per_subject=PositiveTimeDeltaGenerator([np.timedelta64(40 * 365, "D")]),
        time_between_data_and_death_per_subject=PositiveTimeDeltaGenerator(days),
        time_between_data_events_per_subject=PositiveTimeDeltaGenerator([np.timedelta64(30, "D")]),
        num_events_per_subject=PositiveIntGenerator([3, 6, 10]),
        num_measurements_per_event=PositiveIntGenerator([1, 2, 3]),
        num_static_measurements_per_subject=PositiveIntGenerator([1, 2]),
        frac_dynamic_code_occurrences_with_value=ProportionGenerator([0, 0.5, 1]),
        frac_static_code_occurrences_with_value=ProportionGenerator([0]),
        static_vocab_size=3,
        dynamic_vocab_size=12,
        frac_subjects_with_death=0.5,
        frac_subjects_with_birth=0.9,
    )
    root = tmp_path_factory.mktemp("meds-generated")
    dataset = MEDSDatasetGenerator(gen, shard_size=10, train_frac=0.6, dataset_name="generated").sample(
        40, np.random.default_rng(4)
    )
    dataset.write(root)
    return root


def _build(meds: Path, out: Path, **kw) -> object:
    kw.setdefault("secret", SECRET)
    kw.setdefault("max_samples_per_shard", 8)
    return build_shards(BuildConfig(meds=str(meds), out=str(out), **kw))


def _metas(root: Path) -> dict[str, dict]:
    out = {}
    for tar in sorted(root.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".meta.json"):
                    meta = json.loads(t.extractfile(m).read())
                    out[meta["key"]] = {**meta, "split": tar.name.split("-")[0]}
    return out


@pytest.fixture(scope="module")
def generated_shards(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("meds-shards")
    return out, _build(generated, out)


def test_meds_build_matches_the_data(generated: Path, generated_shards: tuple[Path, object]) -> None:
    out, report = generated_shards
    data = pl.read_parquet(generated / "data" / "**" / "*.parquet")
    births = data.filter(pl.col("code") == "MEDS_BIRTH").select("subject_id", birth="time")
    deaths = data.filter(pl.col("code") == "MEDS_DEATH").select("subject_id", death="time")
    dynamic = data.filter(pl.col("time").is_not_null() & ~pl.col("code").is_in(["MEDS_BIRTH", "MEDS_DEATH"]))
    kept = dynamic.join(births, on="subject_id")
    unique = kept.unique(["subject_id", "time", "code", "numeric_value"])
    no_birth = set(data["subject_id"].unique()) - set(births["subject_id"])
    assert 0 < len(no_birth) and deaths.height > 0 and kept.height > unique.height  # the cases are all there
    # one sample per subject with a MEDS_BIRTH; one clinical measurement per distinct row
    assert report.samples == births.height == len(_metas(out))
    assert report.modalities == {"clinical": unique.height}
    assert sum(r.reason.startswith("duplicate event row") for r in report.rejected) == kept.height - unique.height
    # the subjects without MEDS_BIRTH are rejected, named by MEDS file, row and key (never the raw id)
    gone = [r for r in report.rejected if "MEDS_BIRTH" in r.reason]
    assert sorted(r.key for r in gone) == sorted(subject_key(str(s), SECRET.encode()) for s in no_birth)
    for r in gone:
        rows = pl.read_parquet(generated / r.table).with_row_index("row", offset=1)
        assert rows.filter(pl.col("row") == r.row)["subject_id"].item() in no_birth
    # static rows are counted, not events; splits are MEDS's: train -> train, tuning -> val, held_out -> test
    assert report.meds["static_rows"] == data.filter(pl.col("time").is_null()).height
    split = pl.read_parquet(generated / "metadata" / "subject_splits.parquet").join(births, on="subject_id")
    ours = {"train": "train", "tuning": "val", "held_out": "test"}
    assert dict(report.splits) == {ours[s]: n for s, n in split["split"].value_counts().iter_rows()}
    index = json.loads((out / "index.json").read_text())
    train = split.filter(pl.col("split") == "train")["subject_id"].to_list()
    assert index["clinical_codes"] == sorted(kept.filter(pl.col("subject_id").is_in(train))["code"].unique())
    # ages come from MEDS_BIRTH: each subject's first event is (first time - birth) days old
    metas = _metas(out)
    first = kept.group_by("subject_id").agg(pl.col("time").min(), pl.col("birth").first())
    for sid, t, birth in first.iter_rows():
        age = metas[subject_key(str(sid), SECRET.encode())]["events"][0]["age_days"]
        assert age == pytest.approx((t - birth).total_seconds() / 86400)


def test_meds_death_consent_and_more_events(generated: Path, tmp_path: Path) -> None:
    """MEDS_DEATH is the death date (a row after it is rejected, naming its MEDS file and row); a subjects
    table withdraws consent; an events table adds measurements to MEDS subjects."""
    root = tmp_path / "meds"
    shutil.copytree(generated, root)
    fp = root / "data" / "1.parquet"
    df = pl.read_parquet(fp)
    death = df.filter(pl.col("code") == "MEDS_DEATH").row(0, named=True)
    late = pl.DataFrame(
        {"subject_id": [death["subject_id"]], "time": [death["time"] + pd.Timedelta(days=2)], "code": ["LATE"]},
        schema={"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String},
    )
    df = pl.concat([df, late], how="diagonal").sort("subject_id", maintain_order=True)
    df.write_parquet(fp)
    late_row = df.with_row_index("row", offset=1).filter(pl.col("code") == "LATE")["row"].item()
    data = pl.concat([pl.read_parquet(p) for p in sorted((root / "data").glob("*.parquet"))])
    ids = data.filter(pl.col("code") == "MEDS_BIRTH")["subject_id"].to_list()
    pd.DataFrame({"subject_id": [ids[0], 999999], "consent": ["false", "true"]}).to_csv(tmp_path / "c.csv", index=False)
    t = data.filter(pl.col("subject_id") == ids[1])["time"].max()
    pd.DataFrame(
        {
            "subject_id": [ids[1]],
            "time": [t.isoformat()],
            "modality": ["clinical"],
            "code": ["EXTRA"],
            "numeric_value": [1.5],
        }
    ).to_csv(tmp_path / "more.csv", index=False)
    report = _build(root, tmp_path / "out", subjects=str(tmp_path / "c.csv"), events=str(tmp_path / "more.csv"))
    (after,) = [r for r in report.rejected if r.reason.startswith("event after death")]
    assert (after.table, after.row) == ("data/1.parquet", late_row)
    assert "after the death date of its MEDS_DEATH row" in after.reason  # a MEDS build has no death_date column
    assert after.key == subject_key(str(death["subject_id"]), SECRET.encode())
    assert report.withdrawn == [subject_key(str(ids[0]), SECRET.encode())]
    assert report.meds["consent_rows_not_in_meds"] == 1
    meta = _metas(tmp_path / "out")[subject_key(str(ids[1]), SECRET.encode())]
    assert {"code": "EXTRA", "modality": "clinical", "value": 1.5} in meta["events"][-1]["measurements"]


@pytest.mark.slow
def test_model_trains_on_meds_shards(generated_shards: tuple[Path, object], tmp_path: Path) -> None:
    from omnimodal.pretraining.run import build as build_run

    out, _ = generated_shards
    cfg = train_config(
        out,
        tmp_path,
        "experiment=quick",
        "+model.modalities=[clinical]",
        "trainer.max_steps=3",
        "data.max_events=8",
        "resume=null",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "callbacks.checkpoint.every_n_train_steps=3",
    )
    task, dm, trainer = build_run(cfg)
    trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 3 and list(task.model.encoders) == ["clinical"]
    losses = pd.read_csv(next((tmp_path / "logs").glob("version_*/metrics.csv")))["train/loss"].dropna()
    assert len(losses) == 3 and np.isfinite(losses).all()


def _write_meds(root: Path, table: pa.Table) -> Path:
    (root / "data").mkdir(parents=True)
    pq.write_table(table, root / "data" / "0.parquet")
    return root


def test_bad_meds_files_name_the_file_row_and_fix(simple_static_MEDS: Path, tmp_path: Path) -> None:
    good = pq.read_table(next((simple_static_MEDS / "data").rglob("*.parquet")))
    as_text = good.set_column(0, "subject_id", pa.array([str(v) for v in good["subject_id"].to_pylist()]))
    with pytest.raises(DataError) as err:
        read_meds(_write_meds(tmp_path / "a", as_text))
    assert err.value.where == str(tmp_path / "a" / "data" / "0.parquet")
    assert "subject_id must be int64; found string (first offending row 1)" in err.value.reason
    assert "DataSchema" in err.value.hint
    with pytest.raises(DataError, match="column 'code' is missing"):
        read_meds(_write_meds(tmp_path / "b", good.drop_columns(["code"])))
    codes = good["code"].to_pylist()
    codes[4] = None
    with pytest.raises(DataError, match=r"code has nulls \(first offending row 5\)"):
        read_meds(_write_meds(tmp_path / "c", good.set_column(2, "code", pa.array(codes))))
    with pytest.raises(DataError, match=r"extra column\(s\) \['modality'\]"):
        read_meds(_write_meds(tmp_path / "d", good.append_column("modality", pa.array(["x"] * len(good)))))
    with pytest.raises(DataError, match="no MEDS data files"):
        read_meds(tmp_path)


def test_sex_codes_and_descriptions(tmp_path: Path) -> None:
    import meds
    from meds_testing_helpers.dataset import MEDSDataset

    codes = ["GENDER//F", "sex/male", "Gender:FEMALE", "SEX_M", "GENDER//UNKNOWN"]
    rows = {"subject_id": [], "time": [], "code": [], "numeric_value": []}
    for i, c in enumerate(codes):
        for t, code in ((None, c), (pd.Timestamp("1960-01-01"), "MEDS_BIRTH"), (pd.Timestamp("2010-01-01"), "HR")):
            rows["subject_id"].append(i)
            rows["time"].append(t)
            rows["code"].append(code)
            rows["numeric_value"].append(None if code != "HR" else 72.5)
    meta = pl.DataFrame({"code": ["HR"], "description": ["Heart rate"], "parent_codes": [["LOINC/8867-4"]]})
    MEDSDataset(
        data_shards={"0": pl.DataFrame(rows)},
        dataset_metadata=meds.DatasetMetadataSchema(dataset_name="sex"),
        code_metadata=meta,
    ).write(tmp_path)
    cohort = read_meds(tmp_path)
    assert cohort.subjects["sex_male"].tolist()[:4] == [0.0, 1.0, 0.0, 1.0]
    assert np.isnan(cohort.subjects["sex_male"].iloc[4])
    assert cohort.counts["static_codes"] == {"GENDER//UNKNOWN": 1}
    assert cohort.events["numeric_value"].tolist() == [72.5] * 5
    report = _build(tmp_path, tmp_path / "out", split_fractions=(1.0, 0.0, 0.0))
    assert json.loads((tmp_path / "out" / "index.json").read_text())["clinical_code_descriptions"] == {
        "HR": "Heart rate"
    }
    assert report.meds["without_split_row"] == 5


def test_meds_ids_are_integers_or_a_stable_hash() -> None:
    assert meds_ids(pd.Series(["17", "-3", "007"])).tolist() == [17, -3, 7]
    a = meds_ids(pd.Series(["SYN-1", "SYN-2"]))
    assert a.tolist() == meds_ids(pd.Series(["SYN-1", "SYN-2", "SYN-3"])).tolist()[:2]  # stable as the cohort grows
    assert (a > 0).all()
    with pytest.raises(DataError, match="same MEDS id"):
        meds_ids(pd.Series(["7", "007"]))


def test_export_is_valid_meds_read_by_meds_reader(cohort: Path, tmp_path: Path) -> None:
    import meds
    import meds_reader

    out = tmp_path / "meds"
    info = write_meds(cohort / "subjects.csv", cohort / "events.csv", out, cohort / "labels.csv", dataset_name="t")
    for fp in (out / "data").glob("*.parquet"):
        meds.DataSchema.validate(pq.read_table(fp))
    meds.SubjectSplitSchema.validate(pq.read_table(out / meds.subject_splits_filepath))
    meds.CodeMetadataSchema.validate(pq.read_table(out / meds.code_metadata_filepath))
    meds.DatasetMetadataSchema.validate(json.loads((out / meds.dataset_metadata_filepath).read_text()))
    for fp in (out / "labels").glob("*.parquet"):
        meds.LabelSchema.validate(pq.read_table(fp))
    subjects = pd.read_csv(cohort / "subjects.csv", dtype=str)
    events = pd.read_csv(cohort / "events.csv", dtype={"subject_id": str})
    consenting = subjects[subjects["consent"] == "true"]
    ev = events[events["subject_id"].isin(consenting["subject_id"])]
    assert info.subjects == len(consenting) and info.clinical == (ev["modality"] == "clinical").sum()
    db_dir = tmp_path / "db"
    subprocess.run([str(BIN / "meds_reader_convert"), str(out), str(db_dir)], check=True, capture_output=True)
    db = meds_reader.SubjectDatabase(str(db_dir))
    ids = pd.read_csv(out / ID_MAP, dtype={"subject_id": str}).set_index("meds_subject_id")["subject_id"]
    assert sorted(ids[s] for s in db) == sorted(consenting["subject_id"])
    for sid in db:
        mine = ev[ev["subject_id"] == ids[sid]]
        person = consenting.set_index("subject_id").loc[ids[sid]]
        got = db[sid].events
        assert [e.code for e in got if e.code == "MEDS_BIRTH"] == ["MEDS_BIRTH"]
        assert next(e.time for e in got if e.code == "MEDS_BIRTH") == pd.Timestamp(person["birth_date"])
        assert got[0].code == f"GENDER//{person['sex']}" and got[0].time is None
        files = [e for e in got if e.code.endswith("//RECORDING")]
        assert sorted(e.code.split("//")[0].lower() for e in files) == sorted(
            mine.loc[mine["modality"] != "clinical", "modality"]
        )
        assert all((out / e.path).resolve().is_file() for e in files)
        assert sum(e.code not in ("MEDS_BIRTH", "MEDS_DEATH") and not e.code.startswith("GENDER") for e in got) == len(
            mine
        )


def _subset(cohort: Path, tmp_path: Path, modalities: tuple[str, ...]) -> Path:
    """The cohort's tables with the events of some modalities only (file paths made absolute)."""
    ev = pd.read_csv(cohort / "events.csv", dtype={"subject_id": str})
    ev = ev[ev["modality"].isin(modalities)]
    ev["path"] = [None if pd.isna(p) else str(cohort / p) for p in ev["path"]]
    d = tmp_path / "tables"
    d.mkdir()
    ev.to_csv(d / "events.csv", index=False)
    for name in ("subjects.csv", "labels.csv"):
        shutil.copy(cohort / name, d / name)
    return d


def test_export_builds_back_into_the_same_shards(cohort: Path, tmp_path: Path) -> None:
    """Tables -> MEDS -> shards gives the shards of tables -> shards, byte for byte (files referenced by the
    path column come back as their modality's events; ids through subject_id_map.csv, values through float32)."""
    tables = _subset(cohort, tmp_path, ("clinical", "omics", "voice", "wearable"))
    write_meds(tables / "subjects.csv", tables / "events.csv", tmp_path / "meds", tables / "labels.csv")
    direct = build(tables, tmp_path / "direct")
    via = _build(tmp_path / "meds", tmp_path / "via", labels=str(tables / "labels.csv"), max_samples_per_shard=4)
    assert via.samples == direct.samples and via.modalities == direct.modalities
    assert set(via.modalities) == {"clinical", "omics", "voice", "wearable"}
    assert via.splits == direct.splits
    for f in sorted(p.name for p in (tmp_path / "direct").glob("*.tar")) + ["index.json"]:
        assert (tmp_path / "via" / f).read_bytes() == (tmp_path / "direct" / f).read_bytes(), f


def test_cli_export_then_build(cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from datamodules.shards.cli import main

    monkeypatch.setenv("OMNIMODAL_SHARD_SECRET", SECRET)
    tables = _subset(cohort, tmp_path, ("clinical",))
    s, e = str(tables / "subjects.csv"), str(tables / "events.csv")
    assert main(["export-meds", "--subjects", s, "--events", e, "--out", str(tmp_path / "m")]) == 0
    assert "MEDS export" in capsys.readouterr().out
    assert main(["export-meds", "--subjects", s, "--events", e, "--out", str(tmp_path / "m")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["--meds", str(tmp_path / "m"), "--out", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr().out
    assert "MEDS " in printed and "samples written" in printed
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "s2")])  # neither --meds nor --subjects/--events


def test_synth_writes_its_meds_export(tmp_path: Path) -> None:
    from datamodules.synthetic.cli import main

    args = ["--out", str(tmp_path), "--subjects", "3", "--modalities", "clinical", "--workers", "1", "--meds"]
    assert main(args) == 0
    cohort = read_meds(tmp_path / "meds")
    subjects = pd.read_csv(tmp_path / "subjects.csv", dtype=str)
    events = pd.read_csv(tmp_path / "events.csv", dtype={"subject_id": str})
    consenting = subjects.loc[subjects["consent"] == "true", "subject_id"]
    assert sorted(cohort.subjects["subject_id"]) == sorted(consenting)  # the original ids, via subject_id_map.csv
    assert len(cohort.events) == events["subject_id"].isin(consenting).sum()
    assert json.loads((tmp_path / "meds" / "metadata" / "dataset.json").read_text())["etl_name"] == "omnimodal"


def test_subject_ids_for_labels_beside_a_meds_dataset(simple_static_MEDS: Path, tmp_path: Path) -> None:
    """What a labels table beside a MEDS dataset must call its subjects: the MEDS id as text, or in our export
    the original id (so ACES labels, in MEDS ids, can be joined with --labels)."""
    from datamodules.meds import subject_ids

    assert subject_ids(simple_static_MEDS, [1195293, 68729]) == ["1195293", "68729"]
    subjects = pd.DataFrame({"subject_id": ["A-1", "B-2"], "birth_date": ["1950-01-01"] * 2, "sex": ["F", "M"]})
    subjects.assign(consent="true").to_csv(tmp_path / "s.csv", index=False)
    events = pd.DataFrame({"subject_id": ["B-2", "A-1"], "time": ["2010-01-01"] * 2, "modality": "clinical"})
    events.assign(code="X").to_csv(tmp_path / "e.csv", index=False)
    write_meds(tmp_path / "s.csv", tmp_path / "e.csv", tmp_path / "m")
    mapped = pd.read_csv(tmp_path / "m" / ID_MAP, dtype={"subject_id": str})
    assert subject_ids(tmp_path / "m", mapped["meds_subject_id"].tolist()[::-1]) == mapped["subject_id"].tolist()[::-1]


def test_conflicting_split_rows_reject_the_subject(tmp_path: Path) -> None:
    """A subject in two splits of subject_splits.parquet would leak between training and test: it is rejected,
    naming the MEDS file and row; an exact duplicate split row is only counted."""
    import meds
    from meds_testing_helpers.dataset import MEDSDataset

    rows = {"subject_id": [], "time": [], "code": [], "numeric_value": []}
    for i in range(3):
        for t, code in ((pd.Timestamp("1960-01-01"), "MEDS_BIRTH"), (pd.Timestamp("2010-01-01"), "HR")):
            rows["subject_id"].append(i)
            rows["time"].append(t)
            rows["code"].append(code)
            rows["numeric_value"].append(None if code != "HR" else 70.0)
    splits = pl.DataFrame({"subject_id": [0, 1, 1, 2, 2], "split": ["train", "train", "held_out", "tuning", "tuning"]})
    MEDSDataset(
        data_shards={"0": pl.DataFrame(rows)},
        dataset_metadata=meds.DatasetMetadataSchema(dataset_name="splits"),
        subject_splits=splits,
    ).write(tmp_path)
    report = _build(tmp_path, tmp_path / "out")
    (rej,) = report.rejected
    assert rej.table == "data/0.parquet" and rej.row == 3  # subject 1's MEDS_BIRTH row
    assert rej.key == subject_key("1", SECRET.encode()) and "2 different splits" in rej.reason
    assert report.meds["duplicate_split_rows"] == 1
    assert dict(report.splits) == {"train": 1, "val": 1}


def test_export_leaves_out_what_a_build_would_reject(tmp_path: Path) -> None:
    """A subject without a birth date or with a split that is not train/val/test is left out of the export with
    its rows, counted, as a build from the tables rejects it (not moved to a hash split by a later MEDS build)."""
    pd.DataFrame(
        {
            "subject_id": ["A", "B", "C"],
            "birth_date": ["1950-01-01", None, "1960-01-01"],
            "sex": ["F", "M", "F"],
            "consent": ["true"] * 3,
            "split": ["train", "train", "validation"],
        }
    ).to_csv(tmp_path / "s.csv", index=False)
    pd.DataFrame(
        {"subject_id": ["A", "B", "C"], "time": ["2010-01-01"] * 3, "modality": ["clinical"] * 3, "code": ["HR"] * 3}
    ).to_csv(tmp_path / "e.csv", index=False)
    info = write_meds(tmp_path / "s.csv", tmp_path / "e.csv", tmp_path / "meds")
    assert info.subjects == 1 and info.clinical == 1
    assert sum(v for k, v in info.skipped.items() if k.startswith("subject ")) == 2
    assert info.skipped[next(k for k in info.skipped if k.startswith("row of a subject left out"))] == 2
    data = pl.read_parquet(tmp_path / "meds" / "data" / "*.parquet")
    assert data["subject_id"].n_unique() == 1
    with pytest.raises(DataError, match=r"rows \[1, 2\]") as err:
        meds_ids(pd.Series(["7", "007"]), "subjects.csv")
    assert err.value.where == "subjects.csv"
