"""scripts/gpu_check.py: the model-FLOPs formula behind its MFU figure, and a CPU dry run of the check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import gpu_check  # noqa: E402


def test_attention_pairs_follow_the_block_causal_mask() -> None:
    # one row: subject 0 with events 0,0,1,1,2 then subject 1 with one event of 2 tokens, then 2 padding
    doc = torch.tensor([[0, 0, 0, 0, 0, 1, 1, -1, -1]])
    ev = torch.tensor([[0, 0, 1, 1, 2, 0, 0, -1, -1]])
    # subject 0: event 0 tokens see 2 each, event 1 see 4, event 2 sees 5; subject 1: 2 each; padding: none
    assert gpu_check.attention_pairs(doc, ev) == 2 * 2 + 2 * 4 + 5 + 2 * 2


def test_attention_flops_equal_dense_sdpa_when_the_mask_is_full() -> None:
    """On a full mask (one subject, one event) the pair count gives what torch counts for dense SDPA."""
    R, H, L, Dh = 2, 4, 16, 8
    shape = (R, H, L, Dh)
    pairs = gpu_check.attention_pairs(torch.zeros(R, L, dtype=torch.long), torch.zeros(R, L, dtype=torch.long))
    assert pairs == R * L * L
    assert gpu_check.train_step_flops(0.0, n_layers=1, d_model=H * Dh, pairs=pairs) == 3 * sdpa_flop_count(
        shape, shape, shape
    )


def test_train_step_flops_and_mfu() -> None:
    # 3 x (forward matmuls + 4 d per pair and layer)
    assert gpu_check.train_step_flops(1e9, n_layers=12, d_model=768, pairs=10_000) == 3 * (1e9 + 4 * 12 * 768 * 10_000)
    assert gpu_check.mfu(495e12, 1.0, 990.0) == pytest.approx(0.5)
    assert gpu_check.mfu(990e12, 2.0, 990.0) == pytest.approx(0.5)


@pytest.mark.slow
def test_cpu_dry_run_trains_and_reports(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    results = gpu_check.main(
        [
            "--shards",
            str(shards),
            "--cpu",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batch-size",
            "4",
            "--batches",
            "2",
            "--run-dir",
            str(tmp_path / "run"),
            "--out",
            str(out),
        ]
    )
    (r,) = results
    assert r["timed_steps"] == 2 and r["tokens_per_step"] > 0 and r["tokens_per_s"] > 0
    assert r["model_tflops_per_step"] > 0 and 0 < r["mfu"] < 0.01  # a CPU is far from 990 TFLOP/s
    assert 0 < r["attention_density"] <= 1
    assert json.loads(out.read_text())["results"][0]["name"] == "flex"
