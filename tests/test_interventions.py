"""Interventions: treatment START/STOP rows in the data contract (datamodules/interventions.py), the synthetic
cohort's treatments with known effects (datamodules/synthetic/interventions.py) and their counterfactual truth
(datamodules/synthetic/oracle.py)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SECRET

from datamodules import interventions as iv
from datamodules.builtin_cohort import cohort_fingerprint
from datamodules.schema import DataError
from datamodules.shards.builder import BuildConfig, build_shards
from datamodules.shards.format import subject_key
from datamodules.synthetic.interventions import ANTIHYPERTENSIVE, EXERCISE, InterventionConfig
from datamodules.synthetic.oracle import (
    _noise,
    assignment_risks,
    average_effect,
    counterfactual_risks,
    forward_risk,
)
from datamodules.synthetic.render import context
from datamodules.synthetic.render_tables import LAB_CODES, _labs
from datamodules.synthetic.state import CARDIO, N_STATE, YEAR_DAYS, simulate_subject

AH, EX = ANTIHYPERTENSIVE.code, EXERCISE.code
CFG = InterventionConfig()

# ---------------------------------------------------------------------------------------------
# The contract: codes, spans, the rules.


def test_codes_and_spans_with_a_dose_change_and_an_ongoing_treatment() -> None:
    assert iv.start_code(AH) == "RX:C08CA01//START" and iv.stop_code(EX) == "LIFESTYLE:EXERCISE//STOP"
    assert iv.parse("RX:C08CA01//START") == ("RX:C08CA01", "start") and iv.parse("ICD10:I10") is None
    rows = [
        (10.0, "RX:C08CA01//START", 5.0),
        (12.0, "LIFESTYLE:EXERCISE//START", math.nan),
        (40.0, "RX:C08CA01//START", 10.0),  # a second START while active: a dose change
        (200.0, "LIFESTYLE:EXERCISE//STOP", math.nan),
        (300.0, "RX:C08CA01//STOP", math.nan),
        (400.0, "RX:C08CA01//START", 5.0),  # a new course, ongoing at the end
        (401.0, "LOINC:8480-6", 130.0),
    ]
    spans = iv.spans_from_rows(rows)
    assert spans == [
        iv.Span(AH, 10.0, 40.0, 5.0),
        iv.Span(EX, 12.0, 200.0, None),
        iv.Span(AH, 40.0, 300.0, 10.0),
        iv.Span(AH, 400.0, None, 5.0),
    ]
    assert [s.duration_days for s in spans] == [30.0, 188.0, 260.0, None] and spans[-1].ongoing
    assert spans[1].active_at(12.0) and not spans[1].active_at(200.0)
    assert [[s.dose for s in c] for c in iv.courses(spans)] == [[5.0, 10.0], [None], [5.0]]


def test_bad_intervention_rows_are_named() -> None:
    problems = iv.check_rows(
        [
            (1.0, "RX:C08CA01//STOP", None),  # not active
            (2.0, "//START", None),  # no code
            (3.0, "RX:C08CA01//START", -5.0),  # negative dose
            (4.0, "RX:C08CA01//START", 5.0),
            (5.0, "RX:C08CA01//STOP", 1.0),  # a STOP's value is not used
            (6.0, "RX:C08CA01//STOP", None),  # stopped already
        ]
    )
    assert problems[0].startswith("intervention STOP while not active [RX:C08CA01//STOP")
    assert problems[1].startswith("intervention row without a code")
    assert problems[2].startswith("intervention START with a bad dose")
    assert problems[3] is None and problems[4] is None
    assert problems[5].startswith("intervention STOP while not active")


def _tables(d: Path, rows: list[tuple[str, str, str, object]]) -> BuildConfig:
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"subject_id": ["P-17"], "birth_date": ["1960-01-01"], "sex": ["F"], "consent": ["true"]}).to_csv(
        d / "subjects.csv", index=False
    )
    pd.DataFrame(rows, columns=["subject_id", "time", "code", "numeric_value"]).assign(modality="clinical").to_csv(
        d / "events.csv", index=False
    )
    return BuildConfig(
        subjects=str(d / "subjects.csv"), events=str(d / "events.csv"), out=str(d / "out"), secret=SECRET
    )


def test_builder_rejects_a_stop_without_start_naming_row_key_and_code(tmp_path: Path) -> None:
    from datamodules.loader import ShardDataset

    rows = [
        ("P-17", "2020-01-01", "LOINC:8480-6", 150.0),  # 1
        ("P-17", "2020-01-01", "RX:C08CA01//STOP", ""),  # 2 bad: not started
        ("P-17", "2020-02-01", "RX:C08CA01//START", 5.0),  # 3
        ("P-17", "2020-06-01", "RX:C08CA01//START", 10.0),  # 4 dose change
        ("P-17", "2020-09-01", "RX:C08CA01//STOP", ""),  # 5
        ("P-17", "2020-03-01", "LIFESTYLE:EXERCISE//START", ""),  # 6 (rows need not be in time order)
        ("P-17", "2020-10-01", "RX:C08CA01//STOP", ""),  # 7 bad: stopped already
    ]
    cfg = _tables(tmp_path / "t", rows)
    report = build_shards(dataclasses.replace(cfg, split_fractions=(1, 0, 0)))
    key = subject_key("P-17", SECRET.encode())
    bad = {r.row: r for r in report.rejected}
    assert set(bad) == {2, 7} and all(r.key == key and r.table == "events" for r in bad.values())
    assert "RX:C08CA01//STOP with no RX:C08CA01//START before it" in bad[2].reason
    assert "intervention STOP while not active: 2" in report.summary()
    md = (tmp_path / "t" / "out" / "report.md").read_text()
    assert "| events | 7 |" in md and "P-17" not in md
    (timeline,) = ShardDataset(cfg.out, "train", shuffle=False)
    spans = iv.spans(timeline)
    assert [(s.code, s.dose, s.duration_days) for s in spans] == [
        (AH, 5.0, 121.0),  # Feb 1 -> Jun 1, then 10 mg to Sep 1
        (EX, None, None),  # ongoing
        (AH, 10.0, 92.0),
    ]
    with pytest.raises(DataError, match=rf"events row 2, subject key {key}, clinical: intervention STOP while not"):
        build_shards(dataclasses.replace(cfg, out=str(tmp_path / "strict"), strict=True))


# ---------------------------------------------------------------------------------------------
# The simulator: opt-in, the same people, known effects.


DEFAULT_COHORT = [  # (sum, sum of |.|) of each person's grid states and their onset day, people 0-19 of seed 0
    (50.519559967, 67.671353024, math.nan),
    (581.597643794, 598.676454283, math.nan),
    (-605.007558855, 605.007558855, math.nan),
    (-190.612245882, 344.899546455, math.nan),
    (295.87953726, 295.87953726, 1119.311577283),
    (435.178837846, 435.178837846, 1786.970533715),
    (181.577065869, 362.844736355, 2318.275142916),
    (105.981476066, 600.138521235, math.nan),
    (820.780004726, 1020.512721996, 1379.917881152),
    (376.822231224, 377.43696958, 1266.539553301),
    (-169.691098413, 234.367444739, math.nan),
    (-111.468098333, 236.149089475, math.nan),
    (-109.10072114, 286.750584223, 1474.850139775),
    (-54.701797706, 242.937333825, math.nan),
    (-192.996581174, 279.677613409, math.nan),
    (-68.933033371, 346.732355205, math.nan),
    (292.335423999, 388.738908137, 416.679405404),
    (92.554585407, 189.537265474, math.nan),
    (37.068875978, 280.127415004, math.nan),
    (240.595582286, 353.216430352, math.nan),
]


def test_the_default_cohort_is_unchanged() -> None:
    # the states and onsets of the cohort before interventions existed (GENERATOR_VERSION 2.1), to rounding:
    # NumPy's vectorised exp and log differ in the last bits between CPUs (a byte hash did: AVX-512 or not)
    got = []
    for i in range(20):
        s = simulate_subject(0, i)
        assert s.treatment is None
        got.append((s.grid_states.sum(), np.abs(s.grid_states).sum(), s.onset_days))
    np.testing.assert_allclose(np.array(got), np.array(DEFAULT_COHORT), rtol=1e-9, atol=1e-9)
    assert cohort_fingerprint() == cohort_fingerprint(None) != cohort_fingerprint(CFG)
    for i in range(40):  # a placebo (every effect 0) is the same person, byte for byte, treated or not
        a, b = simulate_subject(3, i), simulate_subject(3, i, interventions=CFG.zero())
        assert a.grid_states.tobytes() == b.grid_states.tobytes()
        assert a.onset_days == b.onset_days or (math.isnan(a.onset_days) and math.isnan(b.onset_days))
        after = np.array([a.end_days + 30.0, a.end_days + 400.0])
        assert a.state_at(after).tobytes() == b.state_at(after).tobytes()


def _onset_free(s) -> bool:  # noqa: ANN001
    return math.isnan(s.onset_days)


def test_a_treated_state_drifts_lower_by_the_configured_amount() -> None:
    found = {AH: 0, EX: 0}
    for i in range(400):
        a = simulate_subject(0, i, interventions=CFG)
        if not a.treatment.spans or not _onset_free(a):
            continue
        b = simulate_subject(0, i)  # the same person untreated: the same noise
        if not _onset_free(b):
            continue
        expect = np.zeros_like(a.grid_states)
        for span, effect in zip(a.treatment.spans, a.treatment.effects):
            stop = np.inf if span.stop_days is None else span.stop_days
            years = np.clip(np.minimum(a.grid_days, stop) - span.start_days, 0.0, None) / YEAR_DAYS
            expect += years[:, None] * effect
            found[span.code] += 1
        np.testing.assert_allclose(a.grid_states - b.grid_states, expect, atol=1e-9)
        # by the configured amount: cardio 0.30/yr at 5 mg, frailty 0.40/yr while the programme runs
        assert set(np.round(-np.concatenate(a.treatment.effects), 2)) <= {0.0, 0.3, 0.45, 0.4}
        after = a.end_days + 365.25
        np.testing.assert_allclose(  # past the end of follow-up: the drift in force there
            a.state_at(np.array([after]))[0] - b.state_at(np.array([after]))[0],
            a.treatment.integral(0.0, np.array([after]))[0],
            atol=1e-9,
        )
        if min(found.values()) >= 3:
            break
    assert min(found.values()) >= 3, found


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from datamodules.synthetic.cli import main

    out = tmp_path_factory.mktemp("iv") / "cohort"
    args = ["--out", str(out), "--subjects", "40", "--seed", "1", "--workers", "1", "--modalities", "clinical"]
    assert main([*args, "--interventions", "--meds"]) == 0
    return out


def test_start_stop_rows_reach_the_events_table_and_the_shards(synth: Path, tmp_path: Path) -> None:
    events = pd.read_csv(synth / "events.csv")
    truth = pd.read_csv(synth / "interventions.csv")
    meta = json.loads((synth / "cohort.json").read_text())
    assert meta["interventions"]["trial_share"] == 0.5 and set(meta["treated"]) == {AH, EX}
    assert {"arm", "assigned", "risk_5y_with"} <= set(truth.columns)
    assert not {"arm", "assigned"} & set(pd.read_csv(synth / "subjects.csv").columns)  # truth: not a covariate
    starts = events[events["code"] == f"{AH}//START"]
    assert len(starts) and set(starts["numeric_value"]) <= {5.0, 10.0}
    assert events.loc[events["code"] == f"{EX}//START", "numeric_value"].isna().all()
    assert events.loc[events["code"].str.endswith("//STOP", na=False), "numeric_value"].isna().all()
    states = pd.read_csv(synth / "states.csv")
    visit_times = set(zip(states["subject_id"], states["time"]))
    assert all(
        (r.subject_id, r.time) in visit_times
        for r in events[events["code"].str.endswith("//START", na=False)].itertuples()
    )
    treated = truth[truth["treated"] == 1]
    assert treated.groupby("code")["arm"].nunique().min() >= 1 and len(treated) >= 8
    # the care arm started it where the record, as written, shows a systolic pressure above the threshold
    lab, threshold = ANTIHYPERTENSIVE.measured
    sbp = events[events["code"] == lab]
    care = truth[(truth["code"] == AH) & (truth["arm"] == "care") & (truth["treated"] == 1)]
    for sid in care["subject_id"]:
        first = starts[starts["subject_id"] == sid]["time"].min()
        seen = sbp[(sbp["subject_id"] == sid) & (sbp["time"] <= first)]["numeric_value"]
        assert len(seen) and seen.iloc[-1] > threshold, (sid, list(seen))
    assert len(care) >= 2

    cfg = BuildConfig(
        subjects=str(synth / "subjects.csv"), events=str(synth / "events.csv"), out=str(tmp_path / "s"), secret=SECRET
    )
    assert not build_shards(cfg).rejected
    got = _spans_by_key(Path(cfg.out))
    # each treated person's programme in the shards lasts what the truth says (ongoing when it ends after follow-up)
    gt = pd.read_csv(synth / "ground_truth.csv", dtype={"consent": str}).set_index("subject_id")
    checked = 0
    for r in treated[treated["code"] == EX].itertuples():
        if gt.loc[r.subject_id, "consent"] != "true":
            continue
        length = r.stop_days - r.start_days if r.stop_days <= gt.loc[r.subject_id, "end_days"] else None
        (dur,) = [s.duration_days for s in got[subject_key(r.subject_id, SECRET.encode())] if s.code == EX]
        assert (dur is None and length is None) or abs(dur - length) < 1e-3
        checked += 1
    assert checked >= 3
    # MEDS out (omnimodal-synth --meds) and back in: the codes and doses pass through, the same spans come back
    meds = dataclasses.replace(cfg, subjects=None, events=None, meds=str(synth / "meds"), out=str(tmp_path / "m"))
    assert not build_shards(meds).rejected
    assert _spans_by_key(tmp_path / "m") == got


def _spans_by_key(root: Path) -> dict[str, list[iv.Span]]:
    from datamodules.loader import ShardDataset

    return {
        tl.key: iv.spans(tl) for split in ("train", "val", "test") for tl in ShardDataset(root, split, shuffle=False)
    }


# ---------------------------------------------------------------------------------------------
# Who is treated: randomised in the trial arm, by indication (confounded) in the care arm.


@pytest.fixture(scope="module")
def population() -> list:
    return [simulate_subject(11, i, interventions=CFG) for i in range(3000)]


def _smd(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.mean() - b.mean()) / np.sqrt((a.var() + b.var()) / 2))


def test_the_trial_arm_is_balanced_and_the_care_arm_is_confounded(population: list) -> None:
    trial = [s for s in population if s.treatment.arm == "trial" and np.isfinite(s.treatment.enrolled_days)]
    care = [s for s in population if s.treatment.arm == "care"]
    assert 0.45 < len([s for s in population if s.treatment.arm == "trial"]) / len(population) < 0.55
    on = [s for s in trial if s.treatment.assigned[AH]]
    off = [s for s in trial if not s.treatment.assigned[AH]]
    assert 0.45 < len(on) / len(trial) < 0.55
    for feature in (lambda s: s.baseline[CARDIO], lambda s: s.visits[0].age_years, lambda s: s.prs):
        assert abs(_smd(np.array([feature(s) for s in on]), np.array([feature(s) for s in off]))) < 0.12
    given = [s for s in care if s.treatment.assigned[AH]]
    not_given = [s for s in care if not s.treatment.assigned[AH]]
    assert 0.05 < len(given) / len(care) < 0.4
    lab, threshold = ANTIHYPERTENSIVE.measured
    starts = [next(x.start_days for x in s.treatment.spans if x.code == AH) for s in given]
    assert all(_last_recorded(s, d, lab) > threshold for s, d in zip(given, starts))  # indicated by the record
    cardio0 = (np.array([s.baseline[CARDIO] for s in given]), np.array([s.baseline[CARDIO] for s in not_given]))
    assert _smd(*cardio0) > 0.5  # treated by indication: the sicker ones
    # dose changes happen in care (a second START), never in the trial arm
    assert any(len([x for x in s.treatment.spans if x.code == AH]) == 2 for s in given)
    assert all(len([x for x in s.treatment.spans if x.code == AH]) <= 1 for s in trial)


def _last_recorded(s, days: float, code: str) -> float:  # noqa: ANN001
    """The last value of lab ``code`` the record holds at or before ``days`` (NaN: none)."""
    seen = [_labs(context(s.seed, s, v.index, "clinical", Path())) for v in s.visits if v.days <= days]
    assert all(set(labs) <= set(LAB_CODES) for labs in seen)
    values = [labs[code] for labs, v in zip(seen, s.visits) if "clinical" in v.modalities and code in labs]
    return values[-1] if values else math.nan


def test_the_care_arm_decides_on_the_record_or_on_the_hidden_state(population: list) -> None:
    lab, threshold = ANTIHYPERTENSIVE.measured
    hidden = dataclasses.replace(CFG, indicate_on="state")
    at_start = {}
    for cfg in (CFG, hidden):
        people = [simulate_subject(11, i, interventions=cfg) for i in range(600)]
        given = [(s, x.start_days) for s in people if s.treatment.arm == "care" for x in s.treatment.spans[:1]]
        given = [(s, d) for s, d in given if s.treatment.spans[0].code == AH]
        at_start[cfg.indicate_on] = np.array([s.state_at(np.array([d]))[0, CARDIO] for s, d in given])
        recorded = np.array([_last_recorded(s, d, lab) for s, d in given])
        assert len(given) >= 20 and ((recorded > threshold).all() or cfg is hidden)
        for s in people[:100]:  # the trial arm: the same people in both, byte for byte; the untreated as without
            if s.treatment.arm == "trial":
                assert s.grid_states.tobytes() == population[s.index].grid_states.tobytes()
            elif not s.treatment.spans:
                assert s.grid_states.tobytes() == simulate_subject(11, s.index).grid_states.tobytes()
    # on the hidden state every start is above its indication; on the record, some are not (the labs' noise)
    assert (at_start["state"] > ANTIHYPERTENSIVE.indication).all()
    assert (at_start["measured"] <= ANTIHYPERTENSIVE.indication).any()
    with pytest.raises(ValueError, match=r"indicate_on must be one of \('measured', 'state'\), got 'labs'"):
        InterventionConfig(indicate_on="labs").check()
    with pytest.raises(ValueError, match=r"measured of RX:C08CA01 must be \(a lab code of"):
        InterventionConfig(interventions=(dataclasses.replace(ANTIHYPERTENSIVE, measured=("LOINC:0", 1.0)),)).check()


def test_counterfactual_risk_is_lower_with_treatment_and_equal_without_an_effect(population: list) -> None:
    treated = [s for s in population if any(x.code == AH for x in s.treatment.spans)][:60]
    truths = [assignment_risks(s, AH, [1.0, 5.0], CFG, paths=400) for s in treated]
    effect = np.array([t.effect for t in truths])
    assert (effect[:, 1] < 0).mean() > 0.9 and (effect[:, 1] <= effect[:, 0] + 1e-12).mean() > 0.9
    # someone never given it, at a visit: with and without it from then on
    s = next(p for p in population if not p.treatment.spans and p.onset_days != p.onset_days)
    at = s.visits[1].days
    five = counterfactual_risks(s, at, AH, [5.0], CFG, dose=5.0, paths=400)
    ten = counterfactual_risks(s, at, AH, [5.0], CFG, dose=10.0, paths=400)
    short = counterfactual_risks(s, at, AH, [5.0], CFG, duration_days=90.0, paths=400)
    assert ten[0][0] < five[0][0] < short[0][0] < short[1][0] == five[1][0] == ten[1][0]
    assert np.array_equal(*counterfactual_risks(s, at, AH, [1.0, 5.0], CFG.zero(), paths=400))  # no effect: equal
    # a treated person simulated under a placebo: the truth of its assignment is no effect at all
    z = simulate_subject(11, treated[0].index, interventions=CFG.zero())
    truth = assignment_risks(z, AH, [1.0, 5.0], CFG.zero(), paths=400)
    assert truth.treated and np.array_equal(truth.with_, truth.without)


def test_the_randomised_difference_matches_the_true_effect() -> None:
    """On the trial arm, the observed onset rate of the treated minus the controls' (by the end of follow-up) is
    within 3 standard errors of the mean true effect over the same people, each at their own follow-up."""
    strong = InterventionConfig(
        interventions=(dataclasses.replace(ANTIHYPERTENSIVE, effects=((5.0, 0.9), (10.0, 1.2))),),
        trial_share=1.0,
    )
    people = [simulate_subject(5, i, interventions=strong) for i in range(3000)]
    rows = []
    for s in people:
        at = s.treatment.enrolled_days
        years = (s.end_days - at) / YEAR_DAYS if np.isfinite(at) else 0.0
        if years < 1.0 / 12:
            continue
        truth = assignment_risks(s, AH, [years], strong, paths=300)
        rows.append((truth.treated, s.onset_days <= s.end_days, truth.with_[0], truth.without[0]))
    treated, onset, with_, without = (np.array(c) for c in zip(*rows))
    p1, p0 = onset[treated].mean(), onset[~treated].mean()
    se = math.sqrt(p1 * (1 - p1) / treated.sum() + p0 * (1 - p0) / (~treated).sum())
    true_effect = float(np.mean(with_ - without))
    assert true_effect < -3 * se  # the truth: clearly protective
    assert abs((p1 - p0) - true_effect) < 3 * se, (p1 - p0, true_effect, se)
    assert abs(p1 - with_[treated].mean()) < 3 * math.sqrt(p1 * (1 - p1) / treated.sum())  # and calibrated
    mean, n = average_effect([assignment_risks(s, AH, [5.0], strong, paths=200) for s in people[:200]])
    assert n > 100 and mean[0] < 0


# ---------------------------------------------------------------------------------------------
# The oracle's per-step drift and bad input.


def test_forward_risk_takes_a_drift_per_step() -> None:
    noise = _noise(300, 24, 0)
    state, drift = np.full(N_STATE, 0.3), np.full(N_STATE, 0.05)
    flat = forward_risk(state, drift, 0.1, [1.0, 2.0], noise)
    np.testing.assert_allclose(forward_risk(state, np.tile(drift, (24, 1)), 0.1, [1.0, 2.0], noise), flat)
    lower = np.tile(drift, (24, 1))
    lower[:, CARDIO] -= 0.5
    assert (forward_risk(state, lower, 0.1, [1.0, 2.0], noise) < flat).all()
    with pytest.raises(ValueError, match=r"drift: per-step drift must be \[>= 24, 6\]"):
        forward_risk(state, np.tile(drift, (12, 1)), 0.1, [2.0], noise)


def test_bad_counterfactual_input_names_the_argument(population: list) -> None:
    s = next(p for p in population if _onset_free(p))
    ill = next(p for p in population if p.onset_days > 100)
    with pytest.raises(ValueError, match=r"code: 'RX:UNKNOWN' is not an intervention"):
        counterfactual_risks(s, 10.0, "RX:UNKNOWN", [1.0], CFG)
    with pytest.raises(ValueError, match=r"at_days: must be >= 0"):
        counterfactual_risks(s, -1.0, AH, [1.0], CFG)
    with pytest.raises(ValueError, match=r"at_days: .* past the end of .* follow-up"):
        counterfactual_risks(s, s.end_days + 1, AH, [1.0], CFG)
    with pytest.raises(ValueError, match=r"at_days: .* had the onset"):
        counterfactual_risks(ill, ill.onset_days + 1, AH, [1.0], CFG)
    with pytest.raises(ValueError, match=r"dose: 7.0 is not a dose of RX:C08CA01"):
        counterfactual_risks(s, 10.0, AH, [1.0], CFG, dose=7.0)
    with pytest.raises(ValueError, match=r"duration_days: must be > 0"):
        counterfactual_risks(s, 10.0, EX, [1.0], CFG, duration_days=0.0)
    with pytest.raises(ValueError, match=r"trial_share must be in \[0, 1\]"):
        InterventionConfig(trial_share=1.5).check()


def test_what_if_benchmark_refuses_no_models(tmp_path: Path) -> None:
    """``models`` (the models averaged per person) below 1 is refused before any cohort is built, naming the key."""
    from omnimodal.benchmark.what_if import run  # noqa: PLC0415
    from omnimodal.infra.config_store import compose  # noqa: PLC0415

    with pytest.raises(ValueError, match="config key models: 0"):
        run(compose("what_if", ["models=0", f"out={tmp_path / 'report'}", f"cache={tmp_path / 'cache'}"]))
    assert not (tmp_path / "cache").exists()
