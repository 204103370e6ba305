"""Config values are type-checked at composition: a wrong value is an error naming its key, from the library
and from the commands (exit code != 0, one line, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import train_config

from omnimodal.infra.config_check import ConfigError
from omnimodal.pretraining.run import check_config

BAD = [
    ("trainer.max_steps=abc", r"trainer\.max_steps = 'abc': expected an int"),
    ("data.batch_size=abc", r"data\.batch_size = 'abc': expected an int"),
    ("optim.lr=fast", r"optim\.lr = 'fast': expected a number"),
    ("objective.masked_weight=[1]", r"objective\.masked_weight = \[1\]: expected a number"),
    ("model.backbone.activation_checkpointing=maybe", r"model\.backbone\.activation_checkpointing = 'maybe'"),
    ("trainer.precision=17", r"trainer\.precision = 17: expected one of"),
    ("+trainer.max_stpes=5", r"trainer\.max_stpes: unknown key; trainer takes \[.*'max_steps'"),
    ("seed=abc", r"seed = 'abc': expected an int"),
]


@pytest.mark.parametrize(("override", "message"), BAD, ids=[b[0] for b in BAD])
def test_a_wrong_value_names_its_key(shards: Path, tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(train_config(shards, tmp_path, override))


def test_good_values_pass(shards: Path, tmp_path: Path) -> None:
    check_config(
        train_config(
            shards,
            tmp_path,
            "trainer.devices=[0]",
            "data.max_events=null",
            "optim.lr=1",
            "trainer.precision=bf16-mixed",
            "experiment=large_encoders",
        )
    )


def test_zero_steps_is_an_error(shards: Path, tmp_path: Path) -> None:
    from omnimodal.pretraining.run import run

    with pytest.raises(ConfigError, match="training ran 0 steps"):
        run(
            train_config(
                shards, tmp_path, "trainer.limit_train_batches=0", "trainer.max_epochs=1", "trainer.limit_val_batches=0"
            )
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("omnimodal-train", ["trainer.max_steps=abc"], "config key trainer.max_steps = 'abc'"),
        ("omnimodal-train", ["data.batch_size=abc"], "config key data.batch_size = 'abc'"),
        ("omnimodal-finetune", ["head.bins=ten"], "config key head.bins = 'ten'"),
    ],
)
def test_commands_say_it_in_one_line(
    shards: Path, tmp_path: Path, release_dir: Path, command: str, args: list[str], message: str
) -> None:
    data = [f"data.root={shards}"] + (
        ["data=shards", "data.synthetic=null"] if command == "omnimodal-train" else [f"release={release_dir}"]
    )
    r = subprocess.run(
        [str(Path(sys.executable).parent / command), *data, *args, f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0 and message in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
