"""The daily rhythm of a synthetic person, shared by the recordings that last hours or days (wearable streams,
Holter ECGs): when they sleep (their own bedtime and sleep length, a little different every night), when they
move (activity peaks late in the morning and late in the afternoon, scaled by how active the hidden state lets
them be) and what both do to the heart rate (a circadian swing, a dip asleep, a rise when active).

Times are *clock hours*: hours since midnight of the recording's first day (a recording that starts at 14:30
and lasts three days spans 14.5 to 86.5).
"""

from __future__ import annotations

import numpy as np

from .state import FRAILTY, MOOD

SLEEP_DIP_BPM = 7.0  # heart rate asleep, below the resting rate
ACTIVE_BPM = 35.0  # at most this much above it when active
CIRCADIAN_BPM = 2.5  # amplitude of the daily swing, highest at 16:00, lowest at 04:00
_PEAKS = ((10.5, 1.5, 0.8), (17.5, 1.5, 1.0))  # activity peaks: clock hour, width (h), height over 0.6
_AWAKE = np.linspace(7.0, 23.0, 161)


def _profile(hour: np.ndarray) -> np.ndarray:
    return 0.6 + sum(h * np.exp(-0.5 * ((hour - c) / w) ** 2) for c, w, h in _PEAKS)


_PROFILE_MEAN = float(_profile(_AWAKE).mean())  # over the waking day: the profile scales, it adds no steps


def sleep(rng: np.random.Generator, traits: dict[str, float], clock_h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Asleep or not at each time, and the night each time belongs to (0 = the night that starts on the first
    day's evening; -1 = the one before). Each night draws its own bedtime and length around the person's."""
    night = np.floor((clock_h - 12.0) / 24.0).astype(np.int64)  # noon to noon
    first = int(night.min()) if night.size else 0
    n = int(night.max()) - first + 1 if night.size else 0
    bed = np.clip(traits["bedtime_h"] + rng.normal(0.0, 0.4, n), 20.0, 27.0)  # 27 = 03:00 the next day
    length = np.clip(traits["sleep_h"] + rng.normal(0.0, 0.5, n), 4.0, 10.0)
    since = clock_h - 24.0 * night - bed[night - first]
    return (since >= 0.0) & (since < length[night - first]), night


def daily_steps(state: np.ndarray) -> np.ndarray:
    """Expected steps a day in the hidden state ``[..., N_STATE]`` (fewer when frail or low)."""
    return 9000.0 * np.exp(-0.35 * state[..., FRAILTY] - 0.15 * state[..., MOOD])


def active_probability(clock_h: np.ndarray, steps_per_day: np.ndarray) -> np.ndarray:
    """Chance of being active at each waking time (one sample, about a minute), peaking at the activity
    peaks; the caller keeps it at zero asleep."""
    base = steps_per_day / (16 * 3600 * 1.6)
    return np.clip(base * _profile(np.mod(clock_h, 24.0)) / _PROFILE_MEAN, 0.0, 0.9)


def heart_rate_offset(clock_h: np.ndarray, asleep: np.ndarray, effort: np.ndarray) -> np.ndarray:
    """What the time of day, sleep and effort (0 at rest, up to 1) add to the resting heart rate (bpm)."""
    circadian = CIRCADIAN_BPM * np.cos(2.0 * np.pi * (clock_h - 16.0) / 24.0)
    return circadian - SLEEP_DIP_BPM * asleep + ACTIVE_BPM * effort
