"""What-if forecasts validated against the simulator's counterfactuals (``omnimodal-benchmark --config-name
what_if``; configs/what_if.yaml).

1. **Cohort**: a seeded synthetic cohort with interventions (:mod:`datamodules.synthetic.interventions`): half
   the people in a randomised arm (each intervention given 1:1 at a randomisation visit), half treated by
   indication (those with the worse state: confounded). Re-split by keyed hash and sharded as the benchmark's.
2. **Model** (``models`` of them, seeds ``seed``, ``seed + 1``, ...: pretrained and fine-tuned independently, their
   what-ifs averaged per person; one run's estimate moves with its training seed by more than the people's
   bootstrap interval, what_if.md): pretrained self-supervised on the train split (``pretrain``: no labels; its
   next-event forecast learns what follows a START, the labs that fall), then fine-tuned there with a survival
   head at every eligible event of each history (``finetune.overrides``, ``landmark.train=all``, so histories that
   end in a START are seen as the what-if asks them; ``optim.backbone_lr_ratio=0.01``, so the pretrained part keeps
   what it learned of a START); it learns from the intervention rows (``<CODE>//START``) as from any other code.
   ``pretrain: null``: the same architecture fine-tuned from scratch.
3. **Per test person** with a treatment decision for ``code`` (a trial-arm person at their randomisation visit,
   treated or not; a care-arm person at their start), their history up to that decision (the decision's own
   START row left out) is asked :meth:`~omnimodal.downstream.forecaster.Forecaster.what_if`: the forecast risk
   within the head's horizon with and without ``code`` started then. The truth beside it
   (:func:`datamodules.synthetic.oracle.assignment_risks`): the chance of onset within that horizon with and
   without it, from the same person's state, drift and random draws (computed once, for every model).
4. **Figures**:
   - *randomised arm*: the mean predicted risk difference against the true average effect (bootstrap intervals
     over people; does the predicted one cover the true one), and the correlation of per-person predicted and
     true effects; with several models, also each model's own mean and their spread (the training seed's share
     of the uncertainty, which the people's interval does not hold);
   - *arm treated by indication*: the bias of the predicted effect (mean predicted - true), as measured;
   - *feedback*: for treated people, the forecast after the measurements of the next ``feedback_years``, against
     the same person's in the **placebo world**: the same cohort simulated with every effect 0 (the same people,
     assignments, visits and random draws; only the drug's effect on the state is gone, so the labs after the start
     differ by what it did). Treated people whose state improved should see a lower forecast than their placebo
     selves: the share who do, and the mean difference. People with the onset by then in either world are left out.
5. **Outputs**: ``what_if.md``, ``what_if.json``, ``what_if.png`` (predicted against true effects, per arm) and
   ``person.png`` (one treated person's timeline with both forecasts).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from datamodules.builtin_cohort import cache_dir
from datamodules.interventions import parse
from datamodules.loader import CropConfig, ShardDataset
from datamodules.schema import Event, Timeline
from datamodules.shards.format import subject_key
from datamodules.synthetic.oracle import OracleConfig, assignment_risks
from datamodules.synthetic.state import YEAR_DAYS, simulate_subject, subject_id

from ..evaluation import metrics as M
from ..evaluation.plots import format_value
from .run import (
    BENCH_SECRET,
    _say,
    build_cohort,
    cohort_interventions,
    finetune,
    first_event_offset,
    first_event_times,
    pretrain,
)


@dataclass
class Case:
    """One test person's treatment decision: what the model says and what is true (risks within the horizon)."""

    key: str
    arm: str
    treated: bool
    predicted: float  # with - without, the model
    true: float  # with - without, the simulator
    without: float  # the model's risk without
    true_without: float
    lo: float  # the dropout interval of ``predicted`` (several models: the lowest and highest of theirs)
    hi: float
    gap_days: float
    feedback: tuple[float, float] | None = None  # forecast after follow-up: (this world, the placebo world)
    members: tuple[float, ...] = ()  # each model's ``predicted`` (their mean is ``predicted``)


def decision_history(tl: Timeline, at_days: float, code: str) -> Timeline | None:
    """The history up to a decision at ``at_days`` (the timeline's days), without the decision's own rows of
    ``code`` (its START there); None if nothing is left."""
    events = []
    for ev in tl.events:
        if ev.time_days > at_days + 1e-6:
            break
        keep = ev.measurements
        if abs(ev.time_days - at_days) <= 1e-6:
            keep = [m for m in keep if (p := parse(m.code)) is None or p[0] != code]
        if keep:
            events.append(Event(ev.time_days, ev.age_days, keep))
    return Timeline(tl.key, tl.static, events, {}) if events else None


def cases(cfg: DictConfig, cohort, forecasters: list, counts: dict[str, int], placebo=None) -> tuple[list[Case], Any]:
    """Every test person's decision (module docstring, step 3), asked of each of ``forecasters`` (the models, one
    config and head, averaged); ``counts`` gets who was left out and why."""
    ivc = cohort_interventions(cfg)
    code = str(cfg.code)
    horizon_years = forecasters[0].horizon_days / YEAR_DAYS
    label = forecasters[0].task.head_cfg.label  # the onset that ends a follow-up
    ocfg = OracleConfig(paths=int(cfg.oracle.paths), seed=int(cfg.seed))
    index = {subject_key(subject_id(i), BENCH_SECRET.encode()): i for i in range(cohort.n_subjects)}
    first = first_event_times(cohort.cohort)
    dose = ivc.get(code).effects[0][0]
    out, example = [], None
    ds = ShardDataset(cohort.shards, "test", shuffle=False, crop=CropConfig(random=False))
    twins = {}
    if placebo is not None:
        twins = {t.key: t for t in ShardDataset(placebo.shards, "test", shuffle=False, crop=CropConfig(random=False))}
    for tl in ds:
        s = simulate_subject(cohort.seed, index[tl.key], interventions=ivc)
        truth = assignment_risks(s, code, [horizon_years], ivc, ocfg)
        if truth is None:
            why = "no decision (care arm untreated, or not enrolled)"
            counts[why] = counts.get(why, 0) + 1
            continue
        at = truth.at_days - first_event_offset(first, s)
        hist = decision_history(tl, at, code)
        if hist is None:
            counts["no history before the decision"] = counts.get("no history before the decision", 0) + 1
            continue
        ws = [
            f.what_if(hist, code, at_days=at, dose=dose, samples=int(cfg.samples), seed=int(cfg.seed))
            for f in forecasters
        ]
        case = Case(
            tl.key,
            truth.arm,
            truth.treated,
            float(np.mean([w.difference for w in ws])),
            float(truth.effect[0]),
            float(np.mean([w.without for w in ws])),
            float(truth.without[0]),
            min(w.interval[0] for w in ws),
            max(w.interval[1] for w in ws),
            ws[0].gap_days,
            members=tuple(w.difference for w in ws),
        )
        follow = (
            _follow_up(tl, twins[tl.key], at, float(cfg.feedback_years), label)
            if truth.treated and tl.key in twins
            else None
        )
        if follow is not None:  # this world and the placebo world, each model's forecast averaged
            case.feedback = tuple(float(np.mean([f.forecast(t) for f in forecasters])) for t in follow)
        if truth.treated and example is None:
            example = (tl, hist, ws[0])
        out.append(case)
    return out, example


def _follow_up(tl: Timeline, twin: Timeline, at: float, years: float, label: str) -> tuple[Timeline, Timeline] | None:
    """The histories up to ``years`` after the start ``at``, in this world and the placebo world (the same person,
    visits and draws; None if either has the ``label`` onset by then or no event after the start)."""
    end = at + years * YEAR_DAYS
    out = []
    for t in (tl, twin):
        onset = t.labels.get(label)
        if onset is not None and onset.value >= 1 and onset.time_days <= end:
            return None
        events = [ev for ev in t.events if ev.time_days <= end]
        if not events or events[-1].time_days <= at + 1e-6:
            return None
        out.append(Timeline(t.key, t.static, events, {}))
    return out[0], out[1]


def _mean_ci(x: np.ndarray, n_boot: int, seed: int) -> M.Estimate:
    return M.bootstrap_ci(lambda v: float(np.mean(v)), x, n_boot=n_boot, seed=seed)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and a.std() > 0 and b.std() > 0 else float("nan")


def summarise(found: list[Case], n_boot: int, seed: int) -> dict[str, Any]:
    def arm(name: str) -> list[Case]:
        return [c for c in found if c.arm == name and (name == "trial" or c.treated)]

    out: dict[str, Any] = {}
    trial = arm("trial")
    if trial:
        p, t = np.array([c.predicted for c in trial]), np.array([c.true for c in trial])
        pred, true = _mean_ci(p, n_boot, seed), _mean_ci(t, n_boot, seed)
        out["trial"] = {
            "n": len(trial),
            "treated": sum(c.treated for c in trial),
            "predicted_effect": pred,
            "true_effect": true,
            "covers": bool(pred.lo <= true.value <= pred.hi),
            "error": _mean_ci(p - t, n_boot, seed),
            "correlation": M.bootstrap_ci(_corr, p, t, n_boot=n_boot, seed=seed),
        }
        members = np.array([c.members for c in trial])  # people x models
        if members.shape[1] > 1:  # each model's own mean, interval, and whether it covers; their spread
            each = [_mean_ci(members[:, k], n_boot, seed) for k in range(members.shape[1])]
            out["trial"]["members"] = each
            out["trial"]["members_covering"] = sum(e.lo <= true.value <= e.hi for e in each)
            out["trial"]["members_sd"] = float(np.std([e.value for e in each], ddof=1))
    care = arm("care")
    if care:
        p, t = np.array([c.predicted for c in care]), np.array([c.true for c in care])
        out["care"] = {
            "n": len(care),
            "predicted_effect": _mean_ci(p, n_boot, seed),
            "true_effect": _mean_ci(t, n_boot, seed),
            "bias": _mean_ci(p - t, n_boot, seed),
            "correlation": M.bootstrap_ci(_corr, p, t, n_boot=n_boot, seed=seed),
        }
    fb = [c.feedback for c in found if c.feedback is not None]
    if fb:
        real, placebo = np.array(fb).T
        out["feedback"] = {
            "n": len(fb),
            "lower_than_placebo": float((real < placebo).mean()),
            "difference": _mean_ci(real - placebo, n_boot, seed),
        }
    models = np.array([c.without for c in found])
    truth = np.array([c.true_without for c in found])
    out["risk_without"] = {"model_mean": float(models.mean()), "true_mean": float(truth.mean())} if found else {}
    return out


def _json(x: Any) -> Any:
    if isinstance(x, M.Estimate):
        return {"value": x.value, "lo": x.lo, "hi": x.hi}
    if isinstance(x, dict):
        return {k: _json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json(v) for v in x]
    return x


def _model_line(result: dict[str, Any]) -> str:
    pre = result.get("pretrain")
    tuned = " ".join(result["finetune"])
    if len(result.get("seeds", [])) > 1:
        tuned += f" (each of {len(result['seeds'])} models, seeds {result['seeds'][0]}-{result['seeds'][-1]})"
    if not pre:
        return tuned
    return f"pretrained {pre['steps']} steps on the train split ({' '.join(pre['overrides'])}), then {tuned}"


def markdown(summary: dict[str, Any], result: dict[str, Any]) -> str:
    f = format_value
    lines = [
        "# What-if forecasts against the simulator's counterfactuals",
        "",
        f"`{result['command']}`",
        "",
        f"Cohort: {result['cohort']['n_subjects']} synthetic people (seed {result['cohort']['seed']}), "
        f"{', '.join(result['cohort']['modalities'])}; interventions {result['cohort']['interventions']}. "
        f"Asked: `{result['code']}` at its first dose, at each test person's treatment decision; risks within "
        f"{result['horizon_years']:g} years. Model: {_model_line(result)}. "
        f"Left out: {result['left_out'] or 'none'}. 95% bootstrap intervals over people.",
        "",
        "| arm | people | predicted effect | true effect | predicted - true | correlation (per person) |",
        "|---|---|---|---|---|---|",
    ]
    if "trial" in summary:
        t = summary["trial"]
        lines.append(
            f"| randomised ({t['treated']} treated) | {t['n']} | {f(t['predicted_effect'])} | {f(t['true_effect'])} | "
            f"{f(t['error'])} | {f(t['correlation'])} |"
        )
    if "care" in summary:
        c = summary["care"]
        lines.append(
            f"| treated by indication | {c['n']} | {f(c['predicted_effect'])} | {f(c['true_effect'])} | "
            f"{f(c['bias'])} (bias) | {f(c['correlation'])} |"
        )
    if "trial" in summary:
        t = summary["trial"]
        held = "covers" if t["covers"] else "does not cover"
        lines += ["", f"On the randomised arm the predicted effect's interval {held} the true average effect."]
        if "members" in t:
            seeds = result["seeds"]
            lines += [
                "",
                f"The prediction is the mean of {len(seeds)} models (seeds {', '.join(map(str, seeds))}: each "
                "pretrained and fine-tuned on its own). Each alone on the randomised arm: "
                f"{'; '.join(f(e) for e in t['members'])} (spread between them, sd: {f(t['members_sd'])}); "
                f"{t['members_covering']} of {len(seeds)} cover the true average effect alone.",
            ]
    if "feedback" in summary:
        fb = summary["feedback"]
        lines += [
            "",
            f"Feedback: {fb['n']} treated test people with measurements in the {result['feedback_years']:g} years "
            "after the start (no onset by then in either world). Their forecast after those measurements is lower "
            f"than their placebo selves' (the same people and draws, the drug without effect) for "
            f"{f(fb['lower_than_placebo'])} of them; the mean difference is {f(fb['difference'])}.",
        ]
    rw = summary.get("risk_without", {})
    if rw:
        lines += [
            "",
            f"Mean risk without the intervention: model {f(rw['model_mean'])}, truth {f(rw['true_mean'])}.",
        ]
    lines += ["", f"Run time: {result['seconds']['total']:.0f} s ({result['seconds']})."]
    return "\n".join(lines) + "\n"


def plot(found: list[Case], path: Path) -> Path:
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(9, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    groups = (("randomised arm", lambda c: c.arm == "trial"), ("treated by indication", lambda c: c.arm == "care"))
    for ax, (name, keep) in zip(axes, groups):
        sel = [c for c in found if keep(c) and (c.arm == "trial" or c.treated)]
        t, p = np.array([c.true for c in sel]), np.array([c.predicted for c in sel])
        if len(sel):
            ax.scatter(t, p, s=12, alpha=0.6, color="tab:blue")
            ax.axhline(p.mean(), color="tab:blue", lw=1, ls="--", label=f"mean predicted {p.mean():+.3f}")
            ax.axvline(t.mean(), color="tab:purple", lw=1, ls=":", label=f"mean true {t.mean():+.3f}")
        lim = [min(-0.01, *(t if len(t) else [0]), *(p if len(p) else [0])), 0.01]
        ax.plot(lim, lim, color="grey", lw=0.8, label="predicted = true")
        ax.set(title=f"{name} (n={len(sel)})", xlabel="true risk difference (with - without)")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("predicted risk difference")
    fig.suptitle("What-if forecasts against the simulator's counterfactuals")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def run(cfg: DictConfig) -> dict[str, Any]:
    from ..downstream.forecaster import Forecaster  # noqa: PLC0415
    from .real_survival import scratch_release  # noqa: PLC0415

    seeds = [int(cfg.seed) + k for k in range(int(cfg.get("models", 1)))]
    if not seeds:
        raise ValueError(f"config key models: {cfg.models}; give 1 or more (the models averaged per person)")
    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cfg.cache) if cfg.get("cache") else cache_dir() / "benchmark"
    seconds: dict[str, float] = {}
    cohort = build_cohort(cfg, cache)
    placebo_cfg = cfg.copy()
    with open_dict(placebo_cfg):
        placebo_cfg.cohort.placebo = True
    placebo = build_cohort(placebo_cfg, cache) if cfg.get("feedback_years") else None
    seconds["cohorts"] = round(time.perf_counter() - t0, 1)
    forecasters = []
    scratch = None if cfg.get("pretrain") else scratch_release(cohort.shards, out / "untrained")
    for seed in seeds:  # each model pretrained and fine-tuned on its own seed
        mcfg = cfg.copy()
        with open_dict(mcfg):
            mcfg.seed = seed
        t1 = time.perf_counter()
        release = scratch or pretrain(mcfg, cohort, cache)  # pretrained: self-supervised on the train split first
        if scratch is None:
            seconds["pretraining"] = round(seconds.get("pretraining", 0.0) + time.perf_counter() - t1, 1)
            t1 = time.perf_counter()
        run_dir = out / ("run" if len(seeds) == 1 else f"run-seed{seed}")
        task = finetune(mcfg, release, cohort, run_dir, [])
        seconds["fine-tuning"] = round(seconds.get("fine-tuning", 0.0) + time.perf_counter() - t1, 1)
        forecasters.append(Forecaster(task))
    f = forecasters[0]
    counts: dict[str, int] = {}
    t2 = time.perf_counter()
    found, example = cases(cfg, cohort, forecasters, counts, placebo)
    seconds["what-if"] = round(time.perf_counter() - t2, 1)
    summary = summarise(found, int(cfg.n_boot), int(cfg.seed))
    seconds["total"] = round(time.perf_counter() - t0, 1)
    result = {
        "command": "omnimodal-benchmark --config-name what_if",
        "cohort": {
            "n_subjects": cohort.n_subjects,
            "seed": cohort.seed,
            "modalities": list(cfg.cohort.modalities),
            "interventions": OmegaConf.to_container(cfg.cohort.interventions, resolve=True),
        },
        "code": str(cfg.code),
        "horizon_years": f.horizon_days / YEAR_DAYS,
        "pretrain": (
            {"steps": int(cfg.pretrain.steps), "overrides": list(cfg.pretrain.overrides)}
            if cfg.get("pretrain")
            else None
        ),
        "finetune": [*cfg.finetune.overrides, f"trainer.max_epochs={int(cfg.finetune.epochs)}"],
        "seeds": seeds,
        "feedback_years": float(cfg.feedback_years),
        "left_out": counts,
        "summary": _json(summary),
        "cases": [c.__dict__ for c in found],
        "seconds": seconds,
    }
    (out / "what_if.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    (out / "what_if.md").write_text(markdown(summary, result))
    plot(found, out / "what_if.png")
    if example is not None:
        _, hist, w = example
        title = "One treated person at the decision: the forecast with and without"
        f.plot(hist, out / "person.png", title=title, what_if=w)
    _say(f"what-if: {len(found)} decisions; wrote {out}/what_if.md, .json, .png")
    return {**result, "summary_estimates": summary}


__all__ = ["Case", "cases", "decision_history", "run", "summarise"]
