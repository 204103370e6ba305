"""Evaluation metrics and report plots checked against independent computations and known values."""

from __future__ import annotations

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
    calibration_bins,
    concordance_index,
    cumulative_incidence,
    format_ci,
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
