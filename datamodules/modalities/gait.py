"""Gait video: anything PyAV opens (MP4, MOV, AVI, MKV, WebM) -> ``[T, 3, H, W]`` uint8 RGB at a fixed fps."""

from ..specs import VideoSpec
from . import BROKEN, Modality, register

_READ = "datamodules.readers.video:read_video"
#: shared by the video modalities
VIDEO_READERS = {s: _READ for s in (".mp4", ".mov", ".avi", ".mkv", ".webm")}
VIDEO_HINT = BROKEN + "check that it plays (e.g. ffprobe) and re-encode it as H.264 MP4"


def _render_params() -> dict:
    from ..synthetic import render_video as r

    return {"fps": r.GAIT_FPS, "size": r.GAIT_SIZE, "duration_s": r.GAIT_SECONDS, "codec": r.VIDEO_CODEC}


GAIT = register(
    Modality(
        name="gait",
        order=50,
        spec=VideoSpec(),
        default_encoder="gait/conv3d",
        readers=VIDEO_READERS,
        decode_hint=VIDEO_HINT,
        visit_rate=0.15,
        render="datamodules.synthetic.render_video:render_gait",
        render_params=_render_params,
        preload=("av",),
        description="gait video (MP4 and other containers)",
    )
)
