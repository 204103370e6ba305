"""The evaluation report without a model: survival figures from a Cox model on real data (scikit-survival's
WHAS500), the TRIPOD+AI facts gathered from a shard folder and from histories, and the CLI's documented examples.
The report on a fine-tuned model is tested in tests/test_finetune.py (test_eval_report_and_person_forecast)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from datamodules.schema import Event, Measurement, Timeline
from omnimodal.cli.eval import parser
from omnimodal.downstream.predict import Predictions
from omnimodal.evaluation import integrated_brier_score
from omnimodal.evaluation.report import ModelReport, compute_metrics, write_report
from omnimodal.evaluation.tripod import FILLED, TO_WRITE, data_source, missingness

ROOT = Path(__file__).resolve().parent.parent
HORIZON = 1826.25


def whas500_report(horizon: float = HORIZON, bins: int = 10, n_boot: int = 20) -> ModelReport:
    """Survival "predictions" of a Cox model on WHAS500 in the survival head's form: cumulative incidence at
    each of ``bins`` bin ends up to ``horizon``, and the risk = the incidence at the horizon."""
    from sksurv.datasets import load_whas500
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.preprocessing import OneHotEncoder

    x, y = load_whas500()
    x = OneHotEncoder().fit_transform(x)
    functions = CoxPHSurvivalAnalysis(alpha=1e-4).fit(x, y).predict_survival_function(x)
    ends = horizon * np.arange(1, bins + 1) / bins
    cif = 1 - np.vstack([f(np.minimum(ends, f.x[-1])) for f in functions])
    p = Predictions({"time": y["lenfol"].astype(float), "event": y["fstat"].astype(float)}, cif[:, -1], cif)
    return ModelReport("cox", "survival", p, compute_metrics("survival", p, horizon, n_boot), {}, {}, 0.0)


def test_report_gives_uno_c_and_integrated_brier_score_of_the_survival_forecast(tmp_path: Path) -> None:
    from sksurv.metrics import concordance_index_ipcw
    from sksurv.metrics import integrated_brier_score as sk_ibs
    from sksurv.util import Surv

    rep = whas500_report()
    text = write_report([rep], tmp_path, "test").read_text()
    row = json.loads((tmp_path / "metrics.json").read_text())[0]
    time, event = rep.predictions.target["time"], rep.predictions.target["event"].astype(int)
    grid = HORIZON * np.arange(1, 11) / 10  # every bin end lies inside WHAS500's follow-up (to 2358 days)
    assert row["ibs_grid_days"] == pytest.approx(list(grid))
    ibs = integrated_brier_score(time, event, rep.predictions.cif, grid)
    assert row["ibs"]["value"] == pytest.approx(ibs, abs=1e-12) and row["ibs"]["lo"] <= ibs <= row["ibs"]["hi"]
    y = Surv.from_arrays(event > 0, time)
    assert ibs == pytest.approx(sk_ibs(y, y, 1 - rep.predictions.cif, grid), abs=1e-4)  # censoring ties aside
    uno = concordance_index_ipcw(y, y, rep.predictions.risk, tau=HORIZON)[0]
    assert row["uno_c"]["value"] == pytest.approx(uno, abs=1e-12) and 0.7 < uno < 0.9
    header = next(ln for ln in text.splitlines() if ln.startswith("| model"))
    assert " uno_c " in header and " ibs " in header
    assert "over the head's bin ends from 183 to 1826 days" in text
    assert "estimated on the evaluated test split itself (omnimodal-eval reads only that split)" in text


def test_integrated_brier_score_needs_two_bin_ends_inside_the_follow_up(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="calibration at the horizon not computed"):
        rep = whas500_report(horizon=20 * 365.25, bins=4, n_boot=0)  # bin ends 1826, 3652, ...: one inside
    assert "ibs" not in rep.metrics["survival"] and rep.metrics["survival"]["brier_grid_days"] == []
    text = write_report([rep], tmp_path, "test").read_text()
    assert "not computed: fewer than two of the head's bin ends lie inside the follow-up" in text
    assert (
        "calibration at the horizon (7305 days) is not computed: Brier score at 7305 days is undefined: no subject "
        "was followed beyond 7305 days (longest follow-up 2358 days)" in text  # the reason, as the metric gave it
    )
    assert "calibration" not in rep.metrics and np.isnan(rep.metrics["survival"]["td_auroc"][7305.0].value)


def _shard_folder(tmp_path: Path, build: dict | None) -> Path:
    tmp_path.mkdir(parents=True)
    ecg = {"rate_hz": 250, "duration_s": 10.0, "leads": list("ABCDEFGHIJKL"), "kind": "waveform"}
    (tmp_path / "index.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "specs": {"ecg": ecg},
                "splits": {"train": {"samples": 7, "shards": []}, "test": {"samples": 3, "shards": []}},
            }
        )
    )
    if build is not None:
        (tmp_path / "report.json").write_text(json.dumps(build))
    return tmp_path


def test_data_source_reads_the_index_and_the_build_report(tmp_path: Path) -> None:
    build = {
        "subjects_in_table": 12,
        "samples": 10,
        "withdrawn_consent": ["k1"],
        "no_valid_events": ["k2"],
        "rejected": [
            {"table": "events", "row": 3, "key": "k3", "modality": "ecg", "reason": "unreadable file [bad header]"},
            {"table": "events", "row": 9, "key": "k4", "modality": "ecg", "reason": "unreadable file [truncated]"},
            {"table": "labels", "row": 1, "key": None, "modality": None, "reason": "unknown subject"},
        ],
        "modalities": {"ecg": 20},
    }
    d = data_source(_shard_folder(tmp_path / "a", build))
    assert d["schema_version"] == 1 and d["samples"] == {"train": 7, "test": 3} and set(d["specs"]) == {"ecg"}
    b = d["build_report"]
    assert (b["subjects_in_table"], b["withdrawn_consent"], b["no_valid_events"], b["rejected_rows"]) == (12, 1, 1, 3)
    assert b["rejected_by_reason"] == {"unreadable file": 2, "unknown subject": 1}
    assert data_source(_shard_folder(tmp_path / "b", None))["build_report"] is None
    (tmp_path / "b" / "report.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"report.json: the shard build report is not valid JSON"):
        data_source(tmp_path / "b")
    from datamodules.specs import DataError

    with pytest.raises(DataError, match="shard index not found"):
        data_source(tmp_path / "nowhere")


def test_missingness_counts_people_and_instances_per_modality() -> None:
    def person(*visits: tuple[str, ...]) -> Timeline:
        events = [Event(float(i), 20000.0 + i, [Measurement(m) for m in v]) for i, v in enumerate(visits)]
        return Timeline("k", {}, events)

    people = [person(("ecg", "clinical"), ("ecg",)), person(("clinical",)), person(("ecg",), ("ecg",), ("ecg",))]
    m = missingness(people, ["ecg", "clinical", "mri"])
    assert m["ecg"] == {"people": 2, "share": 2 / 3, "mean": 5 / 3, "median": 2.0, "max": 3}
    assert m["clinical"]["people"] == 2 and m["clinical"]["max"] == 1
    assert m["mri"] == {"people": 0, "share": 0.0, "mean": 0.0, "median": 0.0, "max": 0}


def test_tripod_checklist_names_each_item_once(tmp_path: Path) -> None:
    """Every item the report fills is in its table; the items to write are listed; none is both."""
    rep = whas500_report(n_boot=0)
    text = write_report([rep], tmp_path, "test").read_text()
    section = text[text.index("## TRIPOD+AI checklist (filled automatically)") :]
    filled = [item for item, _ in FILLED]
    assert len(set(filled)) == len(filled) and not set(filled) & {i for i, _ in TO_WRITE}
    for item, topic in FILLED:
        assert f"| {item} | {topic} |" in section
    assert all(f"- {item} {topic}" in section for item, topic in TO_WRITE)
    assert "Collins et al., BMJ 2024;385:e078378" in section
    assert "Not recorded (the report was built without the shard folder)" in text  # a report from bare predictions


def _examples() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    doc = (ROOT / "omnimodal/cli/eval.py").read_text().split('"""')[1]
    lines = [ln.strip() for ln in (readme + "\n" + doc).splitlines()]
    return [ln.split(" #")[0] for ln in lines if re.match(r"omnimodal-eval\s", ln)]


def test_documented_eval_commands_parse() -> None:
    """The README's and the module docstring's omnimodal-eval examples use the CLI's real options."""
    examples = _examples()
    assert len(examples) >= 3
    for line in examples:
        a = parser().parse_args(shlex.split(line)[1:])
        assert a.checkpoints and a.data, line
