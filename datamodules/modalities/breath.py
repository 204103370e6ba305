"""Breath sounds: WAV or FLAC (mono or stereo) -> mono ``[1, samples]`` float32."""

from ..specs import AudioSpec
from . import Modality, register
from .voice import AUDIO_HINT, AUDIO_PRELOAD, AUDIO_READERS


def _render_params() -> dict:
    from ..synthetic import render_audio as r

    return {
        "rate_hz": [r.BREATH_RATE_HZ, r.BREATH_STEREO_RATE_HZ],
        "channels": [1, 2],
        "duration_s": [3.0, 4.0],
        "format": "flac",
    }


BREATH = register(
    Modality(
        name="breath",
        order=40,
        spec=AudioSpec(),
        default_encoder="breath/conv",
        readers=AUDIO_READERS,
        decode_hint=AUDIO_HINT,
        visit_rate=0.20,
        render="datamodules.synthetic.render_audio:render_breath",
        render_params=_render_params,
        preload=AUDIO_PRELOAD,
        description="breath sounds (WAV, FLAC)",
    )
)
