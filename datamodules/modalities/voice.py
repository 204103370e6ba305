"""Voice recordings: WAV or FLAC at any rate and channel count -> mono ``[1, samples]`` float32."""

from ..specs import AudioSpec
from . import BROKEN, Modality, register

_READ = "datamodules.readers.audio:read_audio"
#: shared by the audio modalities (voice, breath)
AUDIO_READERS = {".wav": _READ, ".flac": _READ}
AUDIO_HINT = BROKEN + "check that it opens with soundfile and re-export it as WAV or FLAC"
AUDIO_PRELOAD = ("soundfile", "torchaudio.functional")


def _render_params() -> dict:
    from ..synthetic import render_audio as r

    return {"rate_hz": r.VOICE_RATE_HZ, "channels": 1, "duration_s": [2.0, 4.0], "format": "flac"}


VOICE = register(
    Modality(
        name="voice",
        order=30,
        spec=AudioSpec(),
        default_encoder="voice/conv",
        readers=AUDIO_READERS,
        decode_hint=AUDIO_HINT,
        visit_rate=0.20,
        render="datamodules.synthetic.render_audio:render_voice",
        render_params=_render_params,
        preload=AUDIO_PRELOAD,
        description="voice recordings (WAV, FLAC)",
    )
)
