"""An ACES task's predictions in meds-evaluation's schema, scored by meds-evaluation and by us.

``{run_dir}/predictions/{val,test}.parquet``: ``subject_id`` (int64: the pseudonym from the shard key,
never the MEDS id), ``prediction_time``, ``boolean_value`` (ACES's label),
``predicted_boolean_value`` (probability >= 0.5) and ``predicted_boolean_probability``, checked with
``meds_evaluation.schema.PredictionSchema``; ``{run_dir}/aces_metrics.json``: per split meds-evaluation's
``evaluate_binary_classification`` and :func:`omnimodal.evaluation.metrics.binary_metrics` (AUROC, AUPRC
with bootstrap intervals) on the same file, and the prediction times left out, by reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from .aces import AcesLandmarkData, PredictionTime


def predictions_table(times: list[PredictionTime], risk: np.ndarray) -> Any:
    """Predictions in meds-evaluation's schema (``PredictionSchema``), as a pyarrow table."""
    from meds_evaluation.schema import PredictionSchema

    df = pl.DataFrame(
        {
            "subject_id": pl.Series([t.subject_id for t in times], dtype=pl.Int64),
            "prediction_time": pl.Series([t.time for t in times], dtype=pl.Datetime("us")),
            "boolean_value": pl.Series([t.label for t in times], dtype=pl.Boolean),
            "predicted_boolean_value": pl.Series(risk >= 0.5, dtype=pl.Boolean),
            "predicted_boolean_probability": pl.Series(risk, dtype=pl.Float32),
        }
    )
    return PredictionSchema.align(df.to_arrow())


def score(path: str | Path, n_boot: int = 1000) -> dict[str, Any]:
    """meds-evaluation's scores and ours (AUROC, AUPRC with bootstrap intervals) of a predictions file;
    a score undefined on these data (one class only) is given as ``{"not_estimable": why}``."""
    from meds_evaluation.evaluate import evaluate_binary_classification

    from ..evaluation.metrics import binary_metrics
    from ..evaluation.report import MIN_EVENTS, _jsonable

    df = pl.read_parquet(path)
    y = df["boolean_value"].cast(pl.Float64).to_numpy()
    p = df["predicted_boolean_probability"].cast(pl.Float64).to_numpy()
    out: dict[str, Any] = {"n": len(df), "n_positive": int(y.sum()), "n_people": df["subject_id"].n_unique()}
    if min(out["n_positive"], out["n"] - out["n_positive"]) < MIN_EVENTS:
        out["note"] = f"fewer than {MIN_EVENTS} positives or negatives: too few to trust these figures"
    for name, fn in (
        ("meds_evaluation", lambda: evaluate_binary_classification(df)),
        ("omnimodal", lambda: binary_metrics(y, p, n_boot=n_boot)),
    ):
        try:
            out[name] = _jsonable(fn())
        except ValueError as exc:  # one class only: sklearn and our metrics refuse
            out[name] = {"not_estimable": str(exc)}
    return out


def evaluate_splits(task: Any, dm: AcesLandmarkData, run_dir: str | Path, splits: tuple[str, ...] = ("val", "test")):
    """Write ``predictions/{split}.parquet`` and ``aces_metrics.json`` in ``run_dir``; return the metrics."""
    from .predict import predict

    out_dir = Path(run_dir) / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    lms = dm.landmarks
    counts = {s: dict(zip(("people", "prediction_times", "positive"), lms.count(s), strict=True)) for s in lms.splits}
    report: dict[str, Any] = {"counts": counts, "left_out": dict(lms.excluded)}
    for split in splits:
        if split not in lms.splits:
            continue
        items, times, excluded = dm.items(split)
        for why, n in excluded.items():
            report["left_out"][why] = report["left_out"].get(why, 0) + n
        if not items:
            report[split] = {"not_estimable": "no prediction time in this split"}
            continue
        pq.write_table(predictions_table(times, predict(task, items).risk), out_dir / f"{split}.parquet")
        report[split] = score(out_dir / f"{split}.parquet")
    (Path(run_dir) / "aces_metrics.json").write_text(json.dumps(report, indent=1))
    return report


def _scores(r: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(meds-evaluation's per-sample scores, our AUROC estimate) of a split's report; None: not estimable."""
    return r.get("meds_evaluation", {}).get("samples_equally_weighted"), r.get("omnimodal", {}).get("auroc")


def headline(report: dict[str, Any]) -> dict[str, float]:
    """``{split}/auroc`` (ours) and ``{split}/meds_evaluation_auroc`` where estimable, for the run's metrics."""
    out = {}
    for split in ("val", "test"):
        me, om = _scores(report.get(split) or {})
        if om:
            out[f"{split}/auroc"] = float(om["value"])
        if me:
            out[f"{split}/meds_evaluation_auroc"] = float(me["roc_auc_score"])
    return out


def format_scores(report: dict[str, Any]) -> str:
    """Lines for the console: per split, meds-evaluation's AUROC/AUPRC beside ours (with its interval)."""
    lines = []
    for split in ("val", "test"):
        r = report.get(split)
        if r is None:
            continue
        if "n" not in r:
            lines.append(f"  {split}: {r['not_estimable']}")
            continue
        me, om = _scores(r)
        me_s = (
            f"roc_auc_score={me['roc_auc_score']:.4f} average_precision_score={me['average_precision_score']:.4f}"
            if me
            else f"n/e ({r['meds_evaluation']['not_estimable']})"
        )
        om_s = (
            f"AUROC {om['value']:.4f} ({om['lo']:.3f}-{om['hi']:.3f})"
            if om
            else f"n/e ({r['omnimodal']['not_estimable']})"
        )
        note = f" [{r['note']}]" if "note" in r else ""
        lines.append(
            f"  {split}: {r['n']} prediction times ({r['n_positive']} positive) of {r['n_people']} people; "
            f"meds-evaluation {me_s}; omnimodal {om_s}{note}"
        )
    left = ", ".join(f"{n} {why}" for why, n in report["left_out"].items()) or "none"
    return "\n".join([*lines, f"  left out: {left}"])


__all__ = ["evaluate_splits", "format_scores", "headline", "predictions_table", "score"]
