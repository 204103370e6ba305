"""``omnimodal-eval``: evaluate fine-tuned checkpoints on a split and write a report
(:mod:`omnimodal.evaluation.report`).

    omnimodal-eval outputs/finetune/.../checkpoints/best.ckpt --data /data/shards --split test --out report/
    omnimodal-eval finetuned.ckpt scratch.ckpt --names pretrained,scratch --data /data/shards --out report/
    omnimodal-eval best.ckpt --data /data/shards --landmark-days 730.5 --n-boot 200 --no-ablation
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..downstream.task import load_finetuned
from ..evaluation.report import evaluate, write_report
from ..infra.console import quiet_third_party
from ..release import ReleaseError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="omnimodal-eval",
        description="Evaluate fine-tuned checkpoints on a split of a shard folder; write a report: report.md "
        "(metrics with bootstrap intervals, data source, participants, missingness per modality, model, the "
        "TRIPOD+AI items it fills), ROC / calibration / modality-ablation PNGs, metrics.json.",
    )
    p.add_argument("checkpoints", nargs="+", help="omnimodal-finetune checkpoint(s)")
    p.add_argument("--data", required=True, help="shard folder of the cohort to evaluate on, or its URL (as data.root)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--names", help="comma-separated model names for the report (default: the checkpoints' file names)")
    p.add_argument("--out", default="eval_report", help="report folder (default: eval_report)")
    p.add_argument("--landmark-days", type=float, help="override the checkpoints' evaluation landmark")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the intervals (default: 1000)")
    p.add_argument(
        "--no-ablation",
        action="store_true",
        help="skip the modality ablation (the first model's metric, each modality withheld)",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    quiet_third_party()
    if a.n_boot < 0:
        raise SystemExit(f"omnimodal-eval: --n-boot must be 0 (no intervals) or more; got {a.n_boot}")
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
                    checkpoint=ckpt,
                )
            )
    except ReleaseError as err:
        raise SystemExit(f"omnimodal-eval: {err}") from None
    path = write_report(reports, a.out, a.split)
    print(path.read_text())
    print(f"report: {path}")


if __name__ == "__main__":
    main()
