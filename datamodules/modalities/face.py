"""Facial-expression video -> ``[T, 3, H, W]`` uint8 RGB at a fixed fps (the gait readers)."""

from ..specs import VideoSpec
from . import Modality, register
from .gait import VIDEO_HINT, VIDEO_READERS


def _render_params() -> dict:
    from ..synthetic import render_video as r

    return {"fps": r.FACE_FPS, "size": r.FACE_SIZE, "duration_s": r.FACE_SECONDS, "codec": r.VIDEO_CODEC}


FACE = register(
    Modality(
        name="face",
        order=60,
        spec=VideoSpec(),
        default_encoder="face/conv3d",
        readers=VIDEO_READERS,
        decode_hint=VIDEO_HINT,
        visit_rate=0.15,
        render="datamodules.synthetic.render_video:render_face",
        render_params=_render_params,
        preload=("av",),
        description="facial-expression video",
    )
)
