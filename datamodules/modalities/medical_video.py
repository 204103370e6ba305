"""Medical cine loops (echocardiography): anything PyAV opens, or DICOM multi-frame -> ``[T, 3, H, W]`` uint8 RGB
at a fixed fps (grayscale replicated to 3 channels, as echo models take 3-channel clips; colour Doppler keeps
its colour).

Here too: the DICOM multi-frame reader (:func:`read_cine_dicom`) and the synthetic renderer
(:func:`render_echo`: a beating left ventricle on an ultrasound sector, written as MP4 or DICOM).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..specs import DataError, VideoSpec
from ..windows import Stream
from . import BROKEN, Modality, register
from .gait import VIDEO_READERS

if TYPE_CHECKING:
    from ..synthetic.state import RenderContext

_EPS = 1e-6  # seconds; tolerance on frame-time comparisons (as the video reader)
ULTRASOUND_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"  # SOP class: Ultrasound Multi-frame Image Storage
_YBR = ("YBR_FULL", "YBR_FULL_422")
_RATE_TAGS = ("CineRate", "RecommendedDisplayFrameRate")  # frames per second

# ---------------------------------------------------------------------------------------------------
# DICOM multi-frame reader
# ---------------------------------------------------------------------------------------------------


def read_cine_dicom(
    path: Path, spec: VideoSpec, options: Mapping[str, Any] | None = None, max_s: float | None = None
) -> Stream:
    """DICOM multi-frame cine loop, whole (at most ``max_s`` seconds) -> a stream of ``[T, 3, H, W]`` uint8 RGB
    frames at ``spec.fps`` (the shard builder cuts it into windows of at most ``spec.max_frames``).

    Frame times from ``FrameTime``, ``FrameTimeVector``, ``CineRate``, ``RecommendedDisplayFrameRate``, else
    the events table's ``frame_rate`` column. Output frame ``k`` is the latest frame whose time is
    ``<= k / fps``, while ``k / fps`` lies inside the clip; frames are centre-cropped and resized as video.
    """
    import pydicom

    from datamodules.readers.video import _resize

    where = str(path)
    ds = pydicom.dcmread(str(path))
    if "PixelData" not in ds:
        raise DataError(
            "DICOM file holds no image (no Pixel Data)",
            where=where,
            hint="give the multi-frame export of the cine loop",
        )
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if n < 2:
        raise DataError(
            "single-frame DICOM image, not a cine loop",
            where=where,
            hint="export the loop as multi-frame DICOM (Ultrasound Multi-frame Image Storage) or MP4",
        )
    times, last_dt = _frame_times(ds, n, options or {}, where)
    duration = float(times[-1] + last_dt)
    limit = duration if max_s is None else min(duration, max_s)
    pick = sample_frames(times, last_dt, spec, int(np.ceil(limit * spec.fps - _EPS)))
    keep = np.unique(pick).tolist()  # decode only the frames shown
    frames = {i: _resize(img, spec.size) for i, img in zip(keep, _rgb_frames(ds, keep, where))}
    return Stream(np.stack([frames[int(i)] for i in pick]), axis=0, rate_hz=float(spec.fps), duration_s=duration)


def sample_frames(times: np.ndarray, last_dt: float, spec: VideoSpec, count: int | None = None) -> np.ndarray:
    """Indices of the source frames (times ``[n]`` s from the first, the last lasting ``last_dt``) shown at
    ``k / spec.fps`` for each output frame ``k`` inside the clip, at most ``count`` (default ``max_frames``)."""
    t = np.arange(spec.max_frames if count is None else max(1, count)) / spec.fps
    t = t[t + _EPS < times[-1] + last_dt]
    return np.searchsorted(times, t + _EPS, side="right") - 1


def _number(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) and x > 0 else None


def _frame_times(ds: Any, n: int, options: Mapping[str, Any], where: str) -> tuple[np.ndarray, float]:
    """Times of the ``n`` frames (s from the first) and the duration of the last one."""
    from datamodules.readers import option

    ms = _number(ds.get("FrameTime"))
    if ms:
        return np.arange(n) * ms / 1000.0, ms / 1000.0
    vector = ds.get("FrameTimeVector")  # ms since the previous frame; the first is 0
    if vector is not None:
        inc = np.asarray([vector] if isinstance(vector, (int, float, str)) else list(vector), dtype=float) / 1000.0
        inc = inc[1:] if len(inc) == n else inc
        if len(inc) == n - 1 and np.all(np.isfinite(inc)) and np.all(inc >= 0) and inc.sum() > 0:
            return np.concatenate([[0.0], np.cumsum(inc)]), float(inc[-1] or np.median(inc[inc > 0]))
    for tag in _RATE_TAGS:
        rate = _number(ds.get(tag))
        if rate:
            return np.arange(n) / rate, 1.0 / rate
    given = option(options, "frame_rate")
    if given is not None:
        rate = _number(given)
        if rate is None:
            raise DataError(
                f"frame_rate {given!r} is not a positive number",
                where=where,
                hint="give the loop's frames per second in the frame_rate column, e.g. 30",
            )
        return np.arange(n) / rate, 1.0 / rate
    raise DataError(
        "no frame rate: the DICOM file has no FrameTime, FrameTimeVector, CineRate or RecommendedDisplayFrameRate",
        where=where,
        hint="add a frame_rate column (frames per second) to this row of the events table",
    )


def _rgb_frames(ds: Any, indices: list[int], where: str) -> Iterator[np.ndarray]:
    """Frames ``indices`` of the pixel data, each ``[rows, cols, 3]`` uint8 RGB: MONOCHROME1 inverted, YBR
    converted, values scaled from the stored range (``BitsStored``, signed or not) to 0..255."""
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if pi not in ("MONOCHROME1", "MONOCHROME2", "RGB", *_YBR):
        raise DataError(
            f"photometric interpretation {pi!r} is not read",
            where=where,
            hint="export the loop as MONOCHROME2 (grayscale) or RGB, or as MP4",
        )
    try:
        from pydicom.pixels import iter_pixels  # pydicom 3: YBR_FULL(_422) -> RGB

        decoded: Iterable[np.ndarray] = iter_pixels(ds, indices=indices)
    except ImportError:  # pydicom 2 leaves YCbCr as it is
        from pydicom.pixel_data_handlers.util import convert_color_space

        decoded = ds.pixel_array[indices]
        decoded = convert_color_space(decoded, pi, "RGB") if pi in _YBR else decoded
    colour = pi not in ("MONOCHROME1", "MONOCHROME2")
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    for arr in decoded:
        if arr.dtype.kind not in "ui":
            raise DataError(
                f"pixel data of dtype {arr.dtype} is not read",
                where=where,
                hint="export the loop with integer pixels (8 to 16 bits)",
            )
        if arr.ndim != (3 if colour else 2) or (colour and arr.shape[-1] != 3):
            raise DataError(
                f"{pi} frames have shape {arr.shape}, expected [rows, cols{', 3' if colour else ''}]",
                where=where,
                hint="check SamplesPerPixel and PhotometricInterpretation; re-export it",
            )
        bits = int(ds.get("BitsStored", 0) or arr.dtype.itemsize * 8)
        if arr.dtype == np.uint8 and bits == 8 and pi != "MONOCHROME1":
            out = arr
        else:
            top = float(2**bits - 1)
            x = arr.astype(np.float32) + (2 ** (bits - 1) if signed else 0)  # signed: shift to 0..top
            x = top - x if pi == "MONOCHROME1" else x  # MONOCHROME1: 0 is white
            out = np.clip(np.round(x * (255.0 / top)), 0, 255).astype(np.uint8)
        yield out if colour else np.repeat(out[..., None], 3, axis=-1)


# ---------------------------------------------------------------------------------------------------
# Synthetic renderer: a beating left ventricle (apical view) on a dark ultrasound sector with speckle
# ---------------------------------------------------------------------------------------------------

ECHO_SIZE = (112, 112)  # native (H, W), as EchoNet-Dynamic's clips
ECHO_FPS = (30, 50)  # native frame rates (one per visit), never the canonical one
ECHO_SECONDS = (2.0, 3.0)
DICOM_SHARE = 1.0 / 3.0  # share of loops written as DICOM multi-frame, the rest MP4
LV_CENTER = (62.0, 56.0)  # (row, col) of the cavity's centre at native size
LV_RADII = (30.0, 16.0)  # end-diastolic cavity radii (long axis vertical, short axis)
_APEX, _HALF_ANGLE, _DEPTH = (2.0, 56.0), 0.65, 108.0  # the sector: apex (row, col), half angle (rad), depth


def fractional_shortening(cardio: float) -> float:
    """Short-axis fractional shortening for a cardio state (no noise): ~0.35 healthy, ~0.15 when high."""
    from ..synthetic.state import sigmoid

    return 0.15 + 0.21 * (1.0 - sigmoid(1.6 * (cardio - 1.2)))


@dataclass(frozen=True)
class EchoParams:
    """One visit's loop: heart rate (bpm), fractional shortening, native fps and frame count, file format."""

    heart_rate: float
    shortening: float
    fps: int
    frames: int
    dicom: bool
    phase: float
    gain: float
    center: tuple[float, float]
    scale: float


def echo_params(ctx: RenderContext) -> EchoParams:
    """The visit's parameters: the first draws of the file's generator (the heart rate first, as ECG's)."""
    from ..synthetic.render_ecg import heart_rate

    rng = ctx.rng
    hr = heart_rate(ctx)
    fs = float(np.clip(fractional_shortening(ctx.s("cardio")) + rng.normal(0.0, 0.01), 0.08, 0.45))
    fps = int(rng.choice(ECHO_FPS))
    frames = int(round(fps * rng.uniform(*ECHO_SECONDS)))
    dicom = bool(rng.random() < DICOM_SHARE)
    center = (LV_CENTER[0] + float(rng.normal(0.0, 1.0)), LV_CENTER[1] + float(rng.normal(0.0, 1.0)))
    return EchoParams(
        heart_rate=hr,
        shortening=fs,
        fps=fps,
        frames=frames,
        dicom=dicom,
        phase=float(rng.uniform(0.0, 1.0)),
        gain=float(rng.uniform(0.85, 1.15)),
        center=center,
        scale=float(rng.uniform(0.94, 1.06)),
    )


def _inside(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """Anti-aliased coverage (0..1, about 1 px wide edge) of the ellipse with radii ``ry, rx``."""
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip(0.5 - (d - 1.0) * np.sqrt(ry * rx), 0.0, 1.0)


def echo_frames(ctx: RenderContext, p: EchoParams) -> np.ndarray:
    """``[T, H, W]`` uint8 grayscale: the cavity's short axis shortens by ``p.shortening`` (the long axis by
    half that) once per beat, the wall thickening as it contracts; Rayleigh speckle, depth attenuation."""
    rng = ctx.rng
    h, w = ECHO_SIZE
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    r = np.hypot(yy - _APEX[0], xx - _APEX[1])
    sector = (r < _DEPTH) & (np.abs(np.arctan2(xx - _APEX[1], yy - _APEX[0])) < _HALF_ANGLE)
    atten = np.exp(-r / 160.0)
    tissue = 38.0 * atten
    static = rng.rayleigh(np.sqrt(2.0 / np.pi), (h, w))  # mean 1: speckle that stays with tissue
    cy, cx = p.center
    ry0, rx0 = LV_RADII[0] * p.scale, LV_RADII[1] * p.scale
    out = np.empty((p.frames, h, w), np.uint8)
    for i in range(p.frames):
        phase = (p.phase + i / p.fps * p.heart_rate / 60.0) % 1.0
        c = 0.5 * (1.0 - np.cos(2.0 * np.pi * phase))  # 0 at end-diastole, 1 at end-systole
        ry, rx = ry0 * (1.0 - 0.5 * p.shortening * c), rx0 * (1.0 - p.shortening * c)
        wall = 5.5 * (1.0 + 1.5 * p.shortening * c)
        cavity = _inside(yy, xx, cy, cx, ry, rx)
        myo = _inside(yy, xx, cy, cx, ry + wall, rx + wall) - cavity
        img = tissue * (1.0 - cavity - myo) + 165.0 * atten * myo + 5.0 * cavity
        speckle = 0.6 * static + 0.4 * rng.rayleigh(np.sqrt(2.0 / np.pi), (h, w))
        img = p.gain * img * speckle + rng.normal(0.0, 2.0, (h, w))
        out[i] = np.clip(np.round(np.where(sector, img, 0.0)), 0, 255).astype(np.uint8)
    return out


def _uid(rng: np.random.Generator) -> str:
    """A DICOM UID from the file's generator (``2.25.<128-bit integer>``): the same files give the same UIDs."""
    return "2.25." + str(int.from_bytes(rng.bytes(16), "big"))


def write_cine_dicom(path: Path, frames: np.ndarray, fps: float, ctx: RenderContext) -> None:
    """Write ``frames [T, H, W]`` uint8 as Ultrasound Multi-frame Image Storage (MONOCHROME2, explicit VR
    little endian) with ``FrameTime``; UIDs from ``ctx.rng``, dates from the visit."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    study, series, sop = _uid(ctx.rng), _uid(ctx.rng), _uid(ctx.rng)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ULTRASOUND_MULTIFRAME, sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "2.25.1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = ULTRASOUND_MULTIFRAME, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.PatientID = "US", ctx.subject.subject_id
    ds.StudyDate = ds.ContentDate = ctx.visit.time.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = ctx.visit.time.strftime("%H%M%S")
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.NumberOfFrames, ds.FrameIncrementPointer = len(frames), 0x00181063  # -> FrameTime
    ds.FrameTime = f"{1000.0 / fps:.6g}"
    ds.CineRate = int(round(fps))
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def render_echo(ctx: RenderContext) -> str:
    """Write this visit's loop (``vNN_medical_video.mp4``, or ``.dcm`` for about a third); return its path."""
    p = echo_params(ctx)
    frames = echo_frames(ctx, p)
    if p.dicom:
        rel, path = ctx.target("dcm")
        write_cine_dicom(path, frames, p.fps, ctx)
    else:
        from ..synthetic.render_video import write_mp4

        rel, path = ctx.target("mp4")
        write_mp4(path, np.repeat(frames[..., None], 3, axis=-1), p.fps)
    return rel


def _render_params() -> dict:
    return {
        "fps": list(ECHO_FPS),
        "size": ECHO_SIZE,
        "duration_s": list(ECHO_SECONDS),
        "dicom_share": DICOM_SHARE,
        "formats": ["mp4", "dcm (ultrasound multi-frame, MONOCHROME2)"],
    }


_SELF = "datamodules.modalities.medical_video"
MEDICAL_VIDEO = register(
    Modality(
        name="medical_video",
        order=65,
        spec=VideoSpec(fps=16.0, max_frames=32, size=(64, 64)),
        default_encoder="medical_video/conv3d",
        readers={**VIDEO_READERS, ".dcm": f"{_SELF}:read_cine_dicom"},
        decode_hint=BROKEN + "check that it plays (ffprobe) or opens with pydicom.dcmread, and re-export it "
        "(H.264 MP4, or DICOM multi-frame)",
        visit_rate=0.10,
        render=f"{_SELF}:render_echo",
        render_params=_render_params,
        preload=("av", "pydicom"),
        description="medical cine loops: echocardiography (MP4 and other containers, DICOM multi-frame)",
    )
)
