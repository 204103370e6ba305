"""Long recordings become windows on the timeline; the build report accounts for every second of them.

Files are written by the tools that make them in practice (pandas, wfdb, soundfile, PyAV, pydicom); the
shard builder cuts them by each modality's window policy (``datamodules.windows``).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import SECRET

from datamodules.schema import DataError, default_specs
from datamodules.shards.builder import BuildConfig, build_shards
from datamodules.windows import REASONS, Stream, WindowPolicy, cut

SPECS = default_specs()
T0 = pd.Timestamp("2024-03-01T08:00:00")
TIMED = ("wearable", "ecg", "voice", "breath", "gait", "face", "medical_video")


# ------------------------------------------------------------------------------------------------
# files, as other tools write them
# ------------------------------------------------------------------------------------------------


def wearable_csv(
    path: Path, days: float, worn: float = 1.0, shuffle: int = 0, seed: int = 0, every_s: float = 30.0
) -> Path:
    """Samples every ``every_s`` over ``days`` days (pandas), day 2 worn for only ``worn`` of its minutes."""
    rng = np.random.default_rng(seed)
    secs = np.arange(0, days * 86400, every_s)
    day = secs // 86400
    keep = (day != 2) | ((secs % 86400) < worn * 86400)
    secs = secs[keep]
    hour = (secs / 3600 + 8) % 24
    frame = pd.DataFrame(
        {
            "timestamp": (T0 + pd.to_timedelta(secs, unit="s")).strftime("%Y-%m-%dT%H:%M:%S"),
            "heart_rate": np.where((hour > 23) | (hour < 7), 55.0, 75.0) + rng.normal(0, 2, len(secs)),
            "steps": rng.poisson(np.where((hour > 23) | (hour < 7), 0.0, 20.0)),
        }
    )
    if shuffle:
        idx = np.arange(len(frame))
        idx[:shuffle] = idx[:shuffle][::-1]
        frame = frame.iloc[idx]
    frame.to_csv(path, index=False)
    return path


def holter_wfdb(path: Path, hours: float, fs: int = 250) -> Path:
    """A 2-lead record (wfdb.wrsamp, 16-bit), a beat-like 1.2 Hz rhythm."""
    import wfdb

    n = int(hours * 3600 * fs)
    t = np.arange(n) / fs
    d = np.stack([np.round(200 * np.sin(2 * np.pi * 1.2 * t)), np.round(100 * np.cos(2 * np.pi * 1.2 * t))], 1)
    wfdb.wrsamp(
        path.name,
        fs=fs,
        units=["mV", "mV"],
        sig_name=["MLII", "V5"],
        d_signal=d.astype(np.int16),
        fmt=["16", "16"],
        adc_gain=[200.0, 200.0],
        baseline=[0, 0],
        write_dir=str(path.parent),
    )
    return path.with_suffix(".hea")


def flac(path: Path, seconds: float, rate: int = 44100) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="FLAC")
    return path


def mp4(path: Path, seconds: float, fps: int = 30) -> Path:
    """A clip whose frame brightness encodes its time (whole seconds * 10), written by PyAV."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.full((48, 64, 3), int(i // fps) * 10, np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(s.encode())
    return path


def build(tmp: Path, events: list[dict], subjects: list[dict] | None = None, **kw) -> tuple[dict, list[dict]]:
    """Shards of one or more subjects from these events rows; (report.json, meta.json of every sample)."""
    subjects = subjects or [{"subject_id": "P1", "birth_date": "1960-01-01", "sex": "F", "consent": "true"}]
    pd.DataFrame(subjects).to_csv(tmp / "subjects.csv", index=False)
    pd.DataFrame(events).to_csv(tmp / "events.csv", index=False)
    cfg = BuildConfig(str(tmp / "subjects.csv"), str(tmp / "events.csv"), str(tmp / "out"), secret=SECRET, **kw)
    build_shards(cfg)
    metas = []
    for tar in sorted((tmp / "out").glob("*.tar")):
        with tarfile.open(tar) as t:
            metas += [json.loads(t.extractfile(m).read()) for m in t.getmembers() if m.name.endswith("meta.json")]
    return json.loads((tmp / "out" / "report.json").read_text()), metas


def windows_of(meta: dict, modality: str) -> list[tuple[float, dict]]:
    """(time in seconds since the first event, measurement entry) of every window of ``modality``."""
    return [
        (ev["time_days"] * 86400, m) for ev in meta["events"] for m in ev["measurements"] if m["modality"] == modality
    ]


def assert_accounted(report: dict, modality: str) -> dict:
    """Duration in the files = kept + every duration left out, exactly (to float rounding)."""
    acc = report["windows"][modality]
    assert acc["duration_s"] == pytest.approx(acc["kept_s"] + sum(acc["left_out_s"].values()), abs=1e-3)
    assert set(acc["left_out_s"]) <= set(REASONS)
    return acc


# ------------------------------------------------------------------------------------------------
# the cutting rule itself
# ------------------------------------------------------------------------------------------------


def _stream(n: int, observed: np.ndarray | None = None) -> Stream:
    return Stream(np.zeros((1, n), np.float32), axis=1, rate_hz=250.0, duration_s=n / 250.0, observed=observed, pad=0.0)


@pytest.mark.parametrize(
    "policy, n",
    [
        (WindowPolicy(), 10_000),
        (WindowPolicy(hop_s=4.0), 10_000),  # overlapping windows count once
        (WindowPolicy(hop_s=25.0), 10_000),  # gaps between windows
        (WindowPolicy(max_windows=2, select="even"), 26_000),
        (WindowPolicy(min_coverage=0.9, hop_s=7.0, max_windows=3, select="last"), 33_333),
        (WindowPolicy(length_s=3.0, hop_s=2.0, max_windows=5, select="first"), 20_000),
    ],
)
def test_every_sample_is_kept_or_left_out_under_one_reason(policy: WindowPolicy, n: int) -> None:
    observed = np.ones(n, bool)
    observed[3000:6000] = False  # a gap: low coverage where min_coverage asks for it
    windows, acc = cut(_stream(n, observed), SPECS["ecg"], policy.check("windows.ecg"), stop_s=None)
    assert acc.duration_s == pytest.approx(acc.kept_s + sum(acc.left_out_s.values()))
    assert acc.windows_kept == len(windows) >= 1
    spans = np.zeros(n, bool)
    for w in windows:
        s = int(round(w.offset_s * 250))
        spans[s : s + int(round((policy.length_s or 10.0) * 250))] = True
    assert acc.kept_s == pytest.approx(spans.sum() / 250.0)  # kept = the union of the kept windows' spans
    assert all(w.array.shape == (1, 2500) for w in windows)  # padded to the canonical length


def test_selection_and_death_and_short_recordings() -> None:
    n = 250 * 100  # 10 windows of 10 s
    even, _ = cut(_stream(n), SPECS["ecg"], WindowPolicy(max_windows=4, select="even"))
    assert [w.offset_s for w in even] == [0.0, 30.0, 60.0, 90.0]  # first and last included
    last, _ = cut(_stream(n), SPECS["ecg"], WindowPolicy(max_windows=2, select="last"))
    assert [w.offset_s for w in last] == [80.0, 90.0]
    alive, acc = cut(_stream(n), SPECS["ecg"], WindowPolicy(), stop_s=45.0)  # died 45 s in
    assert [w.offset_s for w in alive] == [0.0, 10.0, 20.0, 30.0]
    assert acc.windows_dropped == {"after_death": 6} and acc.left_out_s["after_death"] == pytest.approx(60.0)
    short, acc = cut(_stream(1000), SPECS["ecg"], WindowPolicy(min_coverage=0.9))  # 4 s < one window
    assert len(short) == 1 and short[0].coverage == 1.0 and acc.kept_s == pytest.approx(4.0)


# ------------------------------------------------------------------------------------------------
# real long files through the builder
# ------------------------------------------------------------------------------------------------


def test_14_day_wearable_becomes_day_windows_and_a_badly_worn_day_is_reported(tmp_path: Path) -> None:
    path = wearable_csv(tmp_path / "w.csv", days=14, worn=0.1)  # day 2 worn 10% of its minutes
    report, (meta,) = build(tmp_path, [{"subject_id": "P1", "time": T0.isoformat(), "modality": "wearable",
                                        "path": str(path)}])  # fmt: skip
    wins = windows_of(meta, "wearable")
    assert [round(t / 86400, 6) for t, _ in wins] == [d for d in range(14) if d != 2]  # each at its own day
    assert [m["window"] for _, m in wins] == [d for d in range(14) if d != 2]
    assert {m["recording"] for _, m in wins} == {0} and all(m["coverage"] > 0.99 for _, m in wins)
    acc = assert_accounted(report, "wearable")
    assert acc["windows_kept"] == 13 and acc["windows_dropped"] == {"low_coverage": 1}
    assert acc["duration_s"] == pytest.approx(14 * 86400, abs=60) and acc["left_out_s"]["low_coverage"] == 86400
    md = (tmp_path / "out" / "report.md").read_text()
    assert "window below min_coverage" in md and "| wearable | 1 |" in md


def test_33_hour_export_is_kept_whole_not_cut_at_24_hours(tmp_path: Path) -> None:
    path = wearable_csv(tmp_path / "w.csv", days=33 / 24)
    report, (meta,) = build(tmp_path, [{"subject_id": "P1", "time": T0.isoformat(), "modality": "wearable",
                                        "path": str(path)}])  # fmt: skip
    acc = assert_accounted(report, "wearable")
    assert acc["kept_s"] == acc["duration_s"] == pytest.approx(33 * 3600, abs=60)  # 9 h tail: 37% worn, kept
    assert len(windows_of(meta, "wearable")) == 2


@pytest.mark.slow  # wfdb.wrsamp writes a day of samples in ~15 s
def test_24_hour_holter_gives_an_evenly_spaced_sample_of_10_s_windows(tmp_path: Path) -> None:
    hea = holter_wfdb(tmp_path / "holter", hours=24)
    report, (meta,) = build(
        tmp_path, [{"subject_id": "P1", "time": T0.isoformat(), "modality": "ecg", "path": str(hea)}]
    )
    wins = windows_of(meta, "ecg")
    assert [t for t, _ in wins] == pytest.approx(np.round(np.linspace(0, 8639, 8)) * 10.0)
    acc = assert_accounted(report, "ecg")
    assert acc["duration_s"] == 86400 and acc["kept_s"] == 80
    assert acc["windows_dropped"] == {"over_max_windows": 8632}


def test_long_audio_and_video_are_sampled_and_accounted(tmp_path: Path) -> None:
    voice = flac(tmp_path / "v.flac", 60.0)
    clip = mp4(tmp_path / "g.mp4", 20.0)
    rows = [
        {"subject_id": "P1", "time": T0.isoformat(), "modality": "voice", "path": str(voice)},
        {"subject_id": "P1", "time": T0.isoformat(), "modality": "gait", "path": str(clip)},
    ]
    report, (meta,) = build(tmp_path, rows, windows={"gait": {"max_windows": 10}})
    voice_w = windows_of(meta, "voice")
    assert [t for t, _ in voice_w] == pytest.approx(np.arange(8) * 8.0)  # 8 of 15, evenly spaced
    acc = assert_accounted(report, "voice")
    assert acc["kept_s"] == pytest.approx(32.0) and acc["windows_dropped"] == {"over_max_windows": 7}
    gait = windows_of(meta, "gait")
    assert [t for t, _ in gait] == pytest.approx(np.arange(10) * 2.0)  # 10 windows of 2 s (16 frames at 8 fps)
    acc = assert_accounted(report, "gait")
    assert acc["kept_s"] == pytest.approx(20.0) and acc["windows_kept"] == 10
    with tarfile.open(next((tmp_path / "out").glob("*.tar"))) as t:  # window k shows seconds 2k and 2k + 1
        flat = np.load(io.BytesIO(t.extractfile(f"{meta['key']}.gait.npy").read()))  # every window end to end
    entry = gait[3][1]
    arr = flat[entry["offset"] : entry["offset"] + int(np.prod(entry["shape"]))].reshape(entry["shape"])
    assert arr.shape == (16, 3, 64, 64) and abs(float(arr[0].mean()) - 60) < 3 and abs(float(arr[-1].mean()) - 70) < 3


def test_every_time_based_modality_is_accounted(tmp_path: Path) -> None:
    """Duration in = kept + left out, for each of the seven time-based modalities, with defaults."""
    from test_medical_video import write_dicom

    px = np.zeros((150, 48, 64), np.uint8)  # 10 s at 15 fps
    files = {
        "wearable": wearable_csv(tmp_path / "w.csv", days=3.5, worn=0.05),
        "ecg": holter_wfdb(tmp_path / "h", hours=0.05),  # 3 min
        "voice": flac(tmp_path / "v.flac", 37.0),
        "breath": flac(tmp_path / "b.flac", 8.5, rate=8000),
        "gait": mp4(tmp_path / "g.mp4", 11.0),
        "face": mp4(tmp_path / "f.mp4", 1.5),  # shorter than one window: one instance
        "medical_video": write_dicom(tmp_path / "e.dcm", px, CineRate=15),
    }
    rows = [{"subject_id": "P1", "time": T0.isoformat(), "modality": m, "path": str(p)} for m, p in files.items()]
    report, (meta,) = build(tmp_path, rows)
    for m in TIMED:
        acc = assert_accounted(report, m)
        assert acc["recordings"] == 1 and acc["windows_kept"] == len(windows_of(meta, m)) >= 1, m
    assert report["windows"]["face"]["kept_s"] == pytest.approx(1.5)
    assert report["windows"]["breath"]["left_out_s"] == {"low_coverage": pytest.approx(0.5)}  # 2 x 4 s + a 0.5-s tail


# ------------------------------------------------------------------------------------------------
# bad input: a clear reason in the report, never a silent cut
# ------------------------------------------------------------------------------------------------


def test_odd_timestamps_are_reported_and_stop_a_strict_build(tmp_path: Path) -> None:
    path = wearable_csv(tmp_path / "w.csv", days=2, shuffle=40)
    rows = [{"subject_id": "P1", "time": T0.isoformat(), "modality": "wearable", "path": str(path)}]
    report, _ = build(tmp_path, rows)
    assert any("timestamp(s) out of order" in n and "events row 1" in n for n in report["notes"])
    with pytest.raises(DataError, match=r"events row 1.*out of order.*build without --strict"):
        build(tmp_path, rows, strict=True)


def test_recording_past_death_and_a_policy_that_keeps_nothing(tmp_path: Path) -> None:
    path = wearable_csv(tmp_path / "w.csv", days=5)
    sparse = wearable_csv(tmp_path / "sparse.csv", days=5, every_s=180.0)  # a third of the minutes
    subjects = [
        {"subject_id": "P1", "birth_date": "1960-01-01", "death_date": "2024-03-03T20:00:00", "sex": "F",
         "consent": "true"},
        {"subject_id": "P2", "birth_date": "1960-01-01", "death_date": "", "sex": "M", "consent": "true"},
    ]  # fmt: skip
    rows = [
        {"subject_id": "P1", "time": T0.isoformat(), "modality": "wearable", "path": str(path)},
        {"subject_id": "P1", "time": "2024-03-05T08:00:00", "modality": "clinical", "code": "X"},
        {"subject_id": "P2", "time": T0.isoformat(), "modality": "wearable", "path": str(sparse)},
        {"subject_id": "P2", "time": T0.isoformat(), "modality": "clinical", "code": "X"},
    ]
    report, _ = build(tmp_path, rows, subjects=subjects, windows={"wearable": {"min_coverage": 0.5}})
    reasons = {r["row"]: r["reason"] for r in report["rejected"]}
    assert reasons[2].startswith("event after death [2 days after the death date of subjects row 1")
    assert "keeps no window" in reasons[3] and "lower windows.wearable.min_coverage" in reasons[3]
    acc = assert_accounted(report, "wearable")  # P1: 2 days before death kept; P2: nothing kept, still counted
    assert acc["recordings"] == 2 and acc["windows_kept"] == 2
    assert acc["windows_dropped"] == {"after_death": 3, "low_coverage": 5}


def test_ecg_csv_without_a_time_column_names_the_fix(tmp_path: Path) -> None:
    pd.DataFrame({"I": np.zeros(5000), "II": np.ones(5000)}).to_csv(tmp_path / "e.csv", index=False)
    rows = [
        {"subject_id": "P1", "time": T0.isoformat(), "modality": "ecg", "path": str(tmp_path / "e.csv")},
        {"subject_id": "P1", "time": T0.isoformat(), "modality": "clinical", "code": "X"},
    ]
    report, _ = build(tmp_path, rows)
    (rej,) = report["rejected"]
    assert "sampling rate unknown" in rej["reason"] and "add a 'sampling_rate' column, in Hz" in rej["reason"]
    rows[0]["sampling_rate"] = 500
    report, (meta,) = build(tmp_path, rows)
    assert report["rejected"] == [] and len(windows_of(meta, "ecg")) == 1  # 10 s at 500 Hz: one window


@pytest.mark.parametrize(
    "flag, message",
    [
        ("wearable.min_coverage=2", r"windows.wearable.min_coverage = 2: expected a fraction"),
        ("ecg.select=middle", r"windows.ecg.select = 'middle': expected one of first, last, even"),
        ("ecg.max_windows=0", r"windows.ecg.max_windows = 0: expected an integer >= 1"),
        ("ecg.hop=5", r"unknown window policy field windows.ecg.hop"),
        ("omics.hop_s=5", r"windows.omics: not a time-based modality"),
        ("ecg", r"--window 'ecg' is not MODALITY.FIELD=VALUE"),
    ],
)
def test_bad_window_policies_are_refused_by_name(tmp_path: Path, flag: str, message: str) -> None:
    args = ["--subjects", "s.csv", "--events", "e.csv", "--out", "o", "--window", flag]
    proc = subprocess.run(
        [sys.executable, "-m", "datamodules.shards.cli", *args], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert re.search(message, proc.stderr), proc.stderr
