"""``omnimodal-finetune``: adapt a released model to a cohort's own outcome (:mod:`omnimodal.downstream.run`).

    omnimodal-finetune release=releases/omni-tiny data.root=/data/cardio_shards head=survival
    omnimodal-finetune release=... data.root=... mode=lora modalities=[ecg,wearable] head=classification
    omnimodal-finetune release=... data.root=... init=scratch        # same architecture, no pretrained weights

Landmarks: :mod:`omnimodal.downstream.landmarks`; modes and heads: :mod:`omnimodal.downstream.task`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from datamodules.schema import DataError

from ..downstream.run import run
from ..infra.config_check import ConfigError
from ..infra.console import quiet_third_party
from ..infra.loggers import check_packages
from ..release import ReleaseError


@hydra.main(version_base="1.3", config_path="pkg://omnimodal.configs", config_name="finetune")
def main(cfg: DictConfig) -> float | None:
    quiet_third_party(transformers=True)
    try:
        check_packages(cfg)  # a missing tracker now, not after the data is built
        metrics = run(cfg)
    except (ReleaseError, ConfigError, DataError) as err:  # bad input: one line, no traceback
        raise SystemExit(f"omnimodal-finetune: {err}") from None
    return metrics.get("val/loss")


if __name__ == "__main__":
    main()
