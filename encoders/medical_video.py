"""Medical cine-loop encoders (echocardiography): the video encoders of :mod:`encoders.video` under the
``medical_video`` names. RGB clip ``[N, T, 3, H, W]`` uint8 + frame mask ``[N, T]`` -> tokens ``[N, k, d]``."""

from __future__ import annotations

from .base import register
from .video import VideoConvEncoder, VideoR3D18Encoder

register("medical_video/conv3d")(VideoConvEncoder)
register("medical_video/r3d18")(VideoR3D18Encoder)

__all__ = ["VideoConvEncoder", "VideoR3D18Encoder"]
