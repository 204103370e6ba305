"""A first run as a new user sees it: ``omnimodal-train`` through its console script prints no third-party noise
(MONAI's GPU DICOM decoder, Lightning's adverts and its own deprecations) and each of its lines once, and ends
with what it made and the next commands with this run's paths filled in, which the commands accept: the export
runs, the fine-tune line composes, the eval line parses."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from omnimodal.cli import eval as eval_cli
from omnimodal.cli import export as export_cli

BIN = Path(sys.executable).parent
#: what the libraries print that tells an omnimodal user nothing (omnimodal/infra/console.py)
NOISE = (
    "nvImageCodec",
    "💡 Tip",
    "litlogger",
    "litmodels",
    "LeafSpec",
    "Writing model shards",
    "Loading weights",
    "Setting accelerator to CPU",
)


def console(command: str, *args: str, cwd: Path) -> str:
    """A console script's stdout and stderr, interleaved, as a terminal shows them; it must succeed."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONWARNINGS": ""}
    p = subprocess.run(
        [str(BIN / command), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert p.returncode == 0, p.stdout[-3000:]
    return p.stdout


def assert_quiet_and_said_once(out: str) -> None:
    assert not [n for n in NOISE if n in out], out
    repeated = [line for line, n in Counter(out.splitlines()).items() if n > 1 and line.strip()]
    assert not repeated, f"printed more than once: {repeated}"


def next_commands(out: str) -> dict[str, list[str]]:
    """The commands under the closing ``next:``, by program, as the shell splits them."""
    block = out.split("\nnext:\n", 1)[1].splitlines()
    lines = [shlex.split(line) for line in block if line.startswith("  ") and not line.strip().startswith("#")]
    return {argv[0]: argv[1:] for argv in lines}


@pytest.mark.slow
def test_first_run_is_quiet_says_each_line_once_and_what_to_do_next(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    args = [
        "experiment=quick",
        "data=shards",
        f"data.root={shards}",
        "data.synthetic=null",
        "data.num_workers=0",  # the MRI reader is built in this process, where its warning would show
        "data.batch_size=2",
        "data.max_events=4",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "callbacks.checkpoint.every_n_train_steps=2",
        "hydra.run.dir=run",
    ]
    out = console("omnimodal-train", *args, cwd=tmp_path)
    assert_quiet_and_said_once(out)
    assert "run folder: run\n" in out and "checkpoints/: last.ckpt, epoch=0-step=2.ckpt" in out
    assert "logs/version_0/metrics.csv: metrics (CSV)" in out
    steps = next_commands(out)
    assert list(steps) == ["omnimodal-export", "omnimodal-finetune", "omnimodal-eval", "tensorboard"]

    # the export line runs as it is, from the folder the run was started in
    monkeypatch.chdir(tmp_path)
    ckpt, release = steps["omnimodal-export"]
    assert (tmp_path / ckpt).is_file()
    export_cli.main(steps["omnimodal-export"])
    exported = "".join(capfd.readouterr())
    assert_quiet_and_said_once(exported)
    assert (tmp_path / release / "config.json").is_file() and (tmp_path / release / "model.safetensors").is_file()
    assert f"omnimodal-finetune release={release} data.root=/path/to/shards" in exported

    # the fine-tune line is valid Hydra and composes omnimodal-finetune's config, on this release and cohort
    tune = steps["omnimodal-finetune"]
    OverridesParser.create().parse_overrides(tune)
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="omnimodal.configs", version_base="1.3"):
        cfg = compose("finetune", overrides=[o for o in tune if not o.startswith("hydra.")])
    assert Path(cfg.release).resolve() == (tmp_path / release).resolve()
    assert Path(cfg.data.root).resolve() == shards.resolve()
    assert "hydra.run.dir=run/finetune" in tune

    # the eval line parses, on the best checkpoint that fine-tune run will write and the same cohort
    a = eval_cli.parser().parse_args(steps["omnimodal-eval"])
    assert a.checkpoints == ["run/finetune/checkpoints/best.ckpt"] and Path(a.data).resolve() == shards.resolve()
    assert steps["tensorboard"] == ["--logdir", "run/tb"] and (tmp_path / "run" / "tb").is_dir()


#: builds what emits each filtered message, before and after omnimodal's filters, and a neighbour of each (another
#: record of the same logger, another warning of the same module) that must still show
SOURCES = textwrap.dedent(
    """
    import logging, sys, warnings
    warnings.simplefilter("always")
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s: %(message)s")
    import lightning as L
    from lightning.pytorch.utilities._pytree import _tree_flatten
    from monai.transforms import LoadImage
    from omnimodal.infra.console import quiet_third_party

    def emit(phase):
        print("---", phase, flush=True)
        LoadImage(reader="NibabelReader", image_only=True)  # builds every MONAI reader
        L.Trainer(logger=False, accelerator="cpu", enable_checkpointing=False, enable_model_summary=False)
        _tree_flatten([1, (2, 3)])  # Lightning's pytree helper builds a LeafSpec
        logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").warning("neighbour: another MONAI record")
        warnings.warn_explicit("neighbour: another FutureWarning", FutureWarning, "f.py", 1,
                               module="lightning.pytorch.utilities._pytree")
        sys.stdout.flush(); sys.stderr.flush()

    emit("loud")
    quiet_third_party()
    emit("quiet")
    """
)


@pytest.mark.slow  # a few seconds, most of them importing Lightning and MONAI
def test_each_filter_drops_what_its_library_emits_and_nothing_beside_it(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-c", SOURCES], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert p.returncode == 0, p.stdout[-3000:]
    loud, quiet = p.stdout.split("--- quiet\n")
    # the libraries do emit these (if an upgrade stops, this says the filter can go)
    for text in ("nvImageCodec is not available", "NvImgCodecPydicomReader: nvImageCodec", "💡 Tip:", "LeafSpec"):
        assert text in loud, text
    assert not [n for n in NOISE if n in quiet], quiet
    assert quiet.count("neighbour: ") == 2 and "GPU available" in quiet  # the rest still shows
