"""The ``logger`` config group made into Lightning loggers, with the experiment trackers' run settings.

``logger=default`` writes CSV metrics and TensorBoard events; ``logger=wandb`` and ``logger=mlflow`` add a
tracker to those (``configs/logger/*.yaml``): Weights & Biases offline unless you log in, MLflow into a store in
the run folder. Each attempt of a resumed run is a new tracker run, as it is a new ``version_*`` of the CSV logs;
every run records the composed config (plain values: no object, no subject id) and its run folder.
"""

from __future__ import annotations

import importlib
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import hydra
from lightning.pytorch.loggers import Logger, MLFlowLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from .config_check import ConfigError

#: a logger's ``_target_`` (its last part) -> the package it needs, which omnimodal's extra of that name installs
NEEDS = {"wandb_logger": "wandb", "WandbLogger": "wandb", "mlflow_logger": "mlflow", "MLFlowLogger": "mlflow"}


def check_packages(cfg: DictConfig) -> None:
    """A tracker of ``cfg.logger`` whose package is missing: a one-line :class:`ConfigError` that says what to
    install (the commands call this first, before any data is built)."""
    for name, entry in (cfg.get("logger") or {}).items():
        package = NEEDS.get(str((entry or {}).get("_target_", "")).rsplit(".", 1)[-1])
        if package:
            try:
                importlib.import_module(package)
            except ImportError:
                raise ConfigError(f"logger={name} needs {package}: pip install 'omnimodal[{package}]'") from None


def make_loggers(cfg: DictConfig) -> list[Logger]:
    """Every entry of ``cfg.logger``, instantiated (after :func:`check_packages`). The trackers also get the
    composed config (the CSV and TensorBoard logs have it beside them, in the run folder's
    ``.hydra/config.yaml``)."""
    check_packages(cfg)
    loggers = [hydra.utils.instantiate(e) for e in (cfg.get("logger") or {}).values() if e is not None]
    trackers = [lg for lg in loggers if isinstance(lg, (WandbLogger, MLFlowLogger))]
    if trackers:
        config = OmegaConf.to_container(cfg, resolve=True)
        for lg in trackers:
            lg.log_hyperparams({"config": config})
    return loggers


def logged_in_to_wandb() -> bool:
    """Whether ``wandb login`` (or ``WANDB_API_KEY``) gave this machine a key for the W&B server; reads the
    environment and ``~/.netrc`` only (no network)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_logger(*, offline: bool | None = None, group: str | None = None, **kwargs: Any) -> WandbLogger:
    """Lightning's ``WandbLogger``; ``offline=None`` (the default): offline unless ``WANDB_MODE`` is set (then
    wandb does as it says) or this machine is logged in. Offline runs stay in ``save_dir/wandb/offline-run-*``
    until ``wandb sync`` uploads them. ``group=None``: the run folder's last two parts (``<date>/<time>``), so
    every attempt of a resumed run is in one group."""
    kwargs["group"] = group or "/".join(Path(kwargs.get("save_dir") or ".").resolve().parts[-2:])
    if offline is None:
        offline = not os.environ.get("WANDB_MODE") and not logged_in_to_wandb()
    if offline:  # wandb.init's own mode, not Lightning's offline=True (which sets WANDB_MODE for the process)
        kwargs["mode"] = "offline"
    Path(kwargs.get("save_dir") or ".").mkdir(parents=True, exist_ok=True)
    return WandbLogger(**kwargs)


def mlflow_logger(*, tracking_uri: str | None = None, **kwargs: Any) -> MLFlowLogger:
    """Lightning's ``MLFlowLogger``; ``tracking_uri`` defaults to ``$MLFLOW_TRACKING_URI``, else the config's.
    A ``file:`` store is allowed explicitly: MLflow 3 keeps the file store in maintenance mode and refuses it
    unless ``MLFLOW_ALLOW_FILE_STORE`` says so, and its database stores need the full ``mlflow`` package (use
    ``logger.mlflow.tracking_uri=sqlite:///...`` with it)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
    if uri and uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(tracking_uri=uri, **kwargs)
