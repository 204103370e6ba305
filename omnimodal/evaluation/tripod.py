"""What an evaluation can fill of the TRIPOD+AI checklist by itself (Collins et al., BMJ 2024;385:e078378).

Gathered from the shard folder (``index.json``: schema version, specs; ``report.json`` beside it: the build
report), the evaluated people at their landmark (who was left out and why; which modalities their histories
hold) and the fine-tuned checkpoint (release, head, mode, trainable parameters, landmark design). The report
(:func:`omnimodal.evaluation.report.write_report`) prints these facts and a checklist saying which items they
fill and which the authors must still write. Items are numbered as in the TRIPOD+AI 2024 checklist.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.schema import Timeline
from datamodules.shards.store import is_remote, read_index, shown_url

#: (item, topic) that the report fills, in checklist order; what it fills is said in :func:`checklist`
FILLED = (
    ("5a", "Data: sources of data"),
    ("6b", "Participants: eligibility criteria"),
    ("7", "Data preparation"),
    ("8a", "Outcome: definition and time horizon"),
    ("9b", "Predictors: definition, how and when measured"),
    ("11", "Missing data"),
    ("12c", "Analytical methods: type of model, building steps"),
    ("12e", "Analytical methods: performance measures and plots"),
    ("12g", "Analytical methods: how predictions were calculated"),
    ("15", "Model output"),
    ("20a", "Results: flow of participants, with and without the outcome, follow-up"),
    ("21", "Results: participants and outcome events in each analysis"),
    ("23a", "Results: model performance with confidence intervals"),
)
#: items the report cannot know: the authors write them
TO_WRITE = (
    ("1", "Title"),
    ("2", "Abstract"),
    ("3a-3c", "Introduction: healthcare context, target population, health inequalities"),
    ("4", "Objectives"),
    ("5b", "Dates of the data (accrual, end of follow-up)"),
    ("6a", "Study setting and centres"),
    ("6c", "Treatments received"),
    ("8b-8c", "Outcome assessors and blinding"),
    ("9a, 9c", "Choice of predictors; predictor assessors"),
    ("10", "Sample size"),
    ("12a, 12b, 12d, 12f", "Data use and partitioning, predictor handling, heterogeneity, model updating"),
    ("13-14", "Class imbalance, fairness"),
    ("16", "Development vs evaluation data"),
    ("17", "Ethical approval"),
    ("18a-18f", "Open science: funding, conflicts, protocol, registration, data and code sharing"),
    ("19", "Patient and public involvement"),
    ("20b-20c", "Participant characteristics; comparison with the development data"),
    ("22", "Full model specification and access (a release's model card holds part of it)"),
    ("23b, 24", "Heterogeneity across clusters; model updating"),
    ("25-27c", "Discussion: interpretation, limitations, usability, next steps"),
)


def data_source(root: str | Path) -> dict[str, Any]:
    """The shard folder (or its URL), its ``index.json`` (schema version, specs per modality, samples per split)
    and, when the build's ``report.json`` sits beside local shards, what the build took in and left out (counts,
    never keys)."""
    remote = is_remote(root)
    index = read_index(root)
    out: dict[str, Any] = {
        "folder": shown_url(str(root)) if remote else str(Path(root).resolve()),
        "schema_version": index.get("schema_version"),
        "specs": index.get("specs", {}),
        "samples": {s: v.get("samples") for s, v in index.get("splits", {}).items()},
        "build_report": None,
    }
    report = None if remote else Path(root) / "report.json"  # a server's folder: its build report is not fetched
    if report is not None and report.is_file():
        try:
            b = json.loads(report.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{report}: the shard build report is not valid JSON ({err}); rebuild the shards") from err
        reasons: dict[str, int] = {}
        for r in b.get("rejected", []):
            kind = str(r.get("reason", "")).split(" [")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
        out["build_report"] = {
            "subjects_in_table": b.get("subjects_in_table"),
            "samples": b.get("samples"),
            "withdrawn_consent": len(b.get("withdrawn_consent", [])),
            "no_valid_events": len(b.get("no_valid_events", [])),
            "rejected_rows": len(b.get("rejected", [])),
            "rejected_by_reason": reasons,
            "measurements": b.get("modalities", {}),
        }
    return out


def missingness(histories: Sequence[Timeline], modalities: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per modality: how many of the evaluated people have at least one instance of it in their history at the
    landmark (``people``, ``share``) and instances per person (``mean``, ``median``, ``max``, over everyone)."""
    counts = {m: np.zeros(len(histories)) for m in modalities}
    for i, h in enumerate(histories):
        for ev in h.events:
            for ms in ev.measurements:
                if ms.modality in counts:
                    counts[ms.modality][i] += 1
    n = max(len(histories), 1)
    return {
        m: {
            "people": int((c > 0).sum()),
            "share": float((c > 0).sum() / n),
            "mean": float(c.mean()) if len(c) else 0.0,
            "median": float(np.median(c)) if len(c) else 0.0,
            "max": int(c.max()) if len(c) else 0,
        }
        for m, c in counts.items()
    }


def model_details(task: Any, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Release, encoders, backbone, head, fine-tuning mode, trainable parameters and landmark design of a
    :class:`~omnimodal.downstream.task.FinetuneTask`."""
    hp = task.hparams
    release = hp.get("release_path")
    return {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "release": Path(release).name if release else None,
        "release_path": release,
        "encoders": {m: e["name"] for m, e in hp["model_config"]["encoders"].items() if m in task.model.omni.encoders},
        "backbone": dict(hp["model_config"]["backbone"]),
        "head": dataclasses.asdict(task.head_cfg),
        "mode": task.mode,
        "init": getattr(task, "init", None),
        "parameters": task.trainable_parameters(),
        "landmark": dataclasses.asdict(task.landmark),
    }


def _fmt_spec(spec: dict[str, Any]) -> str:
    """``kind; field value, ...``; a list of more than 4 names (leads, omics features) as its length."""

    def value(v: Any) -> str:
        if isinstance(v, list):
            if len(v) > 4:
                return f"{len(v)} ({v[0]}...{v[-1]})"
            numbers = all(isinstance(x, (int, float)) for x in v)
            return ("x" if numbers else "/").join(map(str, v))
        return str(v)

    rest = ", ".join(f"{k} {value(v)}" for k, v in spec.items() if k != "kind")
    return f"{spec.get('kind', '?')}" + (f"; {rest}" if rest else "")


def describe(reports: Sequence[Any], split: str) -> list[str]:
    """The markdown sections with the facts: data source, participants, missingness, model."""
    main = reports[0]
    data = main.data
    lines = ["## Data source", ""]
    if data:
        lines.append(
            f"Shards `{data['folder']}` (schema version {data['schema_version']}); samples per split: "
            + ", ".join(f"{s} {n}" for s, n in sorted(data["samples"].items()))
            + f"; evaluated split: {split}."
        )
        lines += ["", "| modality | canonical spec |", "|---|---|"]
        lines += [f"| {m} | {_fmt_spec(s)} |" for m, s in sorted(data["specs"].items())]
        b = data["build_report"]
        lines.append("")
        if b:
            why = "; ".join(f"{k}: {n}" for k, n in sorted(b["rejected_by_reason"].items()))
            lines.append(
                f"Shard build (report.json): {b['subjects_in_table']} subjects in the table, {b['samples']} written; "
                f"{b['withdrawn_consent']} left out for withdrawn consent, {b['no_valid_events']} without a valid "
                f"event; {b['rejected_rows']} table rows rejected" + (f" ({why})" if why else "") + "."
            )
        else:
            lines.append("No build report (report.json) beside the shards: what the build left out is not known here.")
    else:
        lines.append("Not recorded (the report was built without the shard folder).")
    lines += ["", "## Participants", ""]
    for r in reports:
        left = sum(r.excluded.values())
        why = ", ".join(f"{n} {w}" for w, n in sorted(r.excluded.items())) or "none"
        lines.append(
            f"- {r.name}: {len(r.predictions) + left} people in the split, {len(r.predictions)} evaluated at the "
            f"landmark ({r.landmark_days:g} days after their first event), {left} left out ({why})."
        )
        if r.kind == "survival" and "survival" in r.metrics:
            s, t = r.metrics["survival"], r.predictions.target["time"]
            lines.append(
                f"  Outcome after the landmark: {s['n_events']} events of cause 1, {s['n_competing']} competing "
                f"events, {s['n_censored']} censored; follow-up after the landmark median {np.median(t):.0f} days "
                f"(range {t.min():.0f}-{t.max():.0f})."
            )
        elif r.kind == "classification" and "binary" in r.metrics:
            b = r.metrics["binary"]
            lines.append(f"  With the outcome: {b['n_positive']}; without: {b['n'] - b['n_positive']}.")
    if main.missingness:
        lines += [
            "",
            f"## Missing data: modalities in the evaluated histories ({main.name})",
            "",
            "A modality a person does not have is absent from their history (the model reads what there is; "
            "nothing is imputed). Instances per person are over everyone evaluated.",
            "",
            "| modality | people with it | share | instances per person: mean | median | max |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {m} | {v['people']} | {v['share']:.0%} | {v['mean']:.1f} | {v['median']:g} | {v['max']} |"
            for m, v in main.missingness.items()
        ]
    lines += ["", "## Model", ""]
    for r in reports:
        d = r.model
        if not d:
            lines.append(f"- {r.name}: not recorded.")
            continue
        p, lm, h = d["parameters"], d["landmark"], d["head"]
        lines.append(
            f"- {r.name}: release {d['release'] or 'unknown'}"
            + (f", checkpoint `{d['checkpoint']}`" if d["checkpoint"] else "")
            + f"; encoders {', '.join(f'{m} ({e})' for m, e in d['encoders'].items())}; backbone "
            + ", ".join(f"{k} {v}" for k, v in d["backbone"].items() if not isinstance(v, (dict, list)))
            + f"; head {h['kind']} (label {h['label']!r}, horizon {h['horizon_days']:g} days"
            + (f", {h['bins']} bins, {h['causes']} cause(s)" if h["kind"] == "survival" else "")
            + (f", covariates {list(h['covariates'])}" if h["covariates"] else "")
            + f"); mode {d['mode']}"
            + {"release": ", initialised from the release", "scratch": ", trained from scratch"}.get(d.get("init"), "")
            + f"; trainable parameters {p['model'] + p['head']:,} of {p['total']:,} "
            f"(head {p['head']:,}); landmark: training {lm['train']}, evaluation {r.landmark_days:g} days, history "
            f"the {lm['select']} {lm['max_events']} events"
            + (f", capped per modality {lm['max_instances']}" if lm.get("max_instances") else "")
            + "."
        )
    return lines


def checklist(reports: Sequence[Any]) -> list[str]:
    """The "TRIPOD+AI checklist (filled automatically)" section: each item filled and where, then those to write."""
    main = reports[0]
    kind = main.kind
    h = (main.model or {}).get("head", {})
    what = {
        "5a": "Data source: shard folder, schema version, specs per modality"
        + (", build report (subjects, withdrawn, rejected)" if main.data and main.data["build_report"] else ""),
        "6b": f"Participants: eligible = at risk at the landmark ({main.landmark_days:g} days after the first event) "
        "with an event before it; those left out, with reasons",
        "7": "Data source (canonical specs: every measurement decoded to them at shard build) and the build report",
        "8a": f"Model: label {h.get('label', '?')!r}, horizon {h.get('horizon_days', float('nan')):g} days after the "
        "landmark; how it was assessed is for the authors",
        "9b": "Model (encoders per modality, covariates) and Missing data (which measurements, up to the landmark)",
        "11": "Missing data: people with each modality and instances per person; absent modalities are not imputed",
        "12c": "Model: release, head, fine-tuning mode, trainable parameters, landmark design",
        "12e": "Intervals line and the table: "
        + (
            "Harrell's and Uno's C, time-dependent AUROC, integrated Brier score, calibration at the horizon, "
            "AUROC/AUPRC"
            if kind == "survival"
            else "AUROC, AUPRC, calibration (bins, ECE, Brier, slope, intercept)"
            if kind == "classification"
            else "MAE, RMSE, R², Pearson r"
        )
        + "; plots; modality ablation",
        "12g": "Model: the checkpoint, evaluated by omnimodal-eval",
        "15": {
            "survival": "cumulative incidence of each cause at the end of each bin up to the horizon",
            "classification": "probability of the outcome (no threshold is chosen)",
            "regression": "the value, in the label's units",
        }[kind],
        "20a": "Participants: people in the split, evaluated, left out and why"
        + (", events, competing events, censored, follow-up" if kind == "survival" else ""),
        "21": "Participants and the table (n, events or positives per model)",
        "23a": "the table (95% bootstrap intervals) and plots",
    }
    lines = [
        "## TRIPOD+AI checklist (filled automatically)",
        "",
        "Items of the TRIPOD+AI 2024 checklist (Collins et al., BMJ 2024;385:e078378) this report fills, and where. "
        "Check each before you report it.",
        "",
        "| item | topic | filled by this report |",
        "|---|---|---|",
    ]
    lines += [f"| {item} | {topic} | {what[item]} |" for item, topic in FILLED]
    lines += ["", "Still to write (the report cannot know them):", "", *(f"- {i} {t}" for i, t in TO_WRITE)]
    return lines


__all__ = ["FILLED", "TO_WRITE", "checklist", "data_source", "describe", "missingness", "model_details"]
