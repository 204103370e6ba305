"""The hidden health state of a synthetic subject and the disease it drives.

Each subject has static traits (birth date, sex, SNP dosages and the genetic risk score they give,
a baseline health vector, a personal drift rate) and a latent state vector over :data:`STATE_NAMES`
(all oriented so that *higher is worse*) that evolves as a noisy drift process on a fine time grid.
A neurodegenerative-cardiometabolic disease strikes with a hazard that grows with the state and the
genetic risk; after onset the state drifts faster. Visits happen at irregular (gamma) gaps over a
2-10 year follow-up and decide which modalities are measured.

Between the points of that grid the state is a continuous path (:meth:`Subject.state_at`): the simulator's
process is a Brownian motion with a drift that is constant within each grid step, so given the states at the
two ends of a step the path in between is exactly a Brownian bridge (linear interpolation of the ends plus a
pinned noise of the simulator's own diffusion); past the last visit it runs on with the same drift and
diffusion. Recordings that last days (wearables, Holter ECG) read the state along this path.

Every draw comes from a generator seeded by ``SeedSequence(seed, spawn_key=(index, stream, ...))``,
so a subject (and each of its files) depends only on ``(seed, index)``, never on worker count or order.

Interventions (opt-in, ``simulate_subject(interventions=...)``, :mod:`.interventions`) change the drift by known
amounts from their start to their stop (:class:`Treatment`); who gets what comes from the subject's own stream
:data:`STREAM_TREAT`, and the trajectory uses the same noise and onset threshold as without them, so an untreated
person is the same person, byte for byte, and a treated one differs only by the treatment's effect.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..interventions import Span

#: 2.0: per-modality streams for visit plans and files (the modality registry); 2.1: continuous recordings
#: (multi-day wearable wear periods on the continuous state path, Holter ECGs), daily rhythm traits
GENERATOR_VERSION = "2.1"

#: latent state components, each oriented so that higher = worse health
STATE_NAMES: tuple[str, ...] = ("cardio", "neuro", "resp", "metabolic", "frailty", "mood")
N_STATE = len(STATE_NAMES)
CARDIO, NEURO, RESP, METABOLIC, FRAILTY, MOOD = range(N_STATE)

N_SNPS = 32
N_GENES = 32
SNP_IDS: tuple[str, ...] = tuple(f"rs{1000 + i}" for i in range(N_SNPS))
GENE_IDS: tuple[str, ...] = tuple(f"GENE{i:03d}" for i in range(N_GENES))


#: sub-stream of a modality's draws: a stable number from its name, so that declaring a new modality never
#: changes the draws (visits, files) of the others
def modality_stream(modality: str) -> int:
    return zlib.crc32(modality.encode()) & 0x7FFFFFFF


def visit_rates() -> dict[str, float]:
    """Share of visits at which each modality is measured (its declaration's ``visit_rate``; omics:
    expression, the genotype is at visit 0), in the registry's order (also the order within a visit)."""
    from ..modalities import registry  # noqa: PLC0415 - declarations only, no torch

    return {m: d.visit_rate for m, d in registry().items()}


YEAR_DAYS = 365.25
_GRID_YEARS = 1.0 / 12.0
_SIGMA = 0.22  # diffusion of the state per sqrt(year)
_HAZARD_W = np.array([0.55, 0.85, 0.1, 0.45, 0.2, 0.15])  # log-hazard weights on the state
_HAZARD_PRS = 0.45
_LOG_H0 = -3.55  # baseline log-hazard per year (gives ~30% incidence)
_ONSET_BOOST = np.array([0.35, 0.6, 0.05, 0.25, 0.3, 0.25])  # extra drift per year after onset
_FIRST_VISIT = (dt.date(2008, 1, 1), dt.date(2015, 12, 31))
_PATH_STEP_DAYS = 0.25  # resolution of the continuous path between grid points (linear in between)


@dataclass(frozen=True)
class Biology:
    """Cohort-independent model parameters (the same for every seed of a generator version)."""

    maf: np.ndarray  # [N_SNPS] minor allele frequencies
    snp_weight: np.ndarray  # [N_SNPS] effect sizes of the genetic risk score
    prs_load: np.ndarray  # [N_STATE] how the genetic risk score loads on baseline and drift
    gene_base: np.ndarray  # [N_GENES] mean log-expression
    gene_load: np.ndarray  # [N_GENES, N_STATE] expression loadings on the state


def biology() -> Biology:
    """The fixed parameters, drawn once from a constant seed."""
    rng = np.random.default_rng(np.random.SeedSequence(20240611))
    weight = rng.normal(0.0, 1.0, N_SNPS) * (rng.random(N_SNPS) < 0.5)
    load = rng.normal(0.0, 0.15, (N_GENES, N_STATE))
    load[np.arange(N_GENES), np.arange(N_GENES) % N_STATE] += rng.uniform(0.5, 1.0, N_GENES)
    return Biology(
        maf=rng.uniform(0.1, 0.5, N_SNPS),
        snp_weight=np.abs(weight),
        prs_load=np.array([0.5, 0.7, 0.2, 0.5, 0.3, 0.2]),
        gene_base=rng.uniform(4.0, 10.0, N_GENES),
        gene_load=load,
    )


BIOLOGY = biology()


@dataclass
class Visit:
    """One visit: when, the hidden state then, and which modalities are measured."""

    index: int
    days: float  # since the first visit
    time: dt.datetime
    age_years: float
    state: np.ndarray  # [N_STATE]
    diseased: bool  # onset happened at or before this visit
    modalities: list[str] = field(default_factory=list)


@dataclass
class Treatment:
    """The interventions one synthetic subject received (:mod:`.interventions`): the ``arm`` it was in
    (``"trial"``: randomised; ``"care"``: treated by indication), per intervention code whether it was
    ``assigned`` to it (trial: randomised to it, whether or not it could start; care: started), the day of the
    trial's randomisation visit (``enrolled_days``; NaN in the care arm, or when the person was already diagnosed
    then), and its ``spans`` (days since the first visit; a dose change splits a span) with each span's change
    of the drift per year ``effects`` (``[N_STATE]``, negative = better). ``recorded``: its START/STOP rows are in
    the events table (False in a cohort that does not measure ``clinical``). ``planned``: per code, the length in
    days drawn for a programme (None: ongoing), whether or not it started."""

    arm: str
    assigned: dict[str, bool] = field(default_factory=dict)
    enrolled_days: float = float("nan")
    spans: list[Span] = field(default_factory=list)
    effects: list[np.ndarray] = field(default_factory=list)
    recorded: bool = True
    planned: dict[str, float | None] = field(default_factory=dict)  # per code: a programme's drawn length (days)

    def start(self, span: Span, effect: np.ndarray) -> None:
        self.spans.append(span)
        self.effects.append(np.asarray(effect, float))

    def integral(self, a: float, b: np.ndarray) -> np.ndarray:
        """``[len(b), N_STATE]``: the effects' sum over ``[a, b]`` (days since the first visit), state units."""
        b = np.atleast_1d(np.asarray(b, float))
        out = np.zeros((len(b), N_STATE))
        for span, effect in zip(self.spans, self.effects):
            stop = np.inf if span.stop_days is None else span.stop_days
            years = np.clip(np.minimum(b, stop) - max(a, span.start_days), 0.0, None) / YEAR_DAYS
            out += years[:, None] * effect
        return out

    def step(self, a: float, b: float) -> np.ndarray | None:
        """The effects' sum over one grid step ``[a, b]``, or None where no span with an effect overlaps it."""
        if not any(
            span.start_days < b and (span.stop_days is None or span.stop_days > a) and np.any(effect != 0.0)
            for span, effect in zip(self.spans, self.effects)
        ):
            return None
        return self.integral(a, np.array([b]))[0]

    def rate_at(self, days: float) -> np.ndarray:
        """The effects in force at ``days``: the change of the drift per year there."""
        out = np.zeros(N_STATE)
        for span, effect in zip(self.spans, self.effects):
            if span.active_at(days):
                out = out + effect
        return out


@dataclass
class Subject:
    """A synthetic subject: static traits, latent parameters, visits, disease outcome."""

    index: int
    subject_id: str
    sex: str
    birth_date: dt.date
    snps: np.ndarray  # [N_SNPS] dosages 0/1/2
    prs: float  # standardized genetic risk score
    baseline: np.ndarray  # [N_STATE] state at the first visit
    drift: np.ndarray  # [N_STATE] personal drift per year before onset
    onset_days: float  # NaN when no onset during follow-up
    end_days: float  # end of follow-up (= last visit)
    split: str
    consent: bool
    traits: dict[str, float] = field(default_factory=dict)  # stable looks and habits: height, voice, sleep
    visits: list[Visit] = field(default_factory=list)
    seed: int = 0  # of the cohort: the continuous path's own draws depend on (seed, index)
    grid_days: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the simulator's grid (visits included)
    grid_states: np.ndarray = field(default_factory=lambda: np.zeros((0, N_STATE)))  # [len(grid_days), N_STATE]
    risk0: float = 0.0  # the log-hazard's personal offset (genetic risk and age at the first visit): :func:`log_hazard`
    treatment: Treatment | None = None  # interventions (``simulate_subject(interventions=...)``), else None

    def drift_at(self, days: float) -> np.ndarray:
        """The personal drift per year before onset in force at ``days``: :attr:`drift` plus the effects of the
        interventions active then."""
        return self.drift if self.treatment is None else self.drift + self.treatment.rate_at(days)

    @property
    def first_time(self) -> dt.datetime:
        return self.visits[0].time

    def when(self, days: float) -> dt.datetime:
        """The datetime ``days`` after the first visit, to the second."""
        return self.first_time + dt.timedelta(seconds=round(days * 86400.0))

    def state_at(self, days: np.ndarray) -> np.ndarray:
        """The hidden state ``[len(days), N_STATE]`` at ``days`` since the first visit (>= 0) on the continuous
        path: a Brownian bridge between the simulator's grid points (exactly the visit states at the visits),
        the same drift-diffusion after the last one. The same ``(seed, index)`` always gives the same path,
        whichever times are asked and by which renderer."""
        days = np.atleast_1d(np.asarray(days, float))
        out = np.empty((len(days), N_STATE))
        step = np.clip(np.searchsorted(self.grid_days, days, side="right") - 1, 0, len(self.grid_days) - 1)
        for i in np.unique(step):
            at = step == i
            knots, path = self._segment(int(i), float(days[at].max()))
            out[at] = np.stack([np.interp(days[at], knots, path[:, k]) for k in range(N_STATE)], 1)
        return out

    def _segment(self, i: int, until: float) -> tuple[np.ndarray, np.ndarray]:
        """Knot times and states of the path from grid point ``i`` to the next one (a bridge) or, past the last
        one, to ``until`` (free drift-diffusion); its draws come from the stream ``(STREAM_PATH, i)`` in time
        order, so a longer segment past the end extends a shorter one."""
        rng = subject_rng(self.seed, self.index, STREAM_PATH, i)
        start, x0 = self.grid_days[i], self.grid_states[i]
        last = i + 1 >= len(self.grid_days)
        end = max(until, start) if last else self.grid_days[i + 1]
        m = max(int(np.ceil((end - start) / _PATH_STEP_DAYS - 1e-9)), 1)
        knots = start + _PATH_STEP_DAYS * np.arange(m + 1)
        if not last:
            knots[-1] = end
        dty = np.diff(knots) / YEAR_DAYS
        walk = np.vstack(
            [np.zeros(N_STATE), np.cumsum(_SIGMA * np.sqrt(dty)[:, None] * rng.normal(size=(m, N_STATE)), 0)]
        )
        frac = ((knots - start) / (end - start if end > start else 1.0))[:, None]
        if last:  # on past the end of follow-up with the simulator's drift (faster after onset)
            rate = self.drift + (_ONSET_BOOST if self.onset_days <= start else 0.0)
            path = x0 + rate * ((knots - start) / YEAR_DAYS)[:, None] + walk
            if self.treatment is not None:  # and the interventions' effects while they are in force
                path = path + self.treatment.integral(start, knots)
            return knots, path
        return knots, x0 + frac * (self.grid_states[i + 1] - x0) + walk - frac * walk[-1]


#: sub-streams of a subject's seed: the trajectory and visits, the files (+ visit, modality), the looks,
#: which modalities each visit measures (+ modality), the continuous path between grid points (+ grid step),
#: who gets which intervention (+ the intervention's code, :mod:`.interventions`)
STREAM_STATE, STREAM_FILES, STREAM_TRAITS, STREAM_PLAN, STREAM_PATH, STREAM_TREAT = 0, 1, 2, 3, 4, 5


def subject_rng(seed: int, index: int, *stream: int) -> np.random.Generator:
    """Independent generator for one subject and one sub-stream (``STREAM_*``, then any more keys)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, *stream)))


def file_rng(seed: int, index: int, visit_index: int, modality: str) -> np.random.Generator:
    """The generator of subject ``(seed, index)``'s file (or clinical rows) of ``modality`` at a visit."""
    return subject_rng(seed, index, STREAM_FILES, visit_index, modality_stream(modality))


def subject_id(index: int) -> str:
    return f"SYN-{index:06d}"


def genetic_risk(snps: np.ndarray, bio: Biology = BIOLOGY) -> float:
    """Standardized weighted dosage sum (mean 0, sd 1 in the population)."""
    mean = 2.0 * bio.maf
    sd = np.sqrt(np.sum(bio.snp_weight**2 * 2.0 * bio.maf * (1.0 - bio.maf)))
    return float(np.dot(bio.snp_weight, snps - mean) / sd)


def _clinic_hours(rng: np.random.Generator, n: int) -> np.ndarray:
    """Visit times of day: 08:00-16:55 in 5-minute steps, as hours."""
    return rng.integers(8 * 12, 17 * 12, n) / 12.0


def _visit_days(rng: np.random.Generator, hour0: float) -> np.ndarray:
    """Days since the first visit: gamma gaps (1 month minimum) over a 2-10 year span, each visit
    at its own time of day."""
    span = rng.uniform(2.0, 10.0) * YEAR_DAYS
    gaps = np.clip(rng.gamma(2.0, 0.5, 64), 1.0 / 12.0, None) * YEAR_DAYS
    days = np.floor(np.concatenate([[0.0], np.cumsum(gaps)]))
    days = days[days <= span]
    days = days if len(days) >= 2 else np.array([0.0, np.floor(span)])
    hours = _clinic_hours(rng, len(days))
    hours[0] = hour0
    return days + (hours - hour0) / 24.0


def log_hazard(state: np.ndarray, risk0: float | np.ndarray) -> np.ndarray:
    """Log of the disease hazard per year at ``state`` (``[..., N_STATE]``) for a person whose personal offset is
    ``risk0`` (:attr:`Subject.risk0`): what :func:`_simulate` uses on its grid, and what the benchmark's oracles
    (:mod:`.oracle`) integrate forward."""
    return _LOG_H0 + risk0 + np.asarray(state) @ _HAZARD_W


def _simulate(
    rng: np.random.Generator,
    x0: np.ndarray,
    drift: np.ndarray,
    risk0: float,
    visit_days: np.ndarray,
    policy: Any = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Drift-diffusion of the state on a monthly grid plus the visit times; returns the grid, the state at
    each grid point and the onset day (NaN if none before the last visit).

    ``policy`` (interventions, :class:`.interventions.Policy`): at each visit, in time order, it sees the state
    and whether onset has happened (``policy.visit(v, days, state, onset)``) and may start treatments; the
    effects of its ``treatment`` in force over a step are added to that step. The noise and the threshold are
    drawn as without it, so an untreated path is the same path."""
    grid = np.union1d(np.arange(0.0, visit_days[-1], _GRID_YEARS * YEAR_DAYS), visit_days)
    threshold, cum = rng.exponential(), 0.0
    onset, x = float("nan"), x0.copy()
    states = np.empty((len(grid), N_STATE))
    states[0] = x
    noise = rng.normal(0.0, 1.0, (len(grid), N_STATE))
    visit_at = {int(j): v for v, j in enumerate(np.searchsorted(grid, visit_days))} if policy is not None else {}
    for i in range(1, len(grid)):
        if i - 1 in visit_at:
            policy.visit(visit_at[i - 1], float(grid[i - 1]), x, onset)
        dty = (grid[i] - grid[i - 1]) / YEAR_DAYS
        rate = drift + (_ONSET_BOOST if onset == onset else 0.0)
        x = x + rate * dty + _SIGMA * np.sqrt(dty) * noise[i]
        if policy is not None and (extra := policy.treatment.step(grid[i - 1], grid[i])) is not None:
            x = x + extra
        states[i] = x
        if onset != onset:
            hazard = np.exp(_LOG_H0 + risk0 + float(_HAZARD_W @ x))
            step = hazard * dty
            if cum + step >= threshold:
                onset = grid[i - 1] + (threshold - cum) / step * (grid[i] - grid[i - 1])
            cum += step
    if len(grid) - 1 in visit_at:  # the last visit: a start there acts past the end of follow-up
        policy.visit(visit_at[len(grid) - 1], float(grid[-1]), x, onset)
    return grid, states, onset


def _split(u: float) -> str:
    return "train" if u < 0.8 else ("val" if u < 0.9 else "test")


def _plan_modalities(seed: int, index: int, n_visits: int) -> list[list[str]]:
    """Which modalities each visit measures: per modality, its own stream of draws against its visit rate, so
    a modality's draws do not depend on which others are declared (~1.5% of visits measure nothing and leave
    no event; the diagnosis visit always has clinical rows)."""
    rates = visit_rates()
    draws = {m: subject_rng(seed, index, STREAM_PLAN, modality_stream(m)).random(n_visits) for m in rates}
    plans = []
    for v in range(n_visits):
        mods = [m for m, rate in rates.items() if draws[m][v] < rate]
        if v == 0 and "omics" in rates and "omics" not in mods:  # genotype at the first visit
            mods.append("omics")
        plans.append([m for m in rates if m in mods])  # may be empty: a visit at which nothing is measured
    return plans


def _traits(rng: np.random.Generator, sex: str) -> dict[str, float]:
    male = sex == "M"
    return {
        "height_m": rng.normal(1.77 if male else 1.64, 0.07),
        "weight_kg": rng.normal(80.0 if male else 66.0, 9.0),
        "f0_hz": rng.normal(118.0 if male else 205.0, 12.0),
        "skin": rng.uniform(0.0, 1.0),
        "hue": rng.uniform(0.0, 1.0),
        "direction": float(rng.random() < 0.5),
        # habits (drawn after the looks, which stay as they were): sleep, how long and how well a wearable is worn
        "bedtime_h": rng.normal(23.0, 0.7),  # clock hours
        "sleep_h": float(np.clip(rng.normal(7.4, 0.6), 5.0, 9.5)),
        "wear_factor": float(np.exp(rng.normal(0.0, 0.35))),  # x the wear period's default length
        "night_off": rng.uniform(0.0, 0.5),  # chance the wearable is off the wrist on a night
    }


def simulate_subject(seed: int, index: int, bio: Biology = BIOLOGY, interventions: Any = None) -> Subject:
    """Draw one subject's traits, trajectory, visits and outcome from ``(seed, index)``.

    ``interventions`` (an :class:`.interventions.InterventionConfig`, default None: none): who is treated, when,
    and with what effect; the same ``(seed, index)`` is then the same person, treated or not (its other draws
    unchanged), and :attr:`Subject.treatment` records what it got."""
    rng = subject_rng(seed, index, STREAM_STATE)
    sex = "F" if rng.random() < 0.52 else "M"
    age0 = rng.uniform(40.0, 80.0)
    lo, hi = (d.toordinal() for d in _FIRST_VISIT)
    hour0 = float(_clinic_hours(rng, 1)[0])
    first = dt.datetime.fromordinal(int(rng.integers(lo, hi + 1))) + dt.timedelta(minutes=round(hour0 * 60))
    birth = first.date() - dt.timedelta(days=int(round(age0 * YEAR_DAYS)))
    snps = rng.binomial(2, bio.maf).astype(np.int64)
    prs = genetic_risk(snps, bio)
    aging = (age0 - 60.0) / 10.0
    shared = rng.normal(0.0, 0.4)
    baseline = (
        0.35 * prs * bio.prs_load
        + 0.3 * aging
        + shared
        + rng.normal(0.0, 0.5, N_STATE)
        + (0.15 if sex == "M" else -0.1) * np.eye(N_STATE)[CARDIO]
    )
    drift = 0.04 + 0.06 * prs * bio.prs_load + 0.03 * aging + rng.normal(0.0, 0.08, N_STATE)
    days = _visit_days(rng, hour0)
    risk0 = _HAZARD_PRS * prs + 0.25 * aging
    plans = _plan_modalities(seed, index, len(days))  # own streams: before the trajectory, for the policy's labs
    traits = _traits(subject_rng(seed, index, STREAM_TRAITS), sex)
    policy = None
    if interventions is not None:
        policy = interventions.policy(seed, index, days, sex, traits, ["clinical" in p for p in plans])
    grid, grid_states, onset = _simulate(rng, baseline, drift, risk0, days, policy)
    states = grid_states[np.searchsorted(grid, days)]
    split = _split(rng.random())
    consent = not (rng.random() < 0.005 or index % 64 == 17)  # ~2%, and always one when n >= 18
    subj = Subject(
        index=index,
        subject_id=subject_id(index),
        sex=sex,
        birth_date=birth,
        snps=snps,
        prs=prs,
        baseline=baseline,
        drift=drift,
        onset_days=onset,
        end_days=float(days[-1]),
        split=split,
        consent=consent,
        traits=traits,
        seed=seed,
        grid_days=grid,
        grid_states=grid_states,
        risk0=risk0,
        treatment=None if policy is None else policy.treatment,
    )
    if onset == onset:  # the diagnosis is recorded at the first visit at or after onset
        first_ill = int(np.searchsorted(days, onset))
        plans[first_ill] = [m for m in visit_rates() if m == "clinical" or m in plans[first_ill]]
    for v, (d, x, mods) in enumerate(zip(days, states, plans)):
        time = first + dt.timedelta(minutes=round(d * 1440.0))
        subj.visits.append(
            Visit(
                index=v,
                days=float(d),
                time=time,
                age_years=(time.date() - birth).days / YEAR_DAYS,
                state=x,
                diseased=bool(onset <= d),
                modalities=mods,
            )
        )
    return subj


def sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


@dataclass(frozen=True)
class Recordings:
    """Size knobs of the recordings that last hours or days (``synthesize_cohort(recordings=...)``,
    ``omnimodal-synth --wear-days/--holter-share/--holter-minutes``). A new default is a new generator version
    (:data:`GENERATOR_VERSION`: the demo cohort's cache key)."""

    wear_days: float = 7.0  # a wearable visit's wear period; each person x their wear_factor (1/3 to 3x this)
    holter_share: float = 0.12  # share of the ECG visits that record a Holter instead of a 10-s ECG
    holter_minutes: float = 15.0  # a Holter's length (a demo default: real ones last 24-48 h)

    def check(self) -> Recordings:
        if not (np.isfinite(self.wear_days) and self.wear_days > 0):
            raise ValueError(f"wear_days must be > 0, got {self.wear_days}")
        if not 0.0 <= self.holter_share <= 1.0:
            raise ValueError(f"holter_share must be in [0, 1], got {self.holter_share}")
        if not (np.isfinite(self.holter_minutes) and self.holter_minutes > 0):
            raise ValueError(f"holter_minutes must be > 0, got {self.holter_minutes}")
        return self


DEFAULT_RECORDINGS = Recordings()


@dataclass
class RenderContext:
    """What a renderer needs for one file: the subject, the visit, its own generator, the output root, the
    size knobs of long recordings."""

    subject: Subject
    visit: Visit
    rng: np.random.Generator
    root: Path
    modality: str
    recordings: Recordings = DEFAULT_RECORDINGS

    def s(self, name: str) -> float:
        """One hidden state component at this visit."""
        return float(self.visit.state[STATE_NAMES.index(name)])

    def state_at(self, seconds: np.ndarray) -> np.ndarray:
        """The hidden state ``[len(seconds), N_STATE]`` at ``seconds`` after this visit (continuous path)."""
        return self.subject.state_at(self.visit.days + np.asarray(seconds, float) / 86400.0)

    def clock_hours(self) -> float:
        """Time of day of this visit in hours (the start of its recordings)."""
        t = self.visit.time
        return t.hour + t.minute / 60.0 + t.second / 3600.0

    def side_rng(self, *keys: int) -> np.random.Generator:
        """A generator of this file's own, apart from :attr:`rng` (whose draws it leaves as they are)."""
        stream = (STREAM_FILES, self.visit.index, modality_stream(self.modality), *keys)
        return subject_rng(self.subject.seed, self.subject.index, *stream)

    def target(self, ext: str) -> tuple[str, Path]:
        """Relative path (as in events.csv) and absolute path of this visit's file with ``ext``."""
        rel = f"files/{self.subject.subject_id}/v{self.visit.index:02d}_{self.modality}.{ext}"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return rel, path
