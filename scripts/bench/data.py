"""Benchmark: shard loader vs. reading the same samples from the raw files through the readers.

Both run in this process, single-threaded loading (num_workers=0), on the train split of the built-in
synthetic cohort, with the same collation. Prints batches/s of each, their ratio (target >= 10x: shards
hold decoded canonical arrays), and the loader's resident memory over several epochs (should stay flat
after warm-up). Writes the figures to ``--out`` (JSON).

    python scripts/bench/data.py [--subjects 128] [--batch-size 8] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import psutil
import torch

from datamodules.builtin_cohort import DEMO_SECRET, demo_shards
from datamodules.collate import Collator
from datamodules.datamodule import ShardLoader
from datamodules.loader import ShardDataset
from datamodules.readers import read_measurement
from datamodules.schema import DataWarning, Event, Measurement, Timeline
from datamodules.shards.format import subject_key
from datamodules.tables import load_events


def raw_timelines(cohort: Path, keys: list[str], specs) -> list[Timeline]:
    """Baseline: decode every measurement of these subjects from the native files, as training without
    shards would have to do each epoch."""
    events = load_events(cohort / "events.csv")
    events["key"] = [subject_key(s, DEMO_SECRET.encode()) for s in events["subject_id"]]
    out = []
    for key in keys:
        rows = events[events["key"] == key].sort_values("time")
        first = rows["time"].iloc[0]
        evs: dict = {}
        for r in rows.itertuples():
            if r.modality == "clinical":
                m = Measurement("clinical", code=r.code, value=r.numeric_value)
            else:
                m = Measurement(r.modality, read_measurement(r.modality, r.path, specs[r.modality]))
            t = (r.time - first).total_seconds() / 86400
            evs.setdefault(t, Event(t, t, [])).measurements.append(m)
        out.append(Timeline(key, events=list(evs.values())))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--baseline-batches", type=int, default=6)
    p.add_argument("--out", default="scripts/bench/results/data.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", DataWarning)  # off-panel omics features: reported by the builder already
    shards = demo_shards(a.subjects)
    cohort = shards.parent / "cohort"

    ds = ShardDataset(shards, "train", shuffle=False)
    collate = Collator(ds.specs, ds.index["clinical_codes"])
    keys = [tl.key for tl in ds]
    n_base = min(len(keys), a.baseline_batches * a.batch_size)

    t0 = time.perf_counter()
    nb = 0
    for i in range(0, n_base, a.batch_size):
        collate(raw_timelines(cohort, keys[i : i + a.batch_size], ds.specs))
        nb += 1
    base_bps = nb / (time.perf_counter() - t0)

    proc = psutil.Process()
    loader = ShardLoader(ShardDataset(shards, "train", shuffle_buffer=32), batch_size=a.batch_size)
    rss, rates = [], []
    for _ in range(a.epochs):
        t0, nb, peak = time.perf_counter(), 0, 0
        for _batch in loader:
            nb += 1
            peak = max(peak, proc.memory_info().rss)
        rates.append(nb / (time.perf_counter() - t0))
        rss.append(peak / 2**20)
    ours = max(rates[1:]) if len(rates) > 1 else rates[0]
    res = {
        "subjects_train": len(keys),
        "batch_size": a.batch_size,
        "raw_readers_batches_per_s": round(base_bps, 2),
        "shards_batches_per_s": round(ours, 2),
        "speedup": round(ours / base_bps, 1),
        "peak_rss_mib_per_epoch": [round(r, 1) for r in rss],
        "rss_growth_after_warmup_mib": round(max(rss[1:]) - rss[0], 1) if len(rss) > 1 else 0.0,
    }
    print(f"raw files through readers: {base_bps:8.2f} batches/s ({n_base} timelines)")
    print(f"shard loader:              {ours:8.2f} batches/s ({len(keys)} timelines/epoch)")
    print(f"ratio (shards / raw):      {ours / base_bps:8.1f}x  (target >= 10x)")
    print(
        f"peak RSS per epoch (MiB):  {res['peak_rss_mib_per_epoch']}  growth after epoch 1: "
        f"{res['rss_growth_after_warmup_mib']} MiB"
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
