"""One process of a 2-process run (started by tests/test_distributed.py through torchrun): trains the same
small run under each strategy asked for, one after the other in these same processes (one start-up, one
DeepSpeed op build), and writes what each process saw to OUT/<case>/rank<r>.json.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_worker.py SHARDS OUT ddp fsdp ...

Case ``data``: every rank iterates one epoch of its train loader with 2 workers (keys only).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch
from dist_strategies import RANK1_MODALITIES, STRATEGIES, LossRecorder, compose_config

from omnimodal.pretraining.run import build

#: extra config overrides for every case (debugging): OMNIMODAL_DIST_OVERRIDES="a=1 b=2"
EXTRA = os.environ.get("OMNIMODAL_DIST_OVERRIDES", "").split()


def train_case(shards: str, out: Path, case: str, rank: int) -> dict:
    cfg = compose_config(shards, out / case, *STRATEGIES[case], "trainer.devices=2", *EXTRA)
    task, dm, trainer = build(cfg)
    if rank == 1:
        dm.modalities = RANK1_MODALITIES
    rec = LossRecorder()
    trainer.callbacks.append(rec)
    trainer.fit(task, datamodule=dm)
    return {"records": rec.records, "global_step": trainer.global_step, "world_size": trainer.world_size}


def data_case(shards: str, out: Path, rank: int) -> dict:
    from datamodules.datamodule import OmniDataModule

    dm = OmniDataModule(shards, batch_size=2, num_workers=2, seed=5, max_events=2)
    loader = dm.train_dataloader()
    rows = [list(zip(batch.keys, batch.padding.tolist())) for batch in loader]
    # keys of the epoch's samples; repeats that even out the ranks (OmniBatch.padding) are only counted
    batches = [[k for k, pad in row if not pad] for row in rows]
    padded = sum(pad for row in rows for _, pad in row)
    return {"batches": batches, "len": len(loader), "padded": padded, "rank": torch.distributed.get_rank()}


def main() -> int:
    shards, out, cases = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    rank = int(os.environ["RANK"])
    for case in cases:
        try:
            if case == "data":
                if not torch.distributed.is_initialized():
                    torch.distributed.init_process_group("gloo")
                res = data_case(shards, out, rank)
            else:
                res = train_case(shards, out, case, rank)
        except Exception:  # noqa: BLE001 - report, and let the other rank's collective time out / torchrun stop
            (out / case).mkdir(parents=True, exist_ok=True)
            (out / case / f"rank{rank}.error").write_text(traceback.format_exc())
            raise
        (out / case).mkdir(parents=True, exist_ok=True)
        (out / case / f"rank{rank}.json").write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
