"""Fine-tuning a release: heads, modes (frozen / full / LoRA), modality subsets, the release's preprocessing
enforced; evaluation report; per-person forecasts."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict
from PIL import Image

from datamodules.schema import Event, Label, Measurement, Timeline
from omnimodal.cli.eval import main as eval_main
from omnimodal.cli.forecast import main as forecast_main
from omnimodal.downstream.forecaster import Forecaster, find_person
from omnimodal.downstream.heads import Head, HeadConfig, covariates, target
from omnimodal.downstream.landmarks import (
    LandmarkCollator,
    LandmarkConfig,
    LandmarkDataset,
    landmark_sample,
    landmark_samples,
)
from omnimodal.downstream.run import build
from omnimodal.downstream.task import FinetuneTask, load_finetuned
from omnimodal.evaluation.report import evaluate, write_report
from omnimodal.release import ReleaseError


def finetune_config(release: Path | str, shards: Path, run_dir: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="omnimodal.configs", version_base="1.3"):
        cfg = compose(
            "finetune",
            overrides=[
                f"release={release}",
                f"data.root={shards}",
                "data.batch_size=4",
                "trainer.accelerator=cpu",
                "trainer.enable_progress_bar=false",
                "~logger.tensorboard",
                "~callbacks.lr_monitor",
                "landmark.max_events=4",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg


# --- heads and targets ---------------------------------------------------------------------------------
def test_targets_at_a_landmark() -> None:
    surv = HeadConfig(kind="survival", horizon_days=1000, bins=4, causes=2)
    assert target(surv, Label(2.0, 900.0), 100.0)[0] == {"time": 800.0, "event": 2.0}
    assert target(surv, Label(1.0, 100.0), 100.0)[0] is None  # not at risk at the landmark
    assert "not 0 (censored) or a cause" in target(surv, Label(3.0, 900.0), 100.0)[1]
    cls = HeadConfig(kind="classification", horizon_days=500)
    assert target(cls, Label(1.0, 400.0), 100.0)[0] == {"y": 1.0}  # onset within the horizon
    assert target(cls, Label(1.0, 700.0), 100.0)[0] == {"y": 0.0}  # onset after it: negative
    assert target(cls, Label(0.0, 700.0), 100.0)[0] == {"y": 0.0}  # followed past it, no onset
    assert target(cls, Label(0.0, 300.0), 100.0) == (None, "censored before the horizon")
    assert target(HeadConfig(kind="classification", num_classes=3), Label(2.0), 0.0)[0] == {"y": 2.0}
    assert target(HeadConfig(kind="regression", center=10, scale=2), Label(14.0), 0.0)[0] == {"y": 2.0}
    with pytest.raises(ValueError, match="head.kind"):
        HeadConfig(kind="ranking")


def test_survival_head_likelihood_and_cumulative_incidence() -> None:
    cfg = HeadConfig(kind="survival", horizon_days=400, bins=4, causes=2, dropout=0.0)
    head = Head(cfg, 8)
    logits = torch.randn(3, 4, 3)
    p = logits.softmax(-1)
    # subject 0: cause 2 in bin 2 (t=250); 1: censored in bin 1 (t=150); 2: event-free past the horizon
    nll = head.survival_nll(logits, torch.tensor([250.0, 150.0, 900.0]), torch.tensor([2, 0, 1]))
    ll0 = p[0, 0, 0].log() + p[0, 1, 0].log() + p[0, 2, 2].log()
    ll1 = p[1, 0, 0].log()
    ll2 = p[2, :, 0].log().sum()
    assert torch.allclose(nll, -(ll0 + ll1 + ll2) / 3, atol=1e-6)
    cif = head.predict(logits)  # [3, 4 bins, 2 causes]
    assert cif.shape == (3, 4, 2)
    assert (cif.diff(dim=1) >= -1e-7).all() and (cif.sum(-1) <= 1 + 1e-6).all()
    survival = p[..., 0].prod(1)
    assert torch.allclose(cif[:, -1].sum(-1) + survival, torch.ones(3), atol=1e-6)


def test_proportional_survival_head_ranks_people_the_same_at_every_bin() -> None:
    """``head.proportional``: one score per cause shared by the bins, so two people's cumulative incidence curves
    never cross (each bin's own weights let them), and it learns a hazard that rises with a covariate."""
    torch.manual_seed(0)
    own, shared = (
        Head(HeadConfig(kind="survival", horizon_days=400, bins=10, dropout=0.0, proportional=p), 6)
        for p in (False, True)
    )
    assert sum(p.numel() for p in shared.parameters()) < sum(p.numel() for p in own.parameters()) / 5
    x = torch.randn(64, 6)

    def order_changes(head: Head) -> int:
        ranks = head.predict(head(x))[..., 0].argsort(0).argsort(0)  # [B, bins]: each person's rank per bin
        return int((ranks != ranks[:, -1:]).any(1).sum())

    with torch.no_grad():
        for layer in (own.net[-1], shared.net[-1]):
            layer.weight.normal_(0.0, 0.3)  # a trained head's weights, not the small ones it starts from
        shared.baseline.normal_(-3.0, 0.3)
    assert order_changes(own) > 10 and order_changes(shared) == 0
    # learns: hazard rising with x[:, 0] (exponential times, censored at 300 days)
    head = Head(HeadConfig(kind="survival", horizon_days=400, bins=4, dropout=0.0, proportional=True), 6)
    x = torch.randn(512, 6)
    t = torch.distributions.Exponential(torch.exp(x[:, 0]) / 200.0).sample()
    event, t = (t < 300).float(), t.clamp(max=300)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        head.loss(head(x), {"time": t, "event": event}).backward()
        opt.step()
    risk = head.risk(head(x)).detach()
    assert np.corrcoef(risk.numpy(), x[:, 0].numpy())[0, 1] > 0.8
    assert torch.allclose(head.predict(head(x))[:, -1, 0], risk)
    with pytest.raises(ValueError, match="head.proportional.*survival heads only"):
        HeadConfig(kind="classification", proportional=True)


def _tl(times: list[float], label: Label) -> Timeline:
    return Timeline(
        "k", {}, [Event(t, 20000 + t, [Measurement("omics", np.zeros(3))]) for t in times], {"disease": label}
    )


def test_landmarks_random_for_training_fixed_for_evaluation() -> None:
    head, lm = HeadConfig(kind="survival"), LandmarkConfig(eval_days=365.25, max_events=2)
    tl = _tl([0, 200, 300, 500, 800, 1200], Label(1.0, 900.0))
    (hist, tgt), _ = landmark_sample(tl, head, lm, None)
    assert [e.time_days for e in hist.events] == [200, 300] and tgt == {"time": 900 - 365.25, "event": 1.0}
    seen = set()
    for seed in range(40):
        (hist, tgt), _ = landmark_sample(tl, head, lm, np.random.default_rng(seed))
        last = hist.events[-1].time_days
        assert last < 900 and tgt["time"] == 900 - last and len(hist.events) <= 2
        seen.add(last)
    assert seen == {0, 200, 300, 500, 800}  # every event before the outcome, none after it
    assert landmark_sample(_tl([0, 100], Label(1.0, 200.0)), head, lm, None) == (
        None,
        "outcome or censoring at or before the landmark",
    )


class _Shards:  # what LandmarkDataset reads of a ShardDataset
    def __init__(self, timelines: list[Timeline]) -> None:
        self.timelines, self.seed, self.epoch = timelines, 0, 0

    def __iter__(self):
        return iter(self.timelines)

    def __len__(self) -> int:
        return len(self.timelines)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def test_landmarks_all_for_training_every_eligible_event_once() -> None:
    """``landmark.train=all``: each person at every event before their outcome, each its own example, mixed
    through the shuffle buffer; ``len`` counts the examples (the LR schedule's length)."""
    head, lm = HeadConfig(kind="survival"), LandmarkConfig(max_events=2, train="all")
    tl = _tl([0, 200, 300, 500, 800, 1200], Label(1.0, 900.0))
    samples, why = landmark_samples(tl, head, lm)
    assert why == "" and [h.events[-1].time_days for h, _ in samples] == [0, 200, 300, 500, 800]
    assert all(t == {"time": 900 - h.events[-1].time_days, "event": 1.0} for h, t in samples)
    assert all(len(h.events) <= 2 for h, _ in samples)
    people = [_tl([0, 200, 300, 500, 800, 1200], Label(1.0, 900.0 + i)) for i in range(5)]
    people.append(_tl([10, 100], Label(1.0, 5.0)))  # the onset before their first event: left out
    ds = LandmarkDataset(_Shards(people), head, lm, random_landmark=False, all_landmarks=True, shuffle_buffer=4)
    got = list(ds)
    assert len(got) == len(ds) == 25 and ds.included == 5 and sum(ds.excluded.values()) == 1
    pairs = [(round(t["time"] + h.events[-1].time_days) - 900, h.events[-1].time_days) for h, t in got]
    assert sorted(pairs) == [(i, d) for i in range(5) for d in (0, 200, 300, 500, 800)]  # each exactly once
    who = [i for i, _ in pairs]
    assert who != sorted(who)  # not one person after the other: mixed


# --- fine-tuning a release -----------------------------------------------------------------------------
def _fit(release_dir: Path, shards: Path, run_dir: Path, *overrides: str) -> tuple[FinetuneTask, dict]:
    cfg = finetune_config(
        release_dir,
        shards,
        run_dir,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        *overrides,
    )
    task, dm, trainer = build(cfg)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 2
    return task, before


def test_frozen_mode_trains_only_the_head(release_dir: Path, shards: Path, tmp_path: Path) -> None:
    task, before = _fit(release_dir, shards, tmp_path, "mode=frozen", "head=classification")
    after = task.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    n = task.trainable_parameters()
    assert n["model"] == 0 and n["head"] == sum(p.numel() for p in task.head.parameters())
    ckpt = sorted((tmp_path / "checkpoints").glob("*.ckpt"))[0]
    again = load_finetuned(ckpt)  # weights_only, no release folder needed
    assert again.head_cfg.kind == "classification"
    for k, v in task.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_head_reads_age_at_the_landmark_and_static_covariates(release_dir: Path, shards: Path, tmp_path: Path) -> None:
    task, _ = _fit(release_dir, shards, tmp_path, "mode=frozen", "head=survival", "head.covariates=[age,sex_male]")
    assert task.head.net[-1].in_features == task.model.omni.d_model + 2
    cfg = finetune_config(release_dir, shards, tmp_path / "b", "head.covariates=[age,sex_male]")
    _, dm, _ = build(cfg)
    items = list(dm.dataset("train", train=False))[:4]
    batch, _ = LandmarkCollator(task.prep)(items)
    cov = covariates(("age", "sex_male"), batch)
    want_age = [(h.events[-1].age_days / 365.25 - 60) / 15 for h, _ in items]  # the history's last event
    assert torch.allclose(cov[:, 0], torch.tensor(want_age), atol=1e-5)
    assert cov[:, 1].tolist() == [h.static["sex_male"] for h, _ in items]
    # the covariate moves the forecast: the same person ten years older gets another risk
    older = covariates(("age", "sex_male"), batch) + torch.tensor([10 / 15, 0.0])
    emb = torch.zeros(len(items), task.model.omni.d_model)
    task.head.eval()
    assert not torch.allclose(task.head(emb, cov), task.head(emb, older))
    with pytest.raises(ValueError, match=r"head.covariates: 'bmi' is neither 'age' nor .*sex_male"):
        covariates(("bmi",), batch)


def test_lora_trains_only_adapters_and_head(release_dir: Path, shards: Path, tmp_path: Path) -> None:
    task, before = _fit(release_dir, shards, tmp_path, "mode=lora", "lora.r=4")
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    d, layers = task.model.config.backbone["d_model"], task.model.config.backbone["n_layers"]
    hidden = task.model.omni.backbone.blocks[0].mlp[0].out_features
    # r x (in + out) per adapted Linear: qkv (d -> 3d), out (d -> d), mlp.0 (d -> h), mlp.2 (h -> d)
    expect_lora = layers * 4 * ((d + 3 * d) + (d + d) + (d + hidden) + (hidden + d))
    n = task.trainable_parameters()
    assert n["model"] == expect_lora and n["head"] == sum(p.numel() for p in task.head.parameters())
    assert n["model"] + n["head"] < 0.05 * n["total"]
    after = task.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)


def test_full_mode_with_a_modality_subset(release_dir: Path, shards: Path, tmp_path: Path) -> None:
    task, before = _fit(release_dir, shards, tmp_path, "mode=full", "modalities=[ecg,wearable]", "head=survival")
    assert set(task.model.omni.encoders) == {"ecg", "wearable"}
    after = task.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("omni.backbone"))


def test_preprocessing_mismatch_is_refused(release_dir: Path, shards: Path, tmp_path: Path) -> None:
    bad = tmp_path / "release"
    shutil.copytree(release_dir, bad)
    prep = json.loads((bad / "preprocessing.json").read_text())
    prep["specs"]["ecg"]["rate_hz"] = 500
    (bad / "preprocessing.json").write_text(json.dumps(prep))
    with pytest.raises(
        ReleaseError, match=r"modality 'ecg' was preprocessed differently.*rate_hz: data 250 vs release 500"
    ):
        build(finetune_config(bad, shards, tmp_path))
    # the same release is usable on a cohort's other modalities
    build(finetune_config(bad, shards, tmp_path, "modalities=[wearable,omics]"))
    with pytest.raises(ReleaseError, match="config key release"):
        build(finetune_config("null", shards, tmp_path))
    with pytest.raises(ValueError, match=r"one process; this config asks for 2 .*trainer.devices=1"):
        build(finetune_config(release_dir, shards, tmp_path, "trainer.devices=2"))


# --- evaluation report and per-person forecast ---------------------------------------------------------
def test_eval_report_and_person_forecast(release_dir: Path, shards: Path, tmp_path: Path) -> None:
    task, _ = _fit(release_dir, shards, tmp_path / "run", "mode=frozen", "head=survival", "landmark.eval_days=30")
    task.eval()
    rep = evaluate(task, "frozen", shards, "train", n_boot=50, landmark_days=30)
    assert len(rep.predictions) >= 10 and set(rep.ablation) == set(task.model.omni.encoders)
    assert 0.0 <= rep.metrics["survival"]["c_index"].value <= 1.0
    assert (rep.predictions.risk >= 0).all() and (rep.predictions.risk <= 1).all()
    path = write_report([rep], tmp_path / "report", "train")
    text = path.read_text()
    assert "c_index" in text and "Modality ablation" in text and "ecg" in text
    _check_tripod_items(task, rep, shards, text, json.loads((tmp_path / "report" / "metrics.json").read_text())[0])
    for png in ("roc.png", "calibration.png", "ablation.png"):
        img = np.asarray(Image.open(tmp_path / "report" / png).convert("L"))
        assert img.shape[0] > 300 and (img < 250).mean() > 0.02, png  # an image with content, not blank
    tl = find_person(shards, "train", person=0)
    f = Forecaster(task)
    traj = f.trajectory(tl)
    assert [t for t, _ in traj] == [ev.time_days for ev in tl.events]
    assert all(0.0 <= r <= 1.0 for _, r in traj) and len({round(r, 6) for _, r in traj}) > 1
    assert math.isclose(f.forecast(tl), traj[-1][1], rel_tol=1e-5)
    assert f.embed(tl).shape == (task.model.omni.d_model,)
    png = f.plot(tl, tmp_path / "person.png")
    assert np.asarray(Image.open(png)).shape[0] > 300


def _check_tripod_items(task: FinetuneTask, rep, shards: Path, text: str, js: dict) -> None:
    """What the report fills of TRIPOD+AI, against the shard folder, the landmark data and the model."""
    from omnimodal.downstream.predict import landmark_items
    from omnimodal.evaluation.tripod import FILLED

    section = text[text.index("## TRIPOD+AI checklist (filled automatically)") :]
    for item, topic in FILLED:
        assert f"| {item} | {topic} |" in section
    assert "Still to write" in section and "- 17 Ethical approval" in section and "- 5b Dates" in section
    # 5a data source: index.json and the build report beside the shards
    index, build = (json.loads((shards / f).read_text()) for f in ("index.json", "report.json"))
    assert f"(schema version {index['schema_version']})" in text
    assert f"{build['subjects_in_table']} subjects in the table, {build['samples']} written" in text
    assert f"{len(build['withdrawn_consent'])} left out for withdrawn consent" in text
    assert js["data_source"]["specs"] == index["specs"]
    # 20a participants: everyone in the split is evaluated or left out with the landmark's reason
    lm = LandmarkConfig(**{**task.hparams["landmark"], "eval_days": 30})
    items, excluded = landmark_items(task, shards, "train", lm)
    assert excluded == rep.excluded and js["participants"]["excluded"] == excluded
    assert js["participants"]["in_split"] == index["splits"]["train"]["samples"] == len(items) + sum(excluded.values())
    assert f"{len(items)} evaluated at the landmark (30 days after their first event)" in text
    # 11 missingness: people whose history at the landmark holds each modality
    for m in task.model.omni.encoders:
        have = sum(any(ms.modality == m for ev in h.events for ms in ev.measurements) for h, _ in items)
        assert js["missingness"][m]["people"] == have
        assert f"| {m} | {have} | {have / len(items):.0%} |" in text
    # 12c model: release, mode, trainable parameters, landmark design
    n = task.trainable_parameters()
    assert f"release {task.hparams['release_path'].rstrip('/').split('/')[-1]}" in text
    assert "mode frozen, initialised from the release" in text
    assert f"trainable parameters {n['model'] + n['head']:,} of {n['total']:,}" in text
    assert js["model_details"]["landmark"]["max_events"] == 4
    # 23a: Uno's C and the integrated Brier score beside the other figures, with intervals
    assert "uno_c" in text and "ibs" in text and "estimated on the evaluated train split itself" in text
    for key in ("uno_c", "ibs"):
        est = js[key]
        assert math.isnan(est["value"]) or est["lo"] <= est["value"] <= est["hi"], (key, est)
    grid = js["ibs_grid_days"]
    assert grid and max(grid) < max(t["time"] for _, t in items)  # inside the follow-up


def test_eval_and_forecast_commands(release_dir: Path, shards: Path, tmp_path: Path, capsys) -> None:
    _fit(
        release_dir,
        shards,
        tmp_path / "run",
        "mode=frozen",
        "head=survival",
        "landmark.eval_days=30",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=1",
    )
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    # last.ckpt is where training ended, best.ckpt the epoch with the lowest validation loss
    from omnimodal.infra.checkpoints import load

    assert load(ckpt)["global_step"] == 2
    assert load(tmp_path / "run" / "checkpoints" / "best.ckpt")["global_step"] in (1, 2)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    # the checkpoint carries its landmark design (evaluation and forecasts default to it)
    assert load_finetuned(ckpt).landmark == LandmarkConfig(eval_days=30, train="random", max_events=4)
    eval_main(
        [
            ckpt,
            ckpt,
            "--names",
            "a,b",
            "--data",
            str(shards),
            "--split",
            "train",
            "--out",
            str(tmp_path / "rep"),
            "--n-boot",
            "20",
            "--landmark-days",
            "30",
        ]
    )
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| a |" in text and "| b |" in text and "c_index" in text
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())[0]["model"] == "a"
    forecast_main([ckpt, "--data", str(shards), "--split", "train", "--person", "1", "--out", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert "forecast within 5.0 years after each event" in out and (tmp_path / "p.png").is_file()
    with pytest.raises(SystemExit, match="no person at position 999"):
        forecast_main([ckpt, "--data", str(shards), "--split", "train", "--person", "999"])
    with pytest.raises(SystemExit, match="no such checkpoint"):
        eval_main([str(tmp_path / "nope.ckpt"), "--data", str(shards)])
    # what-if: an intervention this release never saw is refused, naming the code and what it knows
    args = [ckpt, "--data", str(shards), "--split", "train", "--person", "1", "--out", str(tmp_path / "w.png")]
    with pytest.raises(SystemExit, match=r"RX:NEVER//START is not in the release's clinical vocabulary"):
        forecast_main([*args, "--what-if", "RX:NEVER@now"])
    with pytest.raises(SystemExit, match="2"):  # argparse: not a number of days
        forecast_main([*args, "--what-if", "RX:NEVER@soon"])
    _what_if_mechanics(ckpt, shards, tmp_path)


def _what_if_mechanics(ckpt: str, shards: Path, tmp_path: Path) -> None:
    """Forecaster.what_if on a release whose vocabulary names an intervention (one code renamed RX:TEST//START):
    the START row joins the last event (or is its own event later), both forecasts differ, the paired dropout
    interval holds the difference, bad times name at_days, and the plot draws both."""
    f = Forecaster.from_checkpoint(ckpt)
    codes = f.task.prep.clinical_codes
    codes[codes.index("LOINC:8480-6")] = "RX:TEST//START"  # a code id the model has an embedding for
    tl = find_person(shards, "train", 1)
    last = tl.events[-1]
    treated, at, base = f.with_intervention(tl, "RX:TEST", dose=5.0)
    assert (at, base) == (last.time_days, "RX:TEST") and len(treated.events) == len(tl.events)
    row = treated.events[-1].measurements[-1]
    assert (row.modality, row.code, row.value) == ("clinical", "RX:TEST//START", 5.0)
    later, at2, _ = f.with_intervention(tl, "RX:TEST//START", at_days=last.time_days + 100)
    assert at2 == last.time_days + 100 and len(later.events) == len(tl.events) + 1
    assert later.events[-1].age_days == pytest.approx(last.age_days + 100)
    w = f.what_if(tl, "RX:TEST", dose=5.0, samples=100)
    assert w.without == pytest.approx(f.forecast(tl), abs=1e-6)  # the same forecast as without a what-if
    assert w.treated != w.without and w.samples == 100 and w.gap_days == 0.0
    lo, hi = w.interval
    assert lo < hi and lo - 0.02 <= w.difference <= hi + 0.02, w
    assert "what if RX:TEST at dose 5 starts" in w.line()
    assert f.what_if(tl, "RX:TEST", dose=5.0, samples=100) == w  # seeded: the same draws again
    with pytest.raises(ValueError, match="at_days .*before the history ends"):
        f.what_if(tl, "RX:TEST", at_days=last.time_days - 1)
    with pytest.raises(ValueError, match="at_days .*past the horizon"):
        f.what_if(tl, "RX:TEST", at_days=last.time_days + f.horizon_days + 1)
    with pytest.raises(ValueError, match="code 'RX:TEST//STOP'"):
        f.what_if(tl, "RX:TEST//STOP")
    with pytest.raises(ValueError, match="dose -1"):
        f.what_if(tl, "RX:TEST", dose=-1.0)
    png = f.plot(tl, tmp_path / "what_if.png", what_if=w)
    assert Image.open(png).size[0] > 400


# --- the last-visit baseline -----------------------------------------------------------------------------
def test_last_visit_features_and_logistic_baseline() -> None:
    import warnings

    from datamodules.schema import default_specs
    from omnimodal.downstream.baselines import LastVisitFeatures, fit_logistic

    specs = {m: s for m, s in default_specs().items() if m in ("ecg", "wearable")}
    feats = LastVisitFeatures(specs, [])
    wear = np.stack([np.arange(specs["wearable"].shape()[-1], dtype=np.float32)] * specs["wearable"].shape()[0])
    tl = Timeline(
        "k",
        {},
        [
            Event(0.0, 365.25 * 60, [Measurement("ecg", np.ones(specs["ecg"].shape(), np.float32))]),
            Event(30.0, 365.25 * 70, [Measurement("wearable", wear)]),
        ],
        {},
    )
    x = feats(tl)
    n_ecg, n_wear = feats.size("ecg"), feats.size("wearable")
    assert len(x) == 1 + (1 + n_ecg) + (1 + n_wear)
    assert x[0] == pytest.approx(70.0)  # age at the last visit, in years
    assert x[1] == 0 and not x[2 : 2 + n_ecg].any()  # no ECG at the last visit: indicator and zeros
    channels = wear.shape[0]
    assert x[2 + n_ecg] == 1  # wearables present: per-channel mean, then std
    np.testing.assert_allclose(x[3 + n_ecg : 3 + n_ecg + channels], wear.mean(-1))
    np.testing.assert_allclose(x[3 + n_ecg + channels :], wear.std(-1), rtol=1e-6)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(80, 3))
    y = (xs[:, 0] + 0.5 * rng.normal(size=80) > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no scikit-learn deprecation noise in reports
        model = fit_logistic(xs, y)
    p = model.predict_proba(xs)[:, 1]
    assert ((p > 0.5) == y).mean() > 0.8


def test_reports_say_when_a_figure_cannot_be_trusted(tmp_path: Path) -> None:
    """8 people with 1 event gave C-index "1.000 (1.000-1.000)"; now it is shown as not estimable, and why."""
    from omnimodal.downstream.predict import Predictions
    from omnimodal.evaluation.report import MIN_EVENTS, ModelReport, compute_metrics

    rng = np.random.default_rng(0)

    def report(n: int, events: int) -> ModelReport:
        time = rng.uniform(100, 2000, n)
        event = np.zeros(n)
        event[:events] = 1
        risk = np.clip(rng.uniform(0, 0.3, n) + 0.5 * event, 0, 1)
        cif = np.clip(np.linspace(0.1, 1, 10)[None] * risk[:, None], 0, 1)
        p = Predictions({"time": time, "event": event}, risk, cif)
        return ModelReport("m", "survival", p, compute_metrics("survival", p, 1826.25, 50), {}, {}, 365.25)

    small = report(8, 1)
    text = write_report([small], tmp_path / "small", "test").read_text()
    assert "not estimable" in text and f"n/e (1 events < {MIN_EVENTS})" in text and "1.000 (1.000-1.000)" not in text
    js = json.loads((tmp_path / "small" / "metrics.json").read_text())[0]
    assert "c_index" in js["not_estimable"] and js["c_index"]["value"] == pytest.approx(1.0)  # kept, flagged
    large = report(200, 40)
    text = write_report([large], tmp_path / "large", "test").read_text()
    assert "n/e" not in text and "not estimable" not in text


def test_landmark_history_caps_dense_wearable_days() -> None:
    """A week of daily wearable windows before the landmark does not fill the history: capped, the most recent
    days are kept and the older visits stay in it."""
    events = [Event(float(d), 20000.0 + d, [Measurement("clinical", code="VISIT")]) for d in (0, 100, 200)]
    events += [
        Event(200.0 + d, 20200.0 + d, [Measurement("wearable", np.zeros((3, 1440), np.float32))]) for d in range(1, 8)
    ]
    tl = Timeline("k", {}, events, {"onset": Label(1.0, 400.0)})
    head = HeadConfig(kind="classification", label="onset", horizon_days=365.0)
    plain = landmark_sample(tl, head, LandmarkConfig(eval_days=300.0, max_events=5), None)[0][0]
    assert [e.time_days for e in plain.events] == [203.0, 204.0, 205.0, 206.0, 207.0]  # only wearable days
    lm = LandmarkConfig(eval_days=300.0, max_events=5, max_instances={"wearable": 2})
    capped = landmark_sample(tl, head, lm, None)[0][0]
    assert [e.time_days for e in capped.events] == [0.0, 100.0, 200.0, 206.0, 207.0]


def test_forecast_responds_to_the_person(release_dir: Path, shards: Path, tmp_path: Path) -> None:
    """Issue 16: on the README's path (default head, frozen) one person's 5-year risk read the same at every event,
    and everyone's nearly the same: the head had not left its initialisation when its best checkpoint (the first
    epoch) was taken. Now, after one short epoch of the defaults, the forecast separates people and moves as a
    person's events are added; and the forecaster reads the histories of the landmark design it was trained on."""
    from omnimodal.downstream.landmarks import at_landmark

    cfg = finetune_config(
        release_dir,
        shards,
        tmp_path,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        "trainer.limit_val_batches=1",
    )
    task, dm, trainer = build(cfg)  # the default head (survival) and mode (frozen)
    f = Forecaster(task)
    people = [tl for tl in dm.shards("train", train=False) if len(tl.events) >= 3][:6]
    assert len(people) >= 4
    at_init = np.array([f.forecast(tl) for tl in people])
    trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 5  # one epoch, as the README run's best.ckpt was
    risks = np.array([f.forecast(tl) for tl in people])
    tl = max(people, key=lambda t: len(t.events))
    traj = np.array([r for _, r in f.trajectory(tl)])
    # The floors. A head that learned nothing keeps the spread of its initialisation (a tenth of a default one:
    # risks within a few thousandths of 0.26); before the fix, after this epoch, the riskiest of these people had
    # 1.25 times the risk of the least risky, and one person's forecast moved by a factor of 1.1 over 33 events.
    # A head that learned anything, even age alone (these people's ages span decades), separates them by at least
    # a factor of 2, and moves a person's forecast over years of events by at least a half, well above its init.
    assert risks.max() / risks.min() > 2.0 and risks.std() > 5 * at_init.std(), (risks, at_init)
    assert traj.max() / traj.min() > 1.5 and np.ptp(traj) > 5 * np.ptp(at_init), traj
    # the forecaster's history after an event is the landmark history fine-tuning and evaluation use there
    task.landmark = LandmarkConfig(max_events=3, select="recent", max_instances={"wearable": 1, "clinical": 2})
    for i, ev in enumerate(tl.events):
        if i + 1 < len(tl.events) and tl.events[i + 1].time_days == ev.time_days:
            continue  # at_landmark takes every event at the landmark's time
        want = at_landmark(tl, ev.time_days, task.landmark)
        got = f._history(tl, i)
        assert [(e.time_days, [m.modality for m in e.measurements]) for e in got.events] == [
            (e.time_days, [m.modality for m in e.measurements]) for e in want.events
        ]
