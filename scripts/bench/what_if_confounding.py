"""How much confounding by indication the record leaves (issue 12): the simulator's people, their recorded labs
and their hidden state, without a model.

``python scripts/bench/what_if_confounding.py [--n 5000] [--seed 31] [--indicate-on measured|state]``

For ``RX:C08CA01`` (the antihypertensive, acting on the ``cardio`` state), over the cohort's people:

- **care arm, at each visit where a start could happen** (after the first, before onset, not yet started): the
  last recorded systolic blood pressure (``LOINC:8480-6``, the lab that measures ``cardio`` most closely) and the
  hidden ``cardio`` state. Within bins of that blood pressure, how much higher the hidden state of those started
  is than of those not started: what a model that sees the record cannot adjust for;
- **onset within 5 years** after the decision (rows followed 5 years or with the onset), a logistic regression on
  the last recorded labs, age, sex and the START, in the randomised arm (at the randomisation visit), the care
  arm (each visit where a start could happen) and both pooled: the START's log odds ratio given the record.

Numpy and scikit-learn; no files are written (the labs are those the renderer would write, from the same draws).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from sklearn.linear_model import LogisticRegression

from datamodules.synthetic.interventions import InterventionConfig
from datamodules.synthetic.render_tables import clinical_labs
from datamodules.synthetic.state import CARDIO, YEAR_DAYS, file_rng, simulate_subject

CODE = "RX:C08CA01"
LABS = ("LOINC:8480-6", "LOINC:8462-4", "LOINC:8867-4", "LOINC:2345-7", "LOINC:39156-5")
HORIZON = 5.0 * YEAR_DAYS


def rows(n: int, seed: int, ivc: InterventionConfig) -> list[dict]:
    """One row per decision: the randomisation visit (trial), each visit where a start could happen (care)."""
    out = []
    for index in range(n):
        s = simulate_subject(seed, index, interventions=ivc)
        t = s.treatment
        starts = [sp.start_days for sp in t.spans if sp.code == CODE]
        last: dict[str, float] | None = None
        for v in s.visits:
            if "clinical" in v.modalities:
                last = clinical_labs(file_rng(seed, index, v.index, "clinical"), v.state, s.sex, s.traits, v.diseased)
            if v.index == 0 or v.diseased or last is None:
                continue
            if t.arm == "trial":
                if v.days != t.enrolled_days:
                    continue
                treated = bool(starts)
            else:
                if starts and starts[0] < v.days:
                    break
                treated = bool(starts) and starts[0] == v.days
            followed = s.end_days - v.days >= HORIZON or s.onset_days - v.days <= HORIZON
            out.append(
                {
                    "arm": t.arm,
                    "treated": treated,
                    "cardio": float(v.state[CARDIO]),
                    "labs": [last[c] for c in LABS],
                    "age": v.age_years,
                    "male": float(s.sex == "M"),
                    "onset": float(s.onset_days - v.days <= HORIZON),
                    "followed": followed,
                }
            )
    return out


def residual(care: list[dict], width: float = 5.0) -> tuple[float, float, int]:
    """Mean hidden cardio of the started minus the not started within bins of the last recorded systolic BP
    (weighted by the started per bin), the same without the bins, and the number started."""
    sbp = np.array([r["labs"][0] for r in care])
    x = np.array([r["cardio"] for r in care])
    tr = np.array([r["treated"] for r in care])
    bins = np.floor(sbp / width)
    diffs, weights = [], []
    for b in np.unique(bins[tr]):
        at = bins == b
        if (at & ~tr).any():
            diffs.append(x[at & tr].mean() - x[at & ~tr].mean())
            weights.append((at & tr).sum())
    return float(np.average(diffs, weights=weights)), float(x[tr].mean() - x[~tr].mean()), int(tr.sum())


def start_log_or(sel: list[dict], state: bool = False) -> tuple[float, int, int]:
    """The START's coefficient in a logistic regression of onset within 5 years on the last labs, age, sex (and
    with ``state`` the hidden cardio, which the record does not hold) and the START (standardised covariates, no
    penalty); the rows and the treated among them."""
    sel = [r for r in sel if r["followed"]]
    X = np.array([[*r["labs"], r["age"], r["male"], *([r["cardio"]] if state else [])] for r in sel])
    X = (X - X.mean(0)) / X.std(0)
    tr = np.array([float(r["treated"]) for r in sel])
    y = np.array([r["onset"] for r in sel])
    fit = LogisticRegression(C=np.inf, max_iter=2000).fit(np.column_stack([X, tr]), y)
    return float(fit.coef_[0, -1]), len(sel), int(tr.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--indicate-on", default=None, help="InterventionConfig.indicate_on (default: its default)")
    args = ap.parse_args()
    ivc = InterventionConfig()
    if args.indicate_on is not None:
        ivc = dataclasses.replace(ivc, indicate_on=args.indicate_on)
    decisions = rows(args.n, args.seed, ivc.check())
    care = [r for r in decisions if r["arm"] == "care"]
    within, raw, started = residual(care)
    print(f"{args.n} people (seed {args.seed}), indicate_on {ivc.indicate_on}")
    print(f"care arm: {len(care)} visits where a start could happen, {started} starts")
    print(f"hidden cardio, started - not started: {raw:.3f}; within 5-mmHg bins of the last recorded SBP: {within:.3f}")
    x = np.array([r["cardio"] for r in care])
    L = np.column_stack([np.array([r["labs"] for r in care]), np.ones(len(care))])
    fit = np.linalg.lstsq(L, x, rcond=None)[0]
    sd = np.std(x - L @ fit)
    print(f"hidden cardio given the last labs (least squares, care-arm rows): residual sd {sd:.3f} of {x.std():.3f}")
    for name, sel in (
        ("randomised", [r for r in decisions if r["arm"] == "trial"]),
        ("care", care),
        ("pooled", decisions),
    ):
        b, m, k = start_log_or(sel)
        bs = start_log_or(sel, state=True)[0]
        print(
            f"onset within 5 y ~ labs + age + sex + START, {name}: START log OR {b:+.3f} (OR {np.exp(b):.2f}; "
            f"{m} rows, {k} treated); adding the hidden cardio: {bs:+.3f}"
        )


if __name__ == "__main__":
    main()
