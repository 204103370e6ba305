"""Experiment trackers: ``logger=wandb`` (offline unless logged in) and ``logger=mlflow`` (a file store in the run
folder) add to the CSV logs; the losses the CSV logger has reach the tracker's own files, read back with the
tracker's own schema and client; each attempt of a resumed run is a new tracker run with the composed config as
plain values and no subject id; a missing package is a one-line error naming what to install. No network."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import train_config

from omnimodal.infra.config_check import ConfigError
from omnimodal.infra.loggers import logged_in_to_wandb
from omnimodal.infra.trainer import make_trainer
from omnimodal.pretraining.run import run

#: a tiny pretraining run that logs every step
RUN = (
    "experiment=quick",
    "data.max_events=4",
    "data.batch_size=2",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=1",
    "callbacks.checkpoint.every_n_train_steps=2",
)


@pytest.fixture
def no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No W&B login, no MLflow server, W&B's settings and cache under tmp_path, and its server address a closed
    local port, so a bug that went online would fail at once instead of reaching the internet."""
    home = tmp_path / "home"
    home.mkdir()
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED", "MLFLOW_TRACKING_URI", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / "wandb-data"))
    return home


def csv_losses(run_dir: Path, version: int = 0) -> pd.Series:
    m = pd.read_csv(run_dir / "logs" / f"version_{version}" / "metrics.csv")
    m = m[m["train/loss"].notna()]
    return m.set_index("step")["train/loss"]


def subject_ids(cohort: Path) -> list[str]:
    return pd.read_csv(cohort / "subjects.csv")["subject_id"].astype(str).tolist()


# --- W&B ---------------------------------------------------------------------------------------------------------


def wandb_records(path: Path) -> list:
    """The records of a ``run-*.wandb`` file, parsed with wandb's own protobuf schema. wandb 0.31 keeps no Python
    reader of its own: the file is a ``:W&B`` header then a LevelDB log (32 KiB blocks of chunks: crc32, length,
    type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            records.append(rec)
    return records


def wandb_run(run_dir: Path) -> tuple[dict[int, float], dict, str, bytes]:
    """(train/loss by trainer step, the config, the group, the raw file) of the one offline W&B run in
    ``run_dir``."""
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    (log,) = folder.glob("run-*.wandb")
    losses, config, group = {}, {}, ""
    for rec in wandb_records(log):
        if rec.HasField("run"):
            group = rec.run.run_group
        elif rec.HasField("history"):
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            if "train/loss" in row:
                losses[int(row["trainer/global_step"])] = row["train/loss"]
        elif rec.HasField("config"):
            config.update({u.key: json.loads(u.value_json) for u in rec.config.update})
    return losses, config, group, log.read_bytes()


@pytest.mark.slow
def test_wandb_run_holds_the_csv_losses_and_the_config(
    shards: Path, cohort: Path, tmp_path: Path, no_network: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import wandb

    cfg = train_config(shards, tmp_path / "run", *RUN, "logger=wandb", "trainer.max_steps=3")
    run(cfg)
    out = capsys.readouterr().out
    wandb.teardown()  # wandb's service writes the run file out as the process ends: end it here
    losses, config, group, raw = wandb_run(tmp_path / "run")
    assert losses == pytest.approx(csv_losses(tmp_path / "run").to_dict(), rel=1e-6) and len(losses) == 3
    # the composed config and the task's hyper-parameters, as plain values
    assert config["config"]["trainer"]["max_steps"] == 3
    assert config["config"]["logger"]["wandb"]["project"] == "omnimodal"
    assert config["model"]["backbone"]["d_model"] > 0
    assert not any(s.encode() in raw for s in subject_ids(cohort))
    assert group == f"{tmp_path.name}/run"  # the run folder: a resumed run's attempts together
    # offline by default (no login), CSV kept, and the closing lines say where the run is and how to upload it
    assert (tmp_path / "run" / "logs" / "version_0" / "metrics.csv").is_file()
    (folder,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert f"wandb sync {folder}" in out and "(offline)" in out


@pytest.mark.parametrize(
    ("env", "netrc", "expected"),
    [
        ({}, None, False),
        ({"WANDB_API_KEY": "k" * 40}, None, True),
        ({}, "machine api.wandb.ai login user password " + "k" * 40, True),
        ({}, "machine example.org login user password secret", False),
        ({"WANDB_BASE_URL": "https://wandb.example.org"}, "machine wandb.example.org login u password p", True),
    ],
)
def test_wandb_is_offline_unless_this_machine_logged_in(
    no_network: Path, monkeypatch: pytest.MonkeyPatch, env: dict, netrc: str | None, expected: bool
) -> None:
    monkeypatch.delenv("WANDB_BASE_URL")  # the default server, unless the case names one
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if netrc:
        (no_network / ".netrc").write_text(netrc + "\n")
        (no_network / ".netrc").chmod(0o600)
    assert logged_in_to_wandb() is expected


# --- MLflow ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_store_holds_the_csv_losses_and_a_resumed_run_is_a_new_run(
    shards: Path, cohort: Path, tmp_path: Path, no_network: Path
) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    run(train_config(shards, run_dir, *RUN, "logger=mlflow", "trainer.max_steps=2"))
    run(train_config(shards, run_dir, *RUN, "logger=mlflow", "trainer.max_steps=4"))  # resume=auto: steps 3-4
    client = MlflowClient(f"file:{run_dir}/mlruns")
    (exp,) = [e for e in client.search_experiments() if e.name == "omnimodal"]
    runs = sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    ids = subject_ids(cohort)
    for version, (r, steps) in enumerate(zip(runs, (2, 4))):
        history = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "train/loss")}
        assert history == pytest.approx(csv_losses(run_dir, version).to_dict(), rel=1e-6)
        params = r.data.params
        assert params["config/trainer/max_steps"] == str(steps) and params["config/resume"] == "auto"
        assert params["model/backbone/d_model"].isdigit()  # the task's hyper-parameters, flattened
        assert r.data.tags["run_dir"] == str(run_dir)
        assert not any(i in v for v in params.values() for i in ids)
    assert min(m.step for m in client.get_metric_history(runs[1].info.run_id, "train/loss")) >= 2


# --- a missing package ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_missing_tracker_package_is_a_one_line_error(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracker: str
) -> None:
    from omnimodal.cli.train import main

    monkeypatch.setitem(sys.modules, tracker, None)  # `import wandb` now fails as if it were not installed
    said = f"logger={tracker} needs {tracker}: pip install 'omnimodal[{tracker}]'"
    with pytest.raises(ConfigError) as err:
        make_trainer(train_config(shards, tmp_path, f"logger={tracker}"))
    assert str(err.value) == said
    # the command says so at once, before it builds the default synthetic cohort
    quiet = ["hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", ["omnimodal-train", f"logger={tracker}", f"hydra.run.dir={tmp_path}", *quiet])
    monkeypatch.setenv("OMNIMODAL_CACHE", str(tmp_path / "no-cohort-here"))
    with pytest.raises(SystemExit) as exit_:
        main()
    assert str(exit_.value) == f"omnimodal-train: {said}" and not (tmp_path / "no-cohort-here").exists()


@pytest.mark.parametrize(
    ("choice", "loggers"),
    [
        ("logger=wandb", ["csv", "tensorboard", "wandb"]),
        ("logger=mlflow", ["csv", "tensorboard", "mlflow"]),
        ("logger=[wandb,mlflow]", ["csv", "tensorboard", "wandb", "mlflow"]),
    ],
)
@pytest.mark.parametrize("command", ["train", "finetune"])
def test_trackers_add_to_the_csv_and_tensorboard_logs(choice: str, loggers: list[str], command: str) -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="omnimodal.configs", version_base="1.3"):
        assert list(compose(command, overrides=[choice]).logger) == loggers
