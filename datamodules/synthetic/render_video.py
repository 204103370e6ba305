"""Video renderers: a walking stick figure (gait) and a drawn face (face), written as MP4 via PyAV.

Frames are drawn with numpy distance fields (no drawing library). Encoding is single-threaded with
the bitexact flags, so the same frames give the same bytes.
"""

from __future__ import annotations

import colorsys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .state import RenderContext, sigmoid

GAIT_SIZE, GAIT_FPS, GAIT_SECONDS = (96, 128), 25, 2.4
FACE_SIZE, FACE_FPS, FACE_SECONDS = (96, 96), 30, 2.0
VIDEO_CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


#: x264 pinned to one thread and no lookahead or slice threads, whatever the FFmpeg/PyAV defaults (PyAV asks
#: for slice threads and FFmpeg for as many threads as cores unless told otherwise), and ``cpu-independent``: on
#: an AVX-512 machine x264's default routines gave a different bitstream for the same frames in about one build
#: in five (measured: 4 of 22 four-person cohorts), now 0 of 20; the golden losses moved with it
X264_PARAMS = "threads=1:lookahead-threads=1:sliced-threads=0:sync-lookahead=0:cpu-independent=1"


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode ``frames [T, H, W, 3]`` uint8 RGB as H.264 (or MPEG-4 part 2) yuv420p MP4: one thread, bitexact,
    every setting that could follow the machine or library defaults given explicitly, and frame times set
    (``pts = index``) rather than left to the wrapper, so the same frames give the same bytes."""
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(VIDEO_CODEC, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        ctx = stream.codec_context
        ctx.flags |= av.codec.context.Flags.bitexact
        ctx.thread_count, ctx.thread_type = 1, "NONE"
        if VIDEO_CODEC == "libx264":
            ctx.options = {"preset": "veryfast", "crf": "26", "x264-params": X264_PARAMS}
        for i, planes in enumerate(rgb_to_yuv420p(frames)):
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """``[T, H, W, 3]`` RGB -> ``[T, H * 3 // 2, W]`` packed I420 planes (BT.601, limited range)."""
    t, h, w, _ = frames.shape
    rgb = frames.astype(np.float32)
    y = 0.257 * rgb[..., 0] + 0.504 * rgb[..., 1] + 0.098 * rgb[..., 2] + 16.0
    sub = 0.25 * (rgb[:, 0::2, 0::2] + rgb[:, 1::2, 0::2] + rgb[:, 0::2, 1::2] + rgb[:, 1::2, 1::2])
    u = -0.148 * sub[..., 0] - 0.291 * sub[..., 1] + 0.439 * sub[..., 2] + 128.0
    v = 0.439 * sub[..., 0] - 0.368 * sub[..., 1] - 0.071 * sub[..., 2] + 128.0
    chroma = np.stack([u, v], 1).reshape(t, h // 2, w)  # U plane, then V plane
    return np.clip(np.round(np.concatenate([y, chroma], 1)), 0, 255).astype(np.uint8)


def _crop(img: np.ndarray, y0: float, y1: float, x0: float, x1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A view of ``img`` over the (clipped) box and its pixel coordinates (column and row vectors)."""
    h, w = img.shape[:2]
    r0, r1 = min(max(int(np.floor(y0)), 0), h), min(max(int(np.ceil(y1)) + 1, 0), h)
    c0, c1 = min(max(int(np.floor(x0)), 0), w), min(max(int(np.ceil(x1)) + 1, 0), w)
    yy = np.arange(r0, r1, dtype=np.float32)[:, None]
    xx = np.arange(c0, c1, dtype=np.float32)[None, :]
    return img[r0:r1, c0:c1], yy, xx


def _draw_segments(img: np.ndarray, seg: np.ndarray, width: float, color: np.ndarray | float) -> None:
    """Paint pixels within ``width`` of any segment ``seg [S, 4]`` = (x0, y0, x1, y1), working only
    inside the segments' bounding box."""
    view, yy, xx = _crop(
        img,
        seg[:, [1, 3]].min() - width,
        seg[:, [1, 3]].max() + width,
        seg[:, [0, 2]].min() - width,
        seg[:, [0, 2]].max() + width,
    )
    if view.size == 0:
        return
    ax, ay, bx, by = (seg[:, k, None, None] for k in range(4))  # [S, 1, 1]
    abx, aby = bx - ax, by - ay
    t = np.clip(((xx - ax) * abx + (yy - ay) * aby) / np.maximum(abx * abx + aby * aby, 1e-6), 0.0, 1.0)
    d2 = ((xx - ax - t * abx) ** 2 + (yy - ay - t * aby) ** 2).min(0)
    view[d2 <= width * width] = color


def _fill_ellipse(img: np.ndarray, cy: float, cx: float, ry: float, rx: float, color: np.ndarray | float) -> None:
    if ry <= 0.05 or rx <= 0.05:
        return
    view, yy, xx = _crop(img, cy - ry, cy + ry, cx - rx, cx + rx)
    view[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = color


def _rgb(hue: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue, sat, val)) * 255.0


def _limb(x: float, y: float, angle: float, length: float) -> tuple[float, float]:
    return x + length * np.sin(angle), y + length * np.cos(angle)


def gait_frames(ctx: RenderContext) -> np.ndarray:
    """A figure crossing the frame; cadence, step length, arm swing and left/right asymmetry
    follow the frailty and neuro states."""
    rng, tr = ctx.rng, ctx.subject.traits
    frail, neuro = ctx.s("frailty"), ctx.s("neuro")
    cadence = float(np.clip(1.9 - 0.18 * frail - 0.12 * neuro + rng.normal(0, 0.05), 0.9, 2.5))  # steps/s
    step_px = float(np.clip(15.0 - 2.0 * frail - 1.0 * neuro + rng.normal(0, 0.5), 6.0, 20.0))
    asym = float(np.clip(0.05 + 0.45 * sigmoid(1.5 * (neuro - 1.5)) + rng.normal(0, 0.02), 0.0, 0.6))
    arm = 0.45 * (1.0 - 0.7 * sigmoid(1.5 * (neuro - 1.0)))
    direction = 1.0 if tr["direction"] else -1.0
    h, w = GAIT_SIZE
    n = int(GAIT_FPS * GAIT_SECONDS)
    bg = np.empty((h, w, 3), np.float32)
    bg[:] = [205, 210, 215]
    bg[76:] = [150, 140, 125]
    color = _rgb(tr["hue"], 0.6, 0.55)
    frames = np.empty((n, h, w, 3), np.uint8)
    phase0 = rng.uniform(0, 2 * np.pi)
    for i in range(n):
        t = i / GAIT_FPS
        psi = phase0 + np.pi * cadence * t
        x = w / 2 + direction * cadence * step_px * (t - GAIT_SECONDS / 2)
        hip_y = 50 + 1.5 * np.cos(2 * psi)
        segs = [(x, hip_y, x, hip_y - 20)]  # trunk
        for side, amp in ((0.0, 0.5), (np.pi, 0.5 * (1.0 - asym))):
            th = direction * amp * np.sin(psi + side)
            kx, ky = _limb(x, hip_y, th, 13)
            fx, fy = _limb(kx, ky, th - direction * 0.7 * max(0.0, np.sin(psi + side + 1.2)), 13)
            ex, ey = _limb(x, hip_y - 19, -direction * arm * np.sin(psi + side), 11)
            segs += [(x, hip_y, kx, ky), (kx, ky, fx, fy), (x, hip_y - 19, ex, ey)]
        img = bg.copy()
        _draw_segments(img, np.array(segs, np.float32), 2.2, color)
        _fill_ellipse(img, hip_y - 27, x, 5.5, 5.5, color)
        frames[i] = img.astype(np.uint8)
    return frames


def face_frames(ctx: RenderContext) -> np.ndarray:
    """A face whose smile, brow, blink rate and facial mobility follow the mood and neuro states."""
    rng, tr = ctx.rng, ctx.subject.traits
    mood, neuro = ctx.s("mood"), ctx.s("neuro")
    smile = float(np.clip(0.9 - 0.55 * mood - 0.2 * neuro + rng.normal(0, 0.1), -1.5, 1.5))
    mobility = float(np.exp(-0.35 * max(neuro, 0.0)))
    blink_rate = float(np.clip(20.0 * mobility + 3.0 * mood, 4.0, 40.0)) / 60.0  # per second
    n = int(FACE_FPS * FACE_SECONDS)
    blinks = np.cumsum(rng.exponential(1.0 / blink_rate, 8)) - rng.uniform(0, 1.0 / blink_rate)
    h, w = FACE_SIZE
    skin = _rgb(0.07, 0.35 + 0.3 * tr["skin"], 0.95 - 0.4 * tr["skin"])
    bg = np.empty((h, w, 3), np.float32)
    bg[:] = _rgb(tr["hue"], 0.15, 0.85)
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        t = i / FACE_FPS
        dx, dy = mobility * 1.5 * np.sin(2 * np.pi * 0.4 * t), 0.8 * np.sin(2 * np.pi * 0.25 * t)
        cx, cy = 48 + dx, 50 + dy
        img = bg.copy()
        _fill_ellipse(img, cy, cx, 38, 30, skin)
        closing = np.clip(1.0 - np.abs(t - blinks) / 0.08, 0.0, 1.0).max()
        for side in (-1, 1):
            ex = cx + side * 12
            _fill_ellipse(img, cy - 10, ex, 4.5 * (1.0 - 0.95 * closing), 6.5, 250.0)
            _fill_ellipse(img, cy - 10, ex, 2.5 * (1.0 - closing), 2.5, 30.0)
            brow = 0.25 * mood * side
            _draw_segments(
                img, np.array([[ex - 7, cy - 19 - brow * 5, ex + 7, cy - 19 + brow * 5]], np.float32), 1.2, 60.0
            )
        talk = mobility * 2.0 * max(0.0, np.sin(2 * np.pi * 3.0 * t))
        view, my, mx = _crop(img, cy + 6, cy + 28, cx - 12, cx + 12)
        bend = 1.0 - ((mx - cx) / 12.0) ** 2  # mouth: a parabola per lip
        upper = cy + 16 - smile * 6 * bend
        view[(bend >= 0) & ((np.abs(my - upper) <= 1.4) | (np.abs(my - upper - talk * bend) <= 1.4))] = [150, 40, 50]
        frames[i] = img.astype(np.uint8)
    return frames


def render_gait(ctx: RenderContext) -> str:
    rel, path = ctx.target("mp4")
    write_mp4(path, gait_frames(ctx), GAIT_FPS)
    return rel


def render_face(ctx: RenderContext) -> str:
    rel, path = ctx.target("mp4")
    write_mp4(path, face_frames(ctx), FACE_FPS)
    return rel
