"""``omnimodal-forecast``: one person's forecast after each of their events, and their timeline drawn with
the forecast beneath (:class:`omnimodal.downstream.forecaster.Forecaster`).

    omnimodal-forecast finetuned.ckpt --data /data/shards --split test --person 3 --out person.png
    omnimodal-forecast finetuned.ckpt --data /data/shards --person 3 --what-if RX:C08CA01@now --dose 5

``--what-if CODE@DAYS`` (DAYS since the first event, or ``now``: the last event) also prints the forecast with
the intervention started then beside the one without, their difference with its interval, and draws both.
"""

from __future__ import annotations

import argparse

from datamodules.schema import Timeline

from ..downstream.forecaster import Forecaster, find_person
from ..infra.console import quiet_third_party
from ..release import ReleaseError


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="omnimodal-forecast",
        description="One person's forecast as events are added, and a PNG of their timeline with the forecast beneath.",
    )
    p.add_argument("checkpoint", help="omnimodal-finetune checkpoint")
    p.add_argument("--data", required=True, help="shard folder")
    p.add_argument("--split", default="test")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--person", type=int, default=0, help="position in the split (default 0)")
    who.add_argument("--key", help="the person's pseudonymous shard key")
    p.add_argument("--upto-days", type=float, help="use only events up to this many days after the first")
    p.add_argument("--out", default="person.png", help="PNG to write")
    p.add_argument(
        "--what-if",
        metavar="CODE@DAYS",
        help="a hypothetical intervention: CODE (as in CODE//START rows) started DAYS after the first event, or @now",
    )
    p.add_argument("--dose", type=float, help="the --what-if intervention's dose (its START row's numeric_value)")
    p.add_argument("--samples", type=int, default=200, help="dropout draws for the --what-if interval")
    a = p.parse_args(argv)
    what_if = parse_what_if(p, a.what_if) if a.what_if else None
    quiet_third_party()
    try:
        f = Forecaster.from_checkpoint(a.checkpoint)
        tl = find_person(a.data, a.split, a.person, a.key, f.task.hparams.get("modalities"))
    except ReleaseError as err:
        raise SystemExit(f"omnimodal-forecast: {err}") from None
    if a.upto_days is not None:
        tl = Timeline(tl.key, tl.static, [ev for ev in tl.events if ev.time_days <= a.upto_days], tl.labels)
    label = tl.labels.get(f.task.head_cfg.label)
    onset = (
        label.time_days
        if label is not None and label.value >= 1 and label.time_days <= tl.events[-1].time_days + f.horizon_days
        else None
    )
    print(
        f"person {tl.key[:12]}...: {len(tl.events)} events over {tl.events[-1].time_days / 365.25:.1f} years; "
        f"forecast within {f.horizon_days / 365.25:.1f} years after each event:"
    )
    print(f"{'years':>7}  {'risk':>6}  measurements")
    for ev, (t, r) in zip(tl.events, f.trajectory(tl)):
        print(f"{t / 365.25:7.2f}  {r:6.3f}  {', '.join(m.modality for m in ev.measurements)}")
    answer = None
    if what_if is not None:
        try:
            answer = f.what_if(tl, what_if[0], what_if[1], a.dose, samples=a.samples)
        except ValueError as err:
            raise SystemExit(f"omnimodal-forecast: --what-if {a.what_if}: {err}") from None
        print(answer.line())
        if answer.gap_days > 0:
            print(f"  (the forecast with it starts {answer.gap_days:.0f} days after the one without)")
    print(f"plot: {f.plot(tl, a.out, onset_days=onset, what_if=answer)}")


def parse_what_if(p: argparse.ArgumentParser, text: str) -> tuple[str, float | None]:
    """``CODE@DAYS`` or ``CODE@now`` (or ``CODE``: now) -> ``(CODE, days or None)``."""
    code, _, when = text.rpartition("@") if "@" in text else (text, "", "now")
    if not code.strip():
        p.error(f"--what-if {text!r}: give CODE@DAYS (e.g. RX:C08CA01@1200) or CODE@now")
    if when.strip().lower() == "now":
        return code.strip(), None
    try:
        return code.strip(), float(when)
    except ValueError:
        p.error(f"--what-if {text!r}: {when!r} is not a number of days since the first event (or 'now')")


if __name__ == "__main__":
    main()
