"""The README's two commands are the ones users and CI run: keep .ci/run in step with them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent


def _commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [next(ln for ln in b.splitlines() if ln and not ln.startswith("#")) for b in blocks[:2]]


def test_ci_runs_the_readme_test_command_exactly() -> None:
    main_cmd, test_cmd = _commands()
    assert "omnimodal-train" in main_cmd and "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci/run").read_text().splitlines()


def test_pins_match_the_project() -> None:
    pins = dict(
        ln.split("==") for ln in (ROOT / "constraints.txt").read_text().splitlines() if ln and not ln.startswith("#")
    )
    assert (pins["torch"], pins["torchvision"], pins["torchaudio"], pins["hydra-core"]) == (
        "2.14.1",
        "0.29.1",
        "2.11.0",
        "1.3.8",
    )
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "hydra-core==1.3.8" in deps
    for name in (
        "torch",
        "torchvision",
        "torchaudio",
        "lightning",
        "transformers",
        "monai",
        "webdataset",
        "deepspeed",
        "torchdata",
    ):
        assert any(d.startswith(name) for d in deps), name
        assert name in pins, name
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"omnimodal-synth", "omnimodal-shard"} <= set(scripts)
