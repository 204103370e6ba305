"""The benchmark's ceilings (datamodules/synthetic/oracle.py) against the simulator's own outcomes: the
trajectory oracle's risks are calibrated (their mean equals the Kaplan-Meier incidence of the people it scores,
whose follow-up ends at random, independent of their health), they rank people better than chance by a wide
margin, knowing less (the snapshot oracle) never ranks better, and the numbers do not depend on the order or
company in which people are scored."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.synthetic.oracle import OracleConfig, SnapshotOracle, forward_risk, trajectory_risks
from datamodules.synthetic.state import YEAR_DAYS, simulate_subject
from omnimodal.evaluation.metrics import auroc, kaplan_meier, status_at

SEED, N = 5, 600
LANDMARK = YEAR_DAYS
HORIZONS = (1.0, 3.0)


@pytest.fixture(scope="module")
def at_risk():
    people = [simulate_subject(SEED, i) for i in range(N)]
    people = [s for s in people if not s.onset_days <= LANDMARK]
    time = np.array([(s.onset_days if s.onset_days == s.onset_days else s.end_days) - LANDMARK for s in people])
    event = np.array([int(s.onset_days == s.onset_days) for s in people])
    risk = trajectory_risks(people, [LANDMARK] * len(people), HORIZONS, OracleConfig(paths=1000))
    return people, time, event, risk


def test_trajectory_oracle_is_calibrated_and_ranks(at_risk) -> None:
    people, time, event, risk = at_risk
    assert len(people) > 450 and event.sum() > 100
    for k, h in enumerate(HORIZONS):
        observed = 1.0 - kaplan_meier(time, event, [h * YEAR_DAYS])[0]
        # the KM incidence's standard error at these sizes is about 0.015 (1 y) to 0.025 (3 y)
        assert abs(risk[:, k].mean() - observed) < 0.05, (h, risk[:, k].mean(), observed)
        known, y = status_at(time, event, h * YEAR_DAYS)
        assert auroc(y[known], risk[known, k]) > 0.8
    assert (np.diff(risk, axis=1) >= 0).all()  # a longer horizon never has a smaller risk


@pytest.mark.slow  # fits a reference population: ~30 s on 2 cores
def test_snapshot_oracle_knows_less(at_risk) -> None:
    people, time, event, risk = at_risk
    snap = SnapshotOracle(LANDMARK, HORIZONS, OracleConfig(reference=1500, reference_paths=200)).predict(
        people, [LANDMARK] * len(people)
    )
    assert snap.shape == risk.shape and ((snap >= 0) & (snap <= 1)).all()
    for k, h in enumerate(HORIZONS):
        known, y = status_at(time, event, h * YEAR_DAYS)
        a_snap, a_traj = auroc(y[known], snap[known, k]), auroc(y[known], risk[known, k])
        assert 0.7 < a_snap <= a_traj + 0.01, (h, a_snap, a_traj)
        # it estimates the same quantity, from less: close on average, far from the same per person
        assert abs(snap[:, k].mean() - risk[:, k].mean()) < 0.03
        assert np.corrcoef(snap[:, k], risk[:, k])[0, 1] > 0.7


def test_same_person_same_risk_whoever_else_is_scored(at_risk) -> None:
    people, _, _, risk = at_risk
    cfg = OracleConfig(paths=1000)
    alone = trajectory_risks(people[7:8], [LANDMARK], HORIZONS, cfg)
    reversed_ = trajectory_risks(people[:10][::-1], [LANDMARK] * 10, HORIZONS, cfg)[::-1]
    np.testing.assert_array_equal(alone[0], risk[7])
    np.testing.assert_array_equal(reversed_, risk[:10])


def test_forward_risk_rejects_a_horizon_under_a_month() -> None:
    with pytest.raises(ValueError, match="at least a month"):
        forward_risk(np.zeros(6), np.zeros(6), 0.0, [0.01], np.zeros((2, 1, 6)))
