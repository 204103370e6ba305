"""``omnimodal-eval``: evaluate fine-tuned checkpoints on a split and write a report
(:mod:`omnimodal.evaluation.report`).

    omnimodal-eval outputs/finetune/.../checkpoints/best.ckpt --data /data/shards --split test --out report/
    omnimodal-eval finetuned.ckpt scratch.ckpt --names pretrained,scratch --data ... --out report/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..downstream.task import load_finetuned
from ..evaluation.report import evaluate, write_report
from ..release import ReleaseError


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="omnimodal-eval",
        description="Evaluate fine-tuned checkpoints; write a report "
        "(markdown table, ROC / calibration / modality-ablation PNGs, metrics.json).",
    )
    p.add_argument("checkpoints", nargs="+", help="omnimodal-finetune checkpoint(s)")
    p.add_argument("--data", required=True, help="shard folder of the cohort to evaluate on")
    p.add_argument("--split", default="test")
    p.add_argument("--names", help="comma-separated model names for the report (default: file names)")
    p.add_argument("--out", default="eval_report", help="report folder")
    p.add_argument("--landmark-days", type=float, help="override the checkpoints' evaluation landmark")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the intervals")
    p.add_argument("--no-ablation", action="store_true", help="skip the modality ablation")
    a = p.parse_args(argv)
    names = a.names.split(",") if a.names else [Path(c).stem for c in a.checkpoints]
    if len(names) != len(a.checkpoints):
        raise SystemExit(f"omnimodal-eval: --names has {len(names)} names for {len(a.checkpoints)} checkpoints")
    try:
        reports = []
        for i, (ckpt, name) in enumerate(zip(a.checkpoints, names)):
            task = load_finetuned(ckpt)
            reports.append(
                evaluate(
                    task,
                    name,
                    a.data,
                    a.split,
                    n_boot=a.n_boot,
                    ablation=not a.no_ablation and i == 0,
                    landmark_days=a.landmark_days,
                )
            )
    except ReleaseError as err:
        raise SystemExit(f"omnimodal-eval: {err}") from None
    path = write_report(reports, a.out, a.split)
    print(path.read_text())
    print(f"report: {path}")


if __name__ == "__main__":
    main()
