"""How tests/assets/legacy9/ was made: run with the code of commit 79e4318 (before the modality registry),

    git worktree add /tmp/old 79e4318
    PYTHONPATH=/tmp/old:tests python tests/assets/legacy9/make.py tests/assets/legacy9

It trains a tiny model for 3 steps on ECG, wearable and clinical (a subset: the embeddings then had one row
per modality of the framework, 9, not per encoder), writes its consolidated checkpoint (weights.ckpt), its
release (release/) and the model's outputs on a fixed batch (outputs.pt), which the code of today must
reproduce exactly (tests/test_registry.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

if __name__ == "__main__":
    out = Path(sys.argv[1]).resolve()
    work = Path("/tmp/legacy9-work")
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from datamodules.demo import demo_shards
    from legacy_batch import legacy_timelines
    from omnimodal.distributed import consolidate
    from omnimodal.release import export, load_release
    from omnimodal.train import build

    shards = demo_shards(16, 3, 2, root=work / "demo")
    import omnimodal

    configs = Path(omnimodal.__file__).resolve().parent.parent / "configs"  # the checkout's own, not the installed
    with initialize_config_dir(str(configs), version_base="1.3"):
        cfg = compose("train", overrides=[
            "data=shards", f"data.root={shards}", "data.num_workers=0", "data.batch_size=4", "data.synthetic=null",
            "data.max_events=4", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.max_steps=3",
            "trainer.enable_progress_bar=false", "~logger.tensorboard", "+model.modalities=[ecg,wearable,clinical]",
            "+model.encoder.ecg.kwargs.channels=[8,8,16,16]", "+model.encoder.ecg.kwargs.num_tokens=2",
            "+model.encoder.wearable.kwargs.widths=[8,8,16,16]", "resume=null",
            "callbacks.checkpoint.every_n_train_steps=3"])
    with open_dict(cfg):
        cfg.run_dir = str(work / "run")
    task, dm, trainer = build(cfg)
    trainer.fit(task, datamodule=dm)
    consolidate(work / "run" / "checkpoints" / "last.ckpt", out / "weights.ckpt")
    export(out / "weights.ckpt", out / "release", data_note="legacy test asset (3 steps on a synthetic cohort)")
    release = load_release(out / "release")
    specs, codes = release.preprocessing.specs, release.preprocessing.clinical_codes
    batch = release.preprocessing.collator()(legacy_timelines(specs, codes, ["ecg", "wearable", "clinical"]))
    with torch.no_grad():
        o = release.model.omni(batch)
        ref = {"embed": release.model.embed(batch), "context": o.context, "encoded": o.encoded}
    torch.save(ref, out / "outputs.pt")
    print("wrote", sorted(p.name for p in out.iterdir()))
