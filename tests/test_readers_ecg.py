"""ECG reader: WFDB, DICOM waveform, NumPy and CSV files -> ``[leads, samples]`` mV at the spec rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from datamodules.readers import read_measurement
from datamodules.readers.ecg import lead_key
from datamodules.schema import STANDARD_12_LEADS, DataError, WaveformSpec

SPEC = WaveformSpec(rate_hz=250, duration_s=2.0)  # standard 12 leads, 500 samples
T_OUT = np.arange(SPEC.samples) / SPEC.rate_hz
ROW = {lead: i for i, lead in enumerate(STANDARD_12_LEADS)}


def sine(fs: float, seconds: float, amp: float = 1.0, hz: float = 10.0) -> np.ndarray:
    return amp * np.sin(2 * np.pi * hz * np.arange(int(round(fs * seconds))) / fs)


def assert_sine(row: np.ndarray, amp: float, hz: float = 10.0, n: int | None = None, atol: float = 0.02) -> None:
    """``row`` follows ``amp * sin(2 pi hz t)`` at the spec rate (edges of the resampler skipped)."""
    n = n or len(row)
    expected = amp * np.sin(2 * np.pi * hz * T_OUT[:n])
    np.testing.assert_allclose(row[10 : n - 10], expected[10 : n - 10], atol=atol * max(amp, 1))


def write_dicom_ecg(path: Path, signal_uv: np.ndarray, names: list[str], fs: float, sensitivity: float) -> Path:
    """Write ``signal_uv [samples, channels]`` (uV) as a DICOM 12-lead ECG waveform with pydicom."""
    digital = np.round(signal_uv / sensitivity).astype(np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12-lead ECG Waveform Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "ECG"
    group = Dataset()
    group.MultiplexGroupLabel = "RHYTHM"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels, group.NumberOfWaveformSamples = digital.shape[1], digital.shape[0]
    group.SamplingFrequency = fs
    group.WaveformBitsAllocated, group.WaveformSampleInterpretation = 16, "SS"
    channels = []
    for k, name in enumerate(names):
        source = Dataset()
        source.CodeValue, source.CodingSchemeDesignator = f"5.6.3-9-{k + 1}", "SCPECG"
        source.CodeMeaning = name
        units = Dataset()
        units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = "uV", "UCUM", "microvolt"
        ch = Dataset()
        ch.ChannelSourceSequence = Sequence([source])
        ch.ChannelSensitivity, ch.ChannelSensitivityCorrectionFactor = sensitivity, 1
        ch.ChannelSensitivityUnitsSequence = Sequence([units])
        ch.ChannelBaseline, ch.ChannelSampleSkew, ch.WaveformBitsStored = 0, 0, 16
        channels.append(ch)
    group.ChannelDefinitionSequence = Sequence(channels)
    group.WaveformData = digital.tobytes()  # interleaved: C1S1, C2S1, ...
    ds.WaveformSequence = Sequence([group])
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    "name, key",
    [
        ("Lead I", "I"),
        ("AVR", "AVR"),
        ("aVR", "AVR"),
        ("MLII", "II"),
        ("V1 ", "V1"),
        ("Lead V1 (unipolar)", "V1"),
        ("lead_avl", "AVL"),
    ],
)
def test_lead_aliases(name, key):
    assert lead_key(name) == key


@pytest.mark.parametrize("suffix", [".hea", ".dat"])
def test_wfdb_sine_resampled_to_spec_rate_in_mv(tmp_path, suffix):
    # 3 s at 1 kHz; V1 is stored in uV; leads named the MIT-BIH way (MLII) and upper-case (AVR)
    sig = np.stack([sine(1000, 3, 1.5), sine(1000, 3, -800.0), sine(1000, 3, 0.5, hz=5)], axis=1)
    wfdb.wrsamp(
        "rec",
        fs=1000,
        units=["mV", "uV", "mV"],
        sig_name=["MLII", "V1", "AVR"],
        p_signal=sig,
        fmt=["16", "16", "16"],
        write_dir=str(tmp_path),
    )
    out = read_measurement("ecg", tmp_path / f"rec{suffix}", SPEC)
    assert out.shape == (12, 500) and out.dtype == np.float32
    assert_sine(out[ROW["II"]], 1.5)
    assert_sine(out[ROW["V1"]], -0.8)
    assert_sine(out[ROW["aVR"]], 0.5, hz=5)
    missing = [i for lead, i in ROW.items() if lead not in ("II", "V1", "aVR")]
    assert np.isnan(out[missing]).all() and not np.isnan(out[[ROW["II"], ROW["V1"], ROW["aVR"]]]).any()


def test_dicom_waveform(tmp_path):
    names = ["Lead I", "Lead II", "Lead aVR", "Lead V1"]
    amps = [1.0, 2.0, -0.5, 0.25]  # mV
    sig_uv = np.stack([sine(500, 2.5, a * 1000) for a in amps], axis=1)
    path = write_dicom_ecg(tmp_path / "ecg.dcm", sig_uv, names, fs=500, sensitivity=2.5)
    out = read_measurement("ecg", path, SPEC)
    for lead, amp in zip(["I", "II", "aVR", "V1"], amps):
        assert_sine(out[ROW[lead]], amp, atol=0.01)
    assert np.isnan(out[ROW["V6"]]).all()


@pytest.mark.parametrize("layout", ["leads_first", "samples_first"])
def test_npy_twelve_leads_default_names(tmp_path, layout):
    sig = np.stack([sine(500, 2, 0.1 * (i + 1)) for i in range(12)])  # [12, 1000]
    np.save(tmp_path / "e.npy", sig if layout == "leads_first" else sig.T)
    out = read_measurement("ecg", tmp_path / "e.npy", SPEC, {"sampling_rate": 500})
    for i in range(12):
        assert_sine(out[i], 0.1 * (i + 1))


def test_npy_named_leads_string_rate_and_zero_padding(tmp_path):
    sig = np.stack([sine(500, 1, 1.0), sine(500, 1, 2.0), sine(500, 1, 3.0)])  # 1 s: shorter than spec
    np.save(tmp_path / "e.npy", sig.T)
    out = read_measurement(
        "ecg", tmp_path / "e.npy", SPEC, {"sampling_rate": "500", "leads": "V5, ii,Lead I", "units": float("nan")}
    )
    assert_sine(out[ROW["V5"]], 1.0, n=250)
    assert_sine(out[ROW["II"]], 2.0, n=250)
    assert_sine(out[ROW["I"]], 3.0, n=250)
    assert (out[ROW["I"], 252:] == 0).all()  # zero-padded to spec.samples
    assert np.isnan(out[ROW["V1"]]).all()


def test_options_may_be_an_events_table_row(tmp_path):
    events = pd.DataFrame({"path": ["e.npy"], "sampling_rate": [500.0], "leads": [np.nan]})
    np.save(tmp_path / "e.npy", np.stack([sine(500, 2, 1.0)] * 12))
    out = read_measurement("ecg", tmp_path / "e.npy", SPEC, events.iloc[0])  # NaN leads = not given
    assert_sine(out[ROW["V6"]], 1.0)


def test_npz_with_non_integer_rate(tmp_path):
    fs = 128.5
    np.savez(tmp_path / "e.npz", signal=np.stack([sine(fs, 3, 1.2)]), fs=fs, leads=np.array(["V2"]))
    out = read_measurement("ecg", tmp_path / "e.npz", SPEC)
    assert_sine(out[ROW["V2"]], 1.2, atol=0.03)


@pytest.mark.parametrize("with_time", [True, False])
def test_csv(tmp_path, with_time):
    fs = 360
    df = pd.DataFrame({"I": sine(fs, 2, 0.7), "aVF": sine(fs, 2, -0.3), "resp": sine(fs, 2, 9.0)})
    if with_time:
        df.insert(0, "time", np.arange(len(df)) / fs)
    df.to_csv(tmp_path / "e.csv", index=False)
    out = read_measurement("ecg", tmp_path / "e.csv", SPEC, None if with_time else {"sampling_rate": 360})
    assert_sine(out[ROW["I"]], 0.7)
    assert_sine(out[ROW["aVF"]], -0.3)
    assert np.isnan(out[ROW["III"]]).all()  # "resp" is not a lead: ignored


def test_csv_without_time_needs_rate(tmp_path):
    pd.DataFrame({"I": sine(360, 1)}).to_csv(tmp_path / "e.csv", index=False)
    with pytest.raises(DataError, match="sampling rate unknown") as e:
        read_measurement("ecg", tmp_path / "e.csv", SPEC)
    assert "sampling_rate" in str(e.value)


def test_nan_inside_a_lead_rejected(tmp_path):
    sig = np.stack([sine(500, 2, 1.0) for _ in range(12)])
    sig[3, 100] = np.nan
    np.save(tmp_path / "e.npy", sig)
    with pytest.raises(DataError, match="lead 'aVR' holds NaN"):
        read_measurement("ecg", tmp_path / "e.npy", SPEC, {"sampling_rate": 500})


def test_all_nan_lead_is_missing(tmp_path):
    sig = np.stack([sine(500, 2, 1.0) for _ in range(12)])
    sig[3] = np.nan
    np.save(tmp_path / "e.npy", sig)
    out = read_measurement("ecg", tmp_path / "e.npy", SPEC, {"sampling_rate": 500})
    assert np.isnan(out[3]).all() and np.isfinite(out[[0, 1, 2, 4]]).all()


@pytest.mark.parametrize(
    "shape, options, match",
    [
        ((3, 500), {"sampling_rate": 500}, "no lead names"),
        ((3, 500), {"sampling_rate": 500, "leads": "I,II"}, "does not match its 2 lead names"),
        ((3, 500), {"sampling_rate": 500, "leads": "X,Y,Z"}, r"none of the ECG leads \['X', 'Y', 'Z'\]"),
        ((12, 500), {}, "sampling rate unknown"),
        ((12, 500), {"sampling_rate": pd.NA, "leads": float("nan")}, "sampling rate unknown"),
        ((12, 500), {"sampling_rate": "fast"}, "'fast' is not a number"),
        ((2, 2, 500), {"sampling_rate": 500, "leads": "I,II"}, "expected \\[leads, samples\\]"),
    ],
)
def test_npy_bad_inputs(tmp_path, shape, options, match):
    np.save(tmp_path / "e.npy", np.zeros(shape))
    with pytest.raises(DataError, match=match):
        read_measurement("ecg", tmp_path / "e.npy", SPEC, options)


def test_wfdb_dat_without_header(tmp_path):
    wfdb.wrsamp(
        "rec", fs=500, units=["mV"], sig_name=["I"], p_signal=sine(500, 1)[:, None], fmt=["16"], write_dir=str(tmp_path)
    )
    (tmp_path / "rec.hea").unlink()
    with pytest.raises(DataError, match="header"):
        read_measurement("ecg", tmp_path / "rec.dat", SPEC)


def test_dicom_without_waveform(tmp_path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match="no WaveformSequence"):
        read_measurement("ecg", tmp_path / "x.dcm", SPEC)
