"""Golden losses: ten CPU steps of the tiny model against the checked-in losses (tests/golden_run.py says how
to regenerate them on purpose). Unlike the tests that compare one run with another (resume vs. uninterrupted,
2 processes vs. 1), this catches a change that moves both sides alike: an initialisation, an objective, the
collation or the synthetic cohort."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from golden_run import COMPONENTS, FILE, losses

#: fp32, 2 threads, on the CPU kind CI runs on: two runs gave identical losses (difference 0.0). A small real
#: change moves them by more: the modality/slot/mask embedding init at std 0.021 instead of 0.02 moved every
#: step by 1.1e-4 to 2.5e-4 relative (measured), 5x this tolerance.
RTOL = 2e-5


@pytest.mark.slow  # ~40 s: a cohort of every modality, its shards, ten steps
def test_ten_steps_reproduce_the_golden_losses(tmp_path: Path) -> None:
    want = json.loads(FILE.read_text())
    got = losses(tmp_path)
    assert got["cohort"] == want["cohort"] and got["overrides"] == want["overrides"], (
        "the golden run's setup changed: regenerate tests/assets/losses/tiny_cpu.json on purpose"
    )
    assert len(got["steps"]) == len(want["steps"]) == 10
    for i, (g, w) in enumerate(zip(got["steps"], want["steps"])):
        assert set(g) == set(w) and "loss" in g
        for k in COMPONENTS:
            if k in w:
                assert g[k] == pytest.approx(w[k], rel=RTOL), f"step {i} {k}: {g[k]} vs golden {w[k]}"
    assert want["steps"][-1]["loss"] < want["steps"][0]["loss"]  # the golden run itself learns
