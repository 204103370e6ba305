"""ECG renderer: a 12-lead (sometimes fewer) WFDB record at 500 Hz, 10 s, in mV.

Beats are sums of Gaussian P, Q, R, S, T waves projected on the leads (frontal-plane axis for the
limb leads, fixed precordial profiles for V1-V6). Heart rate, QT, T amplitude and ST deviation
follow the cardiovascular state; baseline wander, mains hum and noise are added.
"""

from __future__ import annotations

import numpy as np
import wfdb

from .state import RenderContext

ECG_RATE_HZ = 500
ECG_SECONDS = 10.0
ECG_ADC_GAIN = 200.0  # digital units per mV (WFDB's usual gain)
LEADS_12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
#: reduced lead sets used by ~10% of records (the readers must mask the missing leads)
REDUCED_LEADS = (("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"), ("I", "II", "III"))
_LIMB_ANGLES = np.deg2rad([0.0, 60.0, 120.0, -150.0, -30.0, 90.0])
#: wave -> (offset from R in s, width sd in s, frontal magnitude mV, precordial profile V1..V6 mV)
_WAVES = {
    "P": (-0.16, 0.022, 0.15, (0.06, 0.08, 0.08, 0.09, 0.09, 0.08)),
    "Q": (-0.035, 0.009, -0.12, (0.0, 0.0, -0.02, -0.05, -0.08, -0.1)),
    "R": (0.0, 0.011, 1.2, (0.25, 0.45, 0.75, 1.2, 1.4, 1.15)),
    "S": (0.035, 0.011, -0.3, (-0.95, -1.2, -0.8, -0.45, -0.25, -0.12)),
    "T": (0.0, 0.045, 0.32, (-0.1, 0.3, 0.42, 0.4, 0.35, 0.28)),
}


def heart_rate(ctx: RenderContext) -> float:
    """Resting heart rate (bpm) at this visit, shared with the wearable and clinical vitals."""
    hr = 64.0 + 6.0 * ctx.s("cardio") + 2.5 * ctx.s("frailty") + 1.5 * ctx.s("mood")
    return float(np.clip(hr + ctx.rng.normal(0.0, 2.5), 42.0, 140.0))


def _lead_amplitudes(magnitude: float, axis: float, precordial: np.ndarray) -> np.ndarray:
    return np.concatenate([magnitude * np.cos(axis - _LIMB_ANGLES), precordial])


def ecg_signal(ctx: RenderContext) -> tuple[np.ndarray, float]:
    """``[samples, 12]`` mV in :data:`LEADS_12` order and the heart rate used."""
    rng = ctx.rng
    cardio, metabolic = ctx.s("cardio"), ctx.s("metabolic")
    n = int(ECG_RATE_HZ * ECG_SECONDS)
    t = np.arange(n) / ECG_RATE_HZ
    hr = heart_rate(ctx)
    rr = 60.0 / hr
    hrv = 0.045 * np.exp(-0.3 * max(cardio, 0.0))
    gaps = rr * (1.0 + hrv * rng.standard_normal(int(ECG_SECONDS / rr) + 4))
    beats = rng.uniform(0.05, rr) + np.concatenate([[0.0], np.cumsum(gaps)])
    beats = beats[beats < ECG_SECONDS + 0.5]
    qt = (0.40 + 0.018 * cardio + rng.normal(0, 0.008)) * np.sqrt(rr)  # Bazett: QTc * sqrt(RR)
    axis = np.deg2rad(55.0 - 12.0 * metabolic + rng.normal(0, 5.0))
    t_scale = float(np.clip(1.0 - 0.18 * cardio, 0.2, 1.3))
    sig = np.zeros((n, 12))
    for name, (offset, width, mag, prec) in _WAVES.items():
        prec_arr = np.array(prec)
        if name == "T":
            offset, mag, prec_arr = qt - 0.12, mag * t_scale, prec_arr * t_scale
        amp = _lead_amplitudes(mag, axis, prec_arr) * rng.uniform(0.9, 1.1)
        bump = np.exp(-0.5 * ((t[:, None] - beats[None] - offset) / width) ** 2).sum(1)
        sig += bump[:, None] * amp[None]
    st = -0.05 * max(cardio - 0.5, 0.0)  # ST depression, lateral leads
    st_amp = _lead_amplitudes(st, axis, st * np.array([-0.3, 0.0, 0.4, 0.8, 1.0, 1.0]))
    plateau = np.exp(-0.5 * ((t[:, None] - beats[None] - 0.1 - 0.3 * (qt - 0.4)) / 0.04) ** 2).sum(1)
    sig += plateau[:, None] * st_amp[None]
    f = rng.uniform(0.15, 0.45, 2)
    wander = sum(
        rng.uniform(0.03, 0.12, 12)[None] * np.sin(2 * np.pi * fk * t[:, None] + rng.uniform(0, 6.3, 12)) for fk in f
    )
    sig += wander + 0.01 * np.sin(2 * np.pi * 50.0 * t)[:, None] + rng.normal(0, 0.012, sig.shape)
    return sig, hr


def lead_set(ctx: RenderContext) -> tuple[str, ...]:
    u = ctx.rng.random()
    return REDUCED_LEADS[0] if u < 0.06 else REDUCED_LEADS[1] if u < 0.10 else LEADS_12


def render_ecg(ctx: RenderContext) -> str:
    """Write ``vNN_ecg.hea`` + ``vNN_ecg.dat``; the events table points at the ``.hea`` header."""
    rel, path = ctx.target("hea")
    leads = lead_set(ctx)
    sig, _ = ecg_signal(ctx)
    cols = [LEADS_12.index(name) for name in leads]
    digital = np.round(sig[:, cols] * ECG_ADC_GAIN).astype(np.int32)  # quantise exactly once
    n = len(leads)
    wfdb.wrsamp(
        path.name[:-4],
        fs=ECG_RATE_HZ,
        units=["mV"] * n,
        sig_name=list(leads),
        d_signal=digital,
        fmt=["16"] * n,
        adc_gain=[ECG_ADC_GAIN] * n,
        baseline=[0] * n,
        base_datetime=ctx.visit.time,
        write_dir=str(path.parent),
    )
    return rel
