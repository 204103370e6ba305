"""The benchmark's outputs: ``benchmark.json`` (everything), ``benchmark.md`` (one table per landmark, the
targets measured) and ``benchmark.png`` (each contender's metric with its interval, per task, the oracles
marked)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..evaluation.plots import DPI, markdown_table

COLOURS = {"oracles": "#7b3294", "baselines": "#999999", "models": "#1f78b4"}


def _group(result: dict[str, Any], name: str) -> str:
    return next(g for g, names in result["groups"].items() if name in names)


def _order(result: dict[str, Any]) -> list[str]:
    """Contenders top to bottom: the ceilings, the models, the baselines."""
    g = result["groups"]
    return [*g["oracles"], *g["models"], *g["baselines"]]


def _triple(row: dict[str, float] | None) -> tuple[float, float, float] | None:
    return None if row is None else (row["value"], row["lo"], row["hi"])


def markdown(result: dict[str, Any]) -> str:
    tasks = result["tasks"]
    c = result["cohort"]
    lines = [
        "# omnimodal validation benchmark",
        "",
        f"Synthetic benchmark cohort: {c['n_subjects']} people (seed {c['seed']}), measured with "
        f"{', '.join(c['modalities'])}; test people at risk per landmark: "
        + ", ".join(f"{k} {v}" for k, v in c["test_at_risk"].items())
        + ". Tasks: `L1 H3` is onset within 3 years of the landmark 1 year after the first event (AUROC, people "
        "whose status then is known); `L1 survival` is the time to onset after that landmark (Harrell's C-index "
        "of the 5-year risk). Intervals: 95% bootstrap over people, the same resamples for every contender; "
        "Δ: the difference to the last-visit logistic regression, with its own interval.",
        "",
        "Ceilings: the *snapshot oracle* knows the true hidden state at the landmark (with age and sex), the "
        "*trajectory oracle* also the person's drift and genetic risk; a snapshot model is bounded by the "
        "first, a timeline model by the second.",
        "",
    ]
    order = _order(result)
    for task, t in tasks.items():
        rows = []
        for name in order:
            r = t["contenders"].get(name)
            if r is None:
                continue
            rows.append(
                {
                    "contender": name,
                    "kind": _group(result, name)[:-1],
                    "metric": _triple(r),
                    "delta": _triple(r.get("vs_last_visit")),
                    "filled": r["filled"] or None,
                }
            )
        lines += [
            f"## {task}: {t['metric']} ({t['n']} people, {t['cases']} onsets)",
            "",
            markdown_table(
                rows,
                {
                    "contender": "contender",
                    "kind": "kind",
                    "metric": t["metric"],
                    "delta": "Δ vs last visit",
                    "filled": "no history (mean risk)",
                },
            ),
        ]
    lines += ["## Targets", ""]
    held = sum(ch["holds"] for ch in result["checks"])
    lines.append(f"{held} of {len(result['checks'])} hold.\n")
    lines.append(
        markdown_table(
            [{**ch, "holds": "yes" if ch["holds"] else "**no**"} for ch in result["checks"]],
            ["target", "task", "measured", "holds"],
        )
    )
    secs = result["seconds"]
    lines += ["", "Seconds: " + ", ".join(f"{k} {v:g}" for k, v in secs.items()), ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    """One panel per task: each contender's metric (dot) and interval (bar), coloured by kind; the two oracles'
    values as vertical lines."""
    tasks = result["tasks"]
    order = [n for n in _order(result) if any(n in t["contenders"] for t in tasks.values())]
    ncol = len({k.split()[1] for k in tasks})
    nrow = -(-len(tasks) // ncol)
    fig = Figure(figsize=(3.2 * ncol + 2.2, 0.28 * len(order) * nrow + 1.2), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False, sharey=True)
    ys = {n: len(order) - 1 - i for i, n in enumerate(order)}
    for ax, (task, t) in zip(axes.flat, tasks.items()):
        for name in order:
            r = t["contenders"].get(name)
            if r is None:
                continue
            colour = COLOURS[_group(result, name)]
            ax.errorbar(
                r["value"],
                ys[name],
                xerr=[[r["value"] - r["lo"]], [r["hi"] - r["value"]]],
                fmt="o",
                ms=3.5,
                color=colour,
                capsize=2,
            )
        for name, style in zip(("snapshot oracle", "trajectory oracle"), (":", "--")):
            if name in t["contenders"]:
                ax.axvline(t["contenders"][name]["value"], color=COLOURS["oracles"], ls=style, lw=0.8)
        ax.axvline(0.5, color="black", lw=0.5)  # chance
        ax.set_xlim(0.0, 1.0)
        ax.set_title(f"{task}: {t['metric']} (n={t['n']})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.flat[len(tasks) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_yticks(list(ys.values()), list(ys.keys()), fontsize=7)
    fig.suptitle(
        "omnimodal benchmark: contenders (blue), baselines (grey), oracles (purple; lines: snapshot dotted, "
        "trajectory dashed), 95% bootstrap intervals",
        fontsize=8,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def write(result: dict[str, Any], out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "benchmark.json", "md": out / "benchmark.md", "png": out / "benchmark.png"}
    paths["json"].write_text(json.dumps(result, indent=2, default=str) + "\n")
    paths["md"].write_text(markdown(result))
    plot(result, paths["png"])
    return paths


__all__ = ["markdown", "plot", "write"]
