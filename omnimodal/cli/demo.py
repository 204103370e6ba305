"""``omnimodal-demo``: the main job until training lands: synthesize the built-in cohort, build its
shards (cached), load batches through the DataModule and print what they hold."""

from __future__ import annotations

import argparse
import time
from collections import Counter

from datamodules.builtin_cohort import demo_shards
from datamodules.datamodule import OmniDataModule

from ..infra.console import quiet_third_party


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="omnimodal-demo", description=__doc__)
    p.add_argument("--subjects", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args(argv)
    quiet_third_party()
    t0 = time.perf_counter()
    root = demo_shards(a.subjects, a.seed, a.workers)
    print(f"shards: {root} (ready in {time.perf_counter() - t0:.1f}s)")
    print((root / "report.md").read_text().split("```")[1].strip())
    dm = OmniDataModule(root, batch_size=a.batch_size, num_workers=a.workers, max_events=32)
    for split in ("train", "val", "test"):
        t1, counts, n, batches = time.perf_counter(), Counter(), 0, 0
        for batch in dm.loader(split):
            batches += 1
            n += len(batch)
            counts.update({m: len(b) for m, b in batch.modalities.items()})
            if batches == 1:
                print(f"[{split}] first batch: {batch.summary()}")
        dt = time.perf_counter() - t1
        print(
            f"[{split}] {n} timelines in {batches} batches, {dt:.1f}s ({batches / max(dt, 1e-9):.1f} batches/s); "
            + ", ".join(f"{m}={c}" for m, c in sorted(counts.items()))
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
