"""``read_measurement``: dispatch, errors shared by all formats, and the shared helpers.

Per-format value checks live in ``test_readers_{mri,ecg,media,tables}.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from datamodules.modalities import registry
from datamodules.readers import file_suffix, fit_length, read_measurement, resample, supported
from datamodules.schema import DataError, default_specs

SPECS = default_specs()
FILE_MODALITIES = [m for m, d in registry().items() if d.has_files]


@pytest.mark.parametrize("modality", FILE_MODALITIES)
def test_missing_file(tmp_path, modality):
    path = tmp_path / f"absent{supported(modality)[0]}"
    with pytest.raises(DataError, match="file not found") as e:
        read_measurement(modality, path, SPECS[modality])
    assert str(path) in str(e.value) and "path column" in str(e.value)


@pytest.mark.parametrize(
    "modality, name",
    [
        *((m, "x.xyz") for m in FILE_MODALITIES),  # every declared reader
        ("mri", "t1.mgz"),
        ("ecg", "ecg.xml"),
        ("voice", "v.mp3"),
        ("breath", "b"),
        ("gait", "g.gif"),
        ("face", "f.wav"),
        ("wearable", "w.json"),
        ("omics", "o.npz"),
    ],
)
def test_unsupported_extension(tmp_path, modality, name):
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported") as e:
        read_measurement(modality, tmp_path / name, SPECS[modality])
    assert all(s in str(e.value) for s in supported(modality) if s.startswith("."))


def test_directory_only_for_mri(tmp_path):
    with pytest.raises(DataError, match="unsupported ecg file type '<directory"):
        read_measurement("ecg", tmp_path, SPECS["ecg"])


def test_clinical_and_unknown_modality(tmp_path):
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(DataError, match="clinical measurements have no file"):
        read_measurement("clinical", tmp_path / "x.csv", SPECS["clinical"])
    with pytest.raises(DataError, match="unknown modality 'eeg'"):
        read_measurement("eeg", tmp_path / "x.csv", SPECS["ecg"])


def test_wrong_spec_type(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((12, 100)))
    with pytest.raises(DataError, match="ecg needs a WaveformSpec, got AudioSpec"):
        read_measurement("ecg", tmp_path / "e.npy", SPECS["voice"], {"sampling_rate": 100})


def _truncated(path: Path, write, keep: int) -> Path:
    write(path)
    path.write_bytes(path.read_bytes()[:keep])
    return path


@pytest.mark.parametrize(
    "modality, name, write, keep",
    [
        ("voice", "v.flac", lambda p: sf.write(p, np.zeros(8000), 8000), 20),
        ("breath", "b.wav", lambda p: sf.write(p, np.zeros(8000), 8000), 30),
        ("gait", "g.mp4", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4000)), 4000),
        ("wearable", "w.parquet", lambda p: pd.DataFrame({"timestamp": [0.0], "steps": [1.0]}).to_parquet(p), 40),
        ("omics", "o.npy", lambda p: np.save(p, np.zeros(64)), 60),
        ("ecg", "e.npz", lambda p: np.savez(p, signal=np.zeros((12, 100)), fs=100), 100),
    ],
)
def test_corrupt_files_raise_cannot_decode(tmp_path, modality, name, write, keep):
    path = _truncated(tmp_path / name, write, keep)
    with pytest.raises(DataError, match=f"cannot decode {modality} file: \\w+") as e:
        read_measurement(modality, path, SPECS[modality])
    assert e.value.where == str(path) and e.value.hint  # names the file and says what to do


def test_own_data_errors_are_not_rewrapped(tmp_path):
    np.save(tmp_path / "e.npy", np.full((12, 100), np.nan))
    with pytest.raises(DataError) as e:
        read_measurement("ecg", tmp_path / "e.npy", SPECS["ecg"], {"sampling_rate": 100})
    assert "cannot decode" not in str(e.value) and "none of the ECG leads" in str(e.value)


@pytest.mark.parametrize(
    "name, suffix", [("a.NII.GZ", ".nii.gz"), ("x.tar.gz", ".gz"), ("rec.hea", ".hea"), ("noext", "")]
)
def test_file_suffix(name, suffix):
    assert file_suffix(name) == suffix


@pytest.mark.parametrize("orig, new", [(1000, 250), (44100, 16000), (8000, 16000), (128.5, 250), (250, 250)])
def test_resample_keeps_frequency_and_length(orig, new):
    t = np.arange(int(orig * 2)) / orig
    y = resample(np.sin(2 * np.pi * 7.0 * t)[None], orig, new)
    assert y.shape[0] == 1 and abs(y.shape[1] - 2 * new) <= 1
    ref = np.sin(2 * np.pi * 7.0 * np.arange(y.shape[1]) / new)
    np.testing.assert_allclose(y[0, 20:-20], ref[20:-20], atol=0.01)


@pytest.mark.parametrize(
    "n, fill, expected",
    [
        (2, 0.0, [1, 2]),
        (5, 0.0, [1, 2, 3, 0, 0]),
        (4, np.nan, [1, 2, 3, np.nan]),
    ],
)
def test_fit_length(n, fill, expected):
    np.testing.assert_array_equal(fit_length(np.array([1.0, 2.0, 3.0]), n, fill), expected)


def test_layer_rule_readers_never_import_encoders_or_omnimodal():
    """Every import in the readers, top-level or inside functions, stays below ``encoders``/``omnimodal``."""
    import datamodules.readers as readers

    for path in Path(readers.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not [n for n in names if n.split(".")[0] in ("encoders", "omnimodal")], (path, names)
