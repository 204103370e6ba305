"""Released models: export -> from_pretrained gives identical outputs (also in a fresh process that imports
only transformers and omnimodal); tampered or foreign release folders are refused and run no code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers

from datamodules.loader import CropConfig, ShardDataset
from omnimodal.pretraining.task import PretrainTask
from omnimodal.release import OmniForTimelines, ReleaseError, export, load_release, read_checkpoint


def batch_of(shards: Path, n: int = 6):
    ds = ShardDataset(shards, "train", shuffle=False, crop=CropConfig(max_events=4, random=False))
    tls = [tl for _, tl in zip(range(n), ds)]
    return tls


def test_release_folder_has_the_four_files_and_a_model_card(release_dir: Path) -> None:
    assert sorted(p.name for p in release_dir.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessing.json",
    ]
    card = (release_dir / "README.md").read_text()
    for section in (
        "## Architecture",
        "## Training",
        "## Intended use",
        "## Limitations",
        "ecg/conv1d",
        "synthetic test cohort",
        "rate_hz",
    ):
        assert section in card, section
    prep = json.loads((release_dir / "preprocessing.json").read_text())
    assert prep["specs"]["ecg"]["rate_hz"] == 250 and len(prep["specs"]["ecg"]["leads"]) == 12
    assert prep["specs"]["mri"]["spacing_mm"] == [4.0, 4.0, 4.0] and prep["clinical_codes"]


def test_from_pretrained_gives_identical_outputs(pretrained_ckpt: Path, release_dir: Path, shards: Path) -> None:
    ckpt = read_checkpoint(pretrained_ckpt)
    task = PretrainTask(**ckpt["hyper_parameters"])
    task.load_state_dict(ckpt["state_dict"])
    task.eval()
    release = load_release(release_dir)
    auto = transformers.AutoModel.from_pretrained(release_dir)  # registered by `import omnimodal`
    assert type(auto) is OmniForTimelines
    batch = release.preprocessing.collator()(batch_of(shards))
    with torch.no_grad():
        ref = task.model.embed(batch)
        for model in (release.model, auto.eval()):
            assert torch.equal(model.embed(batch), ref)
            out, out_ref = model(batch), task.model(batch)
            for m in out_ref.context:
                assert torch.equal(out.context[m], out_ref.context[m]), m


def test_fresh_process_with_only_transformers_and_omnimodal(release_dir: Path, shards: Path, tmp_path: Path) -> None:
    """The release loads in a new interpreter through transformers' Auto classes and gives the same numbers."""
    release = load_release(release_dir)
    batch = release.preprocessing.collator()(batch_of(shards))
    with torch.no_grad():
        ref = release.model.embed(batch)
    torch.save(ref, tmp_path / "ref.pt")
    script = textwrap.dedent(f"""
        import sys, torch, transformers, omnimodal
        model = transformers.AutoModel.from_pretrained({str(release_dir)!r}).eval()
        from omnimodal.release import Preprocessing
        import json, pathlib
        from datamodules.loader import CropConfig, ShardDataset
        prep = Preprocessing.from_json(json.loads(pathlib.Path({str(release_dir)!r}, "preprocessing.json").read_text()))
        ds = ShardDataset({str(shards)!r}, "train", shuffle=False, crop=CropConfig(max_events=4, random=False))
        tls = [tl for _, tl in zip(range(6), ds)]
        with torch.no_grad():
            emb = model.embed(prep.collator()(tls))
        ref = torch.load({str(tmp_path / "ref.pt")!r}, weights_only=True)
        assert torch.equal(emb, ref), (emb - ref).abs().max()
        print("IDENTICAL", tuple(emb.shape))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "IDENTICAL (6, 64)" in r.stdout


def _tampered(release_dir: Path, tmp_path: Path, edit) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(release_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    edit(cfg)
    (bad / "config.json").write_text(json.dumps(cfg))
    return bad


MARKER = "omnimodal_pwned_marker"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["encoders"]["ecg"].update(name="ecg/evil"), "not a registered encoder"),
        (lambda c: c["encoders"]["ecg"]["kwargs"].update(leads="os.system"), "looks like an import path"),
        (lambda c: c["encoders"]["ecg"]["kwargs"].update(_target_=f"{MARKER}.run"), "asks to load code"),
        (lambda c: c.update(auto_map={"AutoModel": f"{MARKER}.Model"}), "auto_map"),
        (lambda c: c.update(model_type="bert"), "not an omnimodal release"),
        (lambda c: c["backbone"].update(evil=1), "unknown keys"),
        (lambda c: c["encoders"].update(retina={"name": "mri/conv3d", "kwargs": {}}), "unknown modality"),
    ],
    ids=["unknown-encoder", "import-path", "target", "auto-map", "foreign-model-type", "backbone-key", "modality"],
)
def test_tampered_release_is_refused_and_runs_no_code(release_dir: Path, tmp_path: Path, edit, message: str) -> None:
    bad = _tampered(release_dir, tmp_path, edit)
    (bad / f"{MARKER}.py").write_text("open(__file__ + '.ran', 'w').write('ran')\n")  # would show if imported
    with pytest.raises(ReleaseError, match=message) as err:
        load_release(bad)
    assert "config.json" in str(err.value)
    assert not (bad / f"{MARKER}.py.ran").exists() and MARKER not in sys.modules


def test_auto_model_refuses_tampered_config_too(release_dir: Path, tmp_path: Path) -> None:
    bad = _tampered(release_dir, tmp_path, lambda c: c["encoders"]["ecg"].update(name="ecg/evil"))
    with pytest.raises(ReleaseError, match="not a registered encoder"):
        transformers.AutoModel.from_pretrained(bad)


def test_missing_files_and_bad_checkpoints_are_named(release_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "nofile"
    shutil.copytree(release_dir, bad)
    (bad / "preprocessing.json").unlink()
    with pytest.raises(ReleaseError, match="no preprocessing.json"):
        load_release(bad)
    with pytest.raises(ReleaseError, match="no such checkpoint"):
        export(tmp_path / "missing.ckpt", tmp_path / "out")
    with pytest.raises(ReleaseError, match="consolidate it first"):
        export(tmp_path, tmp_path / "out")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ReleaseError, match="not an omnimodal-train checkpoint"):
        export(tmp_path / "foreign.ckpt", tmp_path / "out")


def test_export_command(pretrained_ckpt: Path, tmp_path: Path) -> None:
    exe = str(Path(sys.executable).parent / "omnimodal-export")
    r = subprocess.run([exe, str(pretrained_ckpt), str(tmp_path / "rel")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "model.safetensors" in r.stdout and (tmp_path / "rel" / "model.safetensors").is_file()
    r = subprocess.run(
        [exe, str(tmp_path / "nope.ckpt"), str(tmp_path / "x")], capture_output=True, text=True, timeout=300
    )
    assert r.returncode != 0 and "omnimodal-export:" in r.stderr and "no such checkpoint" in r.stderr
