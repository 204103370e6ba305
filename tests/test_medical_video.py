"""The ``medical_video`` modality (echocardiography cine loops): the readers on files made as they are in
practice (MP4 by PyAV, DICOM multi-frame by pydicom), the synthetic renderer (beat frequency = heart rate,
wall motion falls with the cardio state), and shards whose batches hold the loops."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import build
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from datamodules.modalities import get
from datamodules.modalities.medical_video import (
    LV_CENTER,
    ULTRASOUND_MULTIFRAME,
    echo_frames,
    echo_params,
    fractional_shortening,
)
from datamodules.readers import read_measurement
from datamodules.schema import DataError, VideoSpec, default_specs

SPEC = default_specs()["medical_video"]  # 16 fps, at most 32 frames, 64 x 64
MOD = "medical_video"


def test_declaration() -> None:
    d = get(MOD)
    assert (d.spec.fps, d.spec.max_frames, d.spec.size) == (16.0, 32, (64, 64)) and SPEC == d.spec
    assert set(d.suffixes) == {".mp4", ".mov", ".avi", ".mkv", ".webm", ".dcm"}
    assert d.default_encoder == "medical_video/conv3d" and d.render and 0.05 <= d.visit_rate <= 0.2


# ------------------------------------------------------------------------------------------------
# Files whose frames say their index: top-left block = i // 16, top-right block = i % 16 (levels 8 + 15 n)
# ------------------------------------------------------------------------------------------------


def coded(n: int, h: int, w: int, colour: bool = False) -> np.ndarray:
    """``[n, h, w, 3]`` uint8: the frame index in the top half, the bottom half grey (or red if ``colour``)."""
    out = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i, : h // 2, : w // 2] = 8 + 15 * (i // 16)
        out[i, : h // 2, w // 2 :] = 8 + 15 * (i % 16)
    out[:, h // 2 :] = (200, 30, 40) if colour else 120
    return out


def decoded_index(clip: np.ndarray) -> np.ndarray:
    """Source frame index of each output frame of ``[T, 3, H, W]`` (blocks read away from their edges)."""
    _, _, h, w = clip.shape
    g = clip.astype(np.float32).mean(1)
    hi = g[:, h // 8 : 3 * h // 8, w // 8 : 3 * w // 8].mean((1, 2))
    lo = g[:, h // 8 : 3 * h // 8, 5 * w // 8 : 7 * w // 8].mean((1, 2))
    return np.round((hi - 8) / 15).astype(int) * 16 + np.round((lo - 8) / 15).astype(int)


def expected_index(n: int, rate: float, spec: VideoSpec = SPEC) -> list[int]:
    """Output frame k = the latest source frame at or before k / fps, while inside the clip (n / rate s)."""
    ks = [k for k in range(spec.max_frames) if k / spec.fps < n / rate - 1e-6]
    return [int(np.floor(k / spec.fps * rate + 1e-6)) for k in ks]


def write_mp4(path: Path, frames: np.ndarray, rate: Fraction | int) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for img in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(s.encode())
    return path


@pytest.mark.parametrize(
    "rate, n, colour, shape",
    [
        (Fraction(30000, 1001), 40, False, (48, 64)),  # 29.97 fps, grey-looking, wide: columns cropped
        (50, 60, True, (64, 48)),  # colour, tall: rows cropped
        (30, 120, False, (112, 112)),  # 4 s: capped at max_frames (2 s at 16 fps)
    ],
    ids=["29.97fps-grey", "50fps-colour", "long-capped"],
)
def test_mp4_sampled_by_time(tmp_path: Path, rate, n: int, colour: bool, shape) -> None:
    path = write_mp4(tmp_path / "loop.mp4", coded(n, *shape, colour=colour), rate)
    out = read_measurement(MOD, path, SPEC)
    want = expected_index(n, float(rate))
    assert out.shape == (len(want), 3, 64, 64) and out.dtype == np.uint8
    assert len(want) == 32 if n == 120 else len(want) < 32
    assert decoded_index(out).tolist() == want
    bottom = out[:, :, 40:60, 8:56].astype(np.float32).mean((0, 2, 3))
    if colour:
        assert bottom[0] > 150 and bottom[0] - bottom[2] > 100  # red stays red
    else:
        assert np.ptp(bottom) < 4 and abs(bottom[0] - 120) < 6


# ------------------------------------------------------------------------------------------------
# DICOM multi-frame, as pydicom writes it
# ------------------------------------------------------------------------------------------------


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 8, **tags) -> Path:
    """``pixels`` ``[frames, rows, cols]`` or ``[frames, rows, cols, 3]`` as Ultrasound Multi-frame Image Storage."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ULTRASOUND_MULTIFRAME
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ULTRASOUND_MULTIFRAME, meta.MediaStorageSOPInstanceUID, "US"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    if tags.pop("multi_frame", True):
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[1:3]
    ds.SamplesPerPixel = 3 if pixels.ndim == 4 else 1
    if pixels.ndim == 4:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8 if bits <= 8 else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_monochrome2_with_frame_time(tmp_path: Path) -> None:
    px = coded(60, 80, 120)[..., 0]  # 50 fps (FrameTime 20 ms), 1.2 s
    out = read_measurement(MOD, write_dicom(tmp_path / "a.dcm", px, FrameTime=20), SPEC)
    want = expected_index(60, 50.0)
    assert out.shape == (len(want), 3, 64, 64) == (20, 3, 64, 64) and out.dtype == np.uint8
    assert decoded_index(out).tolist() == want
    assert (out[:, 0] == out[:, 1]).all() and (out[:, 0] == out[:, 2]).all()  # grey replicated
    assert (out[:, :, 40:] == 120).all()


def test_dicom_long_loop_capped_and_frame_time_vector(tmp_path: Path) -> None:
    px = coded(100, 64, 64)[..., 0]  # 100 frames at 25 fps = 4 s
    out = read_measurement(MOD, write_dicom(tmp_path / "a.dcm", px, FrameTime="40.0"), SPEC)
    assert decoded_index(out).tolist() == expected_index(100, 25.0) and len(out) == 32
    # irregular frame times: increments 0, 100, 50, 50, ... ms
    vector = [0.0, 100.0] + [50.0] * 18
    times = np.cumsum(vector) / 1000.0
    out = read_measurement(MOD, write_dicom(tmp_path / "b.dcm", px[:20], FrameTimeVector=vector), SPEC)
    ks = [k for k in range(32) if k / 16 < times[-1] + 0.05 - 1e-6]
    assert decoded_index(out).tolist() == [int(np.searchsorted(times, k / 16 + 1e-6, "right") - 1) for k in ks]


def test_dicom_monochrome1_inverted(tmp_path: Path) -> None:
    px = coded(20, 64, 64)[..., 0]
    out = read_measurement(MOD, write_dicom(tmp_path / "a.dcm", 255 - px, "MONOCHROME1", CineRate=25), SPEC)
    assert decoded_index(out).tolist() == expected_index(20, 25.0)
    assert (out[:, :, 40:] == 120).all()


def test_dicom_rgb_with_cine_rate(tmp_path: Path) -> None:
    px = coded(30, 64, 96, colour=True)
    out = read_measurement(MOD, write_dicom(tmp_path / "a.dcm", px, "RGB", CineRate=25), SPEC)
    assert out.shape == (20, 3, 64, 64) and decoded_index(out).tolist() == expected_index(30, 25.0)
    np.testing.assert_array_equal(out[:, :, 48, 32], np.tile([200, 30, 40], (20, 1)))


def test_dicom_ybr_full_converted_to_rgb(tmp_path: Path) -> None:
    rgb = coded(24, 64, 64, colour=True)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    out = read_measurement(MOD, write_dicom(tmp_path / "a.dcm", ybr, "YBR_FULL", RecommendedDisplayFrameRate=30), SPEC)
    assert decoded_index(out).tolist() == expected_index(24, 30.0)
    assert np.abs(out[:, :, 48, 32].astype(int) - [200, 30, 40]).max() <= 2


def test_dicom_12_bit_scaled_by_stored_range(tmp_path: Path) -> None:
    px = np.zeros((20, 64, 64), np.uint16)
    px[:, :32] = 4095
    px[:, 32:] = (np.arange(20) * 200)[:, None, None]
    out = read_measurement(MOD, write_dicom(tmp_path / "a.dcm", px, bits=12, FrameTime=40), SPEC)
    assert (out[:, :, :28] == 255).all()
    np.testing.assert_array_equal(out[:, 0, 48, 32], np.round(np.array(expected_index(20, 25.0)) * 200 * 255 / 4095))


@pytest.mark.parametrize("multi_frame", [True, False], ids=["NumberOfFrames=1", "no-NumberOfFrames"])
def test_dicom_single_frame_refused(tmp_path: Path, multi_frame: bool) -> None:
    path = write_dicom(tmp_path / "still.dcm", np.zeros((1, 32, 32), np.uint8), FrameTime=20, multi_frame=multi_frame)
    with pytest.raises(DataError, match="single-frame") as e:
        read_measurement(MOD, path, SPEC)
    assert e.value.where == str(path) and "multi-frame" in e.value.hint


def test_dicom_without_rate_needs_frame_rate_column(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "norate.dcm", coded(20, 64, 64)[..., 0])
    with pytest.raises(DataError, match="no frame rate") as e:
        read_measurement(MOD, path, SPEC)
    assert str(path) in str(e.value) and "frame_rate" in e.value.hint
    out = read_measurement(MOD, path, SPEC, {"frame_rate": 25})
    assert decoded_index(out).tolist() == expected_index(20, 25.0)
    with pytest.raises(DataError, match="frame_rate 'fast' is not a positive number"):
        read_measurement(MOD, path, SPEC, {"frame_rate": "fast"})


def test_corrupt_dicom_cannot_decode(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", coded(20, 64, 64)[..., 0], FrameTime=20)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DataError, match="cannot decode medical_video file") as e:
        read_measurement(MOD, path, SPEC)
    assert e.value.where == str(path) and "pydicom" in e.value.hint


# ------------------------------------------------------------------------------------------------
# The synthetic renderer and a cohort: heart rate in the pixels, wall motion falls with the cardio state
# ------------------------------------------------------------------------------------------------

SEED, N_SUBJECTS = 5, 8  # 11 loops (9 MP4, 2 DICOM), cardio states -0.9 .. 2.4
ANALYSIS = VideoSpec(fps=25.0, max_frames=80, size=(112, 112))  # the whole loop at the native size


def beat_bpm(clip: np.ndarray, fps: float) -> float:
    """Dominant frequency (bpm) of the mean brightness around the cavity (the wall sweeps it once a beat)."""
    cy, cx = map(int, LV_CENTER)
    x = clip[:, :, cy - 24 : cy + 25, cx - 14 : cx + 15].astype(np.float32).mean((1, 2, 3))
    x, t = x - x.mean(), np.arange(len(x)) / fps
    freqs = np.arange(0.5, 3.0, 0.005)
    power = np.abs(np.exp(-2j * np.pi * freqs[:, None] * t[None]) @ x)
    return float(freqs[int(np.argmax(power))] * 60.0)


def shortening(clip: np.ndarray) -> float:
    """Measured fractional shortening: the cavity's width along the row through its centre (M-mode)."""
    cy, cx = map(int, LV_CENTER)
    widths = []
    for frame in clip.astype(np.float32).mean(1):
        prof = np.convolve(frame[cy - 3 : cy + 4].mean(0), np.ones(3) / 3, mode="same")
        thr = 0.5 * (prof[cx - 3 : cx + 4].mean() + prof.max())
        widths.append(np.argmax(prof[cx:] > thr) + np.argmax(prof[cx::-1] > thr))
    hi, lo = np.percentile(widths, [95, 5])
    return float((hi - lo) / hi)


@pytest.fixture(scope="module")
def echo_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from datamodules.synthetic import synthesize_cohort

    out = tmp_path_factory.mktemp("echo_cohort")
    synthesize_cohort(out, n_subjects=N_SUBJECTS, seed=SEED, workers=1, modalities=[MOD, "ecg", "clinical"])
    return out


@pytest.fixture(scope="module")
def loops(echo_cohort: Path) -> pd.DataFrame:
    """The cohort's loops with their visit's hidden state and the renderer's parameters."""
    from datamodules.synthetic.render import context
    from datamodules.synthetic.state import simulate_subject

    ev = pd.read_csv(echo_cohort / "events.csv")
    st = pd.read_csv(echo_cohort / "states.csv")
    rows = ev[ev.modality == MOD].merge(st, on=["subject_id", "time"], validate="one_to_one")
    params = []
    for r in rows.itertuples():
        subject = simulate_subject(SEED, int(r.subject_id.split("-")[1]))
        params.append(echo_params(context(SEED, subject, int(r.visit), MOD, echo_cohort)))
    return rows.assign(params=params)


def test_cohort_holds_mp4_and_dicom_loops_the_reader_reads(echo_cohort: Path, loops: pd.DataFrame) -> None:
    suffixes = loops.path.str.rsplit(".", n=1).str[1]
    assert (suffixes == "mp4").sum() >= 3 and (suffixes == "dcm").sum() >= 1
    assert all(p.dicom == (s == "dcm") for p, s in zip(loops.params, suffixes))
    assert {p.fps for p in loops.params} <= {30, 50}
    for r in loops.itertuples():
        out = read_measurement(MOD, echo_cohort / r.path, SPEC)
        assert out.shape == (32, 3, 64, 64) and out.dtype == np.uint8  # 2-3 s loops fill the 2 s window
        assert (
            (out[:, 0] == out[:, 2]).all()
            if r.path.endswith(".dcm")
            else np.abs(out[:, 0].astype(int) - out[:, 2]).max() < 12
        )  # grey (MP4: chroma rounding)


def test_beat_frequency_is_the_heart_rate_and_wall_motion_falls_with_cardio(
    echo_cohort: Path, loops: pd.DataFrame
) -> None:
    measured = []
    for r in loops.itertuples():
        clip = read_measurement(MOD, echo_cohort / r.path, ANALYSIS)
        hr = r.params.heart_rate
        assert abs(beat_bpm(clip, ANALYSIS.fps) - hr) < max(4.0, 0.06 * hr), r.path
        # the heart rate model the ECG and wearable renderers share (+- 4 sd of its noise)
        assert abs(hr - (64.0 + 6.0 * r.cardio + 2.5 * r.frailty + 1.5 * r.mood)) < 10.0
        measured.append(shortening(clip))
        assert abs(measured[-1] - r.params.shortening) < 0.07, r.path
    rho = pd.Series(measured).corr(loops.cardio.reset_index(drop=True), method="spearman")
    assert rho < -0.6, (rho, measured, loops.cardio.tolist())


def test_shortening_falls_from_healthy_to_high_cardio_state(tmp_path: Path) -> None:
    from datamodules.synthetic.render import context
    from datamodules.synthetic.state import STATE_NAMES, simulate_subject

    assert fractional_shortening(-1.0) > 0.33 and fractional_shortening(3.0) < 0.18
    subject = simulate_subject(SEED, 0)
    got = {}
    for cardio in (-1.0, 3.0):
        subject.visits[0].state[STATE_NAMES.index("cardio")] = cardio
        ctx = context(SEED, subject, 0, MOD, tmp_path)
        p = echo_params(ctx)
        frames = echo_frames(ctx, p)
        assert frames.shape == (p.frames, 112, 112) and frames.dtype == np.uint8 and 60 <= p.frames <= 150
        got[cardio] = shortening(np.repeat(frames[:, None], 3, axis=1))
    assert got[-1.0] > 0.28 and got[3.0] < 0.22 and got[-1.0] - got[3.0] > 0.1, got


def test_renderer_bytes_are_deterministic(tmp_path: Path, loops: pd.DataFrame, echo_cohort: Path) -> None:
    from datamodules.modalities.medical_video import render_echo
    from datamodules.synthetic.render import context
    from datamodules.synthetic.state import simulate_subject

    for suffix in ("mp4", "dcm"):
        r = loops[loops.path.str.endswith(suffix)].iloc[0]
        subject = simulate_subject(SEED, int(r.subject_id.split("-")[1]))
        rel = render_echo(context(SEED, subject, int(r.visit), MOD, tmp_path))
        assert rel == r.path and (tmp_path / rel).read_bytes() == (echo_cohort / r.path).read_bytes()


# ------------------------------------------------------------------------------------------------
# End to end: shards -> loader batches, and the experiment overlay
# ------------------------------------------------------------------------------------------------


def test_shards_give_batches_with_medical_video(echo_cohort: Path, tmp_path: Path) -> None:
    from datamodules.datamodule import OmniDataModule

    report = build(echo_cohort, tmp_path / "shards", workers=1)
    assert not [r for r in report.rejected if r.modality == MOD], report.rejected
    assert report.modalities[MOD] >= 8  # consenting subjects' loops
    dm = OmniDataModule(tmp_path / "shards", batch_size=4, modalities=[MOD, "ecg", "clinical"])
    seen = 0
    for split in ("train", "val", "test"):
        for batch in dm.loader(split):
            assert set(batch.modalities) <= {MOD, "ecg", "clinical"}
            mb = batch.modalities.get(MOD)
            if mb is None:
                continue
            n = len(mb)
            assert tuple(mb.data.shape) == (n, 32, 3, 64, 64) and str(mb.data.dtype) == "torch.uint8"
            # a loop's windows fill the 2 s, but its last one may be a shorter tail (>= min_coverage 0.25: 8 frames)
            frames = mb.mask.sum(1)
            assert tuple(mb.mask.shape) == (n, 32) and bool((frames >= 8).all()) and bool((frames == 32).any())
            assert bool((mb.mask == (torch.arange(32)[None] < frames[:, None])).all())  # masked past the tail
            seen += n
    assert seen >= 1


def test_echo_experiment_composes() -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import omnimodal  # noqa: F401 - registers the Hydra encoder options

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="omnimodal.configs", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=echo", "model/encoder/medical_video=r3d18"])
    assert list(cfg.model.modalities) == [MOD, "ecg", "clinical"]
    assert cfg.model.encoder[MOD].name == "medical_video/r3d18"
