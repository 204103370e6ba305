"""Report figures (PNG) and markdown tables for evaluation results, from plain numpy arrays.

Each plot function draws on its own ``matplotlib.figure.Figure`` (rendered by Agg, so no display
and no change to the caller's pyplot backend), writes a PNG of a fixed size (``figsize * DPI``
pixels) to ``path`` and returns the path. Titles are the caller's and should say what is plotted;
axes are labelled and legends carry the metric values. ROC / precision-recall curves, calibration
bins with the diagonal, modality-ablation bars with intervals, and one person's timeline of
measurements with the forecast beneath. Nothing here takes or prints a subject identifier.
:func:`markdown_table` and :func:`format_value` turn metric dictionaries into the report's table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from .metrics import CalibrationBins, Estimate, auprc, auroc, format_ci

__all__ = [
    "DPI",
    "plot_roc",
    "plot_pr",
    "plot_calibration",
    "plot_ablation",
    "plot_person",
    "markdown_table",
    "format_value",
    "format_ci",
]

DPI = 150


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG; give a path ending in .png, not {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _nonempty(curves: Mapping, what: str) -> None:
    if not curves:
        raise ValueError(f"{what}: no curves given; pass {{model name: (y, score)}}")


def _finite(x: float) -> bool:
    return x is not None and not math.isnan(x)


def plot_roc(curves: Mapping[str, tuple], path, title: str) -> Path:
    """ROC curve per model, ``curves = {name: (y [N] 0/1, score [N])}``; legend gives AUROC."""
    _nonempty(curves, "plot_roc")
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.subplots()
    for name, (y, score) in curves.items():
        value = auroc(y, score)
        fpr, tpr, _ = roc_curve(np.asarray(y), np.asarray(score))
        ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUROC {value:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (AUROC 0.500)")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        aspect="equal",
        title=title,
        xlabel="False positive rate (1 - specificity)",
        ylabel="True positive rate (sensitivity)",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_pr(curves: Mapping[str, tuple], path, title: str) -> Path:
    """Precision-recall curve per model, ``curves = {name: (y, score)}``; legend gives AUPRC
    (average precision) and the chance level, the prevalence."""
    _nonempty(curves, "plot_pr")
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.subplots()
    prevalences = {}
    for name, (y, score) in curves.items():
        value = auprc(y, score)
        precision, recall, _ = precision_recall_curve(np.asarray(y), np.asarray(score))
        (line,) = ax.plot(recall, precision, lw=1.8, drawstyle="steps-post", label=f"{name} (AUPRC {value:.3f})")
        prevalences.setdefault(round(float(np.mean(y)), 6), line.get_color())
    for p, colour in prevalences.items():
        ax.axhline(
            p, ls="--", lw=1, color="grey" if len(prevalences) == 1 else colour, label=f"chance (prevalence {p:.3f})"
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        aspect="equal",
        title=title,
        xlabel="Recall (sensitivity)",
        ylabel="Precision (positive predictive value)",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_calibration(bins: Mapping[str, CalibrationBins], path, title: str) -> Path:
    """Observed vs mean predicted risk per bin for each model (``calibration_bins`` or
    ``survival_calibration_bins`` results), Wilson intervals where known, and the diagonal of
    perfect calibration; legend gives ECE and, where defined, the calibration slope."""
    _nonempty(bins, "plot_calibration")
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.subplots()
    top = 0.0
    for name, b in bins.items():
        label = f"{name} (ECE {b.ece:.3f}" + (f", slope {b.slope:.2f})" if _finite(b.slope) else ")")
        has_ci = np.isfinite(b.observed_lo).all() and np.isfinite(b.observed_hi).all()
        yerr = np.clip(np.vstack([b.observed - b.observed_lo, b.observed_hi - b.observed]), 0, None) if has_ci else None
        ax.errorbar(b.predicted, b.observed, yerr=yerr, marker="o", ms=4, lw=1.4, capsize=2, label=label)
        top = max(top, b.predicted.max(), (b.observed_hi if has_ci else b.observed).max())
    lim = min(1.0, max(0.05, 1.1 * top))
    ax.plot([0, lim], [0, lim], ls="--", color="grey", lw=1, label="perfect calibration")
    horizon = next(iter(bins.values())).horizon_days
    what = "probability" if horizon is None else f"cumulative incidence by {_days(horizon)}"
    ax.set(
        xlim=(-0.02 * lim, lim),
        ylim=(-0.02 * lim, lim),
        aspect="equal",
        title=title,
        xlabel=f"Predicted {what} (bin mean)",
        ylabel=f"Observed {'frequency' if horizon is None else what + ', Aalen-Johansen'}",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def _triple(x) -> tuple[float, float, float]:
    if isinstance(x, (int, float, np.floating, np.integer)):
        return float(x), float("nan"), float("nan")
    value, lo, hi = tuple(x)[:3]
    return float(value), float(lo), float(hi)


def plot_ablation(
    full_metric,
    metric_without: Mapping[str, tuple],
    metric_name: str,
    path,
    title: str,
    baseline: float | None = None,
    ci_label: str = "95% CI",
) -> Path:
    """Horizontal bars of ``metric_name`` when each modality is withheld at inference.

    ``metric_without = {modality: (value, lo, hi) or Estimate}``; ``full_metric`` is a float or
    ``(value, lo, hi)`` for the model with every modality, drawn as a vertical line (and band).
    Lowest value (the modality the model relies on most) at the top. Bars start at ``baseline``
    (e.g. 0.5 for AUROC), else at the axis' left edge, which zooms onto the values; each bar is
    labelled on the right with its value and the change from the full model; a NaN value (metric
    undefined without that modality) is listed as "undefined", without a bar.
    """
    if not metric_without:
        raise ValueError("plot_ablation: metric_without is empty; pass {modality: (value, lo, hi)}")
    full, full_lo, full_hi = _triple(full_metric)
    # undefined (NaN) values last, i.e. at the top, with no bar
    items = sorted(
        ((m, *_triple(v)) for m, v in metric_without.items()),
        key=lambda r: (not _finite(r[1]), -r[1] if _finite(r[1]) else 0),
    )
    values = np.array([r[1] for r in items])
    lows = np.array([r[2] if _finite(r[2]) else r[1] for r in items])
    highs = np.array([r[3] if _finite(r[3]) else r[1] for r in items])
    if not np.isfinite(values).any() and not _finite(full):
        raise ValueError(f"plot_ablation: every {metric_name} value is undefined (NaN); nothing to plot")
    span_lo = np.nanmin([*lows, full_lo if _finite(full_lo) else full])
    span_hi = np.nanmax([*highs, full_hi if _finite(full_hi) else full])
    pad = 0.08 * (span_hi - span_lo) or 0.02
    left = baseline if baseline is not None else span_lo - pad
    fig = Figure(figsize=(7, 1.6 + 0.45 * len(items)), layout="constrained")
    ax = fig.subplots()
    ypos = np.arange(len(items))
    ok = np.isfinite(values)
    ax.barh(
        ypos[ok],
        values[ok] - left,
        left=left,
        height=0.6,
        color="tab:blue",
        alpha=0.8,
        xerr=np.vstack([values - lows, highs - values])[:, ok],
        capsize=3,
        ecolor="black",
    )
    if _finite(full_lo) and _finite(full_hi):
        ax.axvspan(full_lo, full_hi, color="tab:red", alpha=0.12, lw=0)
    if _finite(full):
        ax.axvline(full, color="tab:red", ls="--", lw=1.5, label=f"all modalities: {format_ci(full, full_lo, full_hi)}")
    ax.set_yticks(ypos, [f"without {r[0]}" for r in items])
    ax.set(
        xlim=(left, span_hi + pad),
        ylim=(-0.7, len(items) - 0.3),
        title=title,
        xlabel=f"{metric_name} with the modality withheld (error bars: {ci_label})",
    )
    values_axis = ax.twinx()  # value and change from the full model, right of each bar
    values_axis.set_ylim(ax.get_ylim())
    values_axis.set_yticks(
        ypos,
        [
            ("undefined" if not np.isfinite(v) else f"{v:.3f}" if not _finite(full) else f"{v:.3f} ({v - full:+.3f})")
            for v in values
        ],
        fontsize=8,
    )
    ax.grid(axis="x", alpha=0.3)
    if _finite(full):
        fig.legend(loc="outside lower center", fontsize=8, frameon=False)
    return _save(fig, path)


def _days(h: float) -> str:
    """``"5 years"`` for a whole number of years (365.25 days each, 1% slack), else ``"90 days"``."""
    years = h / 365.25
    if h >= 365 and abs(years - round(years)) < 0.01:
        return f"{round(years)} year{'s' if round(years) > 1 else ''}"
    return f"{h:g} days"


def plot_person(
    events: Sequence[tuple[float, str]],
    modalities: Sequence[str],
    forecast: Sequence[tuple[float, float]],
    horizon_days: float,
    path,
    title: str,
    onset_days: float | None = None,
    what_if: tuple[float, float, str] | None = None,
) -> Path:
    """One person's timeline: a row per modality (in ``modalities`` order) with a marker per
    measurement ``events = [(time_days, modality)]``; beneath it, on the same axis (years since the
    first event), the predicted risk within ``horizon_days`` as each event is added,
    ``forecast = [(time_days, risk)]``, as a step line; ``onset_days`` draws the observed onset;
    ``what_if = (at_days, risk, code)`` the forecast with a hypothetical intervention started at ``at_days``
    (orange, dashed, from a dotted line at its start), beside the forecast without it."""
    if not events:
        raise ValueError("plot_person: events is empty; the timeline needs at least one event")
    unknown = sorted({m for _, m in events} - set(modalities))
    if unknown:
        raise ValueError(
            f"plot_person: events have modalities {unknown} that are not in "
            f"modalities={list(modalities)}; add them to the row order"
        )
    t0 = min(t for t, _ in events)

    def years(t):
        return (np.asarray(t, float) - t0) / 365.25

    rows = len(modalities)
    fig = Figure(figsize=(8, 3.2 + 0.3 * rows), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[0.5 + 0.3 * rows, 2.2])
    for r, m in enumerate(modalities):
        ts = [t for t, mm in events if mm == m]
        top.scatter(years(ts), np.full(len(ts), rows - 1 - r), marker="|", s=160, lw=2, color=f"C{r % 10}")
    top.set_yticks(np.arange(rows)[::-1], list(modalities))
    top.set(ylim=(-0.7, rows - 0.3), ylabel="Measurement")
    top.grid(axis="y", alpha=0.3)
    end = max(t for t, _ in events)
    if forecast:
        ft, risk = (np.asarray(v, float) for v in zip(*sorted(forecast)))
        end = max(end, ft.max(), onset_days if onset_days is not None else -np.inf)
        xs, ys = np.r_[years(ft), years(end)], np.r_[risk, risk[-1]]
        bottom.step(
            xs, ys, where="post", lw=1.8, color="tab:blue", label=f"predicted risk within {_days(horizon_days)}"
        )
        bottom.plot(years(ft), risk, "o", ms=3, color="tab:blue")
        top_risk = risk.max()
        if what_if is not None:
            at, r_if, code = what_if
            end = max(end, at)
            stop = max(years(end), years(at)) + 0.25
            bottom.plot([years(at), stop], [r_if, r_if], ls="--", lw=1.8, color="tab:orange", label=f"if {code} starts")
            bottom.plot([years(at)], [r_if], "o", ms=4, color="tab:orange")
            for ax in (top, bottom):
                ax.axvline(years(at), color="tab:orange", ls=":", lw=1.2)
            top_risk = max(top_risk, r_if)
        bottom.set_ylim(0, min(1.0, max(0.05, 1.2 * top_risk)))
    if onset_days is not None:
        for ax in (top, bottom):
            ax.axvline(years(onset_days), color="tab:red", ls="--", lw=1.2)
        bottom.plot([], [], color="tab:red", ls="--", label=f"onset ({years(onset_days):.1f} years)")
    bottom.set(xlabel="Years since first event", ylabel=f"Predicted risk\nwithin {_days(horizon_days)}")
    bottom.grid(alpha=0.3)
    bottom.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def format_value(x, digits: int = 3) -> str:
    """A table cell: Estimate or (value, lo, hi) as ``"0.812 (0.750-0.870)"``, floats to
    ``digits`` places, ints as they are, None/NaN as an en dash."""
    if x is None or (isinstance(x, (float, np.floating)) and math.isnan(x)):
        return "–"
    if isinstance(x, Estimate) or (isinstance(x, tuple) and len(x) == 3):
        return format_ci(*_triple(x), digits=digits)
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | Mapping[str, str], digits: int = 3) -> str:
    """A GitHub markdown table: one line per row, ``columns`` the keys to show (a mapping gives
    ``{key: header}``); missing keys show as an en dash."""
    headers = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    if not headers:
        raise ValueError("markdown_table: no columns given")

    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers.values()) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(format_value(row.get(k), digits)) for k in headers) + " |")
    return "\n".join(lines) + "\n"
