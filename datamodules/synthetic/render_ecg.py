"""ECG renderer: a 12-lead (sometimes fewer) WFDB record at 500 Hz, 10 s, in mV; or, at a share of the ECG
visits (``ctx.recordings.holter_share``, 12%), a Holter-like long record: 2 or 3 leads at 250 Hz,
``ctx.recordings.holter_minutes`` (15) long.

Beats are sums of Gaussian P, Q, R, S, T waves projected on the leads (frontal-plane axis for the
limb leads, fixed precordial profiles for V1-V6). Heart rate, QT, T amplitude and ST deviation
follow the cardiovascular state; baseline wander, mains hum and noise are added. A Holter's heart rate
moves with the daily rhythm (:mod:`.rhythm`: sleep, activity) and the state along its continuous path: its
beats are those of a steady rhythm, on a clock that runs at the momentary rate. Signals are made a minute at a
time, each beat's waves only near it, so a long record costs time and memory in proportion to its length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import wfdb

from . import rhythm
from .state import CARDIO, FRAILTY, MOOD, RenderContext

ECG_RATE_HZ = 500
ECG_SECONDS = 10.0
ECG_ADC_GAIN = 200.0  # digital units per mV (WFDB's usual gain)
LEADS_12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
#: reduced lead sets used by ~10% of records (the readers must mask the missing leads)
REDUCED_LEADS = (("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"), ("I", "II", "III"))
HOLTER_RATE_HZ = 250
HOLTER_LEADS = (("MLII", "V1", "V5"), ("MLII", "V5"))  # 3 leads, a third of them 2 (MLII: modified lead II)
HOLTER_FORMAT = "212"  # 12-bit packed samples, the usual Holter format (range +-10.2 mV at this gain)
_HOLTER_KEY = 1  # the file's side stream that decides whether a visit's ECG is a Holter
_CHUNK_S = 60.0  # signals are made this much at a time (a 10-s record: one piece)
_LIMB_ANGLES = np.deg2rad([0.0, 60.0, 120.0, -150.0, -30.0, 90.0])
#: wave -> (offset from R in s, width sd in s, frontal magnitude mV, precordial profile V1..V6 mV)
_WAVES = {
    "P": (-0.16, 0.022, 0.15, (0.06, 0.08, 0.08, 0.09, 0.09, 0.08)),
    "Q": (-0.035, 0.009, -0.12, (0.0, 0.0, -0.02, -0.05, -0.08, -0.1)),
    "R": (0.0, 0.011, 1.2, (0.25, 0.45, 0.75, 1.2, 1.4, 1.15)),
    "S": (0.035, 0.011, -0.3, (-0.95, -1.2, -0.8, -0.45, -0.25, -0.12)),
    "T": (0.0, 0.045, 0.32, (-0.1, 0.3, 0.42, 0.4, 0.35, 0.28)),
}


def resting_heart_rate(state: np.ndarray) -> np.ndarray:
    """Resting heart rate (bpm) in the hidden state ``[..., N_STATE]``, before any noise."""
    return 64.0 + 6.0 * state[..., CARDIO] + 2.5 * state[..., FRAILTY] + 1.5 * state[..., MOOD]


def heart_rate(ctx: RenderContext) -> float:
    """Resting heart rate (bpm) at this visit, shared with the wearable and clinical vitals."""
    return measured_heart_rate(ctx.visit.state, ctx.rng)


def measured_heart_rate(state: np.ndarray, rng: np.random.Generator) -> float:
    """:func:`heart_rate` at ``state`` with ``rng``'s next draw (also where no visit context exists yet)."""
    return float(np.clip(resting_heart_rate(state) + rng.normal(0.0, 2.5), 42.0, 140.0))


def _lead_amplitudes(magnitude: float, axis: float, precordial: np.ndarray) -> np.ndarray:
    return np.concatenate([magnitude * np.cos(axis - _LIMB_ANGLES), precordial])


def beat_times(
    rng: np.random.Generator, hr: float, cardio: float, seconds: float, clock: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray:
    """R-peak times (s) of a rhythm at ``hr`` bpm with a heart rate variability that falls with ``cardio``.
    ``clock``: ``(t, u)``, a time grid and the beat clock on it (``u' = momentary rate / hr``, from 0, past
    ``seconds``): beats are laid out at the steady rate in clock time, then mapped back to time."""
    rr = 60.0 / hr
    span = seconds if clock is None else float(np.interp(seconds, *clock))
    hrv = 0.045 * np.exp(-0.3 * max(cardio, 0.0))
    gaps = rr * (1.0 + hrv * rng.standard_normal(int(span / rr) + 4))
    beats = rng.uniform(0.05, rr) + np.concatenate([[0.0], np.cumsum(gaps)])
    beats = beats[beats < span + 0.5]
    return beats if clock is None else np.interp(beats, clock[1], clock[0])


@dataclass(frozen=True)
class Morphology:
    """One record's beat shape: QT (corrected), electrical axis, T and ST changes, wave gains, baseline wander."""

    qtc: float
    axis: float
    t_scale: float
    st: float
    gains: tuple[float, ...]  # one per wave of _WAVES
    wander: tuple[tuple[float, np.ndarray, np.ndarray], ...]  # (frequency, amplitudes [12], phases [12])


def morphology(rng: np.random.Generator, cardio: float, metabolic: float) -> Morphology:
    qtc = 0.40 + 0.018 * cardio + rng.normal(0, 0.008)
    axis = np.deg2rad(55.0 - 12.0 * metabolic + rng.normal(0, 5.0))
    t_scale = float(np.clip(1.0 - 0.18 * cardio, 0.2, 1.3))
    gains = tuple(rng.uniform(0.9, 1.1) for _ in _WAVES)
    f = rng.uniform(0.15, 0.45, 2)
    wander = tuple((fk, rng.uniform(0.03, 0.12, 12), rng.uniform(0, 6.3, 12)) for fk in f)
    return Morphology(qtc, axis, t_scale, -0.05 * max(cardio - 0.5, 0.0), gains, wander)


def _bump(start: int, n: int, rate_hz: int, beats: np.ndarray, offset: np.ndarray, width: float) -> np.ndarray:
    """Samples ``start .. start + n - 1`` of the sum over beats of a Gaussian ``width`` (s) wide at ``beats +
    offset``, each evaluated only within 8 sd of its centre (beyond that it is below 1e-13 of its height)."""
    k = int(np.ceil(8.0 * width * rate_hz))
    offset = np.broadcast_to(offset, beats.shape)[:, None]
    index = np.round((beats[:, None] + offset) * rate_hz).astype(np.int64) + np.arange(-k, k + 1)
    bump = np.exp(-0.5 * ((index / rate_hz - beats[:, None] - offset) / width) ** 2)
    inside = (index >= start) & (index < start + n)
    return np.bincount(index[inside] - start, weights=bump[inside], minlength=n)


def _piece(
    rng: np.random.Generator,
    m: Morphology,
    beats: np.ndarray,
    qt: np.ndarray,
    rate_hz: int,
    span: tuple[int, int],
    leads: list[int],
) -> np.ndarray:
    """``[n, len(leads)]`` mV of the samples ``start .. start + n - 1`` (``span``: one piece), from the beats near
    them; ``leads``: columns of :data:`LEADS_12`."""
    start, n = span
    t = np.arange(start, start + n) / rate_hz
    near = (beats > t[0] - 1.0) & (beats < t[-1] + 1.0)
    beats, qt = beats[near], qt[near]
    sig = np.zeros((n, len(leads)))
    for (name, (offset, width, mag, prec)), gain in zip(_WAVES.items(), m.gains):
        prec_arr = np.array(prec)
        if name == "T":
            offset, mag, prec_arr = qt - 0.12, mag * m.t_scale, prec_arr * m.t_scale
        amp = (_lead_amplitudes(mag, m.axis, prec_arr) * gain)[leads]
        sig += _bump(start, n, rate_hz, beats, offset, width)[:, None] * amp[None]
    st_amp = _lead_amplitudes(m.st, m.axis, m.st * np.array([-0.3, 0.0, 0.4, 0.8, 1.0, 1.0]))[leads]
    sig += _bump(start, n, rate_hz, beats, 0.1 + 0.3 * (qt - 0.4), 0.04)[:, None] * st_amp[None]
    wander = sum(a[None, leads] * np.sin(2 * np.pi * fk * t[:, None] + ph[leads]) for fk, a, ph in m.wander)
    sig += wander + 0.01 * np.sin(2 * np.pi * 50.0 * t)[:, None] + rng.normal(0, 0.012, sig.shape)
    return sig


def synthesize(
    rng: np.random.Generator, m: Morphology, beats: np.ndarray, rr: np.ndarray, rate_hz: int, n: int, leads: list[int]
) -> np.ndarray:
    """``[n, len(leads)]`` digital units (``leads``: columns of :data:`LEADS_12`), made :data:`_CHUNK_S` at a
    time; ``rr``: the RR interval (s) at each beat (QT follows it, Bazett: QTc * sqrt(RR))."""
    qt = m.qtc * np.sqrt(np.broadcast_to(rr, beats.shape))
    step = int(_CHUNK_S * rate_hz)
    pieces = []
    for start in range(0, n, step):
        piece = _piece(rng, m, beats, qt, rate_hz, (start, min(step, n - start)), leads)
        pieces.append(np.round(piece * ECG_ADC_GAIN).astype(np.int32))
    return np.concatenate(pieces)  # quantised exactly once


def ecg_signal(ctx: RenderContext) -> tuple[np.ndarray, float]:
    """``[samples, 12]`` digital units in :data:`LEADS_12` order and the heart rate used (a 10-s record)."""
    rng = ctx.rng
    hr = heart_rate(ctx)
    beats = beat_times(rng, hr, ctx.s("cardio"), ECG_SECONDS, None)
    m = morphology(rng, ctx.s("cardio"), ctx.s("metabolic"))
    n = int(ECG_RATE_HZ * ECG_SECONDS)
    return synthesize(rng, m, beats, np.array(60.0 / hr), ECG_RATE_HZ, n, list(range(12))), hr


def holter_heart_rate(ctx: RenderContext, hr: float, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """The Holter's momentary heart rate (bpm) on a 10-s grid ``t`` past ``seconds``: the visit's resting rate
    ``hr`` moved by the state along its path, the daily rhythm and bouts of activity (eased in over a minute)."""
    rng = ctx.rng
    t = np.arange(0.0, seconds + 20.0, 10.0)
    clock_h = ctx.clock_hours() + t / 3600.0
    state = ctx.state_at(t)
    asleep, _ = rhythm.sleep(rng, ctx.subject.traits, clock_h)
    minute = (t // 60.0).astype(np.int64)
    p_active = rhythm.active_probability(clock_h[::6], rhythm.daily_steps(state[::6]))
    effort = (~asleep[::6] & (rng.random(len(p_active)) < p_active)) * rng.uniform(0.5, 1.0, len(p_active))
    eased = np.convolve(np.concatenate([np.zeros(5), effort[minute]]), np.full(6, 1.0 / 6.0), "valid")
    moved = resting_heart_rate(state) - resting_heart_rate(ctx.visit.state)
    return t, np.clip(hr + moved + rhythm.heart_rate_offset(clock_h, asleep, eased), 35.0, 190.0)


def holter_signal(ctx: RenderContext, leads: list[int]) -> np.ndarray:
    """``[samples, len(leads)]`` digital units of a Holter record (``ctx.recordings.holter_minutes`` long at
    :data:`HOLTER_RATE_HZ`)."""
    rng = ctx.rng
    seconds = ctx.recordings.holter_minutes * 60.0
    hr = heart_rate(ctx)
    t, rate = holter_heart_rate(ctx, hr, seconds)
    clock = np.concatenate([[0.0], np.cumsum(rate[:-1] / hr * np.diff(t))])
    beats = beat_times(rng, hr, ctx.s("cardio"), seconds, (t, clock))
    m = morphology(rng, ctx.s("cardio"), ctx.s("metabolic"))
    rr = 60.0 / np.interp(beats, t, rate)
    return synthesize(rng, m, beats, rr, HOLTER_RATE_HZ, int(round(HOLTER_RATE_HZ * seconds)), leads)


def lead_set(ctx: RenderContext) -> tuple[str, ...]:
    u = ctx.rng.random()
    return REDUCED_LEADS[0] if u < 0.06 else REDUCED_LEADS[1] if u < 0.10 else LEADS_12


def is_holter(ctx: RenderContext) -> bool:
    """Whether this ECG visit records a Holter (a draw of its own, so the 10-s records stay as they were)."""
    return bool(ctx.side_rng(_HOLTER_KEY).random() < ctx.recordings.holter_share)


def _write(ctx: RenderContext, digital: np.ndarray, names: list[str], rate_hz: int, fmt: str) -> str:
    """Write ``vNN_ecg.hea`` + ``vNN_ecg.dat``; the events table points at the ``.hea`` header."""
    rel, path = ctx.target("hea")
    n = len(names)
    wfdb.wrsamp(
        path.name[:-4],
        fs=rate_hz,
        units=["mV"] * n,
        sig_name=names,
        d_signal=digital,
        fmt=[fmt] * n,
        adc_gain=[ECG_ADC_GAIN] * n,
        baseline=[0] * n,
        base_datetime=ctx.visit.time,
        write_dir=str(path.parent),
    )
    return rel


def render_ecg(ctx: RenderContext) -> str:
    """A 10-s record (12 leads or a reduced set, 500 Hz, 16-bit) or, at ``ctx.recordings.holter_share`` of the
    visits, a Holter (:data:`HOLTER_LEADS`, :data:`HOLTER_RATE_HZ`, :data:`HOLTER_FORMAT`)."""
    if is_holter(ctx):
        names = HOLTER_LEADS[int(ctx.rng.random() < 1.0 / 3.0)]
        cols = [LEADS_12.index(name.removeprefix("ML")) for name in names]
        digital = np.clip(holter_signal(ctx, cols), -2048, 2047)
        return _write(ctx, digital, list(names), HOLTER_RATE_HZ, HOLTER_FORMAT)
    leads = lead_set(ctx)
    digital, _ = ecg_signal(ctx)
    return _write(ctx, digital[:, [LEADS_12.index(name) for name in leads]], list(leads), ECG_RATE_HZ, "16")
