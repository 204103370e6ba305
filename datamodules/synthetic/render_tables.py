"""Tabular renderers: omics tables (CSV/Parquet/NumPy) and the clinical codes and labs (MEDS-style rows, no
file). Wearable streams, tables too, are :mod:`.render_wearable`."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from .render_ecg import measured_heart_rate
from .state import BIOLOGY, GENE_IDS, SNP_IDS, STATE_NAMES, RenderContext, Subject

OFF_PANEL_FEATURES = ("rs999999", "GENE999", "ENSG00000141510")
ISO = "%Y-%m-%dT%H:%M:%S"


def omics_format(index: int) -> str:
    return {1: "parquet", 4: "npy"}.get(index % 6, "csv")


def expression(ctx: RenderContext) -> np.ndarray:
    """Log-expression of the gene panel: baseline + state loadings + disease signature + noise."""
    x = ctx.visit.state
    disease = 0.4 * ctx.visit.diseased * (np.arange(len(GENE_IDS)) % 6 == STATE_NAMES.index("neuro"))
    return BIOLOGY.gene_base + BIOLOGY.gene_load @ x + disease + ctx.rng.normal(0.0, 0.25, len(GENE_IDS))


def render_omics(ctx: RenderContext) -> str:
    """Genotype (SNP dosages) at the first visit, expression at the others (and at ~15% of first
    visits): a long ``feature_id,value`` table (CSV or Parquet) or a panel-order ``.npy`` vector."""
    rng = ctx.rng
    first = ctx.visit.index == 0
    with_expr = (not first) or rng.random() < 0.15
    ids: list[str] = list(SNP_IDS) if first else []
    values: list[float] = [float(d) for d in ctx.subject.snps] if first else []
    if with_expr:
        expr = expression(ctx)
        measured = rng.random(len(GENE_IDS)) >= 0.03  # a few genes fail QC
        ids += [g for g, ok in zip(GENE_IDS, measured) if ok]
        values += [round(float(v), 4) for v, ok in zip(expr, measured) if ok]
    fmt = omics_format(ctx.subject.index)
    if fmt == "npy":
        panel = list(SNP_IDS + GENE_IDS)
        vec = np.full(len(panel), np.nan, np.float32)
        vec[[panel.index(i) for i in ids]] = values
        rel, path = ctx.target("npy")
        np.save(path, vec, allow_pickle=False)
        return rel
    if rng.random() < 0.3:  # features off the panel
        extra = rng.choice(len(OFF_PANEL_FEATURES), size=int(rng.integers(1, 3)), replace=False)
        ids += [OFF_PANEL_FEATURES[k] for k in sorted(extra)]
        values += [round(float(rng.normal(1.0, 0.5)), 4) for _ in extra]
    frame = pd.DataFrame({"feature_id": ids, "value": values})
    rel, path = ctx.target(fmt)
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return rel


#: chronic conditions: (diagnosis code, treatment code, test on this visit's labs and state)
_CONDITIONS = (
    ("ICD10:I10", "RX:C09AA05", lambda labs, x: labs["LOINC:8480-6"] > 140.0),
    ("ICD10:E11", "RX:A10BA02", lambda labs, x: labs["LOINC:2345-7"] > 126.0),
    ("ICD10:F32", "RX:N06AB06", lambda labs, x: x[STATE_NAMES.index("mood")] > 1.6),
    ("ICD10:J44", "RX:R03AL03", lambda labs, x: x[STATE_NAMES.index("resp")] > 1.8),
)
DISEASE_CODE, DISEASE_RX = "ICD10:G30", "RX:N06DA02"
#: the codes :func:`clinical_labs` may write (vitals, every visit; HbA1c and LDL at half, MoCA at 40%)
LAB_CODES = (
    "LOINC:8480-6",  # systolic blood pressure, mmHg
    "LOINC:8462-4",  # diastolic blood pressure, mmHg
    "LOINC:8867-4",  # heart rate, bpm
    "LOINC:2345-7",  # glucose, mg/dL
    "LOINC:29463-7",  # weight, kg
    "LOINC:39156-5",  # BMI
    "LOINC:4548-4",  # HbA1c, %
    "LOINC:13457-7",  # LDL, mg/dL
    "LOINC:72172-0",  # MoCA
)


def _labs(ctx: RenderContext) -> dict[str, float]:
    return clinical_labs(ctx.rng, ctx.visit.state, ctx.subject.sex, ctx.subject.traits, ctx.visit.diseased)


def clinical_labs(
    rng: np.random.Generator, state: np.ndarray, sex: str, traits: dict[str, float], diseased: bool
) -> dict[str, float]:
    """The labs and vitals of one clinical visit (code -> value, as recorded: rounded to 0.1) at the hidden
    ``state``, drawing from the visit's clinical generator ``rng`` first (:func:`clinical_rows`). Also what a
    clinician reads at the visit, before the record is written (:mod:`.interventions`, treatment by indication)."""
    male = sex == "M"

    def s(name: str) -> float:
        return float(state[STATE_NAMES.index(name)])

    weight = traits["weight_kg"] * (1.0 + 0.06 * s("metabolic") - 0.02 * s("frailty")) + rng.normal(0, 1.0)
    labs = {
        "LOINC:8480-6": 122.0 + 9.0 * s("cardio") + 4.0 * s("metabolic") + 5.0 * male + rng.normal(0, 7),
        "LOINC:8462-4": 78.0 + 5.0 * s("cardio") + rng.normal(0, 5),
        "LOINC:8867-4": measured_heart_rate(state, rng),
        "LOINC:2345-7": 96.0 + 13.0 * s("metabolic") + rng.normal(0, 6),
        "LOINC:29463-7": weight,
        "LOINC:39156-5": weight / traits["height_m"] ** 2,
    }
    if rng.random() < 0.5:
        labs["LOINC:4548-4"] = 5.4 + 0.45 * s("metabolic") + rng.normal(0, 0.2)  # HbA1c %
        labs["LOINC:13457-7"] = 118.0 + 12.0 * s("cardio") + rng.normal(0, 15)  # LDL mg/dL
    if rng.random() < 0.4:  # MoCA cognitive score
        moca = 28.0 - 2.0 * max(s("neuro"), 0.0) - 1.5 * diseased + rng.normal(0, 1.0)
        labs["LOINC:72172-0"] = float(np.clip(np.round(moca), 0, 30))
    return {k: round(float(v), 1) for k, v in labs.items()}


def clinical_rows(subject: Subject, contexts: dict[int, RenderContext]) -> dict[int, list[tuple[str, float]]]:
    """Codes and labs per visit index (only the visits in ``contexts``), carrying diagnoses forward:
    a condition is coded once, at its first visit, and its treatment appears at every visit after."""
    out: dict[int, list[tuple[str, float]]] = {}
    known: set[str] = set()
    for v in sorted(contexts):
        ctx = contexts[v]
        labs = _labs(ctx)
        rows = [(code, value) for code, value in labs.items()]
        conditions = [(dx, rx, test(labs, ctx.visit.state)) for dx, rx, test in _CONDITIONS]
        conditions.append((DISEASE_CODE, DISEASE_RX, ctx.visit.diseased))
        for dx, rx, present in conditions:
            if dx in known:
                rows.append((rx, float("nan")))
            elif present and (dx == DISEASE_CODE or ctx.rng.random() < 0.8):
                rows.append((dx, float("nan")))
                known.add(dx)
        out[v] = rows
    return out


def iso(time: dt.datetime) -> str:
    return time.strftime(ISO)
