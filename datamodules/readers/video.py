"""Video (gait, face, medical cine loops): anything PyAV opens -> the whole clip, ``[T, 3, H, W]`` uint8 RGB at
``spec.fps``, cut by the shard builder into windows of at most ``max_frames`` (``datamodules.windows``).

Output frame ``k`` is the latest decoded frame whose presentation time (from the first frame) is
``<= k / spec.fps``; frames are produced while ``k / fps`` lies inside the clip. Each frame is turned
upright (display-matrix rotation), centre-cropped to the aspect ratio of ``spec.size = (H, W)`` and
resized with antialiased bilinear interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.schema import DataError, VideoSpec
from datamodules.windows import Stream

_EPS = 1e-6  # seconds; tolerance on timestamp comparisons


def read_video(
    path: Path, spec: VideoSpec, options: Mapping[str, Any] | None = None, max_s: float | None = None
) -> Stream:
    """Decode the whole clip (at most ``max_s`` seconds), sample at ``spec.fps`` and resize -> a stream of
    ``[T, 3, H, W]`` uint8 frames."""
    import av
    from av.video.reformatter import VideoReformatter

    where = str(path)
    rgb = VideoReformatter()  # one per clip: frame.to_ndarray(format=...) set up a converter for every frame
    out: list[np.ndarray] = []
    limit = math.inf if max_s is None else max(1, int(round(max_s * spec.fps)))
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DataError("file has no video stream", where=where, hint="give a video file (e.g. H.264 MP4)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = _declared_duration(container, stream)
        default_dt = 1.0 / float(stream.average_rate) if stream.average_rate else 1.0 / spec.fps
        start: float | None = None
        current: tuple[float, Any] | None = None  # (time from start, decoded frame)
        current_img: np.ndarray | None = None
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else (current[0] + default_dt if current else 0.0)
            start = t if start is None else start
            t -= start
            while current is not None and len(out) < limit and len(out) / spec.fps + _EPS < t:
                current_img = current_img if current_img is not None else _resize(_rgb(current[1], rgb), spec.size)
                out.append(current_img)
            if len(out) >= limit:
                break
            current, current_img = (t, frame), None
        if current is not None and len(out) < limit:  # hold the last frame until the clip ends
            last = current[1]
            dt = float(last.duration * last.time_base) if getattr(last, "duration", None) else default_dt
            img = _resize(_rgb(current[1], rgb), spec.size)
            while len(out) < limit and len(out) / spec.fps + _EPS < current[0] + dt:
                out.append(img)
    if not out:
        raise DataError(
            "video has no decodable frames",
            where=where,
            hint="check that it plays; re-encode it (e.g. ffmpeg -c:v libx264)",
        )
    shown = len(out) / spec.fps
    duration = max(shown, declared) if len(out) >= limit and declared else shown
    return Stream(np.stack(out), axis=0, rate_hz=float(spec.fps), duration_s=duration)


def _declared_duration(container: Any, stream: Any) -> float:
    """The clip's length as its container says (0 when unknown): what is past a read limit is reported."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return float(container.duration) / 1e6 if container.duration else 0.0


def _rgb(frame: Any, reformatter: Any) -> np.ndarray:
    """Decoded frame -> upright ``[H, W, 3]`` uint8 RGB (converted by ``reformatter``, an ``av`` VideoReformatter)."""
    img = reformatter.reformat(frame, format="rgb24").to_ndarray()
    quarter_turns = int(round((getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(img, k=quarter_turns)) if quarter_turns else img


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[h, w, 3]`` uint8 -> centre-crop to the aspect of ``size = (H, W)``, resize -> ``[3, H, W]`` uint8."""
    h, w = img.shape[:2]
    H, W = size
    if w * H > h * W:  # too wide: crop columns
        cw = max(1, round(h * W / H))
        img = img[:, (w - cw) // 2 : (w - cw) // 2 + cw]
    else:  # too tall: crop rows
        ch = max(1, round(w * H / W))
        img = img[(h - ch) // 2 : (h - ch) // 2 + ch]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    if tuple(x.shape[-2:]) != (H, W):
        x = F.interpolate(x, size=(H, W), mode="bilinear", antialias=True, align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8).numpy()
