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
add over one visit. Numpy and scikit-learn only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .state import _GRID_YEARS, _SIGMA, N_STATE, YEAR_DAYS, Subject, log_hazard, simulate_subject

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
    ``noise`` ``[paths, steps, N_STATE]`` standard normal draws (steps: months to the longest horizon)."""
    steps, at = _steps(horizons_years)
    dt = _GRID_YEARS
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


__all__ = ["OracleConfig", "SnapshotOracle", "forward_risk", "snapshot_features", "trajectory_risks"]
