"""``omnimodal-benchmark``: the validation benchmark on a synthetic cohort whose truth is known
(:mod:`omnimodal.benchmark.run`).

    omnimodal-benchmark                                   # 1,000 people, every contender, both oracles
    omnimodal-benchmark cohort.n_subjects=300 pretrain.steps=200 finetune.epochs=4 out=bench_small
    omnimodal-benchmark --config-name what_if             # what-if forecasts against the true counterfactuals
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from datamodules.schema import DataError

from ..benchmark.run import run
from ..infra.config_check import ConfigError
from ..infra.console import quiet_third_party
from ..release import ReleaseError


@hydra.main(version_base="1.3", config_path="pkg://omnimodal.configs", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    quiet_third_party(transformers=True)
    try:
        if cfg.get("kind") == "what_if":
            from ..benchmark.what_if import run as what_if  # noqa: PLC0415

            what_if(cfg)
            print(f"omnimodal-benchmark: wrote {cfg.out}/what_if.md, .json and .png")
            return
        result = run(cfg)
    except (ReleaseError, ConfigError, DataError) as err:  # bad input: one line, no traceback
        raise SystemExit(f"omnimodal-benchmark: {err}") from None
    held = sum(c["holds"] for c in result["checks"])
    n = len(result["checks"])
    print(f"omnimodal-benchmark: {held} of {n} targets hold; wrote {cfg.out}/benchmark.md, .json and .png")


if __name__ == "__main__":
    main()
