"""Shard builder: contents, pseudonymisation, determinism, consent, and every bad-input case."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import SECRET, build

from datamodules.schema import MODALITIES, DataError, default_specs
from datamodules.shards.format import load_index, subject_key, verify_shards


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.iterdir()) if p.is_file())


def test_shards_hold_every_modality_and_match_the_index(cohort: Path, shards: Path) -> None:
    index = load_index(shards)
    report = json.loads((shards / "report.json").read_text())
    assert set(report["modalities"]) == set(MODALITIES)
    assert verify_shards(shards) == []
    n_in_tars = 0
    for split, info in index["splits"].items():
        for s in info["shards"]:
            assert s["name"].startswith(f"{split}-") and s["name"].endswith(".tar")
            with tarfile.open(shards / s["name"]) as tar:
                metas = [m for m in tar.getnames() if m.endswith(".meta.json")]
                assert len(metas) == s["samples"] <= 4
                n_in_tars += len(metas)
                meta = json.loads(tar.extractfile(metas[0]).read())
                for name, inv in meta["inventory"].items():  # members are decoded canonical arrays
                    arr = np.load(io.BytesIO(tar.extractfile(f"{meta['key']}.{name}").read()))
                    assert list(arr.shape) == inv["shape"] and str(arr.dtype) == inv["dtype"]
    subjects = pd.read_csv(cohort / "subjects.csv")
    withdrawn = subjects[subjects["consent"].astype(str).str.lower() == "false"]
    assert n_in_tars == report["samples"] == len(subjects) - len(withdrawn) - len(report["no_valid_events"])
    assert sorted(report["withdrawn_consent"]) == sorted(
        subject_key(s, SECRET.encode()) for s in withdrawn["subject_id"]
    )


def test_no_raw_identifier_or_date_leaves_the_builder(cohort: Path, shards: Path) -> None:
    subjects = pd.read_csv(cohort / "subjects.csv", dtype=str)
    blob = _all_bytes(shards)
    for sid, birth in zip(subjects["subject_id"], subjects["birth_date"]):
        assert sid.encode() not in blob
        assert birth.encode() not in blob
    events = pd.read_csv(cohort / "events.csv", dtype=str)
    assert events["time"].iloc[0][:10].encode() not in blob  # no calendar dates either


def test_rebuild_is_byte_identical_whatever_the_worker_count(cohort: Path, shards: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build(cohort, again, workers=1)  # the session's shards were built with 2 workers
    assert _all_bytes(again) == _all_bytes(shards)


def test_keys_depend_on_the_secret() -> None:
    a, b = subject_key("S1", b"secret-one-0123456789"), subject_key("S1", b"secret-two-0123456789")
    assert a != b and len(a) == 24 and int(a, 16) >= 0 and "S1" not in a


def test_missing_or_weak_secret_is_refused(cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNIMODAL_SHARD_SECRET", raising=False)
    with pytest.raises(DataError, match="OMNIMODAL_SHARD_SECRET"):
        build(cohort, tmp_path / "x", secret=None)
    with pytest.raises(DataError, match="shorter than 16"):
        build(cohort, tmp_path / "x", secret="short")


def test_withdrawn_consent_removes_subject_at_next_build(cohort: Path, tmp_path: Path) -> None:
    subjects = pd.read_csv(cohort / "subjects.csv", dtype=str)
    consenting = subjects[subjects["consent"].str.lower() == "true"]["subject_id"].iloc[:3].tolist()
    local = tmp_path / "cohort"
    local.mkdir()
    events = pd.read_csv(cohort / "events.csv", dtype=str)
    events = events[events["subject_id"].isin(consenting)]
    events["path"] = [str(cohort / p) if isinstance(p, str) else p for p in events["path"]]
    events.to_csv(local / "events.csv", index=False)
    pd.read_csv(cohort / "labels.csv", dtype=str).to_csv(local / "labels.csv", index=False)
    subjects = subjects[subjects["subject_id"].isin(consenting)]
    subjects.to_csv(local / "subjects.csv", index=False)
    key = subject_key(consenting[0], SECRET.encode())
    build(local, tmp_path / "before")
    assert key.encode() in b"".join(p.read_bytes() for p in (tmp_path / "before").glob("*.tar"))
    subjects.loc[subjects["subject_id"] == consenting[0], "consent"] = "false"  # the subject withdraws
    subjects.to_csv(local / "subjects.csv", index=False)
    report = build(local, tmp_path / "after")
    assert key in report.withdrawn and report.samples == 2
    assert key.encode() not in b"".join(p.read_bytes() for p in (tmp_path / "after").glob("*.tar"))
    assert key in (tmp_path / "after" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# Bad input: each row is rejected with its reason, or stops the build in strict mode.


@pytest.fixture()
def bad_cohort(tmp_path: Path) -> Path:
    """Tables with one good subject and one bad row per case, files written with real libraries."""
    d = tmp_path / "bad"
    (d / "f").mkdir(parents=True)
    rate = 250
    t = np.arange(10 * rate) / rate
    good = np.stack([np.sin(2 * np.pi * (1 + i) * t) for i in range(12)]).astype(np.float32)
    np.save(d / "f/good_ecg.npy", good)
    nan = good.copy()
    nan[3, 100:110] = np.nan
    np.save(d / "f/nan_ecg.npy", nan)
    np.save(d / "f/short_omics.npy", np.zeros(5, np.float32))
    np.save(d / "f/adc_ecg.npy", good * 2e5)  # raw ADC counts, no gain applied: beyond float16's range
    sf.write(d / "f/voice.flac", 0.1 * np.sin(2 * np.pi * 220 * np.arange(8000) / 8000), 8000)
    data = (d / "f/voice.flac").read_bytes()
    (d / "f/truncated.flac").write_bytes(data[: len(data) // 3])
    pd.DataFrame(
        {
            "subject_id": ["A", "B", "B", "C"],
            "birth_date": ["1960-01-01", "1970-05-05", "1970-05-05", "1950-01-01"],
            "sex": ["F", "M", "M", "F"],
            "consent": ["true", "true", "true", "true"],
        }
    ).to_csv(d / "subjects.csv", index=False)
    rows = [
        ("A", "2020-01-01", "ecg", "f/good_ecg.npy", "", "", ""),  # 1 ok
        ("A", "2020-01-01", "clinical", "", "ICD10:I10", "", ""),  # 2 ok
        ("A", "2020-02-01", "ecg", "f/nan_ecg.npy", "", "", ""),  # 3 NaN samples
        ("A", "2020-03-01", "voice", "f/truncated.flac", "", "", ""),  # 4 undecodable
        ("A", "2020-04-01", "omics", "f/short_omics.npy", "", "", ""),  # 5 wrong shape
        ("A", "2020-05-01", "smell", "f/good_ecg.npy", "", "", ""),  # 6 unknown modality
        ("A", "2020-06-01", "voice", "f/missing.flac", "", "", ""),  # 7 missing file
        ("A", "1950-06-01", "clinical", "", "ICD10:Z00", "", ""),  # 8 before birth
        ("A", "not a date", "clinical", "", "ICD10:Z00", "", ""),  # 9 bad time
        ("B", "2020-01-01", "clinical", "", "ICD10:I10", "", ""),  # 10 duplicate subject
        ("Z", "2020-01-01", "clinical", "", "ICD10:I10", "", ""),  # 11 unknown subject
        ("A", "2020-01-01", "clinical", "", "ICD10:I10", "", ""),  # 12 duplicate row
        ("C", "2020-01-01", "voice", "f/voice.flac", "", "", ""),  # 13 ok
        ("C", "2020-02-01", "ecg", "f/adc_ecg.npy", "", "", ""),  # 14 beyond float16 (ok stored as float32)
    ]
    pd.DataFrame(
        rows, columns=["subject_id", "time", "modality", "path", "code", "numeric_value", "sampling_rate"]
    ).assign(sampling_rate=250).to_csv(d / "events.csv", index=False)
    pd.DataFrame(
        {"subject_id": ["A", "A"], "name": ["disease", "disease"], "time": ["2021-01-01", ""], "value": [1, 0]}
    ).to_csv(d / "labels.csv", index=False)
    return d


EXPECTED = {
    ("events", 3): "NaN or Inf",
    ("events", 4): "cannot decode",
    ("events", 5): "has shape (5,), expected (64,)",
    ("events", 6): "unknown modality 'smell'",
    ("events", 7): "file not found",
    ("events", 8): "event before birth",
    ("events", 9): "not an ISO 8601 date",
    ("subjects", 2): "duplicate subject_id",
    ("subjects", 3): "duplicate subject_id",
    ("events", 11): "not in the subjects table",
    ("events", 12): "duplicate event row",
    ("labels", 2): "duplicate label",
    ("events", 14): "beyond float16's 65504, which its spec stores",
}


def test_bad_rows_are_rejected_with_reasons(bad_cohort: Path, tmp_path: Path) -> None:
    report = build(bad_cohort, tmp_path / "out", split_fractions=(1, 0, 0))
    got = {(r.table, r.row): r.reason for r in report.rejected}
    for where, reason in EXPECTED.items():
        assert where in got, f"{where} not rejected; rejected: {got}"
        assert reason in got[where], (where, got[where])
    assert set(got) == set(EXPECTED), f"unexpected rejections: {set(got) - set(EXPECTED)}"
    assert report.samples == 2 and report.modalities == {"ecg": 1, "clinical": 1, "voice": 1}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "event before birth" in md and "| events | 8 |" in md
    assert str(bad_cohort) not in md and "missing.flac" not in md  # paths (which may hold ids) are scrubbed
    for raw in (b'"A"', b'"B"', b'"C"'):
        assert raw not in (tmp_path / "out" / "report.json").read_bytes()


def test_ecg_stored_as_float32_where_float16_cannot_hold_it(bad_cohort: Path, tmp_path: Path) -> None:
    from datamodules.collate import Collator
    from datamodules.loader import ShardDataset

    report = build(bad_cohort, tmp_path / "default", split_fractions=(1, 0, 0))
    hint = {r.reason for r in report.rejected if r.row == 14}.pop()
    assert "--spec ecg.storage=float32" in hint
    out = tmp_path / "f32"
    report = build(bad_cohort, out, split_fractions=(1, 0, 0), specs={"ecg": {"storage": "float32"}})
    assert (("events", 14) not in {(r.table, r.row) for r in report.rejected}) and report.modalities["ecg"] == 2

    def batch(specs: dict | None = None) -> dict[str, torch.Tensor]:
        ds = ShardDataset(out, "train")
        tls = [tl for tl in (ds.decode(x, 0) for x in ds.raw_samples(0)) if tl is not None]
        return {m: b.data for m, b in Collator(specs or ds.specs, ds.index["clinical_codes"])(tls).modalities.items()}

    assert batch()["ecg"].dtype == torch.float32 and batch()["ecg"].nan_to_num().abs().max() > 1e5
    ecg = batch(default_specs())["ecg"]  # a release's float16 specs over these shards: never narrowed (no Inf)
    assert ecg.dtype == torch.float32 and ecg.isinf().sum() == 0 and ecg.nan_to_num().abs().max() > 1e5
    index = json.loads((out / "index.json").read_text())
    assert index["specs"]["ecg"]["storage"] == "float32" and index["specs"]["wearable"]["storage"] == "float16"
    del index["specs"]["ecg"]["storage"]  # shards written before the field: their float32 ECG loads as it was
    (out / "index.json").write_text(json.dumps(index))
    assert batch()["ecg"].dtype == torch.float32
    with pytest.raises(DataError, match="storage = 'bfloat16' is not one of"):
        build(bad_cohort, tmp_path / "bad", specs={"ecg": {"storage": "bfloat16"}})


def test_strict_mode_stops_at_first_bad_row(bad_cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"subjects row 2, subject key [0-9a-f]{24}: duplicate subject_id"):
        build(bad_cohort, tmp_path / "out", strict=True)


def test_missing_column_names_the_table(bad_cohort: Path, tmp_path: Path) -> None:
    pd.read_csv(bad_cohort / "subjects.csv").drop(columns=["consent"]).to_csv(bad_cohort / "subjects.csv", index=False)
    with pytest.raises(DataError, match=r"subjects.csv: missing column\(s\) \['consent'\]"):
        build(bad_cohort, tmp_path / "out")


def test_cli_builds_and_reports(
    bad_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from datamodules.shards.cli import main

    monkeypatch.setenv("OMNIMODAL_SHARD_SECRET", SECRET)
    args = [
        "--subjects",
        str(bad_cohort / "subjects.csv"),
        "--events",
        str(bad_cohort / "events.csv"),
        "--labels",
        str(bad_cohort / "labels.csv"),
        "--workers",
        "1",
    ]
    assert main([*args, "--out", str(tmp_path / "o"), "--spec", "voice.rate_hz=8000"]) == 0
    out = capsys.readouterr().out
    assert "samples written: 2" in out and "rejected rows: 13" in out and "event before birth: 1" in out
    assert load_index(tmp_path / "o")["specs"]["voice"]["rate_hz"] == 8000
    assert main([*args, "--out", str(tmp_path / "p"), "--strict"]) == 2
    assert "duplicate subject_id" in capsys.readouterr().err
    monkeypatch.delenv("OMNIMODAL_SHARD_SECRET")
    assert main([*args, "--out", str(tmp_path / "q")]) == 2
    assert "OMNIMODAL_SHARD_SECRET" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Bad input on the command line: a non-zero exit naming the table, row or key; nothing is guessed.


def _tiny(
    d: Path, subjects: list[tuple[str, str]] | None = None, events: list[tuple[str, str]] | None = None
) -> list[str]:
    """Tables of clinical rows only (``(subject_id, birth_date)``, ``(subject_id, time)``) and the CLI's arguments."""
    d.mkdir(parents=True, exist_ok=True)
    subjects = [("A", "1960-01-01"), ("B", "1970-05-05")] if subjects is None else subjects
    if events is None:
        events = [("A", "2020-01-01"), ("A", "2020-02-01T12:30"), ("B", "2021-03-04 08:00:00")]
    pd.DataFrame(subjects, columns=["subject_id", "birth_date"]).assign(sex="F", consent="true").to_csv(
        d / "subjects.csv", index=False
    )
    pd.DataFrame(events, columns=["subject_id", "time"]).assign(modality="clinical", code="ICD10:I10").to_csv(
        d / "events.csv", index=False
    )
    return ["--subjects", str(d / "subjects.csv"), "--events", str(d / "events.csv"), "--out", str(d / "out")]


def _header_only(d: Path, name: str) -> None:
    (d / name).write_text((d / name).read_text().splitlines()[0] + "\n")


BAD_INPUT = {  # case: (edit of the tiny tables, extra arguments, what stderr must name)
    "subjects header only": (lambda d: _header_only(d, "subjects.csv"), [], r"subjects.csv: the table has no rows"),
    "events file empty": (lambda d: (d / "events.csv").write_text(""), [], r"events.csv: the table is empty"),
    "subjects file missing": (lambda d: (d / "subjects.csv").unlink(), [], r"subjects.csv: table not found"),
    "every row rejected": (
        lambda d: _tiny(d, events=[("A", "yesterday"), ("B", "")]),
        [],
        r"0 samples written: of 2 subjects, .* 2 have no valid event; 2 rows were rejected"
        r".*report.md lists",
    ),
    "ambiguous day/month": (
        lambda d: _tiny(d, events=[("A", "2020-01-01"), ("A", "03/04/05")]),
        ["--strict"],
        r"events row 2, subject key [0-9a-f]{24}, clinical: time is not an ISO 8601 date"
        r".*accepted:",
    ),
    "a time without a date": (
        lambda d: _tiny(d, events=[("A", "12:30")]),
        ["--strict"],
        r"events row 1, .*not an ISO 8601",
    ),
    "month 13": (lambda d: _tiny(d, events=[("A", "2011-13-45")]), ["--strict"], r"events row 1, .*not an ISO 8601"),
    "birth in the future": (
        lambda d: _tiny(d, subjects=[("A", "2999-01-01"), ("B", "1970-05-05")]),
        ["--strict"],
        r"subjects row 1, subject key .*: birth date is in the future",
    ),
    "birth before 1900": (
        lambda d: _tiny(d, subjects=[("A", "1960-01-01"), ("B", "1850-05-05")]),
        ["--strict"],
        r"subjects row 2, .*birth date is before 1900",
    ),
    "event before birth": (
        lambda d: _tiny(d, subjects=[("A", "2020-01-15"), ("B", "1970-05-05")]),
        ["--strict"],
        r"events row 1, .*event before birth \[14 days before the birth date of subjects row 1",
    ),
    "spec value of the wrong type": (None, ["--spec", "ecg.rate_hz=abc"], r"spec ecg.rate_hz = 'abc' is a str"),
    "spec field unknown": (None, ["--spec", "ecg.rate=500"], r"spec ecg: unknown field 'rate'"),
    "spec modality unknown": (None, ["--spec", "smell.rate_hz=5"], r"unknown modality \['smell'\]"),
    "config spec of the wrong type": (
        lambda d: (d / "b.yaml").write_text("specs:\n  voice: {max_duration_s: long}\n"),
        ["--config", "b.yaml"],
        r"b.yaml: spec voice.max_duration_s = 'long' is a str",
    ),
    "config value of the wrong type": (
        lambda d: (d / "b.yaml").write_text("workers: two\n"),
        ["--config", "b.yaml"],
        r"b.yaml: workers = 'two' is a str, expected int",
    ),
    "bad time format": (
        lambda d: _tiny(d, events=[("A", "03/04/05")]),
        ["--time-format", "%Q"],
        r"time format '%Q' is not a strftime format",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_non_zero_naming_it(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from datamodules.shards.cli import main

    monkeypatch.setenv("OMNIMODAL_SHARD_SECRET", SECRET)
    monkeypatch.chdir(tmp_path)
    edit, extra, message = BAD_INPUT[case]
    args = _tiny(tmp_path)
    if edit:
        edit(tmp_path)
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "index.json").exists()  # nothing a loader could train on


def test_times_are_iso_or_in_the_stated_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from datamodules.shards.cli import main

    monkeypatch.setenv("OMNIMODAL_SHARD_SECRET", SECRET)
    rows = [
        ("A", "2011-03-04"),
        ("A", "2011-03-04T12:30Z"),
        ("A", "2011-03-05 12:30:00.5+01:00"),
        ("A", "03/04/11"),
        ("A", "12:30"),
        ("B", "2012-01-01"),
    ]
    args = _tiny(tmp_path, events=rows)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "rejected rows: 2" in out and "time is not an ISO 8601 date or datetime: 2 (first: events row 4)" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [(r["row"], r["reason"].split(" [")[0]) for r in report["rejected"]] == [
        (4, "time is not an ISO 8601 date or datetime"),
        (5, "time is not an ISO 8601 date or datetime"),
    ]
    assert main([*args, "--time-format", "%d/%m/%y"]) == 0  # now row 4 is 3 April 2011; "12:30" still has no date
    assert "rejected rows: 1" in capsys.readouterr().out
    index = load_index(tmp_path / "out")
    assert sum(info["samples"] for info in index["splits"].values()) == 2


def test_verify_passes_good_shards_and_names_a_bad_one(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datamodules.shards.cli import main

    assert main(["verify", str(shards)]) == 0
    n = sum(info["samples"] for info in load_index(shards)["splits"].values())
    assert f"OK; {n} samples passed every check" in capsys.readouterr().out
    root = tmp_path / "s"
    shutil.copytree(shards, root)
    index = load_index(root)
    index["splits"]["val"]["shards"][0]["sha256"] = "0" * 64  # an edited index: the loader alone would not see it
    (root / "index.json").write_text(json.dumps(index))
    (root / index["splits"]["train"]["shards"][1]["name"]).unlink()
    assert main(["verify", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"{index['splits']['val']['shards'][0]['name']}: shard's sha256 differs" in err
    assert f"{index['splits']['train']['shards'][1]['name']}: shard listed in index.json is missing" in err
    assert main(["verify", str(tmp_path / "nothing")]) == 2 and "shard index not found" in capsys.readouterr().err
