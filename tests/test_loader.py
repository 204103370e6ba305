"""Loader: batches, splitting across ranks x workers, even epochs, seeded shuffles, mid-epoch resume, bad shards."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from shard_edit import copy_shards, npy_bytes, reindex, rewrite_member

import datamodules.loader as loader_module
from datamodules.collate import Collator
from datamodules.datamodule import OmniDataModule, ShardLoader
from datamodules.loader import CropConfig, ShardDataset, crop_timeline
from datamodules.schema import MODALITIES, DataError, Event, Measurement, Timeline
from datamodules.shards.format import load_index, sha256_file
from encoders.base import nan_mask


def _keys(loader) -> list[str]:
    return [k for batch in loader for k in batch.keys]


def test_batches_hold_all_modalities_in_canonical_layouts(shards: Path) -> None:
    ds = ShardDataset(shards, "train", shuffle=False)
    timelines = list(ds)
    batch = Collator(ds.specs, ds.index["clinical_codes"])(timelines)
    assert set(batch.modalities) == set(MODALITIES)
    for m, mb in batch.modalities.items():
        n = len(mb)
        assert mb.subject.shape == mb.event.shape == mb.time_days.shape == (n,)
        assert int(mb.subject.max()) < len(batch)
        if m == "clinical":
            assert mb.data.dtype == torch.long and (mb.data > 0).all()  # train codes are all in the vocabulary
            continue
        assert tuple(mb.data.shape) == (n, *ds.specs[m].shape()), m
        # NaN marks what is missing (ECG, wearable, omics; masked by the encoder); all else is finite
        assert ds.specs[m].nan_is_missing or torch.isfinite(mb.data.float()).all(), m
        assert (mb.mask is None) == (ds.specs[m].variable_axis is None), m
    assert batch.modalities["gait"].data.dtype == torch.uint8
    assert batch.modalities["mri"].data.dtype == batch.modalities["voice"].data.dtype == torch.float16
    ecg = batch.modalities["ecg"]
    data, mask = nan_mask(ecg.data, (0, 1))  # what the ECG encoder sees
    assert mask.shape == (len(ecg), 12) and mask.any() and not mask.all()  # the cohort has missing leads
    assert (data[~mask] == 0).all() and torch.isfinite(data).all()
    assert torch.isnan(ecg.data[~mask]).all()  # a missing lead: NaN through and through
    voice = batch.modalities["voice"]
    assert voice.mask.shape == (len(voice), ds.specs["voice"].max_samples)
    wear = batch.modalities["wearable"]
    assert torch.isnan(wear.data).any() and not torch.isnan(wear.data).all()  # the cohort has gaps
    # events are in time order within each subject and ages grow with time
    for tl in timelines:
        times = [e.time_days for e in tl.events]
        assert times == sorted(times) and times[0] == 0.0
    assert "disease" in batch.labels and batch.labels["disease"][0].shape == (len(batch),)


@pytest.mark.parametrize("split", ["train", "val"])  # many shards (dealt by shard) / fewer shards than slots
def test_every_sample_once_across_2_ranks_x_2_workers(
    shards: Path, monkeypatch: pytest.MonkeyPatch, split: str
) -> None:
    info = load_index(shards)["splits"][split]
    assert (len(info["shards"]) >= 4) == (split == "train")
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = ShardLoader(ShardDataset(shards, split, seed=3), batch_size=2, num_workers=2)
        batches = list(loader)
        assert len(loader) == len(batches)  # the progress bar's length is this rank's true count
        seen += [k for b in batches for k in b.keys]
    assert len(seen) == info["samples"] and len(set(seen)) == info["samples"]


@pytest.fixture(scope="module")
def uneven(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The test shards with the train split regrouped into shards of very unequal sizes (9, 1, 2, ..., 2
    samples); also returns key -> shard name."""
    root = tmp_path_factory.mktemp("uneven")
    shutil.copytree(shards, root, dirs_exist_ok=True)
    index = load_index(root)
    samples: list[list[tuple[tarfile.TarInfo, bytes]]] = []
    for shard in index["splits"]["train"]["shards"]:
        with tarfile.open(root / shard["name"]) as tar:
            for m in tar.getmembers():
                if not samples or samples[-1][0][0].name.split(".")[0] != m.name.split(".")[0]:
                    samples.append([])
                samples[-1].append((m, tar.extractfile(m).read()))
        (root / shard["name"]).unlink()
    n = len(samples)
    sizes, where, entries = [9, 1, 2, n - 14, 2], {}, []
    assert n > 14 and sum(sizes) == n
    for i, size in enumerate(sizes):
        name = f"train-uneven-{i}.tar"
        with tarfile.open(root / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples[:size]:
                where[sample[0][0].name.split(".")[0]] = name
                for m, data in sample:
                    tar.addfile(m, io.BytesIO(data))
        samples = samples[size:]
        entries.append(
            {"name": name, "samples": size, "bytes": (root / name).stat().st_size, "sha256": sha256_file(root / name)}
        )
    index["splits"]["train"]["shards"] = entries
    (root / "index.json").write_text(json.dumps(index))
    return root, where


def _ranks(monkeypatch: pytest.MonkeyPatch, world: int, make) -> list[list]:
    """Every simulated rank's batches (one epoch) of ``make()``'s loader, checking its length on the way."""
    out = []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        loader = make()
        out.append(list(loader))
        assert len(loader) == len(out[-1])  # what Lightning and the progress bar expect is what comes
    return out


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_even_epochs_give_every_rank_the_same_batches_and_keep_every_sample(
    uneven: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch, world: int, num_workers: int
) -> None:
    root, _ = uneven
    ds = ShardDataset(root, "train", seed=3, even=True)
    nslots = world * max(num_workers, 1)
    pad = ds.padding_per_epoch(nslots)
    assert 0 <= pad < nslots and (ds.num_samples + pad) % nslots == 0

    def make() -> ShardLoader:
        return ShardLoader(ShardDataset(root, "train", seed=3, even=True), batch_size=2, num_workers=num_workers)

    ranks = _ranks(monkeypatch, world, make)
    assert len({len(batches) for batches in ranks}) == 1  # no rank waits for another at the epoch end
    rows = [(k, bool(p)) for batches in ranks for b in batches for k, p in zip(b.keys, b.padding)]
    real = [k for k, p in rows if not p]
    assert sorted(real) == sorted(set(real)) and len(real) == ds.num_samples  # every sample exactly once
    repeats = [k for k, p in rows if p]
    assert len(repeats) == pad and set(repeats) <= set(real)
    again = [
        (k, bool(p)) for batches in _ranks(monkeypatch, world, make) for b in batches for k, p in zip(b.keys, b.padding)
    ]
    assert again == rows  # padding is deterministic per (seed, epoch)


def test_ranks_read_only_the_shards_that_hold_their_part(
    uneven: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, where = uneven
    opened: list[str] = []
    real_open = loader_module.tar_samples

    def spy(path):
        opened.append(Path(path).name)
        return real_open(path)

    monkeypatch.setattr(loader_module, "tar_samples", spy)
    nshards = len(set(where.values()))
    reads = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        opened.clear()
        keys = _keys(ShardLoader(ShardDataset(root, "train", seed=1, even=True), batch_size=4))
        assert {where[k] for k in keys} <= set(opened) and len(set(opened)) < nshards
        assert len(opened) - len(set(opened)) <= 1  # only a padding repeat (even epochs) opens one again
        reads.append(len(set(opened)))
    assert sum(reads) <= nshards + 2  # a shard on a boundary between two ranks is read by both


def test_even_epochs_pad_for_skipped_samples(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _, _ = _rewrite_member(shards, tmp_path, lambda n: n.endswith(".npy"), lambda d: d[:20])

    def make() -> ShardLoader:
        return ShardLoader(ShardDataset(root, "train", seed=2, on_error="skip", even=True), batch_size=3)

    ranks = _ranks(monkeypatch, 2, make)
    assert len(ranks[0]) == len(ranks[1])
    rows = [(k, bool(p)) for batches in ranks for b in batches for k, p in zip(b.keys, b.padding)]
    real = [k for k, p in rows if not p]
    n = load_index(root)["splits"]["train"]["samples"]
    assert len(real) == len(set(real)) == n - 1  # the bad sample is skipped, every other one seen
    assert sum(p for _, p in rows) == ShardDataset(root, "train", even=True).padding_per_epoch(2) + 1


def test_even_epochs_with_nothing_readable_say_so(shards: Path, tmp_path: Path) -> None:
    root = tmp_path / "junk"
    shutil.copytree(shards, root)
    for shard in load_index(root)["splits"]["train"]["shards"]:
        (root / shard["name"]).write_bytes(b"not a tar file" * 100)
    with pytest.raises(DataError, match="no sample of split 'train' gives a timeline"):  # not an endless loop
        list(ShardDataset(root, "train", on_error="skip", even=True))
    assert list(ShardDataset(root, "train", on_error="skip")) == []


def test_more_workers_than_shards_does_not_hang(shards: Path) -> None:
    ds = ShardDataset(shards, "val", shuffle=False)
    assert len(ds.urls) < 4 and ds.num_samples > 0
    loader = ShardLoader(ds, batch_size=1, num_workers=4)
    assert sorted(_keys(loader)) == sorted(t.key for t in ShardDataset(shards, "val", shuffle=False))


def test_shuffle_is_seeded_and_changes_per_epoch(shards: Path) -> None:
    a = ShardLoader(ShardDataset(shards, "train", seed=1), batch_size=3)
    b = ShardLoader(ShardDataset(shards, "train", seed=1), batch_size=3)
    e0, e1 = _keys(a), _keys(a)
    assert e0 == _keys(b) and e1 == _keys(b)
    assert e0 != e1 and sorted(e0) == sorted(e1)
    assert _keys(ShardLoader(ShardDataset(shards, "train", seed=2), batch_size=3)) != e0


@pytest.mark.parametrize(("num_workers", "even"), [(0, False), (2, False), (2, True)])
def test_resume_mid_epoch_reproduces_the_uninterrupted_stream(
    shards: Path, monkeypatch: pytest.MonkeyPatch, num_workers: int, even: bool
) -> None:
    if even:  # rank 0 of 2: each of its workers ends on a repeat, which the resumed part holds
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "2")

    def loader() -> ShardLoader:
        return ShardLoader(
            ShardDataset(shards, "train", seed=5, crop=CropConfig(max_events=3), even=even),
            batch_size=2,
            num_workers=num_workers,
        )

    def rows(loader: ShardLoader) -> list[tuple]:
        return [(b.keys, b.num_events.tolist(), b.padding.tolist()) for b in loader]

    full = loader()
    ref = [rows(full) for _ in range(2)]  # two epochs
    assert any(True in pad for _, _, pad in ref[1][3:]) == even
    part = loader()
    _keys(part)  # epoch 0 complete
    it = iter(part)
    got = [next(it).keys for _ in range(3)]
    state = part.state_dict()
    del it
    resumed = loader()
    resumed.load_state_dict(state)
    rest = rows(resumed)
    assert got + [k for k, _, _ in rest] == [k for k, _, _ in ref[1]]
    assert rest == ref[1][3:]  # same crops and the same repeats too


def _rewrite_member(shards: Path, tmp_path: Path, pick, change) -> tuple[Path, str, str]:
    """Copy the shards, then rewrite the first member ``pick(name)`` accepts with ``change(bytes)``, with
    matching checksums (a writer's bug, not damage on disk: only the member checks can catch it)."""
    root = copy_shards(shards, tmp_path / "c")
    return (root, *rewrite_member(root, pick, change))


def _sample_starts(path: Path) -> list[int]:
    with tarfile.open(path) as tar:
        return [m.offset for m in tar.getmembers() if m.name.endswith(".meta.json")]


@pytest.mark.parametrize("where", ["mid-shard", "sample boundary", "sample boundary, index rewritten"])
def test_truncated_shard_raises_naming_it_or_is_skipped_exactly(shards: Path, tmp_path: Path, where: str) -> None:
    root = copy_shards(shards, tmp_path / "c")
    entry = load_index(root)["splits"]["train"]["shards"][0]
    name, path = entry["name"], root / entry["name"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100] if where == "mid-shard" else data[: _sample_starts(path)[2]])
    if "index" in where:  # a writer killed after two samples, its index written anyway: only the reader can tell
        reindex(root, name)
    with pytest.raises(DataError, match=name):
        list(ShardDataset(root, "train", shuffle=False))
    ds = ShardDataset(root, "train", shuffle=False, on_error="skip")
    n = len(list(ds))
    assert n == ds.num_samples - ds.skipped
    assert ds.skipped == (entry["samples"] if "index" not in where else entry["samples"] - 2 + 1)  # + the cut one


def test_a_missing_shard_is_named_and_skips_all_its_samples(shards: Path, tmp_path: Path) -> None:
    root = copy_shards(shards, tmp_path / "c")
    entry = load_index(root)["splits"]["train"]["shards"][1]
    (root / entry["name"]).unlink()
    with pytest.raises(DataError, match=rf"{entry['name']}: shard listed in index.json is missing"):
        list(ShardDataset(root, "train", shuffle=False))
    ds = ShardDataset(root, "train", on_error="skip")
    assert len(list(ds)) == ds.num_samples - entry["samples"] and ds.skipped == entry["samples"] > 1


@pytest.mark.parametrize("delta", [1, -1])
def test_a_sample_count_edited_in_the_index_is_caught(shards: Path, tmp_path: Path, delta: int) -> None:
    root = copy_shards(shards, tmp_path / "c")
    index = load_index(root)
    entry = index["splits"]["train"]["shards"][1]
    entry["samples"] += delta
    index["splits"]["train"]["samples"] += delta
    (root / "index.json").write_text(json.dumps(index))
    want = "promised sample" if delta > 0 else "holds more samples than"
    with pytest.raises(DataError, match=rf"{entry['name']}: .*{want}"):
        list(ShardDataset(root, "train", shuffle=False))
    entry["samples"] -= delta  # the shard's entry alone: the split's total no longer adds up
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"index.json: split 'train' lists \d+ samples but its shards hold"):
        ShardDataset(root, "train")


def test_a_flipped_bit_in_a_member_is_caught_by_its_checksum(shards: Path, tmp_path: Path) -> None:
    root = copy_shards(shards, tmp_path / "c")

    def flip(d: bytes) -> bytes:
        return d[:-10] + bytes([d[-10] ^ 0x04]) + d[-9:]  # one bit of one ECG sample: still a finite float

    name, target = rewrite_member(root, lambda n: n.endswith(".ecg.npy"), flip, consistent=False)
    reindex(root, name)  # the index's size and sha256 match: only the member checksum can tell
    key, member = target.split(".", 1)
    with pytest.raises(DataError, match=rf"{name}, key {key}, member {member}: member does not match its checksum"):
        list(ShardDataset(root, "train", shuffle=False))


def test_verify_checks_each_shards_sha256_before_using_it(shards: Path, tmp_path: Path) -> None:
    root = copy_shards(shards, tmp_path / "c")
    name = load_index(root)["splits"]["val"]["shards"][0]["name"]
    reindex(root, name, sha256="0" * 64)
    assert len(list(ShardDataset(root, "val"))) == ShardDataset(root, "val").num_samples  # the data is intact
    with pytest.raises(DataError, match=rf"{name}: shard's sha256 differs from index.json"):
        list(ShardDataset(root, "val", verify=True))


def _object_array(_: bytes) -> bytes:
    arr = np.empty(1, dtype=object)
    arr[0] = {"payload": "runs code when unpickled"}
    return npy_bytes(arr, allow_pickle=True)


@pytest.mark.parametrize(
    ("suffix", "change", "message"),
    [
        (
            ".mri.npy",
            lambda d: npy_bytes(np.load(io.BytesIO(d)).astype(np.float64) * 1e6),
            "stored as float64, its spec stores float16",
        ),
        (".ecg.npy", _object_array, r"not a numeric array \(it holds Python objects"),
        (".voice.npy", lambda d: b"\x80\x04garbage" * 50, r"not a numeric array \(not .npy data\)"),
    ],
)
def test_members_are_checked_as_stored_never_unpickled(
    shards: Path, tmp_path: Path, suffix: str, change, message: str
) -> None:
    root, name, target = _rewrite_member(shards, tmp_path, lambda n: n.endswith(suffix), change)
    key, member = target.split(".", 1)
    with pytest.raises(DataError, match=rf"{name}, key {key}, member {member}: .*{message}") as err:
        list(ShardDataset(root, "train", shuffle=False))
    assert "allow_pickle" not in str(err.value) and str(err.value).count(name) == 1  # said once


def test_a_worker_error_reaches_the_user_as_one_line(shards: Path, tmp_path: Path) -> None:
    root = copy_shards(shards, tmp_path / "c")
    entry = load_index(root)["splits"]["val"]["shards"][0]
    (root / entry["name"]).unlink()
    with pytest.raises(DataError) as err:
        list(ShardLoader(ShardDataset(root, "val", shuffle=False), batch_size=2, num_workers=2))
    text = str(err.value)
    assert text.startswith(f"{entry['name']}: shard listed in index.json is missing") and "\n" not in text
    assert "Traceback" not in text and "DataLoader worker" in text


def test_corrupt_member_raises_naming_shard_key_member(shards: Path, tmp_path: Path) -> None:
    root, name, target = _rewrite_member(shards, tmp_path, lambda n: n.endswith(".npy"), lambda d: d[:20])
    key, member = target.split(".", 1)
    with pytest.raises(DataError, match=rf"{name}, key {key}, member {member}: cannot decode member"):
        list(ShardDataset(root, "train", shuffle=False))
    ds = ShardDataset(root, "train", shuffle=False, on_error="skip")
    assert len(list(ds)) == ds.num_samples - 1 and ds.skipped == 1


def _with_nan(data: bytes) -> bytes:
    arr = np.load(io.BytesIO(data))
    arr.flat[0] = np.nan
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_member_with_nan_is_caught(shards: Path, tmp_path: Path) -> None:
    root, name, target = _rewrite_member(shards, tmp_path, lambda n: n.endswith((".mri.npy", ".voice.npy")), _with_nan)
    with pytest.raises(DataError, match=rf"{name}, key .*, member .*: .* NaN or Inf"):
        list(ShardDataset(root, "train", shuffle=False))


def _timeline(n: int) -> Timeline:
    return Timeline(
        "k", events=[Event(float(i), 1000.0 + i, [Measurement("clinical", code="x")] * (1 + i % 3)) for i in range(n)]
    )


def test_crop_windows() -> None:
    rng = np.random.default_rng(0)
    tl = _timeline(10)
    recent = crop_timeline(tl, CropConfig(max_events=4, random=False), rng)
    assert [e.time_days for e in recent.events] == [6.0, 7.0, 8.0, 9.0]
    starts = {crop_timeline(tl, CropConfig(max_events=4), rng).events[0].time_days for _ in range(50)}
    assert starts == {0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0}
    tok = crop_timeline(tl, CropConfig(max_tokens=5, random=False), rng)  # costs 1,2,3,1,2,3,1,2,3,1
    assert [e.time_days for e in tok.events] == [8.0, 9.0]
    big = crop_timeline(_timeline(3), CropConfig(max_tokens=2, tokens_per_instance={"clinical": 1}, random=False), rng)
    assert len(big.events) == 1 and len(big.events[0].measurements) == 2
    assert crop_timeline(tl, CropConfig(), rng) is tl


def test_datamodule_feeds_a_lightning_fit(shards: Path, tmp_path: Path) -> None:
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            ages = torch.cat([b.age_days for b in batch.modalities.values()]) / 36500
            return ((self.w - ages) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = OmniDataModule(shards, batch_size=4, max_events=4)
    trainer = L.Trainer(
        max_steps=3, logger=False, enable_progress_bar=False, default_root_dir=tmp_path, enable_model_summary=False
    )
    trainer.fit(Tiny(), datamodule=dm)
    ckpt = torch.load(next((tmp_path / "checkpoints").glob("*.ckpt")), weights_only=True)
    assert float(Tiny().w) == 0.0 and trainer.global_step == 3
    state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert "omnimodal_epoch" in state  # the loader's position is saved for a mid-epoch resume
