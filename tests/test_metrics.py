"""Evaluation metrics and report plots checked against independent computations and known values."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from matplotlib.image import imread
from sklearn.metrics import average_precision_score, roc_auc_score

from omnimodal.evaluation import (
    Estimate,
    MetricUndefinedError,
    binary_metrics,
    bootstrap_ci,
    brier_scores,
    calibration_bins,
    concordance_index,
    cumulative_incidence,
    format_ci,
    integrated_brier_score,
    kaplan_meier,
    markdown_table,
    plot_ablation,
    plot_calibration,
    plot_person,
    plot_pr,
    plot_roc,
    regression_metrics,
    survival_calibration_bins,
    time_dependent_auroc,
    time_to_event_metrics,
    uno_c_index,
)
from omnimodal.evaluation.metrics import _fast_auprc, _fast_auroc
from omnimodal.evaluation.plots import DPI


def _expit(x):
    return 1 / (1 + np.exp(-x))


def competing_cohort(n: int, seed: int = 0, censor_max: float = 3000.0):
    """Exponential event times, cause 1 with probability 0.6 (else cause 2), uniform censoring;
    the true cumulative incidence of cause 1 by t is 0.6 (1 - exp(-rate t))."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    rate = np.exp(risk) / 1000
    t_event = rng.exponential(1 / rate)
    cause = np.where(rng.random(n) < 0.6, 1, 2)
    censor = rng.uniform(0, censor_max, n)
    time = np.minimum(t_event, censor)
    event = np.where(t_event <= censor, cause, 0)
    return time, event, risk, rate, t_event, cause


# ----------------------------------------------------------------------------- C-index
def brute_force_c(time, event, risk, cause=1):
    num = den = 0.0
    for i, j in itertools.permutations(range(len(time)), 2):
        if event[i] != cause:
            continue
        if time[i] < time[j] or (time[i] == time[j] and event[j] != cause):
            den += 1
            num += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return num / den


def test_c_index_matches_pairwise_loop_with_ties_and_competing_events():
    rng = np.random.default_rng(3)
    for _ in range(5):
        n = 40
        time = rng.integers(1, 15, n).astype(float)  # many tied times
        event = rng.integers(0, 3, n)  # censored, cause 1, cause 2
        risk = rng.integers(0, 6, n).astype(float)  # many tied risks
        for cause in (1, 2):
            assert concordance_index(time, event, risk, cause) == pytest.approx(
                brute_force_c(time, event, risk, cause), abs=1e-12
            )


def test_c_index_known_values():
    time, event = [1, 2, 3, 4], [1, 1, 0, 1]
    # comparable: (0,1) (0,2) (0,3) (1,2) (1,3); only (1,2) is discordant
    assert concordance_index(time, event, [4, 2, 3, 1]) == pytest.approx(0.8)
    # a competing event at t=2 is censoring for cause 1: subject 1 is a comparator, never a case
    assert concordance_index(time, [1, 2, 0, 1], [4, 2, 3, 1]) == pytest.approx(1.0)
    time, event, risk, *_ = competing_cohort(2000)
    hazard_rank = -np.argsort(np.argsort(time))  # earlier event, higher risk
    assert concordance_index(time, event, hazard_rank) == 1.0
    assert concordance_index(time, event, -hazard_rank) == 0.0
    noise = np.random.default_rng(1).normal(size=len(time))
    assert concordance_index(time, event, noise) == pytest.approx(0.5, abs=0.03)
    assert concordance_index(time, event, risk) > 0.65


def test_c_index_undefined_and_bad_input():
    with pytest.raises(MetricUndefinedError, match="no comparable pairs"):
        concordance_index([1, 2, 3], [0, 0, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="event must be integer codes"):
        concordance_index([1, 2, 3], [0, -1, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="risk has 2 values"):
        concordance_index([1, 2, 3], [0, 1, 1], [1, 2])
    with pytest.raises(ValueError, match="time has 1 NaN"):
        concordance_index([1, np.nan, 3], [0, 1, 1], [1, 2, 3])


# ----------------------------------------------------------------------------- cumulative incidence
def test_aalen_johansen_equals_one_minus_kaplan_meier_with_one_cause():
    time, event, *_ = competing_cohort(300, seed=2)
    single = (event > 0).astype(int)
    grid = np.linspace(0, 3000, 40)
    np.testing.assert_allclose(
        cumulative_incidence(time, single, 1, grid), 1 - kaplan_meier(time, single, grid), atol=1e-12
    )
    # with two causes the incidences add up to the all-cause 1 - KM
    np.testing.assert_allclose(
        cumulative_incidence(time, event, 1, grid) + cumulative_incidence(time, event, 2, grid),
        1 - kaplan_meier(time, event > 0, grid),
        atol=1e-12,
    )


def test_kaplan_meier_and_cumulative_incidence_known_values():
    # KM by hand: events at 1, 3, 5 (5, 3, 1 at risk), censoring at 2 and 4
    np.testing.assert_allclose(
        kaplan_meier([1, 2, 3, 4, 5], [1, 0, 1, 0, 1], [0.5, 1, 2.5, 3, 5]), [1, 0.8, 0.8, 0.8 * 2 / 3, 0.0]
    )
    # without censoring the Aalen-Johansen estimate is the empirical share of each cause
    rng = np.random.default_rng(0)
    time = rng.exponential(100, 500)
    event = rng.integers(1, 3, 500)
    for t in (10.0, 50.0, 200.0):
        assert cumulative_incidence(time, event, 2, [t])[0] == pytest.approx(np.mean((time <= t) & (event == 2)))


def test_cumulative_incidence_tracks_the_truth_under_censoring():
    time, event, _, rate, *_ = competing_cohort(20000, seed=5)
    # population truth: E[0.6 (1 - exp(-rate t))], rate log-normal
    for t in (300.0, 1000.0):
        truth = np.mean(0.6 * (1 - np.exp(-rate * t)))
        assert cumulative_incidence(time, event, 1, [t])[0] == pytest.approx(truth, abs=0.015)


# ----------------------------------------------------------------------------- time-dependent AUROC
def test_td_auroc_without_censoring_is_plain_auroc_of_case_vs_control():
    rng = np.random.default_rng(4)
    time = rng.exponential(500, 400)
    event = rng.integers(1, 3, 400)
    score = rng.normal(size=400) - time / 500
    case = (time <= 365) & (event == 1)
    assert time_dependent_auroc(time, event, score, 365) == pytest.approx(roc_auc_score(case, score))
    free = (time > 365) | case
    assert time_dependent_auroc(time, event, score, 365, controls="event_free") == pytest.approx(
        roc_auc_score(case[free], score[free])
    )


def test_td_auroc_ipcw_known_value():
    # censoring KM: G(2) = 3/4, G(4) = 3/8. Cases by 3.5: t=1 (w 1), t=3 (w 1/G(3-) = 4/3);
    # controls t=4,5 (w 1/G(3.5) = 4/3 each); t=2 censored before 3.5 (w 0).
    # AUC = (1*(4/3 + 4/3) + 4/3*4/3) / ((1 + 4/3) * 8/3) = 5/7
    auc = time_dependent_auroc([1, 2, 3, 4, 5], [1, 0, 1, 0, 0], [0.9, 0.5, 0.2, 0.4, 0.1], 3.5)
    assert auc == pytest.approx(5 / 7)
    # a censoring tied with a case at t=2 does not count against that case: w = 1/G(2-) = 1.
    # G(2) = 3/4, controls t=4,5 weigh 4/3. AUC = (1*(8/3) + 1*(4/3)) / ((1 + 1) * 8/3) = 3/4
    auc = time_dependent_auroc([1, 2, 2, 4, 5], [1, 1, 0, 0, 0], [0.9, 0.3, 0.5, 0.4, 0.1], 3)
    assert auc == pytest.approx(3 / 4)


def test_td_auroc_corrects_for_censoring():
    time, event, risk, _, t_event, cause = competing_cohort(6000, seed=6, censor_max=1500)
    horizons = [600.0, 1200.0]
    uncensored = [roc_auc_score((t_event <= h) & (cause == 1), risk) for h in horizons]
    estimated = time_dependent_auroc(time, event, np.column_stack([risk, risk]), horizons)
    # dropping the subjects censored before the horizon would give 0.70 and 0.59 here
    np.testing.assert_allclose(estimated, uncensored, atol=0.01)
    with pytest.raises(MetricUndefinedError, match="at 5000 days is undefined"):
        time_dependent_auroc(time, event, risk, [600.0, 5000.0])
    with pytest.raises(ValueError, match=r"risk_at_t must be \[N\] or \[N, 2\]"):
        time_dependent_auroc(time, event, np.column_stack([risk] * 3), horizons)


def test_time_to_event_metrics_report():
    time, event, risk, *_ = competing_cohort(400, seed=8)
    out = time_to_event_metrics(time, event, risk, horizons=[365, 730], n_boot=100)
    c = out["c_index"]
    assert c.lo <= c.value <= c.hi and c.value == concordance_index(time, event, risk)
    assert set(out["td_auroc"]) == {365.0, 730.0}
    assert out["n"] == 400 and out["n_events"] + out["n_competing"] + out["n_censored"] == 400
    with pytest.warns(UserWarning, match="no subject was followed beyond 9000 days"):
        late = time_to_event_metrics(time, event, risk, horizons=[365, 9000], n_boot=0)
    assert np.isnan(late["td_auroc"][9000.0].value) and str(late["td_auroc"][9000.0]) == "–"


# ----------------------------------------------------------------------------- against scikit-survival
# Real data shipped with scikit-survival, risks from a Cox model fitted on the one-hot covariates.
# Where ours and scikit-survival define a figure the same way, they must agree to rounding (1e-9).
# One difference of definition: when a censoring ties an event time, ours weighs the event by
# 1/G(T-) and counts the event in the censoring Kaplan-Meier's risk set at T (R's survival does);
# scikit-survival weighs it by 1/G(T) and removes the event from that risk set. Those tests move each
# such censoring 1e-4 days later (our convention: censoring follows the event) to compare like with
# like, and bound the gap on the raw data.
@functools.cache
def cox_on(dataset: str):
    """(time, event 0/1, risk = Cox linear predictor, survival functions) on a scikit-survival dataset."""
    from sksurv import datasets
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.preprocessing import OneHotEncoder

    x, y = getattr(datasets, f"load_{dataset}")()
    x = OneHotEncoder().fit_transform(x)
    observed, time = (y[name] for name in y.dtype.names)
    cox = CoxPHSurvivalAnalysis(alpha=1e-4).fit(x, y)  # a whisker of ridge for stable Newton steps
    return time.astype(float), observed.astype(int), cox.predict(x), cox.predict_survival_function(x)


def surv(time, event):
    from sksurv.util import Surv

    return Surv.from_arrays(np.asarray(event) > 0, time)


def censoring_after_tied_events(time, event):
    """The same data with each censoring that ties an event time moved 1e-4 days later."""
    tied = (event == 0) & np.isin(time, time[event > 0])
    return time + np.where(tied, 1e-4, 0.0)


SKSURV_DATA = ["whas500", "gbsg2"]


@pytest.mark.parametrize("dataset", SKSURV_DATA)
def test_harrell_c_and_kaplan_meier_equal_scikit_survival(dataset):
    """Same definitions (a censoring tied with an event follows it; tied risks count 1/2): equal."""
    from sksurv.metrics import concordance_index_censored
    from sksurv.nonparametric import kaplan_meier_estimator

    time, event, risk, _ = cox_on(dataset)
    ours = concordance_index(time, event, risk)
    assert ours == pytest.approx(concordance_index_censored(event > 0, time, risk)[0], abs=1e-9)
    assert ours > 0.65  # a real model, not noise
    rounded = np.round(risk, 1)  # many tied risks
    assert concordance_index(time, event, rounded) == pytest.approx(
        concordance_index_censored(event > 0, time, rounded)[0], abs=1e-9
    )
    grid, s = kaplan_meier_estimator(event > 0, time)
    np.testing.assert_allclose(kaplan_meier(time, event, grid), s, atol=1e-12)
    np.testing.assert_allclose(kaplan_meier(time, event, grid - 0.5), np.r_[1.0, s[:-1]], atol=1e-12)  # left limits


@pytest.mark.parametrize("dataset", SKSURV_DATA)
def test_td_auroc_equals_cumulative_dynamic_auc(dataset):
    """scikit-survival's cumulative/dynamic AUC: cases an event by t (weight 1/G), controls event-free
    at t, G from the evaluated set (passed as its survival_train). With one cause ours is the same for
    both control definitions ("not_case" adds competing events, and there are none)."""
    from sksurv.metrics import cumulative_dynamic_auc

    time, event, risk, _ = cox_on(dataset)
    horizons = np.quantile(time[event > 0], [0.25, 0.5, 0.75])
    t2 = censoring_after_tied_events(time, event)
    ref = cumulative_dynamic_auc(surv(t2, event), surv(t2, event), risk, horizons)[0]
    for controls in ("not_case", "event_free"):
        np.testing.assert_allclose(time_dependent_auroc(t2, event, risk, horizons, controls=controls), ref, atol=1e-9)
    half = np.arange(len(time)) % 2 == 0  # the censoring distribution of another set ("training split")
    ref = cumulative_dynamic_auc(surv(t2, event)[half], surv(t2, event)[~half], risk[~half], horizons)[0]
    ours = time_dependent_auroc(t2[~half], event[~half], risk[~half], horizons, censoring=(t2[half], event[half]))
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    raw = cumulative_dynamic_auc(surv(time, event), surv(time, event), risk, horizons)[0]
    np.testing.assert_allclose(time_dependent_auroc(time, event, risk, horizons), raw, atol=1e-4)  # ties only


def test_aalen_johansen_and_cause_specific_c_equal_scikit_survival_on_bmt():
    """Bone-marrow transplant data (scikit-survival's competing-risks set): cumulative incidence of
    each cause and in all; the C-index for cause k equals scikit-survival's with the other cause as
    censoring, which is how ours treats competing events; risks from a cause-specific Cox model."""
    from sksurv.datasets import load_bmt
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
    from sksurv.nonparametric import cumulative_incidence_competing_risks
    from sksurv.preprocessing import OneHotEncoder

    x, y = load_bmt()
    event, time = y["status"], y["ftime"].astype(float)
    assert set(event) == {0, 1, 2}
    grid, cif = cumulative_incidence_competing_risks(event, time)
    for cause in (1, 2):
        np.testing.assert_allclose(cumulative_incidence(time, event, cause, grid), cif[cause], atol=1e-12)
    np.testing.assert_allclose(1 - kaplan_meier(time, event > 0, grid), cif[0], atol=1e-12)
    x = OneHotEncoder().fit_transform(x)
    for cause in (1, 2):
        y_k = surv(time, event == cause)
        risk = CoxPHSurvivalAnalysis().fit(x, y_k).predict(x)  # one binary covariate: many tied risks
        assert concordance_index(time, event, risk, cause) == pytest.approx(
            concordance_index_censored(event == cause, time, risk)[0], abs=1e-9
        )
        assert uno_c_index(time, event, risk, cause) == pytest.approx(concordance_index_ipcw(y_k, y_k, risk)[0])


@pytest.mark.parametrize("dataset", SKSURV_DATA)
def test_uno_c_index(dataset):
    """Uno's C is scikit-survival's concordance_index_ipcw (ours passes the data and its cause, and
    says why it is undefined); without censoring it is Harrell's C."""
    from sksurv.metrics import concordance_index_ipcw

    time, event, risk, _ = cox_on(dataset)
    tau = float(np.quantile(time, 0.8))
    y = surv(time, event)
    assert uno_c_index(time, event, risk, tau=tau) == concordance_index_ipcw(y, y, risk, tau=tau)[0]
    half = np.arange(len(time)) % 2 == 0  # the censoring distribution of another set ("training split")
    assert (
        uno_c_index(time[~half], event[~half], risk[~half], tau=tau, censoring=(time[half], event[half]))
        == (concordance_index_ipcw(y[half], y[~half], risk[~half], tau=tau)[0])
    )
    everyone = np.ones_like(event)
    assert uno_c_index(time, everyone, risk) == pytest.approx(concordance_index(time, everyone, risk), abs=1e-12)
    with pytest.raises(MetricUndefinedError, match="nobody had a cause-1 event"):
        uno_c_index(time, np.zeros_like(event), risk)
    with pytest.raises(MetricUndefinedError, match="no cause-1 event before tau = 0.5 days"):
        uno_c_index(time, event, risk, tau=0.5)
    with pytest.raises(ValueError, match="tau must be a positive time"):
        uno_c_index(time, event, risk, tau=-1)
    short = time < np.median(time)
    with pytest.raises(ValueError, match="the censoring set ends at"):
        uno_c_index(time, event, risk, censoring=(time[short], event[short]))
    # with tau inside the censoring set's follow-up, only the cases before tau need it
    tau_in = float(np.quantile(time[short], 0.5))
    assert 0 < uno_c_index(time, event, risk, tau=tau_in, censoring=(time[short], event[short])) < 1


@pytest.mark.parametrize("dataset", SKSURV_DATA)
def test_integrated_brier_score_equals_scikit_survival(dataset):
    """Cox survival functions S(t) on a grid inside the follow-up; ours takes the cumulative incidence
    1 - S(t) (what our survival head predicts) and handles competing events, scikit-survival takes S."""
    from sksurv.metrics import brier_score
    from sksurv.metrics import integrated_brier_score as sk_ibs

    time, event, _, functions = cox_on(dataset)
    grid = np.linspace(np.quantile(time, 0.05), np.quantile(time, 0.8), 15)
    s = np.vstack([f(grid) for f in functions])
    t2 = censoring_after_tied_events(time, event)
    y2 = surv(t2, event)
    np.testing.assert_allclose(brier_scores(t2, event, 1 - s, grid), brier_score(y2, y2, s, grid)[1], atol=1e-9)
    ours = integrated_brier_score(t2, event, 1 - s, grid)
    assert ours == pytest.approx(sk_ibs(y2, y2, s, grid), abs=1e-9)
    raw = integrated_brier_score(time, event, 1 - s, grid)
    assert raw == pytest.approx(sk_ibs(surv(time, event), surv(time, event), s, grid), abs=1e-4)  # ties only
    # the same forecast for everyone (the Kaplan-Meier): worse than the model
    marginal = np.tile(kaplan_meier(time, event, grid), (len(time), 1))
    assert integrated_brier_score(time, event, 1 - marginal, grid) > raw + 0.005
    with pytest.raises(ValueError, match="at least 2 increasing times"):
        integrated_brier_score(time, event, 1 - s[:, :1], grid[:1])
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        integrated_brier_score(time, event, s - 0.5, grid)
    late = np.r_[grid[:-1], time.max() + 1]
    with pytest.raises(MetricUndefinedError, match="Brier score at .* days is undefined: no subject was followed"):
        integrated_brier_score(time, event, 1 - s, late)


def test_brier_score_with_competing_events():
    """A competing event by t is a known non-case (weight 1/G(T-)), not censoring: the true cumulative
    incidence scores better than 1 - the cause's own survival, which ignores that competing events
    prevent the cause."""
    time, event, _, rate, *_ = competing_cohort(4000, seed=11)
    grid = np.array([200.0, 500.0, 1000.0])
    true_cif = 0.6 * (1 - np.exp(-rate[:, None] * grid))
    latent = 1 - np.exp(-0.6 * rate[:, None] * grid)  # cause-1 hazard alone, competing events ignored
    assert integrated_brier_score(time, event, true_cif, grid) < integrated_brier_score(time, event, latent, grid)
    b = brier_scores(time, event, true_cif, grid)
    assert (np.diff(b) > 0).all() and b[-1] < 0.25


def test_time_to_event_metrics_with_uno_c_and_integrated_brier_score():
    time, event, risk, _ = cox_on("whas500")
    grid = np.linspace(30.0, 1500.0, 8)
    cif = 1 - np.vstack([f(grid) for f in cox_on("whas500")[3]])
    out = time_to_event_metrics(time, event, risk, horizons=[365], n_boot=40, tau=1500, grid=grid, cif_grid=cif)
    assert out["uno_c"].value == uno_c_index(time, event, risk, tau=1500)
    assert out["ibs"].value == integrated_brier_score(time, event, cif, grid)
    for key in ("c_index", "uno_c", "ibs"):
        assert out[key].lo <= out[key].value <= out[key].hi and out[key].n_boot == 40
    with pytest.raises(ValueError, match=r"grid has 8 times: pass cif_grid \[N = 500, 8\]"):
        time_to_event_metrics(time, event, risk, grid=grid, n_boot=0)
    with pytest.warns(UserWarning, match="no cause-1 event before tau"):
        early = time_to_event_metrics(time, event, risk, n_boot=0, tau=0.5)
    assert np.isnan(early["uno_c"].value) and "ibs" not in early


# ----------------------------------------------------------------------------- binary and bootstrap
def test_fast_bootstrap_metrics_equal_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    for n in (7, 50, 300):
        y = (rng.random(n) < 0.3).astype(float)
        y[:2] = [0, 1]
        score = np.round(rng.normal(size=n) + y, 1)  # ties
        assert _fast_auroc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
        assert _fast_auprc(y, score) == pytest.approx(average_precision_score(y, score), abs=1e-12)


def test_binary_metrics_and_ci_narrow_with_more_subjects():
    rng = np.random.default_rng(1)
    widths = []
    for n in (200, 3000):
        y = (rng.random(n) < 0.2).astype(int)
        score = rng.normal(size=n) + y
        m = binary_metrics(y, score, n_boot=200, seed=0)
        assert m["auroc"].value == pytest.approx(roc_auc_score(y, score))
        assert m["auprc"].value == pytest.approx(average_precision_score(y, score))
        for key in ("auroc", "auprc", "prevalence"):
            assert m[key].lo <= m[key].value <= m[key].hi
        assert m["prevalence"].value == pytest.approx(y.mean()) and m["n"] == n
        assert m["n_positive"] == y.sum() and m["auroc"].n_boot == 200
        widths.append(m["auroc"].hi - m["auroc"].lo)
    assert widths[1] < widths[0] / 2.5  # ~ 1/sqrt(n): sqrt(15) = 3.9
    again = binary_metrics(y, score, n_boot=200, seed=0)["auroc"]
    assert (again.lo, again.hi) == (m["auroc"].lo, m["auroc"].hi)  # seeded


def test_bootstrap_skips_and_counts_undefined_resamples():
    y = np.array([0] * 18 + [1, 1])
    score = np.arange(20.0)
    with pytest.warns(UserWarning, match=r"undefined in \d+ of 300 resamples"):
        est = bootstrap_ci(_fast_auroc, y, score, n_boot=300)
    assert est.n_skipped > 0 and est.n_boot + est.n_skipped == 300
    stratified = bootstrap_ci(_fast_auroc, y, score, n_boot=300, stratify=y)
    assert stratified.n_skipped == 0
    value, lo, hi = stratified  # unpacks like a tuple
    assert (value, lo, hi) == (1.0, 1.0, 1.0)


def test_binary_metrics_errors_are_clear():
    with pytest.raises(MetricUndefinedError, match="need both classes"):
        binary_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="score has 2 values but the first array has 3"):
        binary_metrics([0, 1, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="score has 1 NaN"):
        binary_metrics([0, 1, 0], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="binary labels 0/1"):
        binary_metrics([0, 1, 2], [0.1, 0.2, 0.3])


def test_regression_metrics_known_values():
    out = regression_metrics([1, 2, 3, 4], [1, 2, 3, 5], n_boot=50)
    assert out["mae"].value == pytest.approx(0.25)
    assert out["rmse"].value == pytest.approx(0.5)
    assert out["r2"].value == pytest.approx(1 - 1 / 5)
    assert out["pearson_r"].value == pytest.approx(np.corrcoef([1, 2, 3, 4], [1, 2, 3, 5])[0, 1])
    with pytest.raises(MetricUndefinedError, match="constant"):
        regression_metrics([2, 2, 2], [1, 2, 3], n_boot=0)


# ----------------------------------------------------------------------------- calibration
def test_calibration_of_calibrated_and_overconfident_predictors():
    rng = np.random.default_rng(2)
    p = rng.uniform(0.02, 0.98, 20000)
    y = (rng.random(20000) < p).astype(int)
    good = calibration_bins(y, p, n_bins=10)
    assert good.ece < 0.02 and good.slope == pytest.approx(1, abs=0.1)
    assert good.intercept == pytest.approx(0, abs=0.05)
    assert good.brier == pytest.approx(np.mean((p - y) ** 2))
    assert good.count.sum() == 20000 and np.all(np.abs(good.count - 2000) <= 1)
    assert np.all((good.observed_lo <= good.observed) & (good.observed <= good.observed_hi))
    logit = np.log(p / (1 - p))
    over = calibration_bins(y, _expit(2 * logit))  # too extreme: slope 1/2
    assert over.slope == pytest.approx(0.5, abs=0.05) and over.ece > 0.05
    under = calibration_bins(y, _expit(logit - 1))  # risks too low: intercept +1
    assert under.intercept == pytest.approx(1, abs=0.1)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        calibration_bins(y, logit)


def test_survival_calibration_of_true_cumulative_incidence():
    time, event, _, rate, *_ = competing_cohort(8000, seed=9)
    horizon = 500.0
    true_cif = 0.6 * (1 - np.exp(-rate * horizon))
    good = survival_calibration_bins(time, event, true_cif, horizon, n_bins=5)
    assert good.ece < 0.03 and good.horizon_days == horizon
    bad = survival_calibration_bins(time, event, np.clip(2 * true_cif, 0, 1), horizon, n_bins=5)
    assert bad.ece > 0.1 and bad.brier > good.brier


# ----------------------------------------------------------------------------- plots and tables
def assert_png(path, width_in, height_in):
    image = imread(path)
    assert abs(image.shape[1] - width_in * DPI) <= 1 and abs(image.shape[0] - height_in * DPI) <= 1
    ink = (image[..., :3] < 0.9).any(axis=-1).mean()
    assert 0.02 < ink < 0.6, f"{path} looks blank or flooded ({ink:.1%} non-white pixels)"
    rgb = (image[..., :3] * 255).astype(np.uint32)
    colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
    assert len(colours) > 20  # lines, text, anti-aliasing: not a flat image


def test_plots_write_nonblank_pngs_of_the_expected_size(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(int)
    score = rng.normal(size=300) + y
    curves = {"all modalities": (y, score), "without ecg": (y, score + rng.normal(size=300))}
    assert plot_roc(curves, tmp_path / "roc.png", "ROC: event within 1 year") == tmp_path / "roc.png"
    assert_png(tmp_path / "roc.png", 5.5, 5.5)
    assert_png(plot_pr(curves, tmp_path / "pr.png", "Precision-recall"), 5.5, 5.5)
    cal = {"all modalities": calibration_bins(y, _expit(score - 1))}
    assert_png(plot_calibration(cal, tmp_path / "sub" / "cal.png", "Calibration"), 5.5, 5.5)
    without = {"ecg": (0.70, 0.65, 0.75), "mri": Estimate(0.78, 0.74, 0.82), "voice": (0.79, 0.7, 0.85)}
    assert_png(
        plot_ablation((0.8, 0.76, 0.84), without, "AUROC", tmp_path / "abl.png", "AUROC with each modality withheld"),
        7,
        1.6 + 0.45 * 3,
    )
    nan = float("nan")  # a modality whose metric is undefined is listed without a bar
    assert_png(
        plot_ablation(
            Estimate(0.8, 0.76, 0.84),
            {**without, "omics": (nan, nan, nan)},
            "AUROC",
            tmp_path / "abl_nan.png",
            "AUROC",
            baseline=0.5,
        ),
        7,
        1.6 + 0.45 * 4,
    )
    events = [(0, "clinical"), (30, "ecg"), (200, "mri"), (400, "ecg"), (800, "voice")]
    forecast = [(t, 0.05 + 0.02 * k) for k, (t, _) in enumerate(events)]
    modalities = ["mri", "ecg", "voice", "breath", "clinical"]
    assert_png(
        plot_person(
            events, modalities, forecast, 1826.25, tmp_path / "person.png", "Timeline and 5-year risk", onset_days=900
        ),
        8,
        3.2 + 0.3 * 5,
    )
    with pytest.raises(ValueError, match=r"modalities \['wearable'\] that are not in"):
        plot_person(events + [(900, "wearable")], modalities, forecast, 365, tmp_path / "p.png", "t")
    with pytest.raises(ValueError, match="ending in .png"):
        plot_roc(curves, tmp_path / "roc.pdf", "ROC")


def test_markdown_table_and_formatting():
    table = markdown_table(
        [
            {"model": "all", "auroc": Estimate(0.8123, 0.75, 0.87), "n": 120},
            {"model": "without a|b", "auroc": (0.7, 0.65, 0.75), "slope": -0.05},
        ],
        {"model": "Model", "auroc": "AUROC (95% CI)", "n": "N", "slope": "Slope"},
    )
    assert table.splitlines() == [
        "| Model | AUROC (95% CI) | N | Slope |",
        "|---|---|---|---|",
        "| all | 0.812 (0.750-0.870) | 120 | – |",
        "| without a\\|b | 0.700 (0.650-0.750) | – | -0.050 |",
    ]
    assert format_ci(-0.05, -0.12, 0.02) == "-0.050 (-0.120 to 0.020)"
    assert str(Estimate(0.5, 0.4, 0.6)) == "0.500 (0.400-0.600)"
