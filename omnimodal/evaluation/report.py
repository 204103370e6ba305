"""Evaluation of fine-tuned models on a split, and the report (what ``omnimodal-eval`` writes).

Each person is seen at the checkpoint's evaluation landmark (``landmark.eval_days`` after the first
event); people not at risk there are left out and counted. Metrics by head kind:

- classification: AUROC, AUPRC (bootstrap CIs), calibration (bins, ECE, Brier, slope, intercept);
- survival: Harrell's C-index, Uno's C (truncated at the horizon), time-dependent AUROC at half the
  horizon and at the horizon, integrated Brier score of the cumulative incidence of cause 1 over the
  head's bin ends inside the follow-up (with one cause, 1 - CIF is the survival function),
  calibration of the cumulative incidence at the horizon, and AUROC/AUPRC of "event by the horizon"
  among people whose status then is known. Uno's C, the time-dependent AUROC and the Brier score weigh
  people by the censoring distribution estimated on the evaluated split itself (the only split read),
  and the report says so. A horizon beyond the follow-up leaves out what needs it, with a warning;
- regression: MAE, RMSE, R^2, Pearson r.

Modality ablation: the main metric when each modality is withheld at inference (its measurements
removed from every history). The report folder gets ``report.md`` (tables; data source, participants,
missingness per modality, model; the TRIPOD+AI items it fills, :mod:`.tripod`), ``roc.png``,
``calibration.png``, ``ablation.png`` and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..downstream.predict import Predictions, landmark_items, predict
from ..downstream.task import FinetuneTask
from ..release import ReleaseError
from . import metrics as M
from . import plots as P
from . import tripod
from .metrics import status_at

MAIN_METRIC = {"classification": "auroc", "survival": "c_index", "regression": "r2"}


def brier_grid(cif: np.ndarray, horizon: float, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The survival head's bin ends ``horizon * k / bins`` that lie inside the follow-up (someone followed
    beyond), and the predicted cumulative incidence there: ``(grid [G], cif [N, G])``."""
    ends = horizon * np.arange(1, cif.shape[1] + 1) / cif.shape[1]
    keep = ends < time.max()
    return ends[keep], cif[:, keep]


def compute_metrics(
    kind: str, p: Predictions, horizon: float, n_boot: int, seed: int = 0, main_only: bool = False
) -> dict[str, Any]:
    """The metrics of the module docstring for a head ``kind``; ``main_only``: only the main one (ablation)."""
    if kind == "regression":
        return {"regression": M.regression_metrics(p.target["y"], p.risk, n_boot=n_boot, seed=seed)}
    if kind == "classification":
        y = p.target["y"]
        out: dict[str, Any] = {"binary": M.binary_metrics(y, p.risk, n_boot=n_boot, seed=seed)}
        return out if main_only else {**out, "calibration": M.calibration_bins(y, p.risk, n_bins=5)}
    time, event = p.target["time"], p.target["event"].astype(int)
    if main_only:

        def c_index(t, e, r):
            return M.concordance_index(t, e, r, 1)

        return {"survival": {"c_index": M.bootstrap_ci(c_index, time, event, p.risk, n_boot=n_boot, seed=seed)}}
    horizons = [horizon / 2, horizon]
    assert p.cif is not None
    bins = p.cif.shape[1]
    at = [p.cif[:, max(int(round(bins * h / horizon)) - 1, 0)] for h in horizons]
    grid, cif_grid = brier_grid(p.cif, horizon, time)
    if len(grid) < 2:
        grid, cif_grid = grid[:0], None  # the integrated Brier score needs two times inside the follow-up
    out = {
        "survival": M.time_to_event_metrics(
            time,
            event,
            p.risk,
            cause=1,
            horizons=horizons,
            risk_at_t=np.stack(at, 1),
            n_boot=n_boot,
            seed=seed,
            tau=horizon,
            grid=grid,
            cif_grid=cif_grid,
        ),
    }
    out["survival"].update(horizon_days=float(horizon), brier_grid_days=[float(g) for g in grid])
    try:
        out["calibration"] = M.survival_calibration_bins(time, event, np.clip(p.risk, 0, 1), horizon, 1, n_bins=5)
    except M.MetricUndefinedError as err:  # e.g. nobody followed beyond the horizon: the rest of the report stands
        warnings.warn(f"calibration at the horizon not computed: {err}", stacklevel=2)
        out["survival"]["calibration_undefined"] = str(err)
    known, y = status_at(time, event, horizon)
    if known.sum() and 0 < y[known].sum() < known.sum():
        out["binary"] = M.binary_metrics(y[known], p.risk[known], n_boot=n_boot, seed=seed)
    return out


def main_metric(kind: str, m: dict[str, Any]) -> M.Estimate:
    if kind == "classification":
        return m["binary"]["auroc"]
    if kind == "survival":
        return m["survival"]["c_index"]
    return m["regression"]["r2"]


@dataclass
class ModelReport:
    name: str
    kind: str
    predictions: Predictions
    metrics: dict[str, Any]
    ablation: dict[str, M.Estimate]
    excluded: dict[str, int]
    landmark_days: float
    #: for the TRIPOD+AI items (:mod:`.tripod`): the shard folder, the model, modalities in the histories
    data: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    missingness: dict[str, dict[str, float]] | None = None


def evaluate(
    task: FinetuneTask,
    name: str,
    root: str | Path,
    split: str = "test",
    *,
    n_boot: int = 1000,
    ablation: bool = True,
    landmark_days: float | None = None,
    seed: int = 0,
    checkpoint: str | Path | None = None,
) -> ModelReport:
    """``task`` evaluated on ``split`` of the shards at ``root``, each person at the evaluation landmark
    (``landmark_days``, default the checkpoint's); ``checkpoint``: its file, named in the report."""
    lm = task.landmark if landmark_days is None else dataclasses.replace(task.landmark, eval_days=landmark_days)
    items, excluded = landmark_items(task, root, split, lm)
    if not items:
        raise ReleaseError(
            f"{root} split {split!r}: nobody is at risk at the landmark ({excluded}); "
            "choose another split or landmark (--landmark-days)"
        )
    kind, horizon = task.head_cfg.kind, task.head_cfg.horizon_days
    preds = predict(task, items)
    mets = compute_metrics(kind, preds, horizon, n_boot, seed)
    abl = {}
    if ablation:
        for m in task.model.omni.encoders:
            p = predict(task, items, withhold=m)
            try:
                abl[m] = main_metric(kind, compute_metrics(kind, p, horizon, n_boot, seed, main_only=True))
            except (M.MetricUndefinedError, ValueError):
                abl[m] = M.Estimate(float("nan"), float("nan"), float("nan"))
    missing = tripod.missingness([h for h, _ in items if h.events], list(task.model.omni.encoders))
    return ModelReport(
        name,
        kind,
        preds,
        mets,
        abl,
        excluded,
        lm.eval_days,
        data=tripod.data_source(root),
        model=tripod.model_details(task, checkpoint),
        missingness=missing,
    )


# --------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------
#: below this many events (survival), or positives or negatives (binary), or people (regression), a metric
#: is shown as not estimable: with so few, its value and its bootstrap interval describe a handful of people
MIN_EVENTS = 10


def _not_estimable(count: int, what: str) -> str:
    return f"n/e ({count} {what} < {MIN_EVENTS})"


def _row(r: ModelReport, display: bool = False) -> dict[str, Any]:
    """A model's metrics for the report; ``display``: those below :data:`MIN_EVENTS` as "n/e (...)" text (the
    JSON keeps every number and lists them under ``not_estimable``)."""
    m = r.metrics
    row: dict[str, Any] = {"model": r.name, "n": len(r.predictions)}
    weak: dict[str, str] = {}
    if "binary" in m:
        pos, n = int(m["binary"]["n_positive"]), int(m["binary"]["n"])
        row.update(auroc=m["binary"]["auroc"], auprc=m["binary"]["auprc"], positives=pos)
        if min(pos, n - pos) < MIN_EVENTS:
            why = _not_estimable(pos, "positives") if pos < MIN_EVENTS else _not_estimable(n - pos, "negatives")
            weak.update(auroc=why, auprc=why)
    if "survival" in m:
        events = int(m["survival"]["n_events"])
        row.update(c_index=m["survival"]["c_index"], events=events)
        if "uno_c" in m["survival"]:
            row["uno_c"] = m["survival"]["uno_c"]
        for h, est in m["survival"]["td_auroc"].items():
            row[f"td_auroc@{h:g}d"] = est
        if "ibs" in m["survival"]:
            row["ibs"] = m["survival"]["ibs"]
        if events < MIN_EVENTS:
            weak.update(
                {
                    k: _not_estimable(events, "events")
                    for k in row
                    if k in ("c_index", "uno_c", "ibs") or k.startswith("td_")
                }
            )
    if "calibration" in m:
        row.update(ece=m["calibration"].ece, brier=m["calibration"].brier)
    if "regression" in m:
        row.update({k: v for k, v in m["regression"].items() if k in ("mae", "rmse", "r2", "pearson_r")})
        if len(r.predictions) < MIN_EVENTS:
            weak.update({k: _not_estimable(len(r.predictions), "people") for k in ("r2", "pearson_r")})
    if display:
        return {**row, **weak}
    return {**row, "not_estimable": sorted(weak)} if weak else row


def write_report(reports: list[ModelReport], out: str | Path, split: str) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = reports[0].kind
    rows = [_row(r, display=True) for r in reports]
    columns = [c for c in rows[0] if any(c in r for r in rows)]
    lines = [
        f"# Evaluation ({split} split)",
        "",
        f"Landmark: {reports[0].landmark_days:g} days after each person's first event; head: {kind}. "
        "Intervals: 95% percentile bootstrap over people.",
        "",
    ]
    if any(isinstance(v, str) and v.startswith("n/e") for row in rows for v in row.values()):
        lines += [
            f"**Some figures are not estimable (n/e)**: a metric needs at least {MIN_EVENTS} events (survival), "
            f"or {MIN_EVENTS} positives and {MIN_EVENTS} negatives (AUROC, AUPRC), or {MIN_EVENTS} people "
            "(R², r); with fewer, its value and interval describe a handful of people. The numbers are "
            "in metrics.json (`not_estimable` lists them). Evaluate on a larger split or cohort.",
            "",
        ]
    lines += [P.markdown_table(rows, columns), ""]
    for r in reports:
        if r.excluded:
            lines.append(f"- {r.name}: left out " + ", ".join(f"{n} ({why})" for why, n in sorted(r.excluded.items())))
    if kind == "survival":
        s = reports[0].metrics["survival"]
        grid = s.get("brier_grid_days", [])
        lines += [
            "",
            "Harrell's C (c_index) and Uno's C (uno_c, cases before the horizon) for cause 1, competing events "
            "as censoring; td_auroc: cumulative/dynamic AUROC at each time, competing events as controls; ibs: "
            "integrated Brier score of the forecast cumulative incidence of cause 1 "
            + (
                f"over the head's bin ends from {grid[0]:.0f} to {grid[-1]:.0f} days (0 = perfect, 0.25 = a constant "
                "50% forecast)"
                if len(grid) >= 2
                else "(not computed: fewer than two of the head's bin ends lie inside the follow-up)"
            )
            + (
                ""
                if "calibration" in reports[0].metrics
                else f"; calibration at the horizon ({s['horizon_days']:g} days) is not computed: "
                + s.get("calibration_undefined", "nobody was followed beyond it")
            )
            + ". Uno's C, td_auroc and ibs weigh people by the censoring distribution (Kaplan-Meier of the "
            f"censoring times) estimated on the evaluated {split} split itself (omnimodal-eval reads only that split).",
        ]
    images = []
    curves = {}
    for r in reports:
        y = _binary_view(r)
        if y is not None:
            curves[r.name] = y
    if curves:
        what = "event by the horizon" if kind == "survival" else "outcome"
        images.append(P.plot_roc(curves, out / "roc.png", f"ROC: {what} ({split} split)"))
    cal = {r.name: r.metrics["calibration"] for r in reports if "calibration" in r.metrics}
    if cal:
        label = (
            f"cumulative incidence at {next(iter(cal.values())).horizon_days:g} days"
            if kind == "survival"
            else "predicted probability"
        )
        images.append(P.plot_calibration(cal, out / "calibration.png", f"Calibration: {label} ({split} split)"))
    main = reports[0]
    name = MAIN_METRIC[kind]
    if main.ablation:
        full = main_metric(kind, main.metrics)
        full_shown = _row(main, display=True).get(name, full)
        images.append(
            P.plot_ablation(
                full,
                {m: tuple(e) for m, e in main.ablation.items()},
                name,
                out / "ablation.png",
                f"{main.name}: {name} with each modality withheld ({split})",
            )
        )
        lines += [
            "",
            f"## Modality ablation ({main.name})",
            "",
            P.markdown_table(
                [{"withheld": "none", name: full_shown}]
                + [{"withheld": m, name: e if full_shown is full else full_shown} for m, e in main.ablation.items()],
                ["withheld", name],
            ),
            "",
        ]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    lines += ["", *tripod.describe(reports, split), "", *tripod.checklist(reports)]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "metrics.json").write_text(json.dumps(_jsonable([_json_row(r) for r in reports]), indent=1))
    return out / "report.md"


def _json_row(r: ModelReport) -> dict[str, Any]:
    """A model's row of metrics.json: its metrics and what the TRIPOD+AI items need."""
    row = _row(r)
    if r.kind == "survival":
        row["ibs_grid_days"] = r.metrics["survival"].get("brier_grid_days", [])
    n, left = len(r.predictions), sum(r.excluded.values())
    row["participants"] = {"in_split": n + left, "evaluated": n, "excluded": r.excluded}
    return {**row, "missingness": r.missingness, "model_details": r.model, "data_source": r.data}


def _binary_view(r: ModelReport) -> tuple[np.ndarray, np.ndarray] | None:
    t, risk = r.predictions.target, r.predictions.risk
    if r.kind == "classification" and "y" in t and set(np.unique(t["y"])) <= {0.0, 1.0}:
        return t["y"], risk
    if r.kind == "survival":
        known, y = status_at(t["time"], t["event"].astype(int), r.metrics["survival"]["horizon_days"])
        if 0 < y[known].sum() < known.sum():
            return y[known], risk[known]
    return None


def _jsonable(x: Any) -> Any:
    if isinstance(x, M.Estimate):
        return {"value": x.value, "lo": x.lo, "hi": x.hi}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


__all__ = ["MAIN_METRIC", "MIN_EVENTS", "compute_metrics", "evaluate", "write_report"]
