"""Shards built in parts (``--part I/N``, one per SLURM array task) and merged (``omnimodal-shard merge``): the
same bytes as a one-machine build, and every way a set of parts can be wrong named, with what to do."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import test_meds
from conftest import SECRET

from datamodules.shards.cli import main
from datamodules.shards.format import subject_key
from datamodules.shards.parts import part_of

meds_dataset = test_meds.generated  # tests/test_meds.py's MEDS dataset (40 subjects), a fixture here too


def digests(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path) -> sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _args(cohort: Path, out: Path) -> list[str]:
    """The arguments of the session's ``shards`` build (conftest.build) on the command line."""
    tables = [f"--{t}={cohort / f'{t}.csv'}" for t in ("subjects", "events", "labels")]
    return [*tables, f"--out={out}", "--max-samples-per-shard=4"]


def test_parts_merged_are_the_one_machine_build_byte_for_byte(
    cohort: Path, shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMNIMODAL_SHARD_SECRET", SECRET)
    out = tmp_path / "shards"
    (tmp_path / "part2.yaml").write_text("part: 2/2\nworkers: 2\n")  # the config file's key, as a job might give it
    assert main([*_args(cohort, out), "--part", "1/2", "--workers", "2"]) == 0
    assert "part 1/2: wrote" in capsys.readouterr().out
    assert main([*_args(cohort, out), "--config", str(tmp_path / "part2.yaml")]) == 0
    parts = {p.name: json.loads((p / "part.json").read_text()) for p in (out / "parts").iterdir()}
    assert sorted(parts) == ["part-1-of-2", "part-2-of-2"] and all(m["subjects"] for m in parts.values())
    keys = [[s["key"] for s in parts[f"part-{i}-of-2"]["subjects"]] for i in (1, 2)]
    assert keys[0] + keys[1] == sorted(keys[0] + keys[1]) and all(part_of(k, 2) == 1 for k in keys[0])
    blob = b"".join(p.read_bytes() for p in (out / "parts").glob("*/part.json"))  # the tars: as a build's
    subjects = pd.read_csv(cohort / "subjects.csv", dtype=str)
    assert not [s for s in [*subjects["subject_id"], *subjects["birth_date"]] if s.encode() in blob]  # keys only

    assert main(["merge", str(out)]) == 0
    assert "merged 2 parts: wrote 23 samples" in capsys.readouterr().out
    assert not (out / "parts").exists()  # removed once merged
    assert main(["merge", str(out)]) == 2 and "index.json is there: merged already?" in capsys.readouterr().err
    assert digests(out) == digests(shards)  # every tar, index.json, report.json and report.md
    merged, one = (json.loads((d / "report.json").read_text()) for d in (out, shards))
    counts = ("subjects_in_table", "samples", "splits", "withdrawn_consent", "no_valid_events", "rejected")
    assert {k: merged[k] for k in counts} == {k: one[k] for k in counts}


# ---------------------------------------------------------------------------------------------
# Bad input: a one-line error (exit 2) naming the part folder or the setting, and what to do.


def _tables(d: Path, n: int = 8) -> list[str]:
    """Clinical-only tables of ``n`` subjects (a build of a second), and the build's arguments."""
    d.mkdir(parents=True, exist_ok=True)
    ids = [f"P{i}" for i in range(n)]
    pd.DataFrame({"subject_id": ids, "birth_date": "1960-01-01", "sex": "F", "consent": "true"}).to_csv(
        d / "subjects.csv", index=False
    )
    pd.DataFrame({"subject_id": ids, "time": "2020-01-01", "modality": "clinical", "code": "ICD10:I10"}).to_csv(
        d / "events.csv", index=False
    )
    return [f"--subjects={d / 'subjects.csv'}", f"--events={d / 'events.csv'}", f"--out={d / 'out'}"]


def _two_parts(d: Path, args: list[str], second: list[str] = ()) -> Path:
    """Parts 1/2 and 2/2 built (``second``: the second part's extra arguments); the ``parts`` folder."""
    assert main([*args, "--part", "1/2"]) == 0
    assert main([*args, "--part", "2/2", *second]) == 0
    return d / "out" / "parts"


def _other_events(d: Path) -> None:
    ev = pd.read_csv(d / "events.csv")
    ev.loc[0, "time"] = "2021-06-01"
    ev.to_csv(d / "events.csv", index=False)


def _truncate(parts: Path) -> None:
    tar = next(parts.glob("part-*-of-2/*.tar"))
    tar.write_bytes(tar.read_bytes()[:1024])


#: case -> (make the parts from the tables folder and the arguments (None: no parts), what stderr must say)
MERGE_CASES: dict[str, tuple[Callable[[Path, list[str]], None] | None, str]] = {
    "no parts": (None, r"out/parts: no part folders \(part-I-of-N\) to merge\. build the parts first"),
    "a part missing": (
        lambda d, a: main([*a, "--part", "1/2"]),
        r"1 of the 2 parts missing: part-2-of-2\. build them .* SLURM array task\(s\) 1\)",
    ),
    "parts of two builds": (
        lambda d, a: (_two_parts(d, a), main([*a, "--part", "3/3"])),
        r"parts of 2 builds with different N \(part-1-of-2, part-3-of-3, \.\.\.\)\. remove the part folders",
    ),
    "a part unfinished": (
        lambda d, a: (_two_parts(d, a) / "part-2-of-2" / "part.json").unlink(),
        r"part-2-of-2: no part\.json: the part's build did not finish .* SLURM array task 1\)",
    ),
    "a copy of another part": (
        lambda d, a: shutil.copy(_two_parts(d, a) / "part-1-of-2" / "part.json", d / "out/parts/part-2-of-2"),
        r"part-2-of-2: holds part 1/2 \(its part\.json\), not 2/2: a copy of another part",
    ),
    "another secret": (
        lambda d, a: _two_parts(d, a, ["--config", str(_write(d / "s.yaml", "secret: another-secret-0123456789"))]),
        r"part-2-of-2: built with another pseudonymisation secret than part-1-of-2\. rebuild the parts that differ",
    ),
    "other settings": (
        lambda d, a: _two_parts(d, a, ["--max-samples-per-shard", "3", "--spec", "ecg.rate_hz=100"]),
        r"part-2-of-2: built with other settings \(max_samples_per_shard, specs\) than part-1-of-2",
    ),
    "other tables": (
        lambda d, a: (main([*a, "--part", "1/2"]), _other_events(d), main([*a, "--part", "2/2"])),
        r"part-2-of-2: built with another events table than part-1-of-2",
    ),
    "a part's shard truncated": (
        lambda d, a: _truncate(_two_parts(d, a)),
        r"part-\d-of-2: \w+-000000\.tar: shard is 1024 bytes, part\.json lists \d+: it is truncated",
    ),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(MERGE_CASES))
def test_merge_refuses_parts_that_are_not_one_build(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMNIMODAL_SHARD_SECRET", SECRET)
    make, message = MERGE_CASES[case]
    args = _tables(tmp_path)
    if make:
        make(tmp_path, args)
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1, err
    assert not (tmp_path / "out" / "index.json").exists()  # nothing a loader could open
    assert make is None or (tmp_path / "out" / "parts").is_dir()  # the parts are kept for the fix


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["--part", "0/2"], r"the command line: part '0/2' is out of range: I must be from 1 to N\. from a SLURM"),
        (["--part", "3/2"], r"part '3/2' is out of range"),
        (["--part", "1/0"], r"part '1/0' is out of range"),
        (["--part", "1-2"], r"the command line: part '1-2' is not I/N\. e\.g\. --part 1/4"),
        (["--config", "CFG:part: 5/4"], r"c\.yaml: part '5/4' is out of range"),
        (["--config", "CFG:part: 2"], r"c\.yaml: part = 2 is a int, expected str or NoneType"),
    ],
)
def test_bad_part_is_refused_naming_it(
    given: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMNIMODAL_SHARD_SECRET", SECRET)
    if given[1].startswith("CFG:"):
        given = [given[0], str(_write(tmp_path / "c.yaml", given[1][4:]))]
    assert main([*_tables(tmp_path), *given]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_parts_split_the_key_space_evenly_in_key_order() -> None:
    keys = sorted(subject_key(f"S{i}", SECRET.encode()) for i in range(4000))
    parts = [part_of(k, 4) for k in keys]
    assert parts == sorted(parts)  # contiguous ranges: merging is concatenating the parts in order
    assert all(abs(parts.count(i) - 1000) < 120 for i in range(1, 5))


def test_parts_of_a_meds_build_merge_to_its_one_machine_build(meds_dataset: Path, tmp_path: Path) -> None:
    from datamodules.shards.builder import BuildConfig, build_shards
    from datamodules.shards.parts import build_part, merge_parts

    def build(out: Path, part: str | None = None) -> None:
        cfg = BuildConfig(meds=str(meds_dataset), out=str(out), secret=SECRET, max_samples_per_shard=5, part=part)
        (build_part if part else build_shards)(cfg)

    build(tmp_path / "one")
    for i in (1, 2, 3):
        build(tmp_path / "parts", f"{i}/3")
    report, n = merge_parts(tmp_path / "parts")
    assert n == 3 and report.meds and digests(tmp_path / "parts") == digests(tmp_path / "one")
