"""Shard layout (schema 2): one member per modality and sample, its measurements end to end: how they are
decoded, and what a reader must refuse."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.collate import Collator
from datamodules.loader import ShardDataset
from datamodules.samples import decode_timeline, finiteness
from datamodules.schema import DataError, dumps, loads
from datamodules.shards.format import checksum, load_index, tar_samples


def _first_shard(shards: Path) -> Path:
    return shards / load_index(shards)["splits"]["train"]["shards"][0]["name"]


def test_each_modality_is_one_member_its_measurements_end_to_end(shards: Path) -> None:
    ds = ShardDataset(shards, "train", shuffle=False)
    for sample in tar_samples(_first_shard(shards)):
        meta = json.loads(sample["meta.json"])
        modalities = {m["modality"] for ev in meta["events"] for m in ev["measurements"]} - {"clinical"}
        assert set(sample) - {"__key__", "__url__", "meta.json"} == {f"{m}.npy" for m in modalities}
        assert set(meta["inventory"]) == {f"{m}.npy" for m in modalities}
        tl = decode_timeline(sample, ds.specs)
        decoded = [x for ev in tl.events for x in ev.measurements if x.modality != "clinical"]
        entries = [m for ev in meta["events"] for m in ev["measurements"] if m["modality"] != "clinical"]
        assert len(decoded) == len(entries) > len(modalities)  # several measurements share a member
        for m in modalities:
            flat = np.load(io.BytesIO(sample[f"{m}.npy"])).astype(ds.specs[m].dtype)
            mine = [(e, x) for e, x in zip(entries, decoded) if e["modality"] == m]
            assert [e["offset"] for e, _ in mine] == list(
                np.cumsum([0] + [math.prod(e["shape"]) for e, _ in mine])[:-1]
            )
            for e, x in mine:
                want = flat[e["offset"] : e["offset"] + math.prod(e["shape"])].reshape(e["shape"])
                np.testing.assert_array_equal(x.data, want)


def test_a_member_is_used_in_place_as_it_is_stored(shards: Path) -> None:
    """ECG (stored float32), gait video (uint8) and MRI (float16) measurements are views of the member's own
    bytes from the tar reader (read once, not zeroed first), read-only: a write raises, it never reaches another
    read; MRI stays float16 into the batch (half the bytes to collate and send; its encoder casts it on the
    device). Two reads give two buffers."""
    ds = ShardDataset(shards, "train", shuffle=False)
    path = _first_shard(shards)
    sample = next(s for s in tar_samples(path) if {"ecg.npy", "gait.npy", "mri.npy"} <= set(s))
    tl = decode_timeline(sample, ds.specs)
    by = {m: [x.data for ev in tl.events for x in ev.measurements if x.modality == m] for m in ("ecg", "gait", "mri")}
    for m in ("ecg", "gait", "mri"):
        assert type(sample[f"{m}.npy"]) is bytes
        buffer = np.frombuffer(sample[f"{m}.npy"], np.uint8)
        assert all(np.shares_memory(a, buffer) and not a.flags.writeable for a in by[m])
    assert {a.dtype for a in by["mri"]} == {a.dtype for a in by["ecg"]} == {np.dtype(np.float16)}
    batch = Collator(ds.specs)([tl])
    assert batch.modalities["mri"].data.dtype == batch.modalities["ecg"].data.dtype == torch.float16
    assert batch.modalities["gait"].data.dtype == torch.uint8
    again = decode_timeline(next(s for s in tar_samples(path) if s["__key__"] == sample["__key__"]), ds.specs)
    ecg_again = next(x.data for ev in again.events for x in ev.measurements if x.modality == "ecg")
    assert not np.shares_memory(ecg_again, by["ecg"][0])
    with pytest.raises(ValueError, match="read-only"):
        by["ecg"][0][...] = 0.0  # a user who needs to write copies first
    batch.modalities["ecg"].data.zero_()  # the batch is the loader's own copy, writable
    np.testing.assert_array_equal(ecg_again, by["ecg"][0])


def test_a_tar_member_may_not_take_a_sample_field_name(tmp_path: Path) -> None:
    path = tmp_path / "train-000000.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in (("s1.meta.json", b"{}"), ("s1.__key__", b"s2")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"train-000000.tar: member 's1.__key__' has a reserved suffix"):
        list(tar_samples(path))


def test_float16_finiteness_from_the_bits_agrees_with_numpy() -> None:
    edge = np.array([0.0, -0.0, 6e-8, -6e-8, 6.1e-5, 65504.0, -65504.0, 1.0], np.float16)  # subnormal, max, ...
    assert finiteness(edge) == (None, False) and finiteness(edge[:0]) == (None, False)
    for bad in (np.inf, -np.inf, np.nan):
        x = edge.copy()
        x[3] = bad
        finite, inf = finiteness(x)
        assert finite is not None and finite.tolist() == np.isfinite(x).tolist() and inf == bool(np.isinf(bad))
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**16, 4096, dtype=np.uint16).view(np.float16)
    for chunk in np.split(bits, 512):
        finite, inf = finiteness(chunk)
        for got, want in ((finite, chunk), (finiteness(chunk.astype(np.float32))[0], chunk)):
            assert (np.ones(len(want), bool) if got is None else got).tolist() == np.isfinite(want).tolist()
        assert inf == bool(np.isinf(chunk).any()) == finiteness(chunk.astype(np.float32))[1]


def test_meta_json_parsed_by_orjson_reads_what_json_reads() -> None:
    doc = {"events": [{"measurements": [{"code": "LOINC:8480-6", "value": 136.5}], "time_days": 0.1 + 0.2}], "k": 2**40}
    assert loads(dumps(doc)) == json.loads(dumps(doc)) == doc
    nan = loads(dumps({"value": float("nan"), "hi": float("inf")}))  # what dumps may write and orjson refuses
    assert math.isnan(nan["value"]) and nan["hi"] == float("inf")
    with pytest.raises(ValueError):
        loads(b'{"events": [')


def test_an_empty_shard_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "train-000000.tar"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="without the end-of-archive marker"):
        list(tar_samples(empty))


def _resigned(sample: dict, change) -> dict:
    meta = json.loads(sample["meta.json"])
    meta.pop("crc32")
    change(meta)
    meta["crc32"] = checksum(dumps(meta))
    return {**sample, "meta.json": dumps(meta)}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda ms: ms[1].update(offset=ms[1]["offset"] + 1), r"places a measurement of \d+ values at offset"),
        (lambda ms: ms[0].update(offset=-1), "at offset -1"),
        (lambda ms: ms[0].update(offset=0.0), r"at offset 0\.0"),
        (lambda ms: ms[-1]["shape"].__setitem__(-1, ms[-1]["shape"][-1] - 1), "expected"),
        (lambda ms: ms[0].update(shape="3x1440"), "not a list of sizes"),
        (lambda ms: ms.pop(), r"member holds \d+ values, its measurements in meta.json \d+"),
    ],
    ids=["gap", "negative", "float", "short-shape", "shape-not-a-list", "values-left-over"],
)
def test_a_measurement_that_does_not_tile_its_member_is_refused(shards: Path, edit, message: str) -> None:
    """``meta.json`` (signed, as a buggy writer would) placing a wearable window where its member does not hold
    it: refused, naming the shard's key and the member, never read from the wrong place."""
    ds = ShardDataset(shards, "train", shuffle=False)
    sample = next(s for s in tar_samples(_first_shard(shards)) if "wearable.npy" in s)

    def change(meta: dict) -> None:
        entries = [m for ev in meta["events"] for m in ev["measurements"] if m["modality"] == "wearable"]
        edit(entries)
        for ev in meta["events"]:  # the popped entry leaves its event (values left over)
            ev["measurements"] = [m for m in ev["measurements"] if m["modality"] != "wearable" or m in entries]

    bad = _resigned(sample, change)
    with pytest.raises(DataError, match=message) as err:
        decode_timeline(bad, ds.specs, where=f"{_first_shard(shards).name}, key {sample['__key__']}")
    assert sample["__key__"] in str(err.value) and "wearable.npy" in str(err.value)


def test_shards_of_the_old_layout_are_refused_with_what_to_do(shards: Path, tmp_path: Path) -> None:
    index = load_index(shards)
    index["schema_version"] = 1  # one member per measurement: this loader would misread it
    (tmp_path / "index.json").write_bytes(dumps(index))
    with pytest.raises(DataError, match=r"schema version 1, this code reads 2.*rebuild them with omnimodal-shard"):
        ShardDataset(tmp_path, "train")


def test_errors_name_the_event_of_meta_json_also_when_modalities_are_left_out(shards: Path) -> None:
    ds = ShardDataset(shards, "train", shuffle=False)
    sample = next(s for s in tar_samples(_first_shard(shards)) if "wearable.npy" in s)
    meta = json.loads(sample["meta.json"])
    e, _ = [(e, m) for e, ev in enumerate(meta["events"]) for m in ev["measurements"] if m["modality"] == "wearable"][1]

    def gap(meta: dict) -> None:
        entries = [m for ev in meta["events"] for m in ev["measurements"] if m["modality"] == "wearable"]
        entries[1]["offset"] += 1

    bad = _resigned(sample, gap)
    for modalities in (None, ["wearable"]):
        with pytest.raises(DataError, match=rf"\(event {e}\)"):
            decode_timeline(bad, ds.specs, modalities=modalities)


def test_an_inventory_member_no_measurement_uses_a_float_shape_and_another_schema_are_refused(shards: Path) -> None:
    ds = ShardDataset(shards, "train", shuffle=False)
    sample = next(s for s in tar_samples(_first_shard(shards)) if "ecg.npy" in s)
    unused = _resigned(sample, lambda meta: meta["inventory"].update({"zz.npy": {"modality": "ecg", "shape": [1]}}))
    with pytest.raises(DataError, match=r"\['zz.npy'\] listed in meta.json's inventory hold no measurement"):
        decode_timeline(unused, ds.specs)

    def floats(meta: dict) -> None:
        entry = next(m for ev in meta["events"] for m in ev["measurements"] if m["modality"] == "ecg")
        entry["shape"] = [float(d) for d in entry["shape"]]

    with pytest.raises(DataError, match=r"member ecg.npy, measurement at offset 0 .*not a list of sizes"):
        decode_timeline(_resigned(sample, floats), ds.specs)
    with pytest.raises(DataError, match=r"member meta.json: written with shard schema version 1, this code reads 2"):
        decode_timeline(_resigned(sample, lambda meta: meta.update(schema_version=1)), ds.specs)


def test_a_reader_whose_metadata_would_overwrite_the_layout_stops_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_windows import T0, build, flac

    from datamodules.shards import builder

    real = builder.read_recording

    def reader(*args, **kw):
        reading = real(*args, **kw)
        reading.meta["shape"] = [1, 44100]  # the source's shape, say: not the canonical window's
        return reading

    monkeypatch.setattr(builder, "read_recording", reader)
    rows = [
        {"subject_id": "P1", "time": T0.isoformat(), "modality": "voice", "path": str(flac(tmp_path / "v.flac", 5.0))}
    ]
    with pytest.raises(DataError, match=r"the voice reader's metadata has the shard layout's key\(s\) \['shape'\]"):
        build(tmp_path, rows, workers=1)
