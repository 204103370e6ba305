"""``omnimodal-forecast``: one person's forecast after each of their events, and their timeline drawn with
the forecast beneath (:class:`omnimodal.downstream.forecaster.Forecaster`).

    omnimodal-forecast finetuned.ckpt --data /data/shards --split test --person 3 --out person.png
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
    a = p.parse_args(argv)
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
    print(f"plot: {f.plot(tl, a.out, onset_days=onset)}")


if __name__ == "__main__":
    main()
