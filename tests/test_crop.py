"""Load-time selection of long timelines (datamodules/crop.py): select modes, token budgets, per-modality caps,
determinism, linear cost on thousands of events, and the data module / config keys that carry them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import train_config

import datamodules.crop as crop_module
from datamodules.crop import SELECTS, CropConfig, crop_timeline
from datamodules.datamodule import OmniDataModule
from datamodules.schema import DataError, Event, Measurement, Timeline
from omnimodal.infra.config_check import ConfigError
from omnimodal.pretraining.run import build, check_config

K = {"wearable": 4, "ecg": 8}  # tokens per instance (clinical: 1)


def year(days: int = 365) -> Timeline:
    """A wearable day window every day (with an ECG on every 90th), a clinical visit between days every 30."""
    events = []
    for d in range(days):
        events.append(Event(float(d), 20000.0 + d, [Measurement("wearable")] + [Measurement("ecg")] * (d % 90 == 0)))
        if d % 30 == 15:
            events.append(Event(d + 0.5, 20000.5 + d, [Measurement("clinical", code="c", value=1.0)] * 2))
    return Timeline("k", events=events)


def times(tl: Timeline) -> list[float]:
    return [ev.time_days for ev in tl.events]


def tokens(tl: Timeline) -> int:
    return sum(K.get(m.modality, 1) for ev in tl.events for m in ev.measurements)


def positions(tl: Timeline, cropped: Timeline) -> list[int]:
    """Indices in ``tl`` of ``cropped``'s events (by time: times are unique)."""
    where = {t: i for i, t in enumerate(times(tl))}
    return [where[t] for t in times(cropped)]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("random", [False, True])
def test_recent_keeps_the_last_events(random: bool) -> None:
    tl = year()
    out = crop_timeline(tl, CropConfig(max_events=40, select="recent", random=random), rng())
    assert times(out) == times(tl)[-40:]
    assert times(crop_timeline(tl, CropConfig(max_events=40, select="window", random=False), rng())) == times(out)


def test_window_is_consecutive_and_drawn_at_random() -> None:
    tl = year()
    starts = set()
    for seed in range(20):
        pos = positions(tl, crop_timeline(tl, CropConfig(max_events=40, select="window"), rng(seed)))
        assert pos == list(range(pos[0], pos[0] + 40))
        starts.add(pos[0])
    assert len(starts) > 10


@pytest.mark.parametrize("random", [False, True])
def test_even_spans_the_timeline_with_first_and_last(random: bool) -> None:
    tl = year()
    n = len(tl.events)
    pos = positions(tl, crop_timeline(tl, CropConfig(max_events=25, select="even", random=random), rng()))
    assert len(pos) == 25 and pos[0] == 0 and pos[-1] == n - 1
    gaps = np.diff(pos)
    spacing = (n - 1) / 24
    assert (gaps >= 1).all()
    if random:  # each pick jittered within its cell: at most a spacing either way of its even position
        assert (np.abs(np.array(pos) - np.arange(25) * spacing) <= spacing / 2 + 1).all()
    else:
        assert gaps.max() - gaps.min() <= 1


@pytest.mark.parametrize("select", SELECTS)
def test_the_token_budget_counts_each_modality_s_tokens(select: str) -> None:
    tl = year()
    for max_tokens in (30, 200, 1000):
        crop = CropConfig(max_tokens=max_tokens, tokens_per_instance=K, select=select, random=select != "recent")
        out = crop_timeline(tl, crop, rng())
        assert 0 < tokens(out) <= max_tokens
        assert tokens(out) > max_tokens - 2 * max(K.values()) - 8  # nearly full
    both = crop_timeline(tl, CropConfig(max_events=10, max_tokens=1000, tokens_per_instance=K, select=select), rng())
    assert len(both.events) == 10  # the tighter bound wins


def test_a_single_event_over_the_budget_keeps_its_first_instances() -> None:
    tl = Timeline("k", events=[Event(0.0, 1.0, [Measurement("clinical", code=str(i)) for i in range(5)])] * 2)
    for select in SELECTS:
        out = crop_timeline(tl, CropConfig(max_tokens=3, select=select), rng())
        assert [m.code for ev in out.events for m in ev.measurements] == ["0", "1", "2"]


def test_max_instances_caps_a_modality_before_the_budget() -> None:
    tl = year()
    wear = [t for t, ev in zip(times(tl), tl.events) if any(m.modality == "wearable" for m in ev.measurements)]
    recent = crop_timeline(tl, CropConfig(select="recent", max_instances={"wearable": 60}), rng())
    kept = [t for t, ev in zip(times(recent), recent.events) if any(m.modality == "wearable" for m in ev.measurements)]
    assert kept == wear[-60:]
    assert {m: n for m, n in recent.count().items() if m != "wearable"} == {"ecg": 5, "clinical": 24}
    assert all(ev.measurements for ev in recent.events)  # a wearable-only day dropped goes as an event
    even = crop_timeline(tl, CropConfig(select="even", max_instances={"wearable": 60}, random=False), rng())
    kept = [t for t, ev in zip(times(even), even.events) if any(m.modality == "wearable" for m in ev.measurements)]
    assert len(kept) == 60 and kept[0] == wear[0] and kept[-1] == wear[-1]
    # the clinical visits are no longer crowded out of a 64-event budget
    budget = CropConfig(max_events=64, select="recent")
    assert crop_timeline(tl, budget, rng()).count()["clinical"] == 4
    capped = crop_timeline(tl, CropConfig(max_events=64, select="recent", max_instances={"wearable": 20}), rng())
    assert capped.count() == {"wearable": 20, "ecg": 5, "clinical": 24}


@pytest.mark.parametrize("select", SELECTS)
def test_deterministic_given_the_rng(select: str) -> None:
    tl = year()
    crop = CropConfig(max_tokens=300, tokens_per_instance=K, select=select, max_instances={"wearable": 100})
    assert times(crop_timeline(tl, crop, rng(3))) == times(crop_timeline(tl, crop, rng(3)))
    draws = {tuple(times(crop_timeline(tl, crop, rng(s)))) for s in range(5)}
    assert len(draws) == 1 if select == "recent" else len(draws) >= 4
    assert crop_timeline(tl, CropConfig(max_events=10_000, select=select), rng()) is tl  # within bounds: as it is


def _lines_run(tl: Timeline, crop: CropConfig) -> int:
    """Lines of datamodules/crop.py executed by one crop: a count of steps, not a time."""
    count = [0]

    def local(frame, event, arg):  # noqa: ANN001, ANN202
        count[0] += event == "line"
        return local

    def trace(frame, event, arg):  # noqa: ANN001, ANN202
        return local if frame.f_code.co_filename == crop_module.__file__ else None

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        crop_timeline(tl, crop, rng())
    finally:
        sys.settrace(previous)
    return count[0]


@pytest.mark.parametrize("select", SELECTS)
def test_2000_events_crop_in_linear_steps(select: str) -> None:
    crop = CropConfig(max_events=64, max_tokens=400, tokens_per_instance=K, select=select, max_instances={"ecg": 3})
    small, big = (Timeline("k", events=year(6 * days).events[:n]) for days, n in ((100, 500), (400, 2000)))
    ratio = _lines_run(big, crop) / _lines_run(small, crop)
    assert ratio < 6, ratio  # 4x the events: linear ~4, n log n ~5, quadratic ~16


def test_bad_settings_are_refused() -> None:
    with pytest.raises(DataError, match="select='last'"):
        CropConfig(select="last")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="max_instances.wearable=0"):
        CropConfig(max_instances={"wearable": 0})
    with pytest.raises(DataError, match="unknown modality 'fitbit'"):
        CropConfig(max_instances={"fitbit": 3})


def test_the_data_module_passes_select_and_caps_through(shards: Path) -> None:
    dm = OmniDataModule(shards, max_events=3, select="even", max_instances={"wearable": 1})
    train, val = dm.dataset("train").crop, dm.dataset("val").crop
    assert (train.select, train.max_instances, train.random) == ("even", {"wearable": 1}, True)
    assert (val.select, val.max_instances, val.random, val.max_events) == ("even", {"wearable": 1}, False, 3)
    timelines = list(dm.dataset("val"))
    assert timelines and all(len(tl.events) <= 3 and tl.count().get("wearable", 0) <= 1 for tl in timelines)
    with pytest.raises(DataError, match="select='first'"):
        OmniDataModule(shards, select="first")  # type: ignore[arg-type]


def test_the_config_keys_are_checked(shards: Path, tmp_path: Path) -> None:
    cfg = train_config(shards, tmp_path)
    assert (cfg.data.select, cfg.data.max_instances) == ("window", None)
    check_config(train_config(shards, tmp_path, "data.select=even", "data.max_instances={wearable:60}"))
    with pytest.raises(ConfigError, match=r"data\.select = 'last': expected one of 'window', 'recent', 'even'"):
        check_config(train_config(shards, tmp_path, "data.select=last"))
    with pytest.raises(ConfigError, match=r"data\.max_instances = 60"):
        check_config(train_config(shards, tmp_path, "data.max_instances=60"))


def test_a_training_run_crops_by_its_config(shards: Path, tmp_path: Path) -> None:
    """``omnimodal-train`` data settings reach the loader, with the token budget in the encoders' tokens."""
    cfg = train_config(shards, tmp_path, "data.select=even", "data.max_instances={wearable:2}", "data.max_tokens=40")
    task, dm, _ = build(cfg)
    crop = dm.dataset("train").crop
    assert (crop.select, crop.max_instances, crop.max_tokens) == ("even", {"wearable": 2}, 40)
    assert crop.tokens_per_instance == {m: e.num_tokens for m, e in task.model.encoders.items()}
    assert crop.tokens_per_instance["wearable"] > 1  # tokens, not instances
