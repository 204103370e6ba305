"""Wearable renderer: one wear period per wearable visit, a CSV (ISO timestamps) or Parquet table of irregular
minute-level samples (``heart_rate``, ``steps``, ``skin_temp``) from the visit time on, for several days.

The device is handed out at the visit and worn for ``ctx.recordings.wear_days`` days (default 7), times the
person's ``wear_factor`` and a little different every time: from a third to three times that. Not every minute
is recorded: off the wrist on some nights (each person their own habit), charging, short breaks, a day now and
then not worn at all, sensor dropouts (NaN). Every sample follows the daily rhythm (:mod:`.rhythm`: sleep,
activity peaks, circadian heart rate) and the hidden state at its own time on the continuous path
(:meth:`.state.Subject.state_at`), so a long wear period drifts with it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import rhythm
from .render_ecg import resting_heart_rate
from .state import METABOLIC, RenderContext

WEARABLE_COLUMNS = ("heart_rate", "steps", "skin_temp")
SAMPLE_GAP_S = (20.0, 120.0)  # seconds between samples (uniform): ~1230 a day, ~8k rows a week
NOT_WORN_DAY = 0.07  # chance a (calendar) day after the first is not worn at all
CHARGING = (0.4, 1.0, 2.5)  # chance a day has a charging break, its length in hours (uniform)
BREAK = (0.6, 0.3, 1.5)  # the same for a short break off the wrist (shower, sport)
DROPOUT = 0.015  # share of missing values per channel


def wearable_format(index: int) -> str:
    return "parquet" if index % 5 == 3 else "csv"


def wear_days(ctx: RenderContext) -> float:
    """This visit's wear period in days, to the hour."""
    typical = ctx.recordings.wear_days
    days = typical * ctx.subject.traits["wear_factor"] * np.exp(ctx.rng.normal(0.0, 0.15))
    return float(np.clip(np.round(days * 24.0) / 24.0, max(typical / 3.0, 1.0 / 24.0), 3.0 * typical))


def _worn(rng: np.random.Generator, clock_h: np.ndarray, off_night: np.ndarray, n_days: int) -> np.ndarray:
    """Which samples the device records: not on days left at home, nor during breaks and charging."""
    day = np.floor(clock_h / 24.0).astype(np.int64)
    left_home = (rng.random(n_days) < NOT_WORN_DAY) & (np.arange(n_days) > 0)  # not the day it is handed out
    keep = ~off_night & ~left_home[day]
    for prob, lo, hi in (CHARGING, BREAK):
        when = np.arange(n_days) * 24.0 + rng.uniform(8.0, 22.0, n_days)  # clock hour it starts, each day
        hours = np.where(rng.random(n_days) < prob, rng.uniform(lo, hi, n_days), 0.0)
        keep &= ~((clock_h >= when[day]) & (clock_h < when[day] + hours[day]))
    return keep


def wearable_frame(ctx: RenderContext) -> pd.DataFrame:
    """The wear period's samples from the visit time on: timestamp (ISO, to the second) and the channels."""
    rng, traits = ctx.rng, ctx.subject.traits
    seconds = wear_days(ctx) * 86400.0
    secs = np.cumsum(rng.uniform(*SAMPLE_GAP_S, int(seconds / SAMPLE_GAP_S[0]) + 1))
    secs = secs[secs < seconds]
    clock_h = ctx.clock_hours() + secs / 3600.0
    n_days = int(clock_h[-1] // 24.0) + 1  # calendar days the period touches
    asleep, night = rhythm.sleep(rng, traits, clock_h)
    off_night = asleep & (rng.random(int(night.max()) + 2) < traits["night_off"])[night + 1]
    keep = _worn(rng, clock_h, off_night, n_days)
    secs, clock_h, asleep = secs[keep], clock_h[keep], asleep[keep]
    n = len(secs)
    state = ctx.state_at(secs)
    day = np.floor(clock_h / 24.0).astype(np.int64)
    busy = np.exp(rng.normal(0.0, 0.25, n_days))[day]  # some days more active than others
    p_active = rhythm.active_probability(clock_h, rhythm.daily_steps(state) * busy)
    active = ~asleep & (rng.random(n) < p_active)
    dt_s = np.diff(np.concatenate([[0.0], secs]))
    steps = np.where(active, rng.poisson(1.6 * np.minimum(dt_s, 120.0) * rng.uniform(0.4, 1.0, n)), 0)
    rest = resting_heart_rate(state) + rng.normal(0.0, 2.5)  # this visit's offset, as the clinic's heart rate
    effort = active * rng.uniform(0.5, 1.0, n)
    hr = rest + rhythm.heart_rate_offset(clock_h, asleep, effort) + rng.normal(0, 2.5, n)
    temp = 33.2 + 0.25 * state[:, METABOLIC] + 0.9 * asleep + rng.normal(0, 0.15, n)
    stamps = np.datetime64(ctx.visit.time, "s") + np.round(secs).astype("timedelta64[s]")
    frame = pd.DataFrame(
        {
            "timestamp": np.datetime_as_string(stamps, unit="s"),
            "heart_rate": np.round(hr, 1),
            "steps": pd.array(steps, dtype="Int64"),
            "skin_temp": np.round(temp, 2),
        }
    )
    for col in WEARABLE_COLUMNS:  # sensor dropouts
        frame.loc[rng.random(n) < DROPOUT, col] = pd.NA if col == "steps" else np.nan
    return frame


def render_wearable(ctx: RenderContext) -> str:
    frame = wearable_frame(ctx)
    if wearable_format(ctx.subject.index) == "parquet":
        rel, path = ctx.target("parquet")
        frame["timestamp"] = pd.to_datetime(frame["timestamp"]).astype("datetime64[s]")
        frame.to_parquet(path, index=False)
        return rel
    rel, path = ctx.target("csv")
    frame.to_csv(path, index=False)
    return rel
