"""``omnimodal-train``: pretrain an omnimodal model from Hydra configs (:mod:`omnimodal.pretraining.run`).

omnimodal-train                                  # default experiment on the built-in synthetic cohort
omnimodal-train experiment=quick trainer.max_steps=50
omnimodal-train data=shards data.root=/data/shards model/backbone=small
omnimodal-train -m objective.masked_weight=0.5,1.0
omnimodal-train --config-dir /site/configs experiment=my_site_experiment
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from datamodules.schema import DataError

from ..infra import checkpoints
from ..infra.config_check import ConfigError
from ..infra.console import quiet_third_party
from ..infra.loggers import check_packages
from ..pretraining.run import run


@hydra.main(version_base="1.3", config_path="pkg://omnimodal.configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    quiet_third_party()
    try:
        check_packages(cfg)  # a missing tracker now, not after the data is built
        metrics = run(cfg)
    except (checkpoints.CheckpointError, ConfigError, DataError) as err:  # bad input: one line, no traceback
        raise SystemExit(f"omnimodal-train: {err}") from None
    return metrics.get("val/loss")  # the value a sweeper optimises


if __name__ == "__main__":
    main()
