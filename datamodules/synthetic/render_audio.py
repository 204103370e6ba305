"""Audio renderers, written as FLAC with soundfile.

``voice``: a sustained /a/ (harmonics under vowel formants) with pitch, jitter, shimmer, tremor and
breathiness set by the neuro and mood states. ``breath``: inhale/exhale cycles of band-passed noise
at a rate, depth and wheeze set by the respiratory state (some recordings stereo at 44.1 kHz).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from .state import RenderContext, sigmoid

VOICE_RATE_HZ = 22050
BREATH_RATE_HZ = 16000
BREATH_STEREO_RATE_HZ = 44100
_FORMANTS = ((730.0, 90.0, 1.0), (1090.0, 110.0, 0.5), (2440.0, 160.0, 0.25))  # /a/: Hz, bandwidth, gain


def _smooth_noise(rng: np.random.Generator, n: int, knots_per_s: float, rate: int) -> np.ndarray:
    """Unit-variance random values at ``knots_per_s`` interpolated to ``n`` samples."""
    k = max(int(n / rate * knots_per_s) + 2, 2)
    return np.interp(np.arange(n), np.linspace(0, n - 1, k), rng.standard_normal(k))


def band_noise(rng: np.random.Generator, n: int, rate: int, lo: float, hi: float) -> np.ndarray:
    """White noise band-limited to ``[lo, hi]`` Hz (smooth spectral window, via the FFT)."""
    size = 1 << (n - 1).bit_length()  # a fast FFT length
    f = np.fft.rfftfreq(size, 1.0 / rate)
    gain = 1.0 / (1.0 + (lo / np.maximum(f, 1e-3)) ** 4) / (1.0 + (f / hi) ** 4)
    return np.fft.irfft(np.fft.rfft(rng.standard_normal(size)) * gain, size)[:n]


def _envelope(n: int, rate: int, ramp_s: float) -> np.ndarray:
    r = int(ramp_s * rate)
    env = np.ones(n)
    env[:r] = np.linspace(0.0, 1.0, r)
    env[n - r :] = np.linspace(1.0, 0.0, r)
    return env


def _write(path_rel: tuple[str, Path], audio: np.ndarray, rate: int) -> str:
    rel, path = path_rel
    audio = audio / max(float(np.abs(audio).max()), 1e-9) * 0.4
    sf.write(str(path), audio.astype(np.float32), rate, format="FLAC", subtype="PCM_16")
    return rel


def _glottal_period(f0: float, size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """One period of the vowel: harmonics of ``f0`` below 4.5 kHz weighted by the formants."""
    k = np.arange(1, int(4500.0 / f0) + 1)
    gain = sum(g / (1.0 + ((k * f0 - fc) / bw) ** 2) for fc, bw, g in _FORMANTS) / np.sqrt(k)
    x = np.arange(size) / size
    return x, np.sin(2 * np.pi * np.outer(x, k)) @ gain


def voice_wave(ctx: RenderContext) -> np.ndarray:
    rng, rate = ctx.rng, VOICE_RATE_HZ
    neuro, mood, resp = ctx.s("neuro"), ctx.s("mood"), ctx.s("resp")
    n = int(rng.uniform(2.0, 4.0) * rate)
    f0 = ctx.subject.traits["f0_hz"] * (1.0 - 0.03 * mood) + rng.normal(0.0, 3.0)
    jitter = 0.004 + 0.02 * sigmoid(1.5 * (neuro - 1.0))
    shimmer = 0.03 + 0.15 * sigmoid(1.5 * (neuro - 1.0))
    tremor = 0.003 + 0.03 * sigmoid(2.0 * (neuro - 1.5))
    t = np.arange(n) / rate
    pitch = f0 * (
        1.0
        + tremor * np.sin(2 * np.pi * rng.uniform(4.0, 6.0) * t)
        + jitter * _smooth_noise(rng, n, f0, rate)
        + 0.01 * _smooth_noise(rng, n, 2.0, rate)
    )
    phase = np.cumsum(pitch) / rate  # in cycles
    out = np.interp(phase % 1.0, *_glottal_period(f0), period=1.0)  # one period as a wavetable
    amp = 1.0 + shimmer * _smooth_noise(rng, n, f0, rate)
    breathy = (0.02 + 0.1 * sigmoid(neuro + 0.5 * resp - 1.5)) * rng.standard_normal(n)
    return (out * amp + breathy * np.abs(out).mean() * 3.0) * _envelope(n, rate, 0.08)


def breathing_rate(ctx: RenderContext) -> float:
    """Breaths per minute at this visit."""
    return float(np.clip(14.0 + 3.0 * ctx.s("resp") + 0.8 * ctx.s("frailty") + ctx.rng.normal(0, 1.0), 8.0, 34.0))


def breath_wave(ctx: RenderContext, rate: int) -> np.ndarray:
    rng, resp = ctx.rng, ctx.s("resp")
    n = int(rng.uniform(3.0, 4.0) * rate)
    t = np.arange(n) / rate
    period = 60.0 / breathing_rate(ctx)
    cycle = ((t + rng.uniform(0, period)) % period) / period  # 0..1 within a breath
    inhale = cycle < 0.4
    env = np.where(inhale, np.sin(np.pi * cycle / 0.4) ** 2, 0.8 * np.sin(np.pi * (cycle - 0.4) / 0.6) ** 2)
    noise = band_noise(rng, n, rate, 150.0, 1500.0)
    wheeze_amp = 0.8 * sigmoid(2.0 * (resp - 1.2))
    fw = 420.0 + 80.0 * max(resp, 0.0) + rng.normal(0, 10)
    wheeze = wheeze_amp * np.sin(2 * np.pi * fw * t + 0.5 * np.sin(2 * np.pi * 3.0 * t)) * noise.std()
    return (noise + np.where(inhale, 0.0, wheeze)) * env + 0.01 * noise.std() * rng.standard_normal(n)


def render_voice(ctx: RenderContext) -> str:
    return _write(ctx.target("flac"), voice_wave(ctx), VOICE_RATE_HZ)


def render_breath(ctx: RenderContext) -> str:
    if ctx.subject.index % 4 == 2:  # a different recorder: stereo
        rate = BREATH_STEREO_RATE_HZ
        mono = breath_wave(ctx, rate)
        right = 0.85 * np.roll(mono, 7) + 0.15 * np.std(mono) * ctx.rng.standard_normal(len(mono))
        return _write(ctx.target("flac"), np.stack([mono, right], 1), rate)
    return _write(ctx.target("flac"), breath_wave(ctx, BREATH_RATE_HZ), BREATH_RATE_HZ)
