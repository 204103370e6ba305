"""Audio (soundfile WAV/FLAC) and video (PyAV) readers -> ``[1, n]`` float32 and ``[T, 3, H, W]`` uint8."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from datamodules.readers import read_measurement
from datamodules.schema import AudioSpec, DataError, VideoSpec

AUDIO = AudioSpec(rate_hz=16000, max_duration_s=1.0)


def tone(rate: int, seconds: float, hz: float, amp: float) -> np.ndarray:
    return amp * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize(
    "ext, rate, seconds, n_out",
    [
        (".wav", 44100, 2.0, 16000),  # downsampled, cropped to max_samples
        (".flac", 8000, 0.5, 8000),  # upsampled, shorter than max
        (".wav", 16000, 0.25, 4000),  # already at rate
    ],
)
def test_audio_stereo_to_mono_at_spec_rate(tmp_path, ext, rate, seconds, n_out):
    left, right = tone(rate, seconds, 440, 0.6), tone(rate, seconds, 440, 0.2)
    path = tmp_path / f"voice{ext}"
    sf.write(path, np.stack([left, right], axis=1), rate)
    out = read_measurement("voice", path, AUDIO)
    assert out.shape == (1, n_out) and out.dtype == np.float32
    assert abs(peak_hz(out[0], AUDIO.rate_hz) - 440) < 2.5
    np.testing.assert_allclose(np.abs(out[0, 200:-200]).max(), 0.4, atol=0.01)  # mean of the channels


def test_breath_uses_the_same_reader(tmp_path):
    sf.write(tmp_path / "b.flac", tone(8000, 0.3, 100, 0.5), 8000)
    out = read_measurement("breath", tmp_path / "b.flac", AUDIO)
    assert out.shape == (1, 4800) and abs(peak_hz(out[0], 16000) - 100) < 4


def test_empty_audio_rejected(tmp_path):
    sf.write(tmp_path / "e.wav", np.zeros((0, 2)), 16000)
    with pytest.raises(DataError, match="no samples"):
        read_measurement("voice", tmp_path / "e.wav", AUDIO)


def test_nan_audio_rejected(tmp_path):
    x = tone(16000, 0.1, 300, 0.5).astype(np.float32)
    x[10] = np.nan
    sf.write(tmp_path / "n.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match="NaN or Inf"):
        read_measurement("voice", tmp_path / "n.wav", AUDIO)


# ------------------------------------------------------------------------------------------------
# video
# ------------------------------------------------------------------------------------------------


def write_video(
    path: Path, codec: str = "libx264", n: int = 20, fps: int = 25, w: int = 64, h: int = 48, rotation: int = 0
) -> Path:
    """A black clip with a white 8x8 square in rows 4..12, moving right 2 px per frame from x = 8."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if rotation:
            s.set_display_rotation(rotation)
        for i in range(n):
            img = np.zeros((h, w, 3), np.uint8)
            img[4:12, 8 + 2 * i : 16 + 2 * i] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def square_center(frame: np.ndarray) -> np.ndarray:
    """(row, col) centroid of the bright pixels of ``[3, H, W]``."""
    lum = frame.astype(np.float32).mean(axis=0)
    return np.argwhere(lum > 128).mean(axis=0)


@pytest.mark.parametrize(
    "ext, codec, max_frames, t_out",
    [
        (".mp4", "libx264", 16, 5),  # 20 frames at 25 fps = 0.8 s -> 5 frames at 6 fps
        (".mkv", "mpeg4", 16, 5),
        (".avi", "mpeg4", 16, 5),
        (".mov", "libx264", 3, 3),  # capped at max_frames
    ],
)
def test_video_sampled_by_time_cropped_and_resized(tmp_path, ext, codec, max_frames, t_out):
    spec = VideoSpec(fps=6.0, max_frames=max_frames, size=(24, 24))
    out = read_measurement("gait", write_video(tmp_path / f"g{ext}", codec), spec)
    assert out.shape == (t_out, 3, 24, 24) and out.dtype == np.uint8
    for k in range(t_out):
        i = (25 * k) // 6  # latest input frame at or before k / 6 s (k = 4: frame 16, not the nearer 17)
        # centre crop 48x48 keeps columns 8..56 -> square spans crop columns 2i..2i+8; scale 1/2
        np.testing.assert_allclose(square_center(out[k]), [3.5, i + 1.5], atol=0.3)


def test_face_video_non_divisible_fps_and_wide_target(tmp_path):
    spec = VideoSpec(fps=8.0, max_frames=32, size=(12, 32))
    out = read_measurement("face", write_video(tmp_path / "f.mp4", n=25), spec)  # 1 s
    assert out.shape == (8, 3, 12, 32)
    # 64x48 -> crop rows to 64*12/32 = 24 (rows 12..36: the square at rows 4..12 is cut away)
    assert out.max() < 60


def test_video_display_rotation_applied(tmp_path):
    spec = VideoSpec(fps=25.0, max_frames=1, size=(64, 48))
    out = read_measurement("gait", write_video(tmp_path / "r.mp4", n=3, rotation=90), spec)
    assert out.shape == (1, 3, 64, 48)  # portrait after turning the 64x48 landscape clip
    row, col = square_center(out[0])
    assert row > 48 and col < 16  # top-left square ends bottom-left after a 90 deg anticlockwise turn


def _audio_only(path: Path, video_stream: bool) -> Path:
    with av.open(str(path), "w") as c:
        if video_stream:
            v = c.add_stream("mpeg4", rate=25)
            v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in [*a.encode(frame), *a.encode()]:
            c.mux(p)
    return path


@pytest.mark.parametrize(
    "name, video_stream, match",
    [
        ("audio_only.mp4", False, "no video stream"),
        ("no_frames.mkv", True, "no decodable frames"),
    ],
)
def test_video_without_frames(tmp_path, name, video_stream, match):
    with pytest.raises(DataError, match=match):
        read_measurement("gait", _audio_only(tmp_path / name, video_stream), VideoSpec())
