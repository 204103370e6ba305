"""Evaluation of fine-tuned models on plain numpy arrays: metrics with bootstrap confidence
intervals (:mod:`.metrics`, survival figures checked against scikit-survival), the report's PNG plots
and markdown table (:mod:`.plots`), the report itself (:mod:`.report`) and the TRIPOD+AI items it fills
(:mod:`.tripod`)."""

from .metrics import (  # noqa: F401
    CalibrationBins,
    Estimate,
    MetricUndefinedError,
    auprc,
    auroc,
    binary_metrics,
    bootstrap_ci,
    brier_scores,
    calibration_bins,
    concordance_index,
    cumulative_incidence,
    format_ci,
    integrated_brier_score,
    kaplan_meier,
    regression_metrics,
    survival_calibration_bins,
    time_dependent_auroc,
    time_to_event_metrics,
    uno_c_index,
)
from .plots import (  # noqa: F401
    format_value,
    markdown_table,
    plot_ablation,
    plot_calibration,
    plot_person,
    plot_pr,
    plot_roc,
)
