"""Loading a checkpoint never runs code stored in it, at every entry point that reads one.

Each payload is an object that pickles to a call of a code-running function (``_exec_with_source``,
``os.system``, ``builtins.eval``/``exec``, ``subprocess.Popen``) which writes a marker file. A control shows
each payload is live (an unrestricted ``torch.load`` writes the marker); then every entry point must refuse
the file, name it and the global, and leave no marker: consolidate, resume (a path and ``resume=auto``),
``init_from``, export, fine-tune (a release whose ``model.safetensors`` is a pickle), eval and forecast; and
the libraries that read checkpoints themselves (DeepSpeed's ``zero_to_fp32``, torch distributed checkpoint's
``.metadata``) inside :func:`no_code_from_checkpoints`.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.fx.graph_module
from conftest import train_config

from omnimodal.cli.consolidate import main as consolidate_main
from omnimodal.infra.checkpoints import CheckpointError, load, no_code_from_checkpoints, verify
from omnimodal.pretraining.consolidate import consolidate, load_weights
from omnimodal.release import ReleaseError, export, load_release

BIN = Path(sys.executable).parent
PAYLOADS = ["exec_with_source", "os.system", "builtins.eval", "builtins.exec", "subprocess.Popen"]
#: the global each payload's pickle names (what the refusal must say)
GLOBALS = {
    "exec_with_source": "torch.fx.graph_module._exec_with_source",
    "os.system": "system",
    "builtins.eval": "builtins.eval",
    "builtins.exec": "builtins.exec",
    "subprocess.Popen": "Popen",
}  # protocol 2 names it commands.Popen


class Payload:
    """Unpickles to a call that creates ``marker``."""

    def __init__(self, kind: str, marker: Path) -> None:
        self.kind, self.marker = kind, str(marker)

    def __reduce__(self):  # noqa: ANN204
        write = f"open({self.marker!r}, 'w').write('ran')"
        if self.kind == "exec_with_source":
            return torch.fx.graph_module._exec_with_source, (write, {})
        if self.kind == "os.system":
            return os.system, (f"touch {self.marker}",)
        if self.kind == "builtins.eval":
            return builtins.eval, (write,)
        if self.kind == "builtins.exec":
            return builtins.exec, (write,)
        return subprocess.Popen, (["touch", self.marker],)


def _poison(src: Path | None, dst: Path, kind: str, marker: Path, key: str = "hyper_parameters") -> Path:
    """``src`` (a real checkpoint, read safely) with a payload in ``key``; or a small dict when ``src`` is None."""
    ckpt = load(src, mmap=False) if src else {"state_dict": {}, "hyper_parameters": {}}
    ckpt[key] = {**(ckpt.get(key) or {}), "note": Payload(kind, marker)}
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dst)
    return dst


def _refused(exc: BaseException, path: Path, kind: str) -> None:
    text = str(exc)
    assert str(path) in text and "refused" in text and GLOBALS[kind] in text, text


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


@pytest.mark.parametrize("kind", PAYLOADS)
def test_each_payload_is_live_without_the_allow_list(tmp_path: Path, marker: Path, kind: str) -> None:
    """The control: a plain unpickle runs it (so the refusals below are not vacuous)."""
    bad = _poison(None, tmp_path / "bad.ckpt", kind, marker)
    torch.load(bad, weights_only=False)
    for _ in range(100):  # Popen runs `touch` in a child
        if marker.exists():
            break
        time.sleep(0.05)
    assert marker.exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_library_entry_points_refuse_every_payload(
    pretrained_ckpt: Path, shards: Path, tmp_path: Path, marker: Path, kind: str
) -> None:
    from omnimodal.downstream.task import load_finetuned
    from omnimodal.pretraining.run import run

    bad = _poison(pretrained_ckpt, tmp_path / "bad.ckpt", kind, marker)
    for call in (lambda: load(bad), lambda: verify(bad), lambda: consolidate(bad, tmp_path / "w.ckpt")):
        with pytest.raises(CheckpointError) as exc:
            call()
        _refused(exc.value, bad, kind)
    with pytest.raises(ReleaseError) as exc:
        export(bad, tmp_path / "rel")
    _refused(exc.value, bad, kind)
    with pytest.raises(ReleaseError) as exc:  # what omnimodal-eval and omnimodal-forecast read
        load_finetuned(bad)
    _refused(exc.value, bad, kind)
    # resume from a path, resume=auto (the run folder's last.ckpt), init_from
    auto = tmp_path / "run"
    shutil.copy(bad, (auto / "checkpoints").mkdir(parents=True) or auto / "checkpoints" / "last.ckpt")
    for overrides, where in (
        ([f"resume={bad}"], bad),
        (["resume=auto"], auto / "checkpoints" / "last.ckpt"),
        (["resume=null", f"init_from={bad}"], bad),
    ):
        cfg = train_config(shards, auto, "experiment=quick", "trainer.max_steps=1", *overrides)
        with pytest.raises(CheckpointError) as exc:
            run(cfg)
        _refused(exc.value, where, kind)
    assert not marker.exists()
    assert not (tmp_path / "w.ckpt").exists() and not (tmp_path / "rel").exists()


def test_a_refused_init_from_never_reaches_the_weights(pretrained_ckpt: Path, tmp_path: Path, marker: Path) -> None:
    from omnimodal.pretraining.task import PretrainTask

    bad = _poison(pretrained_ckpt, tmp_path / "bad.ckpt", "os.system", marker, key="state_dict")
    task = PretrainTask(**load(pretrained_ckpt)["hyper_parameters"])
    with pytest.raises(CheckpointError, match="refused"):
        load_weights(task, bad)
    assert not marker.exists()


def _deepspeed_folder(pretrained_ckpt: Path, out: Path, kind: str, marker: Path, poisoned: str) -> Path:
    """A DeepSpeed ZeRO checkpoint's layout with a payload in its ``poisoned`` file ("model" or "optim" states)."""
    ckpt = load(pretrained_ckpt, mmap=False)
    tag = out / "checkpoint"
    tag.mkdir(parents=True)
    (out / "latest").write_text("checkpoint")
    payload = Payload(kind, marker)
    torch.save(
        {
            "module": ckpt["state_dict"],
            "hyper_parameters": ckpt["hyper_parameters"],
            "global_step": 4,
            "buffer_names": payload if poisoned == "model" else [],
            "param_shapes": [],
            "shared_params": {},
        },
        tag / "mp_rank_00_model_states.pt",
    )
    torch.save(
        {"optimizer_state_dict": {"zero_stage": payload if poisoned == "optim" else 2}, "ds_version": "0.19"},
        tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
    )
    return out


@pytest.mark.parametrize("kind", ["exec_with_source", "os.system"])
def test_deepspeed_folders_are_read_without_code(
    pretrained_ckpt: Path, tmp_path: Path, marker: Path, kind: str
) -> None:
    # the payload in the optimizer states, which reading the checkpoint's metadata never touches: verified anyway
    ds = _deepspeed_folder(pretrained_ckpt, tmp_path / "ds.ckpt", kind, marker, poisoned="optim")
    states = ds / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    with pytest.raises(CheckpointError) as exc:
        consolidate(ds, tmp_path / "w.ckpt")
    _refused(exc.value, states, kind)
    # DeepSpeed's own reader asks torch.load for weights_only=False; inside the scope it cannot unpickle code
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ds = _deepspeed_folder(pretrained_ckpt, tmp_path / "ds2.ckpt", kind, marker, poisoned="model")

    with no_code_from_checkpoints(), pytest.raises(pickle.UnpicklingError, match="GLOBAL"):
        get_fp32_state_dict_from_zero_checkpoint(str(ds), tag="checkpoint")
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # the scope restores the environment
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["exec_with_source", "builtins.eval"])
def test_distributed_checkpoint_metadata_is_read_without_code(
    pretrained_ckpt: Path, tmp_path: Path, marker: Path, kind: str
) -> None:
    """torch distributed checkpoint (FSDP2) reads ``.metadata`` with plain ``pickle.load``."""
    from torch.distributed.checkpoint import FileSystemReader

    dcp = tmp_path / "fsdp.ckpt"
    dcp.mkdir()
    torch.save({k: v for k, v in load(pretrained_ckpt, mmap=False).items() if k != "state_dict"}, dcp / "meta.pt")
    (dcp / ".metadata").write_bytes(pickle.dumps(Payload(kind, marker), protocol=4))
    with pytest.raises(CheckpointError) as exc:
        consolidate(dcp, tmp_path / "w.ckpt")
    _refused(exc.value, dcp / ".metadata", kind)
    with no_code_from_checkpoints(), pytest.raises(CheckpointError, match="refused"):
        FileSystemReader(str(dcp)).read_metadata()
    assert not marker.exists()


def test_pickled_weights_in_a_release_are_refused_by_name(release_dir: Path, tmp_path: Path, marker: Path) -> None:
    import transformers

    import omnimodal  # noqa: F401 - registers the model type with transformers

    rel = tmp_path / "rel"
    shutil.copytree(release_dir, rel)
    torch.save({"w": Payload("os.system", marker)}, rel / "model.safetensors")
    with pytest.raises(ReleaseError, match=r"model\.safetensors: not a safetensors file"):
        load_release(rel)
    with pytest.raises(ReleaseError, match=r"model\.safetensors: not a safetensors file"):
        transformers.AutoModel.from_pretrained(rel)
    assert not marker.exists()


@pytest.mark.parametrize(
    "edit, match",
    [
        ({"_target_": "os.system"}, r"config\._target_ asks to load code"),
        ({"custom_pipelines": {"x": {"impl": "evil.Pipe"}}}, "asks to load code"),
        ({"architectures": ["os.system"]}, "looks like an import path"),
        ({"architectures": ["Evil"]}, r"architectures = \['Evil'\]"),
        ({"extra": 1}, r"unknown top-level keys \['extra'\]"),
        ({"auto_map": {"AutoModel": "m.M"}}, "asks to load code"),
    ],
)
def test_release_configs_are_walked_whole(release_dir: Path, tmp_path: Path, edit: dict, match: str) -> None:
    import json

    import transformers

    import omnimodal  # noqa: F401

    rel = tmp_path / "rel"
    shutil.copytree(release_dir, rel)
    cfg = json.loads((rel / "config.json").read_text())
    (rel / "config.json").write_text(json.dumps({**cfg, **edit}))
    with pytest.raises(ReleaseError, match=match) as exc:
        load_release(rel)
    assert str(rel / "config.json") in str(exc.value)
    if "auto_map" not in edit:  # transformers itself refuses auto_map unless trust_remote_code=True
        with pytest.raises(ReleaseError, match=match):
            transformers.AutoModel.from_pretrained(rel)


def test_preprocessing_json_is_walked_whole(release_dir: Path, tmp_path: Path) -> None:
    import json

    rel = tmp_path / "rel"
    shutil.copytree(release_dir, rel)
    prep = json.loads((rel / "preprocessing.json").read_text())
    (rel / "preprocessing.json").write_text(json.dumps({**prep, "hook": "x"}))
    with pytest.raises(ReleaseError, match=r"preprocessing\.json: unknown top-level keys \['hook'\]"):
        load_release(rel)
    (rel / "preprocessing.json").write_text(json.dumps({**prep, "specs": {**prep["specs"], "_target_": "os.system"}}))
    with pytest.raises(ReleaseError, match=r"preprocessing\.specs\._target_ asks to load code"):
        load_release(rel)


def _cli(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parent.parent)


@pytest.mark.slow  # seven console scripts, ~15 s each, two at a time
def test_commands_refuse_a_payload_checkpoint(
    pretrained_ckpt: Path, release_dir: Path, shards: Path, tmp_path: Path, marker: Path
) -> None:
    """Each console script that reads a checkpoint: exit code != 0, the file and the global named, nothing run."""
    bad = _poison(pretrained_ckpt, tmp_path / "bad.ckpt", "exec_with_source", marker)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(bad, run / "checkpoints" / "last.ckpt")
    train = [
        str(BIN / "omnimodal-train"),
        "data=shards",
        f"data.root={shards}",
        "data.synthetic=null",
        "experiment=quick",
        "trainer.accelerator=cpu",
        "~logger.tensorboard",
        f"hydra.run.dir={run}",
    ]
    rel = tmp_path / "rel"
    shutil.copytree(release_dir, rel)
    torch.save({"w": Payload("exec_with_source", marker)}, rel / "model.safetensors")
    commands = {
        "consolidate": ([str(BIN / "omnimodal-consolidate"), str(bad), str(tmp_path / "w.ckpt")], bad),
        "export": ([str(BIN / "omnimodal-export"), str(bad), str(tmp_path / "out")], bad),
        "train resume=auto": (train, run / "checkpoints" / "last.ckpt"),
        "train resume=PATH": ([*train, f"resume={bad}"], bad),
        "eval": ([str(BIN / "omnimodal-eval"), str(bad), "--data", str(shards)], bad),
        "forecast": ([str(BIN / "omnimodal-forecast"), str(bad), "--data", str(shards)], bad),
        "finetune": (
            [
                str(BIN / "omnimodal-finetune"),
                f"release={rel}",
                f"data.root={shards}",
                "trainer.accelerator=cpu",
                f"hydra.run.dir={tmp_path / 'ft'}",
            ],
            rel / "model.safetensors",
        ),
    }
    # two at a time: each is mostly a fresh interpreter importing torch, Lightning and DeepSpeed
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = dict(zip(commands, pool.map(_cli, [cmd for cmd, _ in commands.values()])))
    for name, (_, where) in commands.items():
        r = results[name]
        assert r.returncode != 0, f"{name}: exit code 0"
        assert str(where) in r.stderr and ("refused" in r.stderr or "not a safetensors file" in r.stderr), (
            f"{name}: {r.stderr[-2000:]}"
        )
        assert "Traceback" not in r.stderr, f"{name}: {r.stderr[-2000:]}"
    assert not marker.exists()


def test_consolidate_command_says_it_in_one_line(
    pretrained_ckpt: Path, tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = _poison(pretrained_ckpt, tmp_path / "bad.ckpt", "builtins.exec", marker)
    assert consolidate_main([str(bad), str(tmp_path / "w.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("omnimodal-consolidate: ") and "builtins.exec" in err and len(err.splitlines()) == 1
    assert not marker.exists()


def test_our_own_checkpoints_load(pretrained_ckpt: Path) -> None:
    """The allow-list is not so tight that a real training checkpoint (optimizer, schedule, loader state) fails."""
    verify(pretrained_ckpt)
    ckpt = load(pretrained_ckpt)
    assert ckpt["global_step"] == 4 and ckpt["optimizer_states"] and "loops" in ckpt
