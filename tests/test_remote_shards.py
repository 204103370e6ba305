"""Shards from a server: training from ``data.root=http://...`` (resumed mid-epoch) gives the local run's losses;
a missing, truncated or cut-off shard, a server that is down, a failing ``pipe:`` command are errors naming the
URL, counted exactly with ``on_error='skip'``; a cut-off connection resumes where it stopped (Range)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import train_config
from shard_edit import copy_shards
from test_train import StopAt, _losses

import datamodules.shards.store as store_module
from datamodules.loader import ShardDataset
from datamodules.schema import DataError
from datamodules.shards.format import load_index
from omnimodal.pretraining.run import build, resume_path


class Handler(http.server.SimpleHTTPRequestHandler):
    """A static file server; ``cut``: names whose first response stops halfway (the connection closed);
    ``ranges``: answers ``Range: bytes=N-`` requests (206), as nginx or S3 do."""

    cut: set[str] = set()
    ranges = False

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def end_headers(self) -> None:
        if self.ranges:
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        wanted = self.headers.get("Range") if self.ranges else None
        if path.name not in self.cut and not wanted:
            return super().do_GET()
        data = path.read_bytes()
        start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted else 0
        self.send_response(206 if wanted else 200)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if path.name in self.cut:
            self.cut.discard(path.name)
            body, self.close_connection = body[: len(body) // 2], True
        self.wfile.write(body)


@contextlib.contextmanager
def serve(folder: Path, cut: set[str] = frozenset(), ranges: bool = False) -> Iterator[str]:
    """``folder`` served on loopback in a thread; yields its URL."""
    handler = type("H", (Handler,), {"cut": set(cut), "ranges": ranges})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def _no_retry_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "RETRY_DELAYS_S", (0.0,))  # one retry, at once


def _keys(root: str | Path, split: str = "val", **kw: object) -> list[str]:
    return [tl.key for tl in ShardDataset(root, split, shuffle=False, **kw)]


def test_training_from_a_url_resumed_mid_epoch_gives_the_local_runs_losses(shards: Path, tmp_path: Path) -> None:
    common = (
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=1",
        "callbacks.checkpoint.every_n_train_steps=2",
        "trainer.limit_val_batches=0",
        "data.max_events=4",
        "data.num_workers=2",  # each worker streams its own shards
        "model.row_len=null",
        "+model.modalities=[clinical]",  # a cheap model: the data path is what is tested (all bytes stream)
    )
    full = tmp_path / "local"
    task, dm, trainer = build(train_config(shards, full, *common))
    trainer.fit(task, datamodule=dm)
    ref = _losses(full)
    assert len(ref) == 4 and len(dm.train_dataloader()) > 2  # step 2 is mid-epoch

    with serve(shards) as url:
        part = tmp_path / "remote"
        cfg = train_config(f"{url}/", part, *common)
        task, dm, trainer = build(cfg)
        assert dm.root == url  # the URL as it is, not a local path
        trainer.callbacks.append(StopAt(2))
        trainer.fit(task, datamodule=dm)
        assert trainer.global_step == 2
        task, dm, trainer = build(cfg)
        trainer.fit(task, datamodule=dm, ckpt_path=resume_path(cfg))
    assert trainer.global_step == 4
    pd.testing.assert_series_equal(_losses(part).sort_index(), ref.sort_index(), rtol=1e-5, atol=1e-6)


def test_pipe_and_fsspec_roots_read_what_the_local_folder_holds(shards: Path) -> None:
    import fsspec

    want = _keys(shards)
    assert _keys(f"pipe:cat {shards}/{{name}}") == want
    assert _keys(f"file://{shards}") == want
    fs = fsspec.filesystem("memory")
    try:
        for f in shards.iterdir():
            fs.pipe(f"/remote-test/{f.name}", f.read_bytes())
        assert _keys("memory://remote-test", verify=True) == want
    finally:
        fs.rm("/remote-test", recursive=True)


def _first_val_shard(root: Path) -> dict:
    return load_index(root)["splits"]["val"]["shards"][0]


def test_a_missing_or_truncated_shard_names_its_url_and_is_counted_when_skipped(shards: Path, tmp_path: Path) -> None:
    root = copy_shards(shards, tmp_path / "c")
    missing, short = load_index(root)["splits"]["train"]["shards"][:2]
    (root / missing["name"]).unlink()
    data = (root / short["name"]).read_bytes()
    (root / short["name"]).write_bytes(data[: len(data) // 2])
    with serve(root) as url:
        with pytest.raises(
            DataError, match=rf"{url}/{missing['name']}: shard listed in index.json is missing \(HTTP 404"
        ):
            _keys(url, "train")
        ds = ShardDataset(url, "train", shuffle=False, on_error="skip")
        n = len(list(ds))
        assert ds.skipped == missing["samples"] + short["samples"] and n == ds.num_samples - ds.skipped
        assert any(f"{url}/{short['name']}: shard is {len(data) // 2} bytes, index.json lists" in e for e in ds.errors)
        with pytest.raises(DataError, match=rf"{url}/nowhere/index.json: shard index not found \(HTTP 404"):
            ShardDataset(f"{url}/nowhere", "train")


def test_a_stream_cut_short_is_caught_as_it_comes_and_counted_exactly(shards: Path, tmp_path: Path) -> None:
    root = copy_shards(shards, tmp_path / "c")
    entry = _first_val_shard(root)
    data = (root / entry["name"]).read_bytes()
    (root / entry["name"]).write_bytes(data[: len(data) * 2 // 3])  # a pipe announces no size: found at the end
    source = f"pipe:cat {root}/{{name}}"
    with pytest.raises(DataError, match=rf"pipe:cat {root}/{entry['name']}: shard ends after \d+ bytes, index.json"):
        _keys(source)
    ds = ShardDataset(source, "val", shuffle=False, on_error="skip")
    got, want = [tl.key for tl in ds], _keys(shards)
    lost = set(want) - set(got)
    assert 0 < ds.skipped == len(lost) < entry["samples"]  # the samples before the cut are whole: kept
    assert got == [k for k in want if k not in lost]


def test_a_connection_cut_mid_shard_resumes_with_a_range_request_or_is_an_error(shards: Path) -> None:
    name = _first_val_shard(shards)["name"]
    with serve(shards, cut={name}, ranges=True) as url:
        assert _keys(url) == _keys(shards)
    with serve(shards, cut={name}) as url:  # a server without ranges: no way to go on
        with pytest.raises(DataError, match=rf"{url}/{name}: the connection broke after \d+ of \d+ bytes"):
            _keys(url)


def test_verify_checks_a_remote_shards_sha256_before_using_any_sample(shards: Path, tmp_path: Path) -> None:
    root = copy_shards(shards, tmp_path / "c")
    index = load_index(root)
    index["splits"]["val"]["shards"][0]["sha256"] = "0" * 64
    (root / "index.json").write_text(json.dumps(index))
    with serve(root) as url:
        assert _keys(url) == _keys(shards)  # the bytes are intact: only the sha256 can tell
        ds = ShardDataset(url, "val", shuffle=False, verify=True, on_error="skip")
        n = len(list(ds))
        assert ds.skipped == index["splits"]["val"]["shards"][0]["samples"] and n == ds.num_samples - ds.skipped
        assert "sha256 differs from index.json" in ds.errors[0] and url in ds.errors[0]


def test_a_server_that_is_down_or_a_failing_command_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "RETRY_DELAYS_S", ())
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=rf"http://127.0.0.1:{port}/shards/index.json: cannot reach the server"):
        ShardDataset(f"http://127.0.0.1:{port}/shards", "train")
    with pytest.raises(DataError, match=r"pipe:cat /nowhere/index.json: the command exited with status 1 \(cat: "):
        ShardDataset("pipe:cat /nowhere/{name}", "train")
    with pytest.raises(DataError, match=r"needs \{name\}"):
        ShardDataset("pipe:cat /nowhere/index.json", "train")
    with pytest.raises(DataError, match=r"https://host/shards: the URL holds credentials") as err:
        ShardDataset("https://user:secret@host/shards", "train")
    assert "secret" not in str(err.value)


def test_finetune_and_eval_from_a_server_match_the_local(release_dir: Path, shards: Path, tmp_path: Path) -> None:
    """omnimodal-finetune and omnimodal-eval read ``data.root`` / ``--data`` from a URL like pretraining: the same
    steps' weights and the same evaluation as from the local folder; the report names the URL."""
    from test_finetune import finetune_config

    from omnimodal.downstream.run import build as build_finetune
    from omnimodal.evaluation.report import evaluate, write_report

    def fit(root: Path | str, run: Path):
        cfg = finetune_config(
            release_dir, root, run, "mode=frozen", "head=survival", "landmark.eval_days=30",
            "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        )  # fmt: skip
        task, dm, trainer = build_finetune(cfg)
        trainer.fit(task, datamodule=dm)
        assert trainer.global_step == 2
        return task.eval()

    local = fit(shards, tmp_path / "local")
    with serve(shards) as url:
        remote = fit(url, tmp_path / "remote")
        for k, v in local.state_dict().items():
            assert torch.equal(v, remote.state_dict()[k]), k
        rep = evaluate(remote, "frozen", url, "train", n_boot=20, ablation=False, landmark_days=30)
        text = write_report([rep], tmp_path / "report", "train").read_text()
    ref = evaluate(local, "frozen", shards, "train", n_boot=20, ablation=False, landmark_days=30)
    assert len(rep.predictions) == len(ref.predictions) >= 10
    assert np.array_equal(rep.predictions.risk, ref.predictions.risk)
    assert rep.metrics["survival"]["c_index"].value == ref.metrics["survival"]["c_index"].value
    assert url in text  # TRIPOD 5a: the data source is the server's folder
