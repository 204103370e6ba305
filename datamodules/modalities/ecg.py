"""ECG: WFDB, DICOM waveform, NumPy or CSV, any lead set and rate -> ``[leads, samples]`` float32 mV."""

from ..specs import WaveformSpec
from . import BROKEN, Modality, register


def _render_params() -> dict:
    from ..synthetic import render_ecg as r

    return {
        "rate_hz": r.ECG_RATE_HZ,
        "duration_s": r.ECG_SECONDS,
        "units": "mV",
        "leads": r.LEADS_12,
        "reduced_leads": r.REDUCED_LEADS,
        "adc_gain": r.ECG_ADC_GAIN,
        "format": "wfdb (path = .hea)",
        "holter": {
            "rate_hz": r.HOLTER_RATE_HZ,
            "leads": r.HOLTER_LEADS,
            "format": r.HOLTER_FORMAT,
        },
    }


_READ = "datamodules.readers.ecg:read_ecg"
ECG = register(
    Modality(
        name="ecg",
        order=20,
        spec=WaveformSpec(),
        default_encoder="ecg/conv1d",
        readers={s: _READ for s in (".hea", ".dat", ".dcm", ".npy", ".npz", ".csv")},
        decode_hint=BROKEN + "check that it opens with wfdb.rdrecord, pydicom, numpy or pandas and re-export it",
        visit_rate=0.30,
        render="datamodules.synthetic.render_ecg:render_ecg",
        render_params=_render_params,
        preload=("wfdb", "pydicom", "torchaudio.functional"),
        description="12-lead or reduced-lead ECG, some Holter records",
    )
)
