"""Evaluation metrics on plain numpy arrays (one value per subject; no model imports).

Discrimination (AUROC, AUPRC), regression error (MAE, RMSE, R^2, Pearson r), time-to-event with
competing risks (cause-specific Harrell's C-index, Uno's IPCW C-index through scikit-survival,
cumulative/dynamic time-dependent AUROC with inverse-probability-of-censoring weights, IPCW Brier
score and its integral over time, Aalen-Johansen cumulative incidence) and calibration
(quantile bins of observed vs predicted, expected calibration error, Brier score, logistic
recalibration slope and intercept, and the same at a horizon for time-to-event). Confidence
intervals are percentile bootstraps over subjects (:func:`bootstrap_ci`). Time-to-event coding:
``time`` in days (float) and ``event`` int, 0 = censored, k >= 1 = cause k. Bad input raises
``ValueError`` naming the argument; a metric that has no value on the data (one class only, no
comparable pairs) raises :class:`MetricUndefinedError`, which the bootstrap counts and skips.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "MetricUndefinedError",
    "Estimate",
    "CalibrationBins",
    "format_ci",
    "bootstrap_ci",
    "auroc",
    "auprc",
    "binary_metrics",
    "regression_metrics",
    "status_at",
    "kaplan_meier",
    "cumulative_incidence",
    "concordance_index",
    "uno_c_index",
    "time_dependent_auroc",
    "brier_scores",
    "integrated_brier_score",
    "time_to_event_metrics",
    "calibration_bins",
    "survival_calibration_bins",
]


class MetricUndefinedError(ValueError):
    """The metric has no value on these data (e.g. one class only, no comparable pairs)."""


def format_ci(value: float, lo: float, hi: float, digits: int = 3) -> str:
    """``"0.812 (0.750-0.870)"``; ``"-0.050 (-0.120 to 0.020)"`` when a bound is negative; an en
    dash for an undefined (NaN) value."""
    v, a, b = (f"{x:.{digits}f}" for x in (value, lo, hi))
    if np.isnan(value):
        return "–"
    if np.isnan(lo) or np.isnan(hi):
        return v
    return f"{v} ({a} to {b})" if min(lo, hi) < 0 else f"{v} ({a}-{b})"


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its ``1 - alpha`` percentile bootstrap interval.

    Unpacks as ``value, lo, hi = estimate``; ``n_boot`` resamples gave the interval and
    ``n_skipped`` more were skipped because the metric was undefined on them.
    """

    value: float
    lo: float
    hi: float
    n_boot: int = 0
    n_skipped: int = 0

    def __iter__(self) -> Iterator[float]:
        return iter((self.value, self.lo, self.hi))

    def __str__(self) -> str:
        return format_ci(self.value, self.lo, self.hi)


# ----------------------------------------------------------------------------- input checks
def _vector(name: str, x, n: int | None = None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must hold one value per subject (1-D); got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty; evaluation needs at least one subject")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric; got dtype {a.dtype}")
    a = a.astype(float)
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} NaN/inf value(s) (first at index "
            f"{int(np.flatnonzero(bad)[0])}); drop or impute those subjects first"
        )
    if n is not None and len(a) != n:
        raise ValueError(
            f"{name} has {len(a)} values but the first array has {n}: pass one value per subject, in the same order"
        )
    return a


def _vectors(**arrays) -> list[np.ndarray]:
    first = np.asarray(next(iter(arrays.values())))
    n = len(first) if first.ndim == 1 else None
    return [_vector(k, v, n) for k, v in arrays.items()]


def _binary(name: str, y: np.ndarray) -> np.ndarray:
    values = np.unique(y)
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"{name} must be binary labels 0/1; got values {values[:10].tolist()}")
    return y


def _both_classes(y: np.ndarray, what: str) -> None:
    n_pos = int(y.sum())
    if n_pos in (0, len(y)):
        raise MetricUndefinedError(
            f"{what} is undefined: all {len(y)} labels are {int(y[0])} "
            "(need both classes; evaluate on a set with cases and controls)"
        )


def _events(time, event, *others: tuple[str, object]) -> list[np.ndarray]:
    arrays = _vectors(time=time, event=event, **dict(others))
    e = arrays[1]
    if (e < 0).any() or (e != np.round(e)).any():
        raise ValueError(
            f"event must be integer codes: 0 = censored, k >= 1 = cause k; got {np.unique(e)[:10].tolist()}"
        )
    arrays[1] = e.astype(int)
    return arrays


# ----------------------------------------------------------------------------- bootstrap
def bootstrap_ci(
    metric_fn: Callable[..., float], *arrays, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, stratify=None
) -> Estimate:
    """Percentile bootstrap over subjects: ``metric_fn(*arrays)`` and its ``1 - alpha`` interval.

    Each array's first axis is the subject. ``stratify`` (labels, one per subject) resamples within
    each stratum so every resample keeps the class balance. Resamples where ``metric_fn`` raises
    :class:`MetricUndefinedError` are skipped, counted in ``n_skipped`` and warned about.
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"bootstrap_ci: arrays differ in length {[len(a) for a in arrays]}")
    if not 0 < alpha < 1:
        raise ValueError(f"bootstrap_ci: alpha must be in (0, 1); got {alpha}")
    value = float(metric_fn(*arrays))
    if n_boot <= 0:
        return Estimate(value, float("nan"), float("nan"))
    if stratify is None:
        groups = [np.arange(n)]
    else:
        strata = np.asarray(stratify)
        if len(strata) != n:
            raise ValueError(f"bootstrap_ci: stratify has {len(strata)} labels for {n} subjects")
        groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        try:
            stats.append(float(metric_fn(*(a[idx] for a in arrays))))
        except MetricUndefinedError:
            pass
    skipped = n_boot - len(stats)
    name = getattr(metric_fn, "__name__", "metric")
    if not stats:
        raise MetricUndefinedError(f"{name} was undefined in all {n_boot} bootstrap resamples")
    if skipped:
        warnings.warn(
            f"bootstrap of {name}: undefined in {skipped} of {n_boot} resamples "
            f"(skipped); the interval comes from the other {len(stats)}",
            stacklevel=2,
        )
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return Estimate(value, float(lo), float(hi), len(stats), skipped)


# ----------------------------------------------------------------------------- binary outcomes
def _weighted_auc(case_score, case_w, ctrl_score, ctrl_w) -> float:
    """P(case score > control score) + 0.5 P(tie), each pair weighted by ``case_w * ctrl_w``."""
    order = np.argsort(ctrl_score, kind="stable")
    s = ctrl_score[order]
    cum = np.concatenate([[0.0], np.cumsum(ctrl_w[order])])
    below = cum[np.searchsorted(s, case_score, side="left")]
    tied = cum[np.searchsorted(s, case_score, side="right")] - below
    return float(np.sum(case_w * (below + 0.5 * tied)) / (case_w.sum() * ctrl_w.sum()))


def _fast_auroc(y: np.ndarray, score: np.ndarray) -> float:
    _both_classes(y, "AUROC")
    pos, neg = score[y == 1], score[y == 0]
    return _weighted_auc(pos, np.ones(len(pos)), neg, np.ones(len(neg)))


def _fast_auprc(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision as scikit-learn defines it (one step per distinct score)."""
    _both_classes(y, "AUPRC")
    order = np.argsort(-score, kind="stable")
    s, t = score[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall_step = np.diff(np.r_[0.0, tp]) / tp[-1]
    return float(np.sum(recall_step * precision))


def auroc(y, score) -> float:
    """Area under the ROC curve (scikit-learn); ``y`` 0/1 labels, higher ``score`` = case."""
    y, score = _vectors(y=y, score=score)
    _both_classes(_binary("y", y), "AUROC")
    return float(roc_auc_score(y, score))


def auprc(y, score) -> float:
    """Average precision (area under the precision-recall curve, scikit-learn)."""
    y, score = _vectors(y=y, score=score)
    _both_classes(_binary("y", y), "AUPRC")
    return float(average_precision_score(y, score))


def _wilson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def binary_metrics(y, score, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """AUROC and AUPRC (scikit-learn point values, bootstrap CIs stratified by class), prevalence
    (Wilson interval), ``n`` and ``n_positive``.  ``y``: [N] 0/1; ``score``: [N], higher = case."""
    y, score = _vectors(y=y, score=score)
    _binary("y", y)
    out = {}
    for name, point, fast in (("auroc", auroc, _fast_auroc), ("auprc", auprc, _fast_auprc)):
        est = bootstrap_ci(fast, y, score, n_boot=n_boot, seed=seed, alpha=alpha, stratify=y)
        out[name] = Estimate(point(y, score), est.lo, est.hi, est.n_boot, est.n_skipped)
    k, n = int(y.sum()), len(y)
    out["prevalence"] = Estimate(k / n, *_wilson(k, n, alpha))
    out.update(n=n, n_positive=k)
    return out


# ----------------------------------------------------------------------------- regression
def _mae(y, pred):
    return float(np.mean(np.abs(y - pred)))


def _rmse(y, pred):
    return float(np.sqrt(np.mean((y - pred) ** 2)))


def _r2(y, pred):
    ss_tot = np.sum((y - y.mean()) ** 2)
    if ss_tot == 0:
        raise MetricUndefinedError("R^2 is undefined: the target is constant")
    return float(1 - np.sum((y - pred) ** 2) / ss_tot)


def _pearson(y, pred):
    if np.ptp(y) == 0 or np.ptp(pred) == 0:
        raise MetricUndefinedError("Pearson r is undefined: the target or the prediction is constant")
    return float(np.corrcoef(y, pred)[0, 1])


def regression_metrics(y, pred, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """MAE, RMSE, R^2 and Pearson r of ``pred`` [N] against ``y`` [N], each with a bootstrap CI."""
    y, pred = _vectors(y=y, pred=pred)
    out = {
        name: bootstrap_ci(fn, y, pred, n_boot=n_boot, seed=seed, alpha=alpha)
        for name, fn in (("mae", _mae), ("rmse", _rmse), ("r2", _r2), ("pearson_r", _pearson))
    }
    out["n"] = len(y)
    return out


# ----------------------------------------------------------------------------- time to event
def _km_steps(time: np.ndarray, observed: np.ndarray):
    """Kaplan-Meier at each distinct time: ``(times, survival, n_at_risk)``."""
    u, inv = np.unique(time, return_inverse=True)
    d = np.bincount(inv, weights=observed.astype(float), minlength=len(u))
    at_risk = np.bincount(inv, minlength=len(u))[::-1].cumsum()[::-1]
    return u, np.cumprod(1.0 - d / at_risk), d, at_risk


def _step_at(u: np.ndarray, values: np.ndarray, t, initial: float, left: bool = False) -> np.ndarray:
    """Right-continuous step function (left limit if ``left``) through ``(u, values)`` at ``t``."""
    idx = np.searchsorted(u, t, side="left" if left else "right") - 1
    return np.where(idx >= 0, values[np.maximum(idx, 0)], initial)


def kaplan_meier(time, observed, times) -> np.ndarray:
    """Kaplan-Meier survival S(t) at ``times``; ``observed`` [N] is 1 for an event, 0 if censored
    (scikit-survival's ``kaplan_meier_estimator``, evaluated as a right-continuous step function)."""
    time, observed = _vectors(time=time, observed=observed)
    u, surv, _, _ = _km_steps(time, observed != 0)
    return _step_at(u, surv, np.asarray(times, float), 1.0)


def cumulative_incidence(time, event, cause: int, times) -> np.ndarray:
    """Aalen-Johansen cumulative incidence of ``cause`` at ``times`` (days), competing causes
    removing subjects from risk: CIF(t) = sum over event times s <= t of S(s-) d_cause(s) / n(s),
    with S the all-cause Kaplan-Meier. With a single cause it equals 1 - Kaplan-Meier; it equals
    scikit-survival's ``cumulative_incidence_competing_risks``."""
    time, event = _events(time, event)
    u, surv, _, at_risk = _km_steps(time, event > 0)
    _, inv = np.unique(time, return_inverse=True)
    d_cause = np.bincount(inv, weights=(event == cause).astype(float), minlength=len(u))
    cif = np.cumsum(np.r_[1.0, surv[:-1]] * d_cause / at_risk)
    return _step_at(u, cif, np.asarray(times, float), 0.0)


def concordance_index(time, event, risk, cause: int = 1) -> float:
    """Harrell's C for ``cause`` (cause-specific): the share of comparable pairs in which the
    subject with the earlier ``cause`` event has the higher ``risk``.

    A pair (i, j) is comparable when i has a ``cause`` event at ``time[i]`` and j is known to be
    event-free of ``cause`` longer: ``time[j] > time[i]``, or ``time[j] == time[i]`` and j is
    censored or had a competing event (censoring and competing events at a tied time are taken to
    follow the event). Competing events count as censoring at their time. Two ``cause`` events at
    the same time are not comparable. Tied risks count 1/2. Perfect ranking gives 1, reversed 0.
    The same definition as scikit-survival's ``concordance_index_censored`` with the event indicator
    ``event == cause`` (equal to 1e-9 on its WHAS500, GBSG2 and BMT data, tests/test_metrics.py).
    """
    time, event, risk = _events(time, event, ("risk", risk))
    cases = np.flatnonzero(event == cause)
    not_cause = event != cause
    concordant = tied = total = 0.0
    chunk = max(1, 4_000_000 // len(time))
    for start in range(0, len(cases), chunk):
        i = cases[start : start + chunk, None]
        comparable = (time > time[i]) | ((time == time[i]) & not_cause)
        concordant += np.sum(comparable & (risk < risk[i]))
        tied += np.sum(comparable & (risk == risk[i]))
        total += np.sum(comparable)
    if total == 0:
        raise MetricUndefinedError(
            f"C-index is undefined: no comparable pairs (no subject had a "
            f"cause-{cause} event before another subject's follow-up ended)"
        )
    return float((concordant + 0.5 * tied) / total)


def uno_c_index(time, event, risk, cause: int = 1, tau: float | None = None, censoring=None) -> float:
    """Uno's C (Uno 2011): Harrell's pairs for ``cause``, each case weighted by 1/G(T)^2, so the
    value does not depend on the censoring pattern; computed by scikit-survival's
    ``concordance_index_ipcw``.

    ``tau`` (days) truncates: only cases before ``tau`` count (C over the first ``tau`` days; use
    the prediction horizon, where the censoring distribution G is still positive). ``censoring``:
    ``(time, event)`` of the set G is estimated from (scikit-survival calls it ``survival_train``;
    the training split is the usual choice), default the evaluated people. Competing events count
    as censoring, as in :func:`concordance_index` (cause-specific C), both in the pairs and in G.
    """
    from sksurv.exceptions import NoComparablePairException
    from sksurv.metrics import concordance_index_ipcw
    from sksurv.util import Surv

    time, event, risk = _events(time, event, ("risk", risk))
    if tau is not None and not tau > 0:
        raise ValueError(f"tau must be a positive time in days; got {tau}")
    what = f"Uno's C for cause {cause}"
    if not (event == cause).any():
        raise MetricUndefinedError(f"{what} is undefined: nobody had a cause-{cause} event")
    if tau is not None and not ((event == cause) & (time < tau)).any():
        raise MetricUndefinedError(f"{what} is undefined: no cause-{cause} event before tau = {tau:g} days")
    test = Surv.from_arrays(event == cause, time)
    if censoring is None:
        train = test
    else:
        c_time, c_event = _events(*censoring)
        train = Surv.from_arrays(c_event == cause, c_time)
        counted = (event == cause) & (time < tau) if tau is not None else event == cause  # the cases C counts
        if counted.any() and time[counted].max() > c_time.max():
            raise ValueError(
                f"{what}: the censoring set ends at {c_time.max():g} days, before the last event evaluated "
                f"({time[counted].max():g} days); pass tau <= {c_time.max():g} or a longer-followed set"
            )
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 (no weighted pair) is NaN, refused below
            value = float(concordance_index_ipcw(train, test, risk, tau=tau)[0])
    except NoComparablePairException:
        raise MetricUndefinedError(f"{what} is undefined: no comparable pairs") from None
    except ValueError as err:
        if "censoring survival function is zero" in str(err):
            raise MetricUndefinedError(
                f"{what} is undefined: the censoring distribution reaches 0 at an event time "
                f"(everyone else was censored by then); pass a smaller tau (the horizon)"
            ) from None
        raise
    if not np.isfinite(value):
        raise MetricUndefinedError(f"{what} is undefined: no comparable pair has a positive weight")
    return value


def _censoring_km(time: np.ndarray, event: np.ndarray, censoring) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier of the censoring times, ``(times, G)``: from ``censoring`` = ``(time, event)`` of
    another set (e.g. the training split) when given, else from the evaluated people themselves."""
    if censoring is None:
        return _km_steps(time, event == 0)[:2]
    c_time, c_event = _events(*censoring)
    return _km_steps(c_time, c_event == 0)[:2]


def _ipcw(time: np.ndarray, event: np.ndarray, horizon: float, cause: int, censoring=None, what: str = "IPCW"):
    """Status at ``horizon`` and inverse-probability-of-censoring weights (Kaplan-Meier of the
    censoring times, G, see :func:`_censoring_km`): cases and competing events by ``horizon`` get
    1/G(T-), subjects still event-free get 1/G(horizon), those censored before ``horizon`` get 0.

    Ties: a censoring at an event's time follows the event (the event weighs 1/G(T-)), and G's
    jump there counts everyone still at risk, the events included (as R's ``survival`` does).
    scikit-survival instead removes the events from G's risk set and weighs an event by 1/G(T); the
    two agree wherever no censoring ties an event time. ``what``: the metric, named in the errors."""
    undefined = f"{what} at {horizon:g} days is undefined"
    by_h = time <= horizon
    if by_h.all():
        raise MetricUndefinedError(
            f"{undefined}: no subject was followed beyond {horizon:g} days (longest "
            f"follow-up {time.max():g} days); choose a shorter horizon"
        )
    u, g = _censoring_km(time, event, censoring)
    case = by_h & (event == cause)
    competing = by_h & (event > 0) & (event != cause)
    survivor = ~by_h
    g_at = np.ones(len(time))
    g_at[case | competing] = _step_at(u, g, time[case | competing], 1.0, left=True)
    g_at[survivor] = _step_at(u, g, horizon, 1.0)
    if (g_at[case | competing | survivor] <= 0).any():
        raise MetricUndefinedError(
            f"{undefined}: the censoring distribution reaches 0 before {horizon:g} days (everyone was censored by "
            "then), so no inverse-probability weight exists; choose a shorter horizon"
        )
    w = np.where(case | competing | survivor, 1.0 / np.maximum(g_at, 1e-300), 0.0)
    return case, competing, survivor, w


def _per_time(time, event, name: str, values, n: int, what: str, repeat: bool) -> list[np.ndarray]:
    """``(time, event, values [N, n])`` checked (:func:`_events`): a column of ``values`` per horizon or time;
    ``repeat``: a vector [N] is the same score at each of them."""
    arr = np.asarray(values, float)
    if arr.ndim == 1 and repeat:
        arr = np.repeat(arr[:, None], n, 1)
    if arr.ndim != 2 or arr.shape[1] != n:
        shape = f"[N] or [N, {n}]" if repeat else f"[N, {n}]"
        raise ValueError(f"{name} must be {shape} (one column per {what}); got shape {np.shape(values)}")
    time, event, *_ = _events(time, event, *((f"{name}[:, {k}]", arr[:, k]) for k in range(n)))
    return [time, event, arr]


def time_dependent_auroc(
    time, event, risk_at_t, horizons, cause: int = 1, controls: str = "not_case", censoring=None
) -> float | np.ndarray:
    """Cumulative/dynamic AUROC at each horizon (days) with IPCW (Uno 2007; Blanche 2013).

    Cases at t: a ``cause`` event by t. Controls (``controls="not_case"``, Blanche's definition 2):
    everyone else known at t, i.e. still event-free or had a competing event by t;
    ``"event_free"`` keeps only subjects event-free at t (definition 1). Subjects censored before t
    are represented through the inverse-probability-of-censoring weights. ``risk_at_t`` is [N]
    (one score for all horizons) or [N, H] (a score per horizon, e.g. predicted cumulative
    incidence by t). ``censoring``: ``(time, event)`` of the set the censoring distribution is
    estimated from (e.g. the training split), default the evaluated people. Returns a float for a
    scalar horizon, else an array [H].

    With one cause both control definitions are scikit-survival's ``cumulative_dynamic_auc`` with the
    evaluated data as its ``survival_train``, except at censorings tied with event times (see
    :func:`_ipcw`); with competing risks scikit-survival has no counterpart.
    """
    if controls not in ("not_case", "event_free"):
        raise ValueError(f"controls must be 'not_case' or 'event_free'; got {controls!r}")
    scalar = np.ndim(horizons) == 0
    hs = np.atleast_1d(np.asarray(horizons, float))
    time, event, risk = _per_time(time, event, "risk_at_t", risk_at_t, len(hs), "horizon", repeat=True)
    out = np.empty(len(hs))
    for k, h in enumerate(hs):
        case, competing, survivor, w = _ipcw(time, event, h, cause, censoring, "time-dependent AUROC")
        ctrl = survivor | competing if controls == "not_case" else survivor
        if not case.any():
            raise MetricUndefinedError(
                f"time-dependent AUROC at {h:g} days is undefined: no "
                f"cause-{cause} event by then (choose a later horizon)"
            )
        out[k] = _weighted_auc(risk[case, k], w[case], risk[ctrl, k], w[ctrl])
    return float(out[0]) if scalar else out


def brier_scores(time, event, cif_at, times, cause: int = 1, censoring=None) -> np.ndarray:
    """IPCW Brier score at each of ``times`` (days) [T] of the predicted cumulative incidence of
    ``cause`` by then, ``cif_at`` [N, T] (Graf 1999; with competing risks Schoop 2011): mean over
    people of w (1{cause event by t} - CIF(t))^2, a competing event by t being a known non-case,
    with the weights w of :func:`_ipcw` (G from ``censoring`` = ``(time, event)`` when given).

    With one cause, CIF(t) = 1 - S(t) and this is scikit-survival's ``brier_score`` (which needs
    the survival function), except at censorings tied with event times (see :func:`_ipcw`).
    """
    ts = np.atleast_1d(np.asarray(times, float))
    time, event, cif = _per_time(time, event, "cif_at", cif_at, len(ts), "time", repeat=len(ts) == 1)
    _probabilities("cif_at", cif)
    out = np.empty(len(ts))
    for k, t in enumerate(ts):
        case, _, _, w = _ipcw(time, event, t, cause, censoring, "Brier score")
        out[k] = np.mean(w * (case - cif[:, k]) ** 2)
    return out


def integrated_brier_score(time, event, cif_at, times, cause: int = 1, censoring=None) -> float:
    """The Brier score (:func:`brier_scores`) integrated over ``times`` [T >= 2, increasing] by the
    trapezoid rule and divided by ``times[-1] - times[0]``, as scikit-survival's
    ``integrated_brier_score`` does (0 = perfect; 0.25 = a constant 50% forecast). Choose ``times``
    inside the follow-up: someone must be followed beyond the last one."""
    ts = np.asarray(times, float)
    if ts.ndim != 1 or len(ts) < 2 or (np.diff(ts) <= 0).any():
        raise ValueError(f"times must be at least 2 increasing times (days); got {np.asarray(times).tolist()}")
    return float(np.trapezoid(brier_scores(time, event, cif_at, ts, cause, censoring), ts) / (ts[-1] - ts[0]))


_NAN = Estimate(float("nan"), float("nan"), float("nan"))


def _bootstrap_or_nan(metric_fn: Callable[..., float], *arrays, **kw) -> Estimate:
    """:func:`bootstrap_ci`, or a NaN Estimate and a warning saying why where the metric is undefined
    on the data (the report keeps the row)."""
    try:
        return bootstrap_ci(metric_fn, *arrays, **kw)
    except MetricUndefinedError as err:
        warnings.warn(str(err), stacklevel=3)
        return _NAN


def time_to_event_metrics(
    time,
    event,
    risk,
    cause: int = 1,
    horizons: Sequence[float] = (),
    risk_at_t=None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    *,
    tau: float | None = None,
    grid: Sequence[float] = (),
    cif_grid=None,
    censoring=None,
) -> dict:
    """Harrell's and Uno's C-index, time-dependent AUROC per horizon (days) and, given a ``grid``,
    the integrated Brier score, each with a bootstrap CI over people, and counts.

    ``risk`` [N] ranks subjects for the C-indices; ``risk_at_t`` ([N] or [N, H], default ``risk``)
    scores them at each horizon; Uno's C is truncated at ``tau`` (default: none). ``cif_grid``
    [N, G]: predicted cumulative incidence of ``cause`` at each time of ``grid`` [G >= 2] (with one
    cause, 1 - the survival function), for the integrated Brier score over the grid. ``censoring``
    (``(time, event)``, e.g. the training split) gives the censoring distribution of Uno's C, the
    time-dependent AUROC and the Brier score; default the evaluated people. Returns ``{"c_index",
    "uno_c", "td_auroc": {horizon: Estimate}, "ibs" (with a grid), "n", "n_events", "n_competing",
    "n_censored"}``; a figure undefined on the data (no case by a horizon, nobody followed beyond
    it) gets a NaN Estimate and a warning saying why.
    """
    time, event, risk = _events(time, event, ("risk", risk))
    hs = np.asarray(horizons, float).reshape(-1)
    r_t = np.asarray(risk if risk_at_t is None else risk_at_t, float)
    r_t = np.repeat(r_t[:, None], len(hs), 1) if r_t.ndim == 1 else r_t
    if r_t.shape != (len(time), len(hs)):
        raise ValueError(
            f"risk_at_t must be [N] or [N, {len(hs)}] (N = {len(time)} subjects, one "
            f"column per horizon); got shape {np.shape(risk_at_t)}"
        )
    gs = np.asarray(grid, float).reshape(-1)
    if len(gs) and (cif_grid is None or np.shape(cif_grid) != (len(time), len(gs))):
        raise ValueError(
            f"grid has {len(gs)} times: pass cif_grid [N = {len(time)}, {len(gs)}], the predicted cumulative "
            f"incidence at each; got shape {None if cif_grid is None else np.shape(cif_grid)}"
        )
    kw = dict(n_boot=n_boot, seed=seed, alpha=alpha)

    def c_index(t, e, r):
        return concordance_index(t, e, r, cause)

    def uno_c(t, e, r):
        return uno_c_index(t, e, r, cause, tau, censoring)

    out = {
        "c_index": bootstrap_ci(c_index, time, event, risk, **kw),
        "uno_c": _bootstrap_or_nan(uno_c, time, event, risk, **kw),
        "td_auroc": {},
    }
    for k, h in enumerate(hs):

        def td_auroc(t, e, r, h=h):
            return time_dependent_auroc(t, e, r, h, cause, censoring=censoring)

        out["td_auroc"][float(h)] = _bootstrap_or_nan(td_auroc, time, event, r_t[:, k], **kw)
    if len(gs):

        def ibs(t, e, c):
            return integrated_brier_score(t, e, c, gs, cause, censoring)

        out["ibs"] = _bootstrap_or_nan(ibs, time, event, np.asarray(cif_grid, float), **kw)
    out.update(
        n=len(time),
        n_events=int((event == cause).sum()),
        n_competing=int(((event > 0) & (event != cause)).sum()),
        n_censored=int((event == 0).sum()),
    )
    return out


# ----------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class CalibrationBins:
    """Observed vs predicted per quantile bin of the prediction, and summary calibration scores.

    ``predicted``, ``observed``, ``count``, ``observed_lo``/``observed_hi`` are [B]. ``ece`` is the
    count-weighted mean |observed - predicted|. For time-to-event, ``observed`` is the
    Aalen-Johansen cumulative incidence by ``horizon_days``, ``brier`` is IPCW-weighted, and the
    observed intervals and the recalibration ``slope``/``intercept`` are NaN.
    """

    predicted: np.ndarray
    observed: np.ndarray
    count: np.ndarray
    observed_lo: np.ndarray
    observed_hi: np.ndarray
    ece: float
    brier: float
    slope: float
    intercept: float
    horizon_days: float | None = None


def _quantile_bins(prob: np.ndarray, n_bins: int) -> list[np.ndarray]:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}")
    edges = np.unique(np.quantile(prob, np.linspace(0, 1, n_bins + 1))[1:-1])
    which = np.searchsorted(edges, prob, side="right")
    return [idx for idx in (np.flatnonzero(which == b) for b in range(len(edges) + 1)) if len(idx)]


def _probabilities(name: str, p: np.ndarray) -> np.ndarray:
    if (p < 0).any() or (p > 1).any():
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; got range "
            f"[{p.min():.3g}, {p.max():.3g}] (apply a sigmoid to logits first)"
        )
    return p


def _expit(x):
    return np.exp(-np.logaddexp(0.0, -x))


def _logistic_fit(y: np.ndarray, x: np.ndarray, fit_slope: bool) -> np.ndarray:
    """Newton-Raphson for logit P(y=1) = a + b x (``fit_slope``) or a + x (offset, slope 1)."""
    design = np.column_stack([np.ones_like(x), x]) if fit_slope else np.ones((len(x), 1))
    offset = 0.0 if fit_slope else x
    beta = np.zeros(design.shape[1])
    for _ in range(100):
        mu = _expit(offset + design @ beta)
        hess = design.T @ (design * (mu * (1 - mu))[:, None])
        step = np.linalg.lstsq(hess, design.T @ (y - mu), rcond=None)[0]
        step *= min(1.0, 5.0 / max(np.abs(step).max(), 1e-300))  # damp far jumps
        beta += step
        if np.abs(step).max() < 1e-9:
            return beta
    raise MetricUndefinedError(
        "logistic recalibration did not converge (the predictions separate the classes perfectly)"
    )


def calibration_bins(y, prob, n_bins: int = 10, alpha: float = 0.05) -> CalibrationBins:
    """Calibration of predicted probabilities ``prob`` [N] against 0/1 outcomes ``y`` [N].

    Quantile bins (equal counts; fewer when predictions tie), observed frequency per bin with a
    Wilson interval, ECE, Brier score, and logistic recalibration: ``slope`` b from
    logit P(y) = a + b logit(prob) (1 = ideal, < 1 = too extreme), ``intercept`` a from the model
    with b fixed at 1 (calibration-in-the-large; 0 = ideal, > 0 = risks underestimated).
    Slope and intercept are NaN, with a warning, when undefined (one class, perfect separation).
    """
    y, prob = _vectors(y=y, prob=prob)
    _binary("y", y)
    _probabilities("prob", prob)
    bins = _quantile_bins(prob, n_bins)
    count = np.array([len(b) for b in bins])
    observed = np.array([y[b].mean() for b in bins])
    lo, hi = np.array([_wilson(int(y[b].sum()), len(b), alpha) for b in bins]).T
    predicted = np.array([prob[b].mean() for b in bins])
    x = np.log(np.clip(prob, 1e-7, 1 - 1e-7)) - np.log1p(-np.clip(prob, 1e-7, 1 - 1e-7))
    try:
        _both_classes(y, "calibration slope")
        slope, intercept = _logistic_fit(y, x, True)[1], _logistic_fit(y, x, False)[0]
    except MetricUndefinedError as err:
        warnings.warn(f"calibration slope and intercept set to NaN: {err}", stacklevel=2)
        slope = intercept = float("nan")
    return CalibrationBins(
        predicted,
        observed,
        count,
        lo,
        hi,
        ece=float(np.sum(count * np.abs(observed - predicted)) / len(y)),
        brier=float(np.mean((prob - y) ** 2)),
        slope=float(slope),
        intercept=float(intercept),
    )


def survival_calibration_bins(time, event, pred, horizon: float, cause: int = 1, n_bins: int = 10) -> CalibrationBins:
    """Calibration at ``horizon`` (days): predicted cumulative incidence of ``cause`` by then
    (``pred`` [N]) vs the Aalen-Johansen estimate in each quantile bin of ``pred``; ECE weighted
    by bin size; IPCW Brier score (subjects censored before ``horizon`` weigh 0)."""
    time, event, pred = _events(time, event, ("pred", pred))
    _probabilities("pred", pred)
    bins = _quantile_bins(pred, n_bins)
    count = np.array([len(b) for b in bins])
    predicted = np.array([pred[b].mean() for b in bins])
    observed = np.array([cumulative_incidence(time[b], event[b], cause, [horizon])[0] for b in bins])
    nan = np.full(len(bins), np.nan)
    return CalibrationBins(
        predicted,
        observed,
        count,
        nan,
        nan.copy(),
        ece=float(np.sum(count * np.abs(observed - predicted)) / len(time)),
        brier=float(brier_scores(time, event, pred, [horizon], cause)[0]),
        slope=float("nan"),
        intercept=float("nan"),
        horizon_days=float(horizon),
    )


def status_at(time: np.ndarray, event: np.ndarray, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """(known, y): event of cause 1 by ``horizon`` (1), free of it past the horizon (0); people censored
    (or with a competing event) before it have no known status."""
    case = (event == 1) & (time <= horizon)
    control = time > horizon
    return case | control, case.astype(float)
