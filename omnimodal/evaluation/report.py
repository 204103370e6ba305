"""Evaluation of fine-tuned models on a split, and the report (what ``omnimodal-eval`` writes).

Each person is seen at the checkpoint's evaluation landmark (``landmark.eval_days`` after the first
event); people not at risk there are left out and counted. Metrics by head kind:

- classification: AUROC, AUPRC (bootstrap CIs), calibration (bins, ECE, Brier, slope, intercept);
- survival: C-index, time-dependent AUROC at half the horizon and at the horizon, calibration of the
  cumulative incidence at the horizon, and AUROC/AUPRC of "event by the horizon" among people whose
  status then is known;
- regression: MAE, RMSE, R^2, Pearson r.

Modality ablation: the main metric when each modality is withheld at inference (its measurements
removed from every history). The report folder gets ``report.md`` (tables), ``roc.png``,
``calibration.png``, ``ablation.png`` and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..downstream.predict import Predictions, landmark_items, predict
from ..downstream.task import FinetuneTask
from ..release import ReleaseError
from . import metrics as M
from . import plots as P
from .metrics import status_at

MAIN_METRIC = {"classification": "auroc", "survival": "c_index", "regression": "r2"}


def compute_metrics(kind: str, p: Predictions, horizon: float, n_boot: int, seed: int = 0) -> dict[str, Any]:
    if kind == "regression":
        return {"regression": M.regression_metrics(p.target["y"], p.risk, n_boot=n_boot, seed=seed)}
    if kind == "classification":
        y = p.target["y"]
        return {"binary": M.binary_metrics(y, p.risk, n_boot=n_boot, seed=seed),
                "calibration": M.calibration_bins(y, p.risk, n_bins=5)}
    time, event = p.target["time"], p.target["event"].astype(int)
    horizons = [horizon / 2, horizon]
    assert p.cif is not None
    bins = p.cif.shape[1]
    at = [p.cif[:, max(int(round(bins * h / horizon)) - 1, 0)] for h in horizons]
    out = {"survival": M.time_to_event_metrics(time, event, p.risk, cause=1, horizons=horizons,
                                               risk_at_t=np.stack(at, 1), n_boot=n_boot, seed=seed),
           "calibration": M.survival_calibration_bins(time, event, np.clip(p.risk, 0, 1), horizon, cause=1, n_bins=5)}
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


def evaluate(task: FinetuneTask, name: str, root: str | Path, split: str = "test", *, n_boot: int = 1000,
             ablation: bool = True, landmark_days: float | None = None, seed: int = 0) -> ModelReport:
    lm = task.landmark if landmark_days is None else dataclasses.replace(task.landmark, eval_days=landmark_days)
    items, excluded = landmark_items(task, root, split, lm)
    if not items:
        raise ReleaseError(f"{root} split {split!r}: nobody is at risk at the landmark ({excluded}); "
                           "choose another split or landmark (--landmark-days)")
    kind, horizon = task.head_cfg.kind, task.head_cfg.horizon_days
    preds = predict(task, items)
    mets = compute_metrics(kind, preds, horizon, n_boot, seed)
    abl = {}
    if ablation:
        for m in task.model.omni.encoders:
            p = predict(task, items, withhold=m)
            try:
                abl[m] = main_metric(kind, compute_metrics(kind, p, horizon, n_boot, seed))
            except (M.MetricUndefinedError, ValueError):
                abl[m] = M.Estimate(float("nan"), float("nan"), float("nan"))
    return ModelReport(name, kind, preds, mets, abl, excluded, lm.eval_days)


# --------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------
def _row(r: ModelReport) -> dict[str, Any]:
    m = r.metrics
    row: dict[str, Any] = {"model": r.name, "n": len(r.predictions)}
    if "binary" in m:
        row.update(auroc=m["binary"]["auroc"], auprc=m["binary"]["auprc"], positives=m["binary"]["n_positive"])
    if "survival" in m:
        row.update(c_index=m["survival"]["c_index"], events=m["survival"]["n_events"])
        for h, est in m["survival"]["td_auroc"].items():
            row[f"td_auroc@{h:g}d"] = est
    if "calibration" in m:
        row.update(ece=m["calibration"].ece, brier=m["calibration"].brier)
    if "regression" in m:
        row.update({k: v for k, v in m["regression"].items() if k in ("mae", "rmse", "r2", "pearson_r")})
    return row


def write_report(reports: list[ModelReport], out: str | Path, split: str) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = reports[0].kind
    rows = [_row(r) for r in reports]
    columns = [c for c in rows[0] if any(c in r for r in rows)]
    lines = [f"# Evaluation ({split} split)", "",
             f"Landmark: {reports[0].landmark_days:g} days after each person's first event; head: {kind}. "
             "Intervals: 95% percentile bootstrap over people.", "",
             P.markdown_table(rows, columns), ""]
    for r in reports:
        if r.excluded:
            lines.append(f"- {r.name}: left out " + ", ".join(f"{n} ({why})" for why, n in sorted(r.excluded.items())))
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
        label = (f"cumulative incidence at {reports[0].metrics['calibration'].horizon_days:g} days"
                 if kind == "survival" else "predicted probability")
        images.append(P.plot_calibration(cal, out / "calibration.png", f"Calibration: {label} ({split} split)"))
    main = reports[0]
    name = MAIN_METRIC[kind]
    if main.ablation:
        full = main_metric(kind, main.metrics)
        images.append(P.plot_ablation(full, {m: tuple(e) for m, e in main.ablation.items()}, name,
                                      out / "ablation.png", f"{main.name}: {name} with each modality withheld ({split})"))
        lines += ["", f"## Modality ablation ({main.name})", "",
                  P.markdown_table([{"withheld": "none", name: full}] +
                                   [{"withheld": m, name: e} for m, e in main.ablation.items()], ["withheld", name]), ""]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "metrics.json").write_text(json.dumps(_jsonable([_row(r) for r in reports]), indent=1))
    return out / "report.md"


def _binary_view(r: ModelReport) -> tuple[np.ndarray, np.ndarray] | None:
    t, risk = r.predictions.target, r.predictions.risk
    if r.kind == "classification" and "y" in t and set(np.unique(t["y"])) <= {0.0, 1.0}:
        return t["y"], risk
    if r.kind == "survival":
        known, y = status_at(t["time"], t["event"].astype(int), r.metrics["calibration"].horizon_days)
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


__all__ = ["MAIN_METRIC", "compute_metrics", "evaluate", "write_report"]
