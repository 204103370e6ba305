"""``omnimodal-synth``: write the built-in synthetic cohort to a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from .state import Recordings  # numpy only; spawned workers re-importing __main__ stay light

    p = argparse.ArgumentParser(
        prog="omnimodal-synth",
        description="Generate a synthetic omnimodal health cohort (native files + subjects/events/labels "
        "tables + ground truth) in the input format of omnimodal-shard.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (must be empty or absent)")
    p.add_argument("--subjects", type=int, default=128, help="number of subjects (default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    p.add_argument(
        "--modalities",
        nargs="+",
        metavar="M",
        default=None,
        help="measure only these modalities (e.g. clinical ecg wearable; default: all)",
    )
    defaults = Recordings()
    p.add_argument(
        "--wear-days",
        type=float,
        default=defaults.wear_days,
        help=f"wearable wear period in days, per person 1/3 to 3x this (default {defaults.wear_days:g})",
    )
    p.add_argument(
        "--holter-share",
        type=float,
        default=defaults.holter_share,
        help=f"share of ECG visits that record a Holter (default {defaults.holter_share:g})",
    )
    p.add_argument(
        "--holter-minutes",
        type=float,
        default=defaults.holter_minutes,
        help=f"Holter length in minutes (default {defaults.holter_minutes:g})",
    )
    p.add_argument(
        "--meds",
        action="store_true",
        help="also write the cohort as a MEDS v0.4 dataset in OUT/meds (files referenced by path, not copied)",
    )
    p.add_argument(
        "--interventions",
        action="store_true",
        help="add treatments with known effects (an antihypertensive, an exercise programme; a randomised arm and a "
        "care arm treated by indication) as START/STOP rows, with their truth in OUT/interventions.csv",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier cohort in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .cohort import synthesize_cohort  # here, so spawned workers re-importing __main__ stay light
    from .interventions import DEFAULT_INTERVENTIONS
    from .state import Recordings

    if args.subjects < 1 or args.workers < 1 or args.seed < 0:
        print("omnimodal-synth: --subjects and --workers must be >= 1, --seed >= 0", file=sys.stderr)
        return 2
    try:
        info = synthesize_cohort(
            args.out,
            n_subjects=args.subjects,
            seed=args.seed,
            workers=args.workers,
            overwrite=args.overwrite,
            modalities=args.modalities,
            recordings=Recordings(args.wear_days, args.holter_share, args.holter_minutes),
            interventions=DEFAULT_INTERVENTIONS if args.interventions else None,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"omnimodal-synth: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {info.out_dir}: {info.summary()}")
    if args.interventions:
        print(f"  interventions: START/STOP rows in events.csv, their truth in {info.path('interventions.csv')}")
    if args.meds:
        import shutil  # noqa: PLC0415

        from ..meds_export import write_meds  # noqa: PLC0415

        meds_dir = args.out / "meds"
        if args.overwrite:
            shutil.rmtree(meds_dir, ignore_errors=True)
        from ..schema import DataError  # noqa: PLC0415

        try:
            export = write_meds(
                info.path("subjects.csv"),
                info.path("events.csv"),
                meds_dir,
                info.path("labels.csv"),
                dataset_name=f"omnimodal-synthetic-n{args.subjects}-s{args.seed}",
            )
        except DataError as exc:
            print(f"omnimodal-synth: error: {exc}", file=sys.stderr)
            return 2
        print(export.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
