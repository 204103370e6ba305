"""Wearable and omics readers: CSV / Parquet / NumPy tables written with pandas and numpy."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from datamodules.readers import read_measurement
from datamodules.readers.omics import read_omics
from datamodules.schema import DataError, OmicsSpec, WearableSpec, validate_canonical

WEAR = WearableSpec(channels=("heart_rate", "steps", "skin_temp"), window_minutes=6, sum_channels=("steps",))
NAN = np.nan

# samples from 08:00:30 (minute 0 = 08:00); minute 2 has no sample (gap); minute 3 has steps only
ROWS = [
    ("2024-03-01T08:00:30", 60.0, 5.0),
    ("2024-03-01T08:00:50", 70.0, 3.0),
    ("2024-03-01T08:01:10", 80.0, 10.0),
    ("2024-03-01T08:03:05", NAN, 2.0),
    ("2024-03-01T08:04:59", 100.0, NAN),
    ("2024-03-01T08:04:01", 90.0, 1.0),
    ("2024-03-01T08:09:00", 55.0, 4.0),  # beyond the 6-minute window
]
EXPECTED = np.array(
    [
        [65.0, 80.0, NAN, NAN, 95.0, NAN],  # heart_rate: per-minute mean
        [8.0, 10.0, NAN, 2.0, 1.0, NAN],  # steps: per-minute sum
        [NAN] * 6,  # skin_temp: not in the file
    ],
    dtype=np.float32,
)


def wearable_table(time: str = "iso") -> pd.DataFrame:
    df = pd.DataFrame(ROWS, columns=["timestamp", "heart_rate", "steps"])
    df["battery"] = 0.5  # not a spec channel: ignored
    if time == "datetime":
        df["timestamp"] = pd.to_datetime(df["timestamp"])
    elif time == "seconds":  # seconds from the start of recording (start = 08:00:30)
        df["timestamp"] = (pd.to_datetime(df["timestamp"]) - pd.Timestamp("2024-03-01T08:00:30")).dt.total_seconds()
    return df.sample(frac=1.0, random_state=0)  # unsorted on purpose


def write(df: pd.DataFrame, path: Path) -> Path:
    df.to_parquet(path, index=False) if path.suffix == ".parquet" else df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("ext, time", [(".csv", "iso"), (".parquet", "iso"), (".parquet", "datetime")])
def test_wearable_bins_per_minute_with_gaps(tmp_path, ext, time):
    out = read_measurement("wearable", write(wearable_table(time), tmp_path / f"w{ext}"), WEAR)
    assert out.shape == (3, 6) and out.dtype == np.float32
    np.testing.assert_array_equal(out, EXPECTED)


def test_wearable_numeric_seconds(tmp_path):
    # seconds from the start (08:00:30 = 0 s): samples at 0, 20, 40, 155, 269, 211, 510 s
    out = read_measurement("wearable", write(wearable_table("seconds"), tmp_path / "w.csv"), WEAR)
    np.testing.assert_array_equal(out[0], [70.0, NAN, NAN, 90.0, 100.0, NAN])
    np.testing.assert_array_equal(out[1], [18.0, NAN, 2.0, 1.0, NAN, NAN])


def test_wearable_pads_and_crops_the_window(tmp_path):
    spec = WearableSpec(channels=("heart_rate",), window_minutes=3, sum_channels=())
    out = read_measurement("wearable", write(wearable_table(), tmp_path / "w.csv"), spec)
    np.testing.assert_array_equal(out, [[65.0, 80.0, NAN]])
    spec = WearableSpec(channels=("heart_rate",), window_minutes=20, sum_channels=())
    out = read_measurement("wearable", write(wearable_table(), tmp_path / "w.csv"), spec)
    np.testing.assert_array_equal(out[0, 9], 55.0)
    assert np.isnan(out[0, 10:]).all()


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda df: df.rename(columns={"timestamp": "time"}), r"no 'timestamp' column \(columns: \['time'"),
        (lambda df: df.assign(timestamp=["not a time"] + list(df.timestamp[1:])), "unparseable timestamp"),
        (lambda df: df.assign(heart_rate=[np.inf] + list(df.heart_rate[1:])), "'heart_rate' holds Inf"),
        (lambda df: df.drop(columns=["heart_rate", "steps"]), "none of the channels"),
    ],
)
def test_wearable_bad_tables(tmp_path, change, match):
    with pytest.raises(DataError, match=match):
        read_measurement("wearable", write(change(wearable_table()), tmp_path / "w.csv"), WEAR)


def test_wearable_beyond_float16_is_refused_unless_stored_as_float32(tmp_path):
    path = write(wearable_table().assign(steps=70000.0), tmp_path / "w.csv")  # a counter, not per-minute counts
    with pytest.raises(DataError, match=r"w.csv: wearable array holds a value of magnitude 140000, beyond float16"):
        read_measurement("wearable", path, WEAR)
    out = read_measurement("wearable", path, dataclasses.replace(WEAR, storage="float32"))
    assert np.nanmax(out) == 140000.0 and WEAR.storage_dtype == WEAR.batch_dtype == "float16"


@pytest.mark.parametrize("value, kept", [(65519.0, True), (-65519.0, True), (65520.0, False), (-65520.0, False)])
def test_float16_storage_refuses_exactly_what_would_become_inf(value: float, kept: bool) -> None:
    array = EXPECTED.copy()
    array[0, 0] = value
    if kept:  # rounds to +-65504 when stored
        assert validate_canonical("wearable", WEAR, array) is array and np.float16(value) == np.sign(value) * 65504
    else:
        assert np.isinf(np.float16(value))
        with pytest.raises(DataError, match=r"here: wearable array holds a value of magnitude 65520"):
            validate_canonical("wearable", WEAR, array, where="here")


# ------------------------------------------------------------------------------------------------
# omics
# ------------------------------------------------------------------------------------------------

OMICS = OmicsSpec(features=("rs1", "rs2", "GENE1", "GENE2"))


def omics_file(tmp_path: Path, layout: str, ext: str, values: dict[str, float]) -> Path:
    path = tmp_path / f"o_{layout}{ext}"
    if layout == "long":
        df = pd.DataFrame({"feature_id": list(values), "value": list(values.values())})
    else:
        df = pd.DataFrame([values])
    return write(df, path)


@pytest.mark.parametrize("layout", ["long", "wide"])
@pytest.mark.parametrize("ext", [".csv", ".parquet"])
def test_omics_tables_on_panel_order(tmp_path, layout, ext):
    path = omics_file(tmp_path, layout, ext, {"GENE2": 4.5, "rs1": 2.0, "other": 1.0, "rs2": NAN})
    arr, notes = read_omics(path, OMICS)
    np.testing.assert_array_equal(arr, np.array([2.0, NAN, NAN, 4.5], np.float32))
    assert len(notes) == 1 and notes[0].startswith("1 omics feature(s) not on the panel")
    with pytest.warns(UserWarning, match=r"o_.*: 1 omics feature\(s\) not on the panel"):
        out = read_measurement("omics", path, OMICS)
    np.testing.assert_array_equal(out, arr)


def test_omics_no_warning_when_all_on_panel(tmp_path):
    path = omics_file(tmp_path, "long", ".csv", {"rs1": 0.0, "rs2": 1.0, "GENE1": 2.0, "GENE2": 3.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_measurement("omics", path, OMICS)
    np.testing.assert_array_equal(out, [0.0, 1.0, 2.0, 3.0])


def test_omics_npy(tmp_path):
    np.save(tmp_path / "o.npy", np.array([1.0, NAN, 3.0, 4.0]))
    np.testing.assert_array_equal(read_measurement("omics", tmp_path / "o.npy", OMICS), [1.0, NAN, 3.0, 4.0])


@pytest.mark.parametrize("ext", [".csv", ".parquet"])
@pytest.mark.parametrize(
    "feature, value",
    [
        ("gene_id", "expression"),
        ("rsid", "dosage"),
        (" Feature ", "VALUE "),  # any case, surrounding spaces
        ("Probe", "Count"),
        ("snp", "value"),
        ("variant", "dosage"),
        ("gene", "expression"),
        ("feature", "value"),
    ],
)
def test_omics_long_tables_by_column_names(tmp_path, ext, feature, value):
    df = pd.DataFrame(
        {
            "sample": "S1",  # other columns are ignored, text or not
            feature: ["GENE2", " rs1 ", "other", "rs2", None],  # None + NaN: an empty row, skipped
            value: [4.5, 2.0, 1.0, NAN, NAN],
            "unit": "TPM",
        }
    )
    arr, notes = read_omics(write(df, tmp_path / f"o{ext}"), OMICS)
    np.testing.assert_array_equal(arr, np.array([2.0, NAN, NAN, 4.5], np.float32))
    assert len(notes) == 1 and notes[0].startswith("1 omics feature(s) not on the panel")


def test_omics_duplicates_with_equal_values_are_kept_once(tmp_path):
    long = pd.DataFrame({"rsid": ["rs1", "rs2", "rs1", "x", "x"], "dosage": ["1", "2", "1.0", "a", "b"]})
    (tmp_path / "w.csv").write_text("rs1,rs2,rs1\n1,2,1.0\n")  # pandas would rename the second rs1
    for path in (write(long, tmp_path / "l.csv"), write(long, tmp_path / "l.parquet"), tmp_path / "w.csv"):
        arr, _ = read_omics(path, OMICS)  # "x" is off the panel: its differing values are ignored
        np.testing.assert_array_equal(arr, [1.0, 2.0, NAN, NAN])


def omics_refusal_cases() -> dict[str, tuple[str, Any, str]]:
    """name -> (file name, a DataFrame to write with pandas, an array for np.save or the file's text, what the
    reason must say)."""
    long = {"feature_id": ["rs1", "rs2"], "value": [1.0, 2.0]}
    return {
        "short .npy": (
            "o.npy",
            np.array([1.0, 2.0, 3.0]),
            r"shape \(3,\), expected \(4,\) in the panel's feature order",
        ),
        "Inf": ("l.csv", pd.DataFrame({"feature_id": ["rs1", "rs2"], "value": [np.inf, 1.0]}), "hold Inf"),
        "nothing on the panel": (
            "l.csv",
            pd.DataFrame({"feature_id": ["other", "rs2"], "value": [1.0, NAN]}),
            "none of the 4 panel features",
        ),
        "text value": (
            "l.csv",
            pd.DataFrame({"feature_id": ["rs2", "rs1"], "value": [1.0, "high"]}),
            r"'rs1' has non-numeric value 'high' \(line 3\)",
        ),
        "text value, wide": ("w.parquet", pd.DataFrame([{"rs1": 1.0, "rs2": "high"}]), r"'high' \(column 2\)"),
        "duplicate, long": (
            "l.csv",
            pd.DataFrame({"feature_id": ["rs1", "rs2", "rs1"], "value": [1, 2, 3]}),
            r"duplicate omics feature ids \['rs1'\] with different values \(rs1: '1' \(line 2\), '3' \(line 4\)\)",
        ),
        "duplicate, long Parquet": (
            "l.parquet",
            pd.DataFrame({"feature_id": ["rs1", "rs2", "rs1"], "value": [1.0, 2.0, NAN]}),  # empty is a value here
            r"\['rs1'\] with different values \(rs1: 1.0 \(row 1\), nan \(row 3\)\)",
        ),
        "duplicate, wide": ("w.csv", "rs1,rs2,rs1\n1,2,3\n", r"\['rs1'\] with different values .*\(column 3\)"),
        "feature id missing": (
            "l.csv",
            pd.DataFrame({"feature_id": ["rs1", None], "value": [1.0, 3.0]}),
            "line 3 has value '3.0' but no feature id",
        ),
        "wide, 2 rows": (
            "w.csv",
            pd.DataFrame({"rs1": [1, 2], "rs2": [3, 4]}),
            r"not recognised: no feature and value columns, and 2 rows where a wide table has 1 \(columns: rs1, rs2\)",
        ),
        "no value column": (
            "l.parquet",
            pd.DataFrame({"gene_id": ["GENE1", "GENE2"], "tpm": [1.0, 2.0]}),
            "a feature column 'gene_id' but no value column",
        ),
        "no value column, 1 row": (
            "l.csv",
            pd.DataFrame({"gene_id": ["GENE1"], "tpm": [1.0]}),
            "a feature column 'gene_id' but no value column",
        ),
        "no feature column": (
            "l.csv",
            pd.DataFrame({"name": ["rs1", "rs2"], "Value": [1.0, 2.0]}),
            "a value column 'Value' but no feature column",
        ),
        "two feature columns": (
            "l.csv",
            pd.DataFrame({"gene": ["A", "B"], "gene_id": ["GENE1", "GENE2"], "expression": [1.0, 2.0]}),
            r"several feature columns \['gene', 'gene_id'\]",
        ),
        "two value columns": ("l.csv", pd.DataFrame({**long, "count": [3, 4]}), r"several value columns"),
    }


@pytest.mark.parametrize("case", list(omics_refusal_cases()))
def test_omics_refusals_say_what_to_do(tmp_path, case):
    name, content, match = omics_refusal_cases()[case]
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        write(content, path)
    with pytest.raises(DataError, match=match) as e:
        read_measurement("omics", path, OMICS)
    assert e.value.where == str(path) and e.value.hint.strip()
    if "layout not recognised" in e.value.reason:  # the hint lists both layouts and every accepted name
        from datamodules.readers.omics import FEATURE_COLUMNS, VALUE_COLUMNS

        assert "one sample per file" in e.value.hint and "wide table (one row" in e.value.hint
        assert all(n in e.value.hint for n in (*FEATURE_COLUMNS, *VALUE_COLUMNS))


# ---------------------------------------------------------------------------------------------
# Times in the subjects / events / labels tables (datamodules.tables): ISO 8601 or a stated format, never guessed.


def test_table_times_are_iso_8601_or_the_stated_format() -> None:
    from datamodules.tables import parse_times, time_problem

    cells = pd.Series(
        [
            "2011-03-04",
            "2011-03-04T12:30",
            "2011-03-04 12:30:00.25",
            "2011-03-04T12:30Z",
            "2011-03-04T12:30+01:00",
            "03/04/05",
            "12:30",
            "",
            None,
            "yesterday",
            "2011-13-45",
        ]
    )
    got = parse_times(cells)
    want = ["2011-03-04 00:00", "2011-03-04 12:30", "2011-03-04 12:30:00.25", "2011-03-04 12:30", "2011-03-04 11:30"]
    assert got[:5].tolist() == [pd.Timestamp(w) for w in want]  # an offset is converted to UTC
    assert got[5:].isna().all()  # ambiguous day/month, no date, empty, words, impossible dates: refused
    stated = parse_times(cells, "%d/%m/%y")
    assert stated[5] == pd.Timestamp("2005-04-03") and stated[6:].isna().all()
    assert time_problem("") == "time is missing"
    assert "accepted: ISO 8601" in time_problem("03/04/05") and "--time-format" in time_problem("03/04/05")
    with pytest.raises(DataError, match="'%Q' is not a strftime format"):
        parse_times(cells, "%Q")
