"""Load-time selection of a long timeline's events: what a training or evaluation timeline holds.

A timeline may hold thousands of events (a year of daily wearable windows, a Holter ECG cut into 10-s
windows, years of visits). :func:`crop_timeline` bounds it, in two steps:

1. **Per-modality caps** (``max_instances``, e.g. ``{"wearable": 60}``): at most that many instances
   (measurements) of the modality are kept, the others dropped (an event left without measurements goes), so
   a year of wearable days does not crowd the clinical events out of the budget. Which ones: the most recent
   (``select`` = ``window`` or ``recent``) or evenly spaced over that modality's instances, first and last
   included (``even``).
2. **The budget** (``max_events`` and/or ``max_tokens``, tokens counted per instance with the modality's
   ``tokens_per_instance``, the encoder's k, default 1), applied by ``select``:

   - ``window``: consecutive events. ``random`` (training): a window of the most events that fit, its
     start drawn uniformly from the starts that give that many; otherwise the most recent one (= ``recent``).
   - ``recent``: the most recent events that fit (the same with and without ``random``).
   - ``even``: ``k`` events evenly spaced over the whole timeline, the first and the last included, ``k`` the
     largest that fits, found by bisection and a short look beyond (the cost of ``k`` spaced picks is not
     monotone in ``k`` when events cost differently). With ``random`` (training) each pick between the first
     and the last is jittered: drawn uniformly from the events nearer to its evenly spaced position than to
     its neighbours' (a stratified sample: every stretch of the timeline is still represented, and a
     different subset is seen each epoch); ``k`` is chosen on the jittered picks, so the budget holds.

A single event larger than the token budget keeps its first instances that fit. Everything is
deterministic given the ``rng``; a timeline within the bounds is returned as it is (and draws nothing).
Linear in the timeline (``window``, ``recent``, caps) or n log n (``even``).

Packing: cropped to a token budget, long timelines all come out nearly ``max_tokens`` long (0.98-0.99 of it
on a year of wearable days), and the model packs whole subjects into rows of ``model.row_len`` tokens. So
set ``row_len`` to a multiple ``m`` of ``max_tokens`` (with ``tokens_per_instance`` the encoders' k) and the
batch size to a multiple of ``m``: rows then hold ``m`` subjects each, nearly full (``scripts/bench/packing.py
--days 365``). A bound in events alone (``max_events``) leaves subjects' token counts uneven.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from .schema import DataError, Event, Measurement, Timeline, check_modality

Select = Literal["window", "recent", "even"]
SELECTS: tuple[str, ...] = ("window", "recent", "even")
LOOKAHEAD = 8  # select="even": counts above the bisection's k also tried


@dataclass
class CropConfig:
    """Bounds on a timeline at load time (module docstring).

    ``max_events`` / ``max_tokens`` bound what is kept (None = no bound); ``tokens_per_instance`` gives
    each modality's token count (the encoder's k; default 1). ``select``: ``window``, ``recent`` or ``even``.
    ``max_instances``: modality -> at most that many of its instances, applied first. ``random``: draw the
    window start / jitter the even picks (training); otherwise deterministic (evaluation, forecasting).
    """

    max_events: int | None = None
    max_tokens: int | None = None
    tokens_per_instance: dict[str, int] = field(default_factory=dict)
    random: bool = True
    select: Select = "window"
    max_instances: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.select not in SELECTS:
            raise DataError(f"select={self.select!r}", where="crop", hint=f"use one of {', '.join(SELECTS)}")
        for m, cap in self.max_instances.items():
            check_modality(m, where="max_instances")
            if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
                raise DataError(
                    f"max_instances.{m}={cap!r}",
                    where="crop",
                    hint="a count >= 1 (to leave a modality out, leave it out of model.modalities)",
                )


def crop_timeline(tl: Timeline, crop: CropConfig, rng: np.random.Generator) -> Timeline:
    """``tl`` within ``crop``'s caps and budget (module docstring); ``tl`` itself if nothing is dropped."""
    tl = cap_instances(tl, crop, rng)
    if crop.max_events is None and crop.max_tokens is None:
        return tl
    n = len(tl.events)
    cost = np.array([_cost(ev, crop) for ev in tl.events], dtype=np.int64)
    max_ev = crop.max_events or n
    max_tok = crop.max_tokens or int(cost.sum()) or 1
    if n <= max_ev and cost.sum() <= max_tok:
        return tl
    if crop.select == "even":
        keep = _even_within(cost, max_ev, max_tok, rng if crop.random else None)
    else:
        s, e = _window(cost, max_ev, max_tok, rng if crop.random and crop.select == "window" else None)
        keep = np.arange(s, e)
    events = [tl.events[i] for i in keep]
    if len(events) == 1 and cost[keep[0]] > max_tok:
        events = [_truncated(events[0], crop, max_tok)]
    return replace(tl, events=events)


def cap_instances(tl: Timeline, crop: CropConfig, rng: np.random.Generator) -> Timeline:
    """``tl`` with at most ``crop.max_instances[m]`` instances of each capped modality ``m``: the most recent,
    or evenly spaced (first and last included, jittered with ``random``) for ``select='even'``; events left
    empty are dropped. ``tl`` itself when no cap bites. Modalities are capped in name order (rng draws)."""
    if not crop.max_instances:
        return tl
    where: dict[str, list[tuple[int, int]]] = {}  # modality -> (event, position) of each instance, in time order
    for i, ev in enumerate(tl.events):
        for j, m in enumerate(ev.measurements):
            if m.modality in crop.max_instances:
                where.setdefault(m.modality, []).append((i, j))
    drop: set[tuple[int, int]] = set()
    for m in sorted(where):
        found, cap = where[m], crop.max_instances[m]
        if len(found) <= cap:
            continue
        if crop.select == "even":
            kept = set(_even_picks(len(found), cap, _jitter(rng, len(found)) if crop.random else None).tolist())
        else:
            kept = set(range(len(found) - cap, len(found)))
        drop.update(p for q, p in enumerate(found) if q not in kept)
    if not drop:
        return tl
    events = []
    for i, ev in enumerate(tl.events):
        ms = [x for j, x in enumerate(ev.measurements) if (i, j) not in drop]
        if len(ms) == len(ev.measurements):
            events.append(ev)
        elif ms:
            events.append(Event(ev.time_days, ev.age_days, ms))
    return replace(tl, events=events)


def _cost(ev: Event, crop: CropConfig) -> int:
    return sum(crop.tokens_per_instance.get(m.modality, 1) for m in ev.measurements)


def _truncated(ev: Event, crop: CropConfig, max_tok: int) -> Event:
    """``ev`` with its first instances that fit in ``max_tok`` tokens."""
    kept: list[Measurement] = []
    tok = 0
    for m in ev.measurements:
        tok += crop.tokens_per_instance.get(m.modality, 1)
        if tok > max_tok:
            break
        kept.append(m)
    return Event(ev.time_days, ev.age_days, kept)


def _window(cost: np.ndarray, max_ev: int, max_tok: int, rng: np.random.Generator | None) -> tuple[int, int]:
    """``[start, end)`` of the kept window: for each start the longest window that fits (two pointers: the
    end never moves back, so O(n)); with ``rng`` a start drawn among those giving the most events, else the
    earliest start whose window reaches the last event (the most recent window)."""
    n = len(cost)
    ends = [0] * n
    e, tok = 0, 0
    for s in range(n):
        if e < s:
            e, tok = s, 0
        while e < n and e - s < max_ev and tok + cost[e] <= max_tok:
            tok += int(cost[e])
            e += 1
        ends[s] = max(e, s + 1)
        if e > s:
            tok -= int(cost[s])
    if rng is None:
        s = next(s for s in range(n) if ends[s] >= n)
    else:
        best = max(ends[s] - s for s in range(n))
        s = int(rng.choice([s for s in range(n) if ends[s] - s == best]))
    return s, ends[s]


def _jitter(rng: np.random.Generator, n: int) -> np.ndarray:
    """One uniform draw per possible pick, made once so that every ``k`` tried uses the same draws."""
    return rng.random(n)


def _even_picks(n: int, k: int, u: np.ndarray | None = None) -> np.ndarray:
    """``k`` of ``n`` sorted indices, evenly spaced, ``0`` and ``n - 1`` included (``k = 1``: the last).

    Pick ``i`` sits at ``p_i = i (n - 1) / (k - 1)``; with ``u`` (uniform draws) each pick but the first and
    the last is drawn from its cell, the indices in ``(m_{i-1}, m_i]`` with ``m_i = (p_i + p_{i+1}) / 2``: cells
    are disjoint and each holds an index (spacing >= 1), so picks stay strictly increasing."""
    if k >= n:
        return np.arange(n)
    if k == 1:
        return np.array([n - 1])
    p = np.arange(k) * ((n - 1) / (k - 1))
    if u is None:
        picks = np.floor(p + 0.5).astype(np.int64)
    else:
        mid = (p[:-1] + p[1:]) / 2
        lo, hi = np.floor(mid[:-1]).astype(np.int64) + 1, np.floor(mid[1:]).astype(np.int64)
        picks = np.concatenate([[0], lo + np.floor(u[1 : k - 1] * (hi - lo + 1)).astype(np.int64), [n - 1]])
    picks[0], picks[-1] = 0, n - 1
    return picks


def _even_within(cost: np.ndarray, max_ev: int, max_tok: int, rng: np.random.Generator | None) -> np.ndarray:
    """The most evenly spaced picks (:func:`_even_picks`) that fit ``max_ev`` events and ``max_tok`` tokens:
    ``k`` by bisection on the picks' cost (O(n log n)), then the largest of the ``LOOKAHEAD`` counts above it
    that fits (the cost is not monotone in ``k``: this fills the budget ~1% better, 0.98-0.99 on a year of
    wearable days); ``k = 1`` (the last event) if nothing else fits."""
    n = len(cost)
    u = _jitter(rng, n) if rng is not None else None

    def fits(k: int) -> bool:
        return int(cost[_even_picks(n, k, u)].sum()) <= max_tok

    top = min(n, max_ev)
    lo, hi = 1, top
    if not fits(hi):
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        hi = next((k for k in range(min(top, hi + LOOKAHEAD), hi, -1) if fits(k)), hi)
    return _even_picks(n, hi, u)


__all__ = ["SELECTS", "CropConfig", "Select", "cap_instances", "crop_timeline"]
