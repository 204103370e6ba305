"""Ceilings from the simulator's truth: the exact chance of disease onset after a landmark, for the benchmark.

The disease strikes with the hazard :func:`~.state.log_hazard` of the hidden state, which drifts at the person's
own rate plus noise (:mod:`.state`). Given what is known at a landmark, the chance of onset within a horizon is
an expectation over the state's future, which these functions integrate forward on the simulator's own monthly
grid by Monte Carlo (the same drift-diffusion and hazard as :func:`~.state._simulate`; every person is
integrated with the same noise draws, so differences between people carry no Monte Carlo noise of their own):

- **trajectory oracle** (:func:`trajectory_risks`): given the state at the landmark, the personal drift and the
  log-hazard offset (genetic risk, age). The future depends on nothing else, so no model of the person's data
  can do better: a timeline model is bounded by it.
- **snapshot oracle** (:class:`SnapshotOracle`): given only what one visit could show, the state at the landmark
  with age and sex, not the drift nor the genetic risk. It is ``E[trajectory risk | state, age, sex]``, the
  best a snapshot can do, estimated by regression of the trajectory risk on (state, age, sex) over a large
  reference population simulated from another seed (people still at risk at the landmark).

The gap between the two is what a person's history (their drift, their genetic risk as it shows over time) can
add over one visit.

**Counterfactual truth** (a cohort with interventions, :mod:`.interventions`): :func:`counterfactual_risks` gives
a person's chance of onset within each horizon after ``at_days`` *with* an intervention started then and
*without* it, from the true state then, the personal drift with the interventions in force then (spans active at
``at_days`` go on to their recorded stop; none that starts later is counted, in either world) and the offset;
both worlds use the same noise (common random numbers), so their difference carries little Monte Carlo noise.
:func:`assignment_risks` gives the truth of what each person actually got (at their start, or at a trial
control's randomisation visit), :func:`average_effect` its mean over an arm. Numpy and scikit-learn only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..interventions import Span
from .state import _GRID_YEARS, _SIGMA, N_STATE, YEAR_DAYS, Subject, Treatment, log_hazard, simulate_subject

if TYPE_CHECKING:
    from .interventions import InterventionConfig

#: a seed for the reference population of the snapshot oracle: apart from any cohort's (a cohort's seed is small)
REFERENCE_SEED = 1_000_003


@dataclass(frozen=True)
class OracleConfig:
    paths: int = 2000  # Monte Carlo paths per person (risk's standard error <= 0.5 / sqrt(paths))
    reference: int = 4000  # people of the snapshot oracle's reference population (before those not at risk)
    reference_paths: int = 500  # paths for each reference person (the regression averages over people)
    seed: int = 0  # of the Monte Carlo noise


def _noise(paths: int, steps: int, seed: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xA11CE,))).normal(
        size=(paths, steps, N_STATE)
    )


@functools.lru_cache(maxsize=4)
def _shared_noise(paths: int, steps: int, seed: int) -> np.ndarray:
    """:func:`_noise` kept for the counterfactual functions (read-only), at least 10 years long so that one
    person's risks do not depend on the other horizons asked."""
    out = _noise(paths, max(steps, _CF_STEPS), seed)
    out.flags.writeable = False
    return out


#: the counterfactual functions' noise covers at least this many months (longer horizons get more)
_CF_STEPS = 120


def _steps(horizons_years: Sequence[float]) -> tuple[int, np.ndarray]:
    """Monthly steps to the longest horizon, and each horizon's step count."""
    at = np.array([int(round(h / _GRID_YEARS)) for h in horizons_years])
    if (at < 1).any():
        raise ValueError(f"horizons must be at least a month, got {list(horizons_years)} years")
    return int(at.max()), at


def forward_risk(
    state: np.ndarray, drift: np.ndarray, risk0: float, horizons_years: Sequence[float], noise: np.ndarray
) -> np.ndarray:
    """P(onset within each horizon | state now, drift, risk0, no onset yet) by the simulator's dynamics, with
    ``noise`` ``[paths, steps, N_STATE]`` standard normal draws (steps: months to the longest horizon). ``drift``:
    per year, ``[N_STATE]`` (constant) or ``[steps, N_STATE]`` (each month's own: interventions that start or stop,
    :func:`drift_steps`)."""
    steps, at = _steps(horizons_years)
    dt = _GRID_YEARS
    drift = np.asarray(drift, float)
    if drift.ndim == 2:
        if drift.shape[0] < steps or drift.shape[1] != N_STATE:
            raise ValueError(f"drift: per-step drift must be [>= {steps}, {N_STATE}], got {list(drift.shape)}")
        drift = drift[:steps]
    walk = np.cumsum(drift * dt + _SIGMA * np.sqrt(dt) * noise[:, :steps], axis=1)  # [paths, steps, N_STATE]
    hazard = np.exp(log_hazard(state + walk, risk0))  # at each step's end, as the simulator does
    cum = np.cumsum(hazard * dt, axis=1)  # [paths, steps]
    return 1.0 - np.exp(-cum[:, at - 1]).mean(0)


def trajectory_risks(
    subjects: Sequence[Subject],
    at_days: Sequence[float],
    horizons_years: Sequence[float],
    cfg: OracleConfig = OracleConfig(),
    paths: int | None = None,
) -> np.ndarray:
    """``[len(subjects), len(horizons)]``: each person's exact chance of onset within each horizon after
    ``at_days`` (days since their first visit; they must be at risk then), given the state, drift and offset."""
    steps, _ = _steps(horizons_years)
    noise = _noise(paths or cfg.paths, steps, cfg.seed)
    out = np.empty((len(subjects), len(horizons_years)))
    for i, (s, d) in enumerate(zip(subjects, at_days)):
        out[i] = forward_risk(s.state_at(np.array([d]))[0], s.drift, s.risk0, horizons_years, noise)
    return out


def drift_steps(subject: Subject, at_days: float, steps: int, spans: Sequence[Span], effects: Sequence) -> np.ndarray:
    """``[steps, N_STATE]``: the drift per year over each month after ``at_days`` with these ``spans`` and their
    ``effects`` (per year, ``[N_STATE]`` each) in force: the personal drift plus each span's effect times the
    share of the month it covers."""
    world = Treatment(arm="", spans=list(spans), effects=[np.asarray(e, float) for e in effects])
    ends = at_days + _GRID_YEARS * YEAR_DAYS * np.arange(steps + 1)
    return subject.drift + np.diff(world.integral(at_days, ends), axis=0) / _GRID_YEARS


def _in_force(subject: Subject, at_days: float) -> list[tuple[Span, np.ndarray]]:
    t = subject.treatment
    return [] if t is None else [(s, e) for s, e in zip(t.spans, t.effects) if s.active_at(at_days)]


def _at_risk(subject: Subject, at_days: float) -> float:
    at_days = float(at_days)
    if not np.isfinite(at_days) or at_days < 0:
        raise ValueError(f"at_days: must be >= 0 (days since the first visit), got {at_days}")
    if at_days > subject.end_days:
        raise ValueError(
            f"at_days: {at_days:g} is past the end of {subject.subject_id}'s follow-up ({subject.end_days:g} days): "
            "whether it is still at risk then is not known"
        )
    if subject.onset_days <= at_days:
        raise ValueError(
            f"at_days: {subject.subject_id} had the onset at {subject.onset_days:g} days, before {at_days:g}: "
            "not at risk then"
        )
    return at_days


def _worlds(
    subject: Subject,
    at_days: float,
    with_: list[tuple[Span, np.ndarray]],
    without: list[tuple[Span, np.ndarray]],
    horizons_years: Sequence[float],
    cfg: OracleConfig,
    paths: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    steps, _ = _steps(horizons_years)
    noise = _shared_noise(paths or cfg.paths, steps, cfg.seed)  # the same for both worlds (and every person)
    state = subject.state_at(np.array([at_days]))[0]
    out = []
    for world in (with_, without):
        drift = drift_steps(subject, at_days, steps, [s for s, _ in world], [e for _, e in world])
        out.append(forward_risk(state, drift, subject.risk0, horizons_years, noise))
    return out[0], out[1]


def counterfactual_risks(
    subject: Subject,
    at_days: float,
    code: str,
    horizons_years: Sequence[float],
    interventions: InterventionConfig,
    dose: float | None = None,
    duration_days: float | None = None,
    cfg: OracleConfig = OracleConfig(),
    paths: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(with, without)``, each ``[len(horizons)]``: the chance of onset within each horizon after ``at_days``
    (the person must be at risk then, within follow-up) if intervention ``code`` (of ``interventions``, an
    :class:`~.interventions.InterventionConfig`) starts then at ``dose`` (None: its first dose) for
    ``duration_days`` (None: ongoing), and if it does not. Both worlds keep the interventions in force at
    ``at_days`` (to their recorded stops); if ``code`` is one of them, *with* replaces it from ``at_days`` (a dose
    change), *without* lets it go on."""
    at_days = _at_risk(subject, at_days)
    iv = interventions.get(code)  # an error naming the code if it has no such one
    dose = iv.effects[0][0] if dose is None else float(dose)
    effect = iv.effect(dose)  # an error naming the dose if it is not one of its doses
    if duration_days is not None and not (np.isfinite(duration_days) and duration_days > 0):
        raise ValueError(f"duration_days: must be > 0 (None: ongoing), got {duration_days}")
    stop = None if duration_days is None else at_days + float(duration_days)
    now = _in_force(subject, at_days)
    with_ = [(s, e) for s, e in now if s.code != code] + [(Span(code, at_days, stop, dose), effect)]
    return _worlds(subject, at_days, with_, now, horizons_years, cfg, paths)


@dataclass(frozen=True)
class AssignmentTruth:
    """The counterfactual truth of what one person got of one intervention: at ``at_days`` (their start; a trial
    control's randomisation visit), the chance of onset within each horizon ``with`` it (as treated: the course as
    it went, dose changes included; a control: started then at its first dose for the length drawn for them) and
    ``without`` it (both with the other interventions in force then)."""

    subject_id: str
    code: str
    arm: str
    treated: bool
    at_days: float
    with_: np.ndarray
    without: np.ndarray

    @property
    def effect(self) -> np.ndarray:
        """``with - without`` per horizon (negative: the intervention lowers the risk)."""
        return self.with_ - self.without


def assignment_risks(
    subject: Subject,
    code: str,
    horizons_years: Sequence[float],
    interventions: InterventionConfig,
    cfg: OracleConfig = OracleConfig(),
    paths: int | None = None,
) -> AssignmentTruth | None:
    """The truth of ``subject``'s assignment to ``code`` (:class:`AssignmentTruth`), for people who started it and
    for trial-arm people enrolled but randomised to no ``code``; None for the others (care arm untreated, trial arm
    not enrolled: already diagnosed at the randomisation visit)."""
    iv = interventions.get(code)
    t = subject.treatment
    if t is None:
        raise ValueError(f"subject: {subject.subject_id} was simulated without interventions")
    own = [(s, e) for s, e in zip(t.spans, t.effects) if s.code == code]
    if own:
        at = own[0][0].start_days
        others = [(s, e) for s, e in _in_force(subject, at) if s.code != code]
        with_, without = _worlds(subject, at, others + own, others, horizons_years, cfg, paths)
        return AssignmentTruth(subject.subject_id, code, t.arm, True, at, with_, without)
    if t.arm != "trial" or not np.isfinite(t.enrolled_days):
        return None
    at = t.enrolled_days
    length = t.planned.get(code)
    span = Span(code, at, None if length is None else at + length, iv.effects[0][0])
    now = _in_force(subject, at)
    with_, without = _worlds(subject, at, [*now, (span, iv.effect(span.dose))], now, horizons_years, cfg, paths)
    return AssignmentTruth(subject.subject_id, code, t.arm, False, at, with_, without)


def average_effect(truths: Sequence[AssignmentTruth | None], arm: str | None = "trial") -> tuple[np.ndarray, int]:
    """The mean of ``with - without`` per horizon over the people of ``arm`` (None: everyone) with a truth, and how
    many they are: on the randomised arm, the true average effect of the intervention."""
    kept = [t for t in truths if t is not None and (arm is None or t.arm == arm)]
    if not kept:
        raise ValueError(f"arm: no one of arm {arm!r} has a truth to average")
    return np.mean([t.effect for t in kept], axis=0), len(kept)


def snapshot_features(subjects: Sequence[Subject], at_days: Sequence[float]) -> np.ndarray:
    """What one visit at ``at_days`` shows of the hidden truth: the state, age (years) and sex (1 = male)."""
    rows = []
    for s, d in zip(subjects, at_days):
        age = s.visits[0].age_years + d / YEAR_DAYS
        rows.append([*s.state_at(np.array([d]))[0], age, float(s.sex == "M")])
    return np.array(rows)


class SnapshotOracle:
    """``E[trajectory risk | state, age, sex]`` at a landmark, fitted on a reference population of the simulator
    (:data:`REFERENCE_SEED`) still at risk ``landmark_days`` after their first visit."""

    def __init__(
        self, landmark_days: float, horizons_years: Sequence[float], cfg: OracleConfig = OracleConfig()
    ) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: PLC0415
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 - scikit-learn's own dependency

        self.landmark_days, self.horizons = float(landmark_days), list(horizons_years)
        people = [simulate_subject(REFERENCE_SEED, i) for i in range(cfg.reference)]
        people = [s for s in people if not s.onset_days <= landmark_days]  # at risk at the landmark
        at = [self.landmark_days] * len(people)
        x = snapshot_features(people, at)
        y = trajectory_risks(people, at, self.horizons, cfg, paths=cfg.reference_paths)
        self.n_reference = len(people)
        with threadpool_limits(1):  # small fits: threads cost more than they give (7x slower on 2 busy cores)
            self.models = [
                HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=0).fit(x, y[:, k])
                for k in range(len(self.horizons))
            ]

    def predict(self, subjects: Sequence[Subject], at_days: Sequence[float]) -> np.ndarray:
        """``[len(subjects), len(horizons)]``: the snapshot oracle's risk for each person at ``at_days``."""
        x = snapshot_features(subjects, at_days)
        return np.clip(np.stack([m.predict(x) for m in self.models], 1), 0.0, 1.0)


__all__ = [
    "AssignmentTruth",
    "OracleConfig",
    "SnapshotOracle",
    "assignment_risks",
    "average_effect",
    "counterfactual_risks",
    "drift_steps",
    "forward_risk",
    "snapshot_features",
    "trajectory_risks",
]
