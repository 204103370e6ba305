"""Long recordings -> windows on the timeline, with an exact account of what is left out.

A reader of a time-based modality (wearable, ECG, voice, breath, gait, face, medical video: every spec with a
time axis) returns the whole recording as a :class:`Stream`. :func:`cut` turns it into *instances of the
canonical length* (the spec's window: a wearable day, a 10-s ECG, a 4-s audio clip, a 2-s video clip), chosen by
the modality's :class:`WindowPolicy`.

**A window is its own measurement at its own time**: recording start (the events-table row's time) + the
window's offset. Windows at different offsets are therefore different events of the timeline, exactly like
two visits; windows at the same time as other measurements share their event. In ``meta.json`` each window's
measurement also says which recording it came from (``recording``: its index within the sample), its index in
that recording (``window``), its offset (``offset_s``) and the fraction of its span that was observed
(``coverage``). The backbone sees one token per window (or the encoder's k tokens), with the window's own time
embedding: nothing is special-cased in the model, and load-time selection (``data.select``,
``data.max_instances``) bounds how many of a long recording's windows a training timeline holds.

Accounting is exact, in samples of the stream's time axis: *duration in the file = duration kept + every
duration left out*, each left-out part under one reason (the order below decides where overlapping windows'
parts go). Kept = the union of the kept windows' spans (overlapping windows, ``hop_s < length``, count once).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .specs import AudioSpec, DataError, Spec, VideoSpec, WaveformSpec, WearableSpec

#: reasons a part of a recording is left out, in the order the accounting attributes overlaps
REASONS: dict[str, str] = {
    "low_coverage": "window below min_coverage (gaps or a short tail)",
    "after_death": "window after the subject's death",
    "over_max_windows": "more windows than max_windows",
    "between_windows": "between windows (hop_s longer than the window)",
    "past_read_limit": "past max_read_s (not read)",
}
SELECT = ("first", "last", "even")


@dataclass(frozen=True)
class WindowPolicy:
    """How one modality's long recordings are cut into windows (a field of the build config: ``windows``).

    ``length_s``: the window (None = the spec's canonical length; at most that: a shorter window is padded and
    masked like a short recording). ``hop_s``: from one window's start to the next (None = back to back).
    ``max_windows``: at most this many per recording (None = all), chosen by ``select``: ``first``, ``last`` or
    ``even`` (evenly spaced, first and last included). ``min_coverage``: the fraction of a window's length that
    must be observed (a wearable day with fewer minutes present, a short tail) for it to be kept. A recording
    shorter than one window is always one instance. ``max_read_s``: read at most this much of a recording (a
    memory bound; None = all): the rest is reported as not read.
    """

    length_s: float | None = None
    hop_s: float | None = None
    max_windows: int | None = None
    select: str = "even"
    min_coverage: float = 0.0
    max_read_s: float | None = None

    def check(self, where: str) -> WindowPolicy:
        def bad(key: str, why: str) -> DataError:
            return DataError(f"{where}.{key} = {getattr(self, key)!r}: {why}", hint=f"fix {where}.{key} in the config")

        for key in ("length_s", "hop_s", "max_read_s"):
            v = getattr(self, key)
            if v is not None and not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise bad(key, "expected a positive number of seconds, or null")
        mw = self.max_windows
        if mw is not None and (isinstance(mw, bool) or not isinstance(mw, int) or mw < 1):
            raise bad("max_windows", "expected an integer >= 1, or null for every window")
        if self.select not in SELECT:
            raise bad("select", f"expected one of {', '.join(SELECT)}")
        mc = self.min_coverage
        if isinstance(mc, bool) or not isinstance(mc, int | float) or not 0.0 <= mc <= 1.0:
            raise bad("min_coverage", "expected a fraction in [0, 1]")
        return self

    def replace(self, fields: Mapping[str, Any], where: str) -> WindowPolicy:
        """This policy with some fields changed (unknown fields and bad values refused, naming ``where.key``)."""
        known = [f.name for f in dataclasses.fields(self)]
        for k in fields:
            if k not in known:
                raise DataError(f"unknown window policy field {where}.{k}", hint=f"use one of {', '.join(known)}")
        return dataclasses.replace(self, **fields).check(where)


#: defaults per layout kind (a modality's declaration may set its own): every wearable day that is at least 20%
#: worn; a bounded, evenly spaced sample of long ECG, audio and video recordings
DEFAULT_POLICIES: dict[str, WindowPolicy] = {
    "timeseries": WindowPolicy(min_coverage=0.2),
    "waveform": WindowPolicy(max_windows=8, min_coverage=0.5, max_read_s=48 * 3600.0),
    "audio": WindowPolicy(max_windows=8, min_coverage=0.25, max_read_s=1800.0),
    "video": WindowPolicy(max_windows=4, min_coverage=0.25, max_read_s=600.0),
}


def timing(spec: Spec) -> tuple[int, float] | None:
    """``(window samples, samples per second)`` of a spec's time axis; None for specs without one."""
    if isinstance(spec, WearableSpec):
        return spec.window_minutes, 1.0 / 60.0
    if isinstance(spec, WaveformSpec):
        return spec.samples, float(spec.rate_hz)
    if isinstance(spec, AudioSpec):
        return spec.max_samples, float(spec.rate_hz)
    if isinstance(spec, VideoSpec):
        return spec.max_frames, float(spec.fps)
    return None


def policies(
    declared: Mapping[str, WindowPolicy | None], specs: Mapping[str, Spec], overrides: Mapping[str, Mapping[str, Any]]
) -> dict[str, WindowPolicy]:
    """The window policy of every time-based modality: its declaration's (or its layout kind's default) with
    the build config's ``windows.<modality>.<field>`` overrides (each checked, naming the key)."""
    unknown = set(overrides) - {m for m, s in specs.items() if timing(s) is not None}
    if unknown:
        raise DataError(
            f"windows.{sorted(unknown)[0]}: not a time-based modality",
            hint=f"window policies apply to {', '.join(m for m, s in specs.items() if timing(s) is not None)}",
        )
    out = {}
    for m, spec in specs.items():
        if timing(spec) is None:
            continue
        base = declared.get(m) or DEFAULT_POLICIES[spec.kind]
        out[m] = base.replace(overrides.get(m, {}), f"windows.{m}")
    return out


@dataclass
class Stream:
    """A whole recording as a reader returns it: ``data`` along ``axis`` at ``rate_hz`` samples per second from
    the recording's start (``data.shape[axis]`` samples read). ``duration_s``: the recording's length in the
    file (more than was read when ``max_read_s`` stopped the reader). ``observed``: per time sample, whether
    anything was recorded (None = everything). ``to_canonical``: window -> canonical array (e.g. ECG leads onto
    the spec's lead rows; None = the window is canonical, padded by :func:`cut` where the spec's shape is
    fixed). ``notes``: lines for the build report; ``problems``: input that was used but is suspect (timestamps
    out of order or repeated): reported, and a stop under ``--strict``."""

    data: np.ndarray
    axis: int
    rate_hz: float
    duration_s: float
    observed: np.ndarray | None = None
    to_canonical: Callable[[np.ndarray], np.ndarray] | None = None
    pad: float | None = None  # fill of a fixed-shape window past the recording's end (None: variable axis)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return int(self.data.shape[self.axis])


@dataclass
class Window:
    offset_s: float
    index: int
    coverage: float
    array: np.ndarray


@dataclass
class Account:
    """What a policy did with one recording (seconds; windows by reason)."""

    duration_s: float = 0.0
    kept_s: float = 0.0
    left_out_s: dict[str, float] = field(default_factory=dict)
    windows_kept: int = 0
    windows_dropped: dict[str, int] = field(default_factory=dict)
    recordings: int = 1

    def add(self, other: Account) -> None:
        self.duration_s += other.duration_s
        self.kept_s += other.kept_s
        self.windows_kept += other.windows_kept
        self.recordings += other.recordings
        for mine, theirs in ((self.left_out_s, other.left_out_s), (self.windows_dropped, other.windows_dropped)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["left_out_s"] = {k: round(v, 3) for k, v in sorted(self.left_out_s.items())}
        d["windows_dropped"] = dict(sorted(self.windows_dropped.items()))
        d["duration_s"], d["kept_s"] = round(self.duration_s, 3), round(self.kept_s, 3)
        return d


def tally(accounts: dict[str, Account], modality: str, account: Account) -> None:
    """Add one recording's (or one subject's) account to the per-modality totals."""
    accounts.setdefault(modality, Account(recordings=0)).add(account)


def cut(stream: Stream, spec: Spec, policy: WindowPolicy, stop_s: float | None = None) -> tuple[list[Window], Account]:
    """The kept windows of ``stream`` (canonical arrays, in time order) and the account of the rest.

    ``stop_s``: seconds after the recording's start at which the subject died; windows that do not end by then
    are dropped (reason ``after_death``). An empty list means the policy keeps nothing of this recording.
    """
    full, rate = timing(spec) or (0, 0.0)
    n = stream.samples
    length = full if policy.length_s is None else min(full, max(1, int(round(policy.length_s * rate))))
    hop = length if policy.hop_s is None else max(1, int(round(policy.hop_s * rate)))
    obs = np.ones(n, bool) if stream.observed is None else np.asarray(stream.observed, bool)
    csum = np.concatenate([[0], np.cumsum(obs, dtype=np.int64)])
    starts = np.arange(0, max(n, 1), hop) if n > length else np.zeros(1, np.int64)
    ends = np.minimum(starts + length, n)
    coverage = (csum[ends] - csum[starts]) / float(length if n > length else max(n, 1))
    reason = np.full(len(starts), "", dtype=object)
    if n > length:
        reason[coverage < policy.min_coverage] = "low_coverage"
    if stop_s is not None:
        reason[(reason == "") & (ends > stop_s * rate)] = "after_death"
    ok = np.flatnonzero(reason == "")
    if policy.max_windows is not None and len(ok) > policy.max_windows:
        keep = _select(len(ok), policy.max_windows, policy.select)
        reason[np.delete(ok, keep)] = "over_max_windows"
    account = _account(starts, ends, reason, n, rate, stream.duration_s)
    windows = []
    for i in np.flatnonzero(reason == ""):
        s, e = int(starts[i]), int(ends[i])
        piece = np.take(stream.data, np.arange(s, e), axis=stream.axis)
        if stream.pad is not None and e - s < full:
            width = [(0, 0)] * piece.ndim
            width[stream.axis] = (0, full - (e - s))
            piece = np.pad(piece, width, constant_values=stream.pad)
        arr = stream.to_canonical(piece) if stream.to_canonical else piece
        windows.append(Window(float(s / rate), int(i), float(round(coverage[i], 4)), arr))
    return windows, account


def first_window(stream: Stream, spec: Spec) -> np.ndarray:
    """The recording's first window, whatever its coverage (``read_measurement``'s one array per file)."""
    return cut(stream, spec, WindowPolicy(max_windows=1, select="first"))[0][0].array


def _select(n: int, k: int, how: str) -> np.ndarray:
    if how == "first":
        return np.arange(k)
    if how == "last":
        return np.arange(n - k, n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def _account(
    starts: np.ndarray, ends: np.ndarray, reason: np.ndarray, n: int, rate: float, duration_s: float
) -> Account:
    """Exact: each read sample is kept (in a kept window), or left out under the first reason (in REASONS'
    order) of a dropped window that covers it, or falls between windows; the unread rest is past the limit."""
    covered = np.zeros(n, bool)
    samples: dict[str, int] = {}
    for why in ("", *REASONS):
        sel = np.flatnonzero(reason == why)
        if not len(sel):
            continue
        mark = np.zeros(n + 1, np.int64)
        np.add.at(mark, starts[sel], 1)
        np.add.at(mark, ends[sel], -1)
        inside = np.cumsum(mark[:n]) > 0
        samples[why] = int((inside & ~covered).sum())
        covered |= inside
    kept = samples.pop("", 0)
    between = n - int(covered.sum())
    if between:
        samples["between_windows"] = between
    read_s = n / rate
    left = {k: v / rate for k, v in samples.items() if v}
    if duration_s > read_s + 1e-9:
        left["past_read_limit"] = duration_s - read_s
    dropped = {k: int((reason == k).sum()) for k in REASONS if (reason == k).any()}
    return Account(
        duration_s=max(duration_s, read_s),
        kept_s=kept / rate,
        left_out_s=left,
        windows_kept=int((reason == "").sum()),
        windows_dropped=dropped,
    )
