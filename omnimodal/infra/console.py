"""What a command shows its user: third-party noise silenced at its source (each filter names the library's
logger or module and the message, so every other warning still shows), and the closing lines: what a run
made and the next commands with its paths filled in, ready to paste."""

from __future__ import annotations

import logging
import os
import re
import shlex
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from datamodules.shards.store import is_remote

#: (logger name, start of the message) of third-party log records that tell an omnimodal user nothing
NOISE_LOGS = (
    # LoadImage builds every MONAI reader, NvImgCodecPydicomReader included, whose constructor logs this when the
    # optional nvidia-nvimgcodec + CuPy GPU DICOM decoder is not installed. We read NIfTI with MONAI's
    # NibabelReader and DICOM with pydicom (datamodules/readers/mri.py): the GPU decoder is never used.
    ("monai.data.nvimgcodec_pydicom_plugin", "nvImageCodec is not available"),
    # Lightning's adverts for its cloud services (litlogger, litmodels) at every Trainer; Lightning documents its
    # console output as configured through its loggers (docs: "Configure console logging")
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:"),
    # DeepSpeed, imported by transformers as it saves a release, on a machine without a GPU (nothing is wrong)
    ("DeepSpeed", "Setting accelerator to CPU"),
)
#: (message regex, category, module regex) of third-party warnings, the same way
NOISE_WARNINGS = (
    # the same MONAI reader, through warnings.warn
    (r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register", UserWarning, r"monai\.data"),
    # torch deprecates LeafSpec (torch/utils/_pytree.py), which Lightning 2.6's own pytree helper still builds
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    # our loaders' lengths are exact per rank and worker (datamodules/loader.py); Lightning cannot know that
    (r"Your `IterableDataset` has `__len__` defined", UserWarning, r"lightning\.pytorch\.utilities\.data"),
)


class _DropMessages(logging.Filter):
    """Drops a logger's records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_third_party(transformers: bool = False) -> None:
    """Install the :data:`NOISE_LOGS` and :data:`NOISE_WARNINGS` filters (idempotent). Data-loader workers are
    forked from the process that calls this and inherit them. ``transformers``: also turn off its progress bars
    (its documented switch), which draw one bar for loading or saving a release's one small file."""
    for name, prefix in NOISE_LOGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessages(prefix))
    for message, category, module in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    if transformers:
        from transformers.utils import logging as hf_logging  # noqa: PLC0415 - only the commands that use it

        hf_logging.disable_progress_bar()


def shown(path: str | os.PathLike) -> str:
    """A path as a user types it: relative to the working directory when it lies under it, else absolute; a
    URL (``https://...``, ``s3://...``) or a ``pipe:`` command as it is."""
    if is_remote(path):
        return str(path)
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def override(key: str, value: str | os.PathLike) -> str:
    """A Hydra ``key=value`` override of a path, the value quoted for Hydra where its grammar needs it
    (spaces, ``=``, brackets, quotes, ...)."""
    v = str(value)
    if not re.fullmatch(r"[\w./:+-]+", v):
        v = '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{key}={v}"


def command(*words: str | os.PathLike) -> str:
    """A shell command line from its words, each quoted for the shell where needed."""
    return " ".join(shlex.quote(str(w)) for w in words)


def closing(title: str, made: list[str], steps: list[tuple[str, str]]) -> str:
    """The closing block of a command: ``title``, what it made (a line each), then the next commands, each
    under a comment saying what it does, so that each line pastes into a shell as it is."""
    lines = [title, *(f"  {m}" for m in made)]
    if steps:
        lines.append("next:")
        for cmd, why in steps:
            lines += [f"  # {why}", f"  {cmd}"]
    return "\n".join(lines)


def finish_loggers(loggers: list[Logger], run_dir: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """Close the trackers' runs (so their files are complete and their own closing lines come first); returns
    what each logger wrote (a line each, paths relative to ``run_dir``) and its next commands."""
    made, steps = [], []
    for lg in loggers:
        if isinstance(lg, CSVLogger):
            made.append(f"{_rel(Path(lg.log_dir) / 'metrics.csv', run_dir)}: metrics (CSV)")
        elif isinstance(lg, TensorBoardLogger):
            made.append(f"{_rel(lg.log_dir, run_dir)}/: TensorBoard events")
            steps.append((command("tensorboard", "--logdir", shown(Path(lg.log_dir).parent)), "plot the losses"))
        elif isinstance(lg, WandbLogger) and lg._experiment is not None:
            run = lg.experiment
            offline = run.offline
            folder = Path(run.dir).parent
            run.finish()
            made.append(f"{_rel(folder, run_dir)}/: W&B run {run.id}" + (" (offline)" if offline else f" {run.url}"))
            if offline:
                steps.append((command("wandb", "sync", shown(folder)), "upload the W&B run (after wandb login)"))
        elif isinstance(lg, MLFlowLogger):
            made.append(f"MLflow run {lg.run_id} in experiment {lg._experiment_name!r} of {lg._tracking_uri}")
    return made, steps


def _rel(path: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    p, root = Path(path).resolve(), Path(run_dir).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def run_made(run_dir: str | os.PathLike, loggers: list[Logger]) -> tuple[list[str], list[tuple[str, str]]]:
    """What a training run left in its folder (checkpoints, each logger's files, the log) and the loggers' next
    commands; finishes the trackers' runs (:func:`finish_loggers`)."""
    run = Path(run_dir)
    made, steps = finish_loggers(loggers, run)
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", p.name))
    made.insert(0, "checkpoints/: " + (", ".join(p.name for p in ckpts) or "none"))
    logs = sorted(p.name for p in run.glob("*.log"))
    if logs:
        made.append(f"{', '.join(logs)}: the log lines")
    return made, steps


def after_pretraining(run_dir: str | os.PathLike, data: str | os.PathLike, loggers: list[Logger]) -> str:
    """The closing block of ``omnimodal-train``: what the run made and the next commands with its paths filled
    in: export the last checkpoint as a release, fine-tune it on the shards it was trained on, evaluate."""
    run = Path(run_dir)
    made, logger_steps = run_made(run, loggers)
    steps = []
    last = run / "checkpoints" / "last.ckpt"
    if last.is_dir():  # a sharded DeepSpeed / FSDP checkpoint: one file first
        single = run / "checkpoints" / "last-consolidated.ckpt"
        steps.append((command("omnimodal-consolidate", shown(last), shown(single)), "one file of the sharded weights"))
        last = single
    release, finetune = run / "release", run / "finetune"
    tune = command(
        "omnimodal-finetune",
        override("release", shown(release)),
        override("data.root", shown(data)),
        override("hydra.run.dir", shown(finetune)),
    )
    steps += [
        (command("omnimodal-export", shown(last), shown(release)), "a release folder of this model"),
        (tune, "fine-tune it on the cohort's outcome (head=survival; head=classification, mode=lora, ...)"),
        (eval_command(finetune, data), "evaluate the fine-tuned model on the test split"),
        *logger_steps,
    ]
    return closing(f"run folder: {shown(run)}", made, steps)


def after_finetuning(
    run_dir: str | os.PathLike,
    data: str | os.PathLike,
    loggers: list[Logger],
    landmark_days: float,
    predictions: str | os.PathLike | None = None,
) -> str:
    """The closing block of ``omnimodal-finetune``: what the run made and the next command: ``omnimodal-eval`` of
    its best checkpoint on the cohort's shards or, for an ACES task (``predictions``: its predictions folder),
    meds-evaluation's own command on the test predictions."""
    made, steps = run_made(run_dir, loggers)
    if predictions is not None:
        pred = Path(predictions)
        files = sorted(p.name for p in pred.glob("*.parquet"))
        made[1:1] = [
            f"{pred.name}/: {', '.join(files) or 'none (no prediction time in val or test)'} (meds-evaluation's "
            "schema)",
            "aces_metrics.json: meds-evaluation's scores and ours, the counts, who was left out",
        ]
        for split in ("test", "val"):
            if f"{split}.parquet" in files:
                cmd = command(
                    "meds-evaluation-cli",
                    override("predictions_path", shown(pred / f"{split}.parquet")),
                    override("output_file", shown(Path(run_dir) / f"meds_evaluation_{split}.json")),
                )
                steps.insert(0, (cmd, f"score the {split} predictions again, with meds-evaluation's own command"))
                break
        return closing(f"run folder: {shown(run_dir)}", made, steps)
    why = f"evaluate the best checkpoint on the test split (landmark at {landmark_days:g} days, as for val)"
    return closing(f"run folder: {shown(run_dir)}", made, [(eval_command(run_dir, data), why), *steps])


def eval_command(finetune_dir: str | os.PathLike, data: str | os.PathLike) -> str:
    """``omnimodal-eval`` of a fine-tuning run folder's best checkpoint, its report in the folder's ``eval/``."""
    run = Path(finetune_dir)
    ckpt = shown(run / "checkpoints" / "best.ckpt")
    return command("omnimodal-eval", ckpt, "--data", shown(data), "--out", shown(run / "eval"))
