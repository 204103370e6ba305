"""Distributed strategies for real, on CPU: two processes (torchrun, gloo) train the same small run under
DDP, FSDP2, DeepSpeed ZeRO-2 and ZeRO-3 with CPU offload (configs/strategy/), and each process's losses
must equal a 1-process run fed the same global batch (rank 0's batch then rank 1's, gradient accumulation
2). Rank 1 reads only 3 of the 9 modalities, so most encoders are unused in its batches: no strategy may
hang or crash on that (DDP runs with find_unused_parameters=False). Then: checkpoints of every strategy
consolidate into one file the release export reads; a resume with a different number of processes is
refused with what to do; every sample is seen once per epoch across ranks x workers.

All 2-process work happens in ONE torchrun (tests/dist_worker.py), shared by the tests through a module
fixture: one start-up and one DeepSpeed op build (cached under ~/.cache/torch_extensions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_strategies import RANK1_MODALITIES, STRATEGIES, LossRecorder, RankInterleaved, compose_config

from omnimodal.cli.consolidate import main as consolidate_main
from omnimodal.infra.checkpoints import WORLD_SIZE_KEY, check_resume, written_by
from omnimodal.pretraining.consolidate import consolidate, load_weights
from omnimodal.pretraining.run import build, run
from omnimodal.pretraining.task import PretrainTask

pytestmark = pytest.mark.distributed
HERE = Path(__file__).resolve().parent
#: run together in one torchrun
CASES = ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3_offload"]
#: ZeRO with gradient accumulation 2 (2 steps of 2 micro-batches per process)
ACCUMULATING = ["deepspeed_zero2_accumulate", "deepspeed_zero3_offload_accumulate"]
#: fp32 on CPU; a 2-process step averages gradients by all-reduce where the reference sums two halves, and
#: ZeRO/FSDP reduce in other bucket orders: float rounding only, measured <= 2e-6 relative over 4 Adam
#: steps. A wrong global batch (no averaging, one rank's gradient, a stale shard) moves step 1's loss by
#: >= 1e-3 relative, 100x over this.
RTOL = 1e-5


@pytest.fixture(scope="module")
def dist_runs(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _torchrun(shards, tmp_path_factory.mktemp("dist"), *CASES, *ACCUMULATING, "data")


def _torchrun(shards: Path, out: Path, *cases: str) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(HERE / "dist_worker.py"),
        str(shards),
        str(out),
        *cases,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=1500)
    errors = "\n".join(p.read_text()[-3000:] for p in out.glob("*/rank*.error"))
    assert res.returncode == 0, errors or res.stderr[-5000:]
    return out


def _reference(shards: Path, run_dir: Path, accumulate: int, steps: int) -> dict:
    """1 process fed, for each step, every rank's micro-batches back to back (rank 0's, rank 1's, rank 0's
    next, ...) with ``accumulate_grad_batches=accumulate`` -> {"losses": {(rank batch index, rank): loss}, ...}."""
    task, dm, trainer = build(
        compose_config(shards, run_dir, f"trainer.accumulate_grad_batches={accumulate}", f"trainer.max_steps={steps}")
    )
    rec = LossRecorder()
    trainer.callbacks.append(rec)
    trainer.fit(task, datamodule=RankInterleaved(dm, world=2, modalities={1: RANK1_MODALITIES}))
    assert trainer.global_step == steps
    return {
        "losses": {(b // 2, b % 2): loss for b, loss, _ in rec.records},
        "state_dict": {k: v.detach().clone() for k, v in task.state_dict().items()},
    }


@pytest.fixture(scope="module")
def reference(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The reference of the 2-process runs without accumulation: 4 steps, each rank 0's batch then rank 1's."""
    return _reference(shards, tmp_path_factory.mktemp("ref"), accumulate=2, steps=4)


@pytest.fixture(scope="module")
def reference_accumulating(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The reference of the 2-process runs with 2 micro-batches per process and step: 2 steps of 4 batches."""
    return _reference(shards, tmp_path_factory.mktemp("ref_acc"), accumulate=4, steps=2)


def _rank(dist_runs: Path, case: str, rank: int) -> dict:
    return json.loads((dist_runs / case / f"rank{rank}.json").read_text())


@pytest.mark.parametrize("case", CASES)
def test_two_processes_match_one_with_the_same_global_batch(dist_runs: Path, reference: dict, case: str) -> None:
    for rank in (0, 1):
        got = _rank(dist_runs, case, rank)
        assert got["world_size"] == 2 and got["global_step"] == 4
        losses = {b: loss for b, loss, _ in got["records"]}
        assert sorted(losses) == [0, 1, 2, 3]
        for step, loss in losses.items():
            want = reference["losses"][(step, rank)]
            assert loss == pytest.approx(want, rel=RTOL), f"{case} rank {rank} step {step}: {loss} vs {want}"
    # the reference is sharp: its step-1 loss moves well beyond RTOL when an update changes
    assert abs(reference["losses"][(1, 0)] - reference["losses"][(0, 0)]) > 100 * RTOL * reference["losses"][(0, 0)]


@pytest.mark.parametrize("case", ACCUMULATING)
def test_zero_with_gradient_accumulation_matches_one_process(
    dist_runs: Path, reference_accumulating: dict, case: str
) -> None:
    """DeepSpeed reduces ZeRO gradients once per accumulation window (a flush per micro-batch overwrote the
    earlier micro-batches' gradients: the update then saw only the last one)."""
    for rank in (0, 1):
        got = _rank(dist_runs, case, rank)
        assert got["global_step"] == 2
        losses = {b: loss for b, loss, _ in got["records"]}
        assert sorted(losses) == [0, 1, 2, 3]
        for b, loss in losses.items():
            want = reference_accumulating["losses"][(b, rank)]
            assert loss == pytest.approx(want, rel=RTOL), f"{case} rank {rank} micro-batch {b}: {loss} vs {want}"


@pytest.mark.parametrize("case", CASES)
def test_checkpoints_consolidate_into_one_file_the_export_reads(
    dist_runs: Path, reference: dict, case: str, tmp_path: Path
) -> None:
    ckpt = dist_runs / case / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir() == (case != "ddp")  # DeepSpeed and FSDP write folders
    assert written_by(ckpt) == 2
    out = tmp_path / "weights.ckpt"
    consolidate(ckpt, out)
    loaded = torch.load(out, map_location="cpu", weights_only=True)
    task = PretrainTask(**loaded["hyper_parameters"])
    task.load_state_dict(loaded["state_dict"], strict=True)
    assert loaded["global_step"] == 4 and loaded[WORLD_SIZE_KEY] == 2
    # the consolidated weights are the trained ones: those of the 1-process reference after 4 steps
    for k, want in reference["state_dict"].items():
        # Adam moves an element whose gradient is rounding noise by up to lr (1e-3) a step: atol 2e-4 allows
        # that (observed <= 4e-5) and still tells step 4 from step 2 (elements differ by ~lr x 2)
        torch.testing.assert_close(loaded["state_dict"][k], want, rtol=1e-3, atol=2e-4, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("case", ["fsdp", "deepspeed_zero2"])
def test_resume_with_another_number_of_processes_says_how(
    dist_runs: Path, shards: Path, tmp_path: Path, case: str
) -> None:
    ckpt = dist_runs / case / "checkpoints" / "epoch=0-step=2.ckpt"
    check_resume(ckpt, 2)  # the same number: fine
    cfg = compose_config(shards, tmp_path, *STRATEGIES[case], "trainer.devices=1", f"resume='{ckpt}'")
    with pytest.raises(
        RuntimeError, match=r"written by a run with 2 processes and this run has 1.*omnimodal-consolidate"
    ):
        run(cfg)  # refused before any process group or training starts


def test_a_new_run_starts_from_consolidated_weights(dist_runs: Path, shards: Path, tmp_path: Path) -> None:
    """What the refusal above proposes: consolidate, then init_from= on 1 process (fresh optimizer)."""
    weights = tmp_path / "weights.ckpt"
    assert consolidate_main([str(dist_runs / "deepspeed_zero2" / "checkpoints" / "last.ckpt"), str(weights)]) == 0
    cfg = compose_config(shards, tmp_path / "run", "resume=null", f"init_from={weights}", "trainer.max_steps=1")
    task, _, _ = build(cfg)
    load_weights(task, weights)
    want = torch.load(weights, weights_only=True)["state_dict"]
    assert all(torch.equal(v, want[k]) for k, v in task.state_dict().items())
    assert run(cfg)["train/loss"] > 0


def test_every_sample_once_per_epoch_across_ranks_and_workers(dist_runs: Path, shards: Path) -> None:
    ranks = [_rank(dist_runs, "data", r) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    keys = [k for r in ranks for b in r["batches"] for k in b]
    n = json.loads((shards / "index.json").read_text())["splits"]["train"]["samples"]
    assert len(keys) == n and len(set(keys)) == n
    for r in ranks:  # each rank's loader knows its length (the progress bar's, Lightning's epoch end)
        assert r["len"] == len(r["batches"]) > 0


def test_every_rank_gets_the_same_number_of_batches(dist_runs: Path) -> None:
    assert _rank(dist_runs, "data", 0)["len"] == _rank(dist_runs, "data", 1)["len"]
