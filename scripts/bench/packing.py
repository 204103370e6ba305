"""Benchmark: share of computed token positions that hold a real token, packed vs padded.

Over every training timeline of the built-in synthetic cohort, batched and cropped as the training
loader does, with the default encoders' tokens per instance (each instance gives its encoder's
``num_tokens`` tokens; no encoder runs: the per-token metadata is laid out as ``OmniModel.forward`` does).

- padded: ``pack(..., packed=False)``, one subject per row, padded to the batch's longest subject;
- packed: ``pack(..., row_len=R)``, whole subjects packed into rows of ``R`` tokens (R = "longest":
  the longest subject of each batch, ``model.row_len: null``);
- bound: the fewest rows of that length that can hold the batch's tokens, i.e. what any assignment of
  subjects to rows can reach at best: the last row of a batch is part-empty whatever the assignment;
- fitted: what-if, not the model's behaviour: ``R`` taken as a cap and each batch's rows shortened
  to ``ceil(tokens / rows)`` (rounded to 8; rows = the fewest that hold the batch, or up to 2 more)
  so they are just full enough: variable row shapes, which a fixed ``row_len`` avoids.

Shares are summed over batches (real tokens / computed positions). Target: packed >= 0.97.

Long timelines (``--days N``): each timeline is first made as a long wearable recording cut into day windows
would make it (``memory.daily``: ``N`` daily wearable windows, for the subjects with a wearable, with its
visits spread over them), then cropped as the loader does with each ``--select`` (``window``, ``recent``,
``even``; ``--max-instances wearable=60``, ``--max-tokens`` with the encoders' tokens per instance), each
timeline with the loader's seed for epoch 0 (:mod:`datamodules.crop`).

    python scripts/bench/packing.py [--batch-sizes 8 32] [--max-events 4 16] [--row-lens 512 2048 0]
        [--days 365 --select window recent even --max-instances wearable=60 --max-tokens 512 1024]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    RESULTS,
    build_task,
    cohort,
    model_config,
    token_metadata,
    tokens_per_instance,
    write_results,
)
from memory import daily
from torch import Tensor

from datamodules.collate import Collator
from datamodules.crop import SELECTS, CropConfig, crop_timeline
from datamodules.loader import ShardDataset, _seed
from datamodules.schema import OmniBatch, Timeline
from omnimodal.model.packing import pack

TARGET = 0.97
PAD_TO = 8


def round_up(n: int, to: int = PAD_TO) -> int:
    return -(-n // to) * to


def shares(metas: list[tuple[Tensor, Tensor, Tensor, int]], row_len: int | None) -> dict[str, Any]:
    """Real tokens / computed positions of each layout, summed over the batches."""
    real = padded = packed = bound = fitted = rows = 0
    for subject, event, time, n in metas:
        T = subject.numel()
        longest = int(subject.bincount().max())
        real += T
        padded += pack(subject, event, time, n, packed=False).doc.numel()
        p = pack(subject, event, time, n, row_len)
        packed += p.doc.numel()
        rows += p.shape[0]
        L = p.shape[1]
        bound += math.ceil(T / L) * L
        n0 = math.ceil(T / L)  # fewest rows; a few more if the subjects do not fit rows that short
        fitted += min(
            pack(subject, event, time, n, max(round_up(math.ceil(T / r)), round_up(longest))).doc.numel()
            for r in range(n0, n0 + 3)
        )
    return {
        "tokens": real,
        "padded": real / padded,
        "packed": real / packed,
        "bound": real / bound,
        "fitted": real / fitted,
        "rows_per_batch": rows / len(metas),
    }


def batches_of(
    ds: ShardDataset, timelines: list[Timeline], crop: CropConfig, batch_size: int, seed: int
) -> list[OmniBatch]:
    """``timelines`` (uncropped, in the loader's order) cropped as the training loader crops them in epoch 0,
    and collated in batches of ``batch_size``: what ``ShardLoader`` yields for one epoch."""
    collate = Collator(ds.specs, ds.index["clinical_codes"])
    cropped = [crop_timeline(tl, crop, np.random.default_rng(_seed(seed, 0, tl.key))) for tl in timelines]
    return [collate(cropped[i : i + batch_size]) for i in range(0, len(cropped), batch_size)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=128)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument(
        "--max-events",
        type=int,
        nargs="+",
        default=[4, 16],
        help="crop window; the cohort's timelines have at most 15 events, so >= 15 = no crop",
    )
    p.add_argument("--row-lens", type=int, nargs="+", default=[512, 2048, 0], help="0: longest subject")
    p.add_argument("--days", type=int, default=0, help="daily wearable windows added to each timeline")
    p.add_argument("--select", nargs="+", default=["window"], choices=SELECTS)
    p.add_argument(
        "--max-tokens", type=int, nargs="+", default=[0], help="token budgets (encoders' tokens per instance); 0: none"
    )
    p.add_argument("--max-instances", nargs="*", default=[], metavar="MODALITY=N")
    p.add_argument("--shards", help="a shard folder (default: the built-in cohort)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "packing.json"))
    a = p.parse_args()
    root = Path(a.shards) if a.shards else cohort(a.subjects)
    k = tokens_per_instance(build_task(model_config(root)))
    caps = {m: int(n) for m, n in (c.split("=") for c in a.max_instances)}
    ds = ShardDataset(root, "train", shuffle=True, seed=a.seed, crop=CropConfig())
    timelines = [daily(tl, a.days) if a.days else tl for tl in ds]
    print("tokens per instance:", ", ".join(f"{m}={n}" for m, n in k.items()))
    print(
        f"{'select':>6} {'batch':>5} {'max_ev':>6} {'max_tok':>7} {'row_len':>7} {'batches':>7} {'tokens':>7} "
        f"{'rows/b':>6} {'padded':>6} {'packed':>6} {'bound':>6} {'fitted':>6}"
    )
    table = []
    settings = [(s, b, e, t) for s in a.select for b in a.batch_sizes for e in a.max_events for t in a.max_tokens]
    for sel, bs, me, mt in settings:
        crop = CropConfig(max_events=me, max_tokens=mt or None, tokens_per_instance=k, select=sel, max_instances=caps)
        batches = batches_of(ds, timelines, crop, bs, a.seed)
        metas = [(*token_metadata(b, k), len(b)) for b in batches]
        for rl in a.row_lens:
            s = shares(metas, rl or None)
            table.append(
                {
                    "select": sel,
                    "batch_size": bs,
                    "max_events": me,
                    "max_tokens": mt or None,
                    "row_len": rl or "longest",
                    "batches": len(batches),
                    **{n: round(v, 4) for n, v in s.items()},
                }
            )
            print(
                f"{sel:>6} {bs:>5} {me:>6} {mt or '-':>7} {rl or 'longest':>7} {len(batches):>7} {s['tokens']:>7} "
                f"{s['rows_per_batch']:>6.2f} {s['padded']:>6.3f} {s['packed']:>6.3f} "
                f"{s['bound']:>6.3f} {s['fitted']:>6.3f}"
            )
    best = max(r["packed"] for r in table)
    worst = min(r["packed"] for r in table)
    print(
        f"packed share: {worst:.3f} .. {best:.3f} (target >= {TARGET}: "
        f"met in {sum(r['packed'] >= TARGET for r in table)}/{len(table)} settings)"
    )
    print(
        f"the assignment reaches the bound in {sum(r['packed'] >= r['bound'] - 1e-9 for r in table)}/{len(table)} "
        f"settings; the rest of the gap is each batch's part-filled last row"
    )
    write_results(
        a.out,
        {
            "target_packed": TARGET,
            "tokens_per_instance": k,
            "days": a.days,
            "max_instances": caps,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
