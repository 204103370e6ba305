"""Fault injection on shard folders: no sample is ever lost silently.

Each case corrupts a copy of the session's shards (byte flips in tar headers, member payloads and the
end-of-archive zeros; truncations at and between sample boundaries; deleted shards; edited ``index.json``
entries; members replaced by float64, pickled or garbage ``.npy`` data, by a writer that signed them). Then:

- the loader (``on_error='raise'``) raises a DataError naming the shard (and key / member where there is
  one), or yields exactly the original timelines (a flip in tar padding changes no data); with
  ``verify=True`` it always raises;
- with ``on_error='skip'`` it yields exactly ``len(ds) - skipped`` timelines, all identical to the
  originals, and every original sample it does not yield is counted in ``skipped`` or lies in a shard that
  one of its errors names;
- ``omnimodal-shard verify`` exits 1 naming the shard.

The summary line (printed) gives the figures: cases, caught as an error, caught as an exact skip, harmless,
silent losses (asserted 0).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from shard_edit import npy_bytes, read_members, reindex, rewrite_member, write_members

from datamodules.loader import ShardDataset
from datamodules.schema import DataError, Timeline, dumps
from datamodules.shards.cli import main as shard_cli
from datamodules.shards.format import load_index, tar_samples

pytestmark = pytest.mark.slow


@dataclass
class Case:
    name: str
    split: str
    edit: Callable[[Path], None]
    expect: tuple[str, ...]  # what the loader's error must name (the shard, and key / member where there is one)


def _digest(tl: Timeline) -> str:
    h = hashlib.sha256(
        json.dumps(
            [tl.key, tl.static, {k: [v.value, v.time_days] for k, v in tl.labels.items()}], sort_keys=True
        ).encode()
    )
    for ev in tl.events:
        h.update(np.float64([ev.time_days, ev.age_days]).tobytes())
        for m in ev.measurements:
            h.update(f"{m.modality}|{m.code}|{m.value}".encode())
            if m.data is not None:
                h.update(m.data.tobytes())
    return h.hexdigest()


def _flip(path: Path, pos: int, xor: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= xor
    path.write_bytes(bytes(data))


def _layout(path: Path) -> list[tuple[str, int, int, int]]:
    """(member name, header offset, data offset, size) of every member, in order."""
    with tarfile.open(path) as tar:
        return [(m.name, m.offset, m.offset_data, m.size) for m in tar.getmembers()]


def _index_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        index = load_index(root)
        change(index)
        (root / "index.json").write_bytes(dumps(index))

    return edit


def _cases(shards: Path) -> list[Case]:
    rng = np.random.default_rng(2024)
    index = load_index(shards)
    train = [s["name"] for s in index["splits"]["train"]["shards"]]
    val = index["splits"]["val"]["shards"][0]["name"]
    cases: list[Case] = []

    # random byte flips: tar headers, member payloads, the zeros after the last member, tar padding
    for i in range(48):
        shard = train[i % len(train)]
        layout = _layout(shards / shard)
        name, header, data, size = layout[int(rng.integers(len(layout)))]
        key, member = name.split(".", 1)
        where = ("header", "payload", "end", "padding")[i % 4]
        if where == "header":
            pos, expect = header + int(rng.integers(512)), (shard,)
        elif where == "payload":
            pos, expect = data + int(rng.integers(size)), (shard, f"key {key}", member)
        elif where == "end":
            last = layout[-1]
            end = last[2] + last[3] + (-last[3]) % 512
            pos, expect = end + int(rng.integers((shards / shard).stat().st_size - end)), (shard,)
        else:
            if size % 512 == 0:
                continue
            pos, expect = data + size + int(rng.integers(512 - size % 512)), (shard,)
        xor = int(rng.integers(1, 256))
        cases.append(
            Case(f"flip {where} {shard} @{pos}", "train", lambda r, s=shard, p=pos, x=xor: _flip(r / s, p, x), expect)
        )

    # truncations: at a sample boundary and inside a member / a header; raw, or with the index rewritten to match
    def boundary(path: Path, k: int) -> int:
        starts = [h for n, h, _, _ in _layout(path) if n.endswith(".meta.json")]
        return starts[k % len(starts)]

    for i, shard in enumerate(train[:3]):
        for reidx in (False, True):

            def cut(root: Path, s: str = shard, k: int = i + 1, ri: bool = reidx, mid: bool = False) -> None:
                data = (root / s).read_bytes()
                at = boundary(root / s, k) + (700 if mid else 0)
                (root / s).write_bytes(data[:at])
                if ri:
                    reindex(root, s)

            tag = " +index" if reidx else ""
            cases.append(Case(f"truncate at a sample boundary {shard}{tag}", "train", cut, (shard,)))
            cases.append(
                Case(f"truncate inside a member {shard}{tag}", "train", lambda r, c=cut: c(r, mid=True), (shard,))
            )
            cases.append(
                Case(
                    f"truncate inside a header {shard}{tag}",
                    "train",
                    lambda r, s=shard, ri=reidx: _truncate(r, s, 1500 + 512 * 3 + 100, ri),
                    (shard,),
                )
            )
    cases.append(
        Case(f"truncate to 0 bytes {train[0]} +index", "train", lambda r: _truncate(r, train[0], 0, True), (train[0],))
    )

    def fewer(root: Path, s: str = train[1]) -> None:  # a well-formed tar, one sample short of its entry
        members = read_members(root / s)
        last_key = members[-1][0].name.split(".")[0]
        write_members(root / s, [(m, d) for m, d in members if not m.name.startswith(last_key)])
        reindex(root, s)

    cases.append(Case(f"rewritten one sample short {train[1]} +index", "train", fewer, (train[1],)))

    # deleted shards
    cases.append(Case(f"delete {train[2]}", "train", lambda r: (r / train[2]).unlink(), (train[2],)))
    cases.append(Case(f"delete {val}", "val", lambda r: (r / val).unlink(), (val,)))

    # edited index entries
    def entry(ix: dict, k: int = 1) -> dict:
        return ix["splits"]["train"]["shards"][k]

    def samples(delta: int, total: bool) -> Callable[[dict], None]:
        def change(ix: dict) -> None:
            entry(ix)["samples"] += delta
            ix["splits"]["train"]["samples"] += delta if total else 0

        return change

    def drop_entry(total: bool) -> Callable[[dict], None]:
        def change(ix: dict) -> None:
            gone = ix["splits"]["train"]["shards"].pop(1)
            ix["splits"]["train"]["samples"] -= gone["samples"] if total else 0

        return change

    edits = {
        "samples +1 (split total too)": (samples(1, True), (train[1],)),
        "samples -1 (split total too)": (samples(-1, True), (train[1],)),
        "samples +1 (entry only)": (samples(1, False), ("index.json",)),
        "bytes +1": (lambda ix: entry(ix).update(bytes=entry(ix)["bytes"] + 1), (train[1],)),
        "sha256 zeroed": (lambda ix: entry(ix).update(sha256="0" * 64), (train[1],)),
        "sha256 removed": (lambda ix: entry(ix).pop("sha256"), (train[1],)),
        "bytes removed": (lambda ix: entry(ix).pop("bytes"), (train[1],)),
        "entry removed (split total too)": (drop_entry(True), (train[1],)),
        "entry removed (entry only)": (drop_entry(False), ("index.json",)),
        "split total -1": (
            lambda ix: ix["splits"]["train"].update(samples=ix["splits"]["train"]["samples"] - 1),
            ("index.json",),
        ),
    }
    for label, (change, expect) in edits.items():
        cases.append(Case(f"index: {label}", "train", _index_edit(change), expect))

    # members replaced, by a writer that signed them (checksums and index match): only member checks can tell
    def member_case(label: str, suffix: str, change: Callable[[bytes], bytes], consistent: bool = True) -> Case:
        def edit(root: Path) -> None:
            rewrite_member(root, lambda n: n.endswith(suffix), change, consistent=consistent)

        # the shard and member are known once edited: "@member" has the test find them (_member_expect)
        return Case(f"member {label}", "train", edit, ("@member",))

    def scaled64(d: bytes) -> bytes:
        return npy_bytes(np.load(io.BytesIO(d)).astype(np.float64) * 1e6)

    def pickled(d: bytes) -> bytes:
        arr = np.empty(2, dtype=object)
        arr[0], arr[1] = {"x": 1}, [1, 2]
        return npy_bytes(arr, allow_pickle=True)

    def nan(d: bytes) -> bytes:
        a = np.load(io.BytesIO(d))
        a.flat[0] = np.nan
        return npy_bytes(a)

    cases += [
        member_case("mri as float64 x 1e6", ".mri.npy", scaled64),
        member_case("ecg as float64", ".ecg.npy", lambda d: npy_bytes(np.load(io.BytesIO(d)).astype(np.float64))),
        member_case(
            "face frames as float32", ".face.npy", lambda d: npy_bytes(np.load(io.BytesIO(d)).astype(np.float32))
        ),
        member_case("voice as a pickle .npy", ".voice.npy", pickled),
        member_case("wearable as raw pickle bytes", ".wearable.npy", lambda d: pickle.dumps({"a": 1})),
        member_case("omics as garbage", ".omics.npy", lambda d: bytes(range(256)) * 3),
        member_case("omics of the wrong shape", ".omics.npy", lambda d: npy_bytes(np.zeros(5, np.float32))),
        member_case("mri with a NaN", ".mri.npy", nan),
        member_case("wearable window all NaN (nothing observed)", ".wearable.npy", _window_missing),
        member_case("ecg with an Inf (NaN may mark missing leads, Inf never)", ".ecg.npy", _with_inf),
        member_case("voice with a -Inf (float16, checked by its bits)", ".voice.npy", lambda d: _with_inf(d, -np.inf)),
        member_case("ecg garbage, unsigned", ".ecg.npy", lambda d: d[:40] + b"\x00" * (len(d) - 40), consistent=False),
        member_case(
            "meta.json: a wearable window one value later, signed", ".meta.json", _packed_edit("wearable", 1, 1, 0)
        ),
        member_case("meta.json: an mri one slice short, signed", ".meta.json", _packed_edit("mri", 0, 0, -1)),
        member_case("meta.json: the last ecg one sample longer, signed", ".meta.json", _packed_edit("ecg", -1, 0, 1)),
        member_case(
            "meta.json value changed, unsigned",
            ".meta.json",
            lambda d: d.replace(b'"time_days":0', b'"time_days":1', 1),
            consistent=False,
        ),
    ]

    def extra_member(root: Path, s: str = train[0]) -> None:
        members = read_members(root / s)
        key = members[0][0].name.split(".")[0]
        info = tarfile.TarInfo(f"{key}.zzzz.npy")
        members.insert(1, (info, npy_bytes(np.zeros(3, np.float32))))
        write_members(root / s, members)
        reindex(root, s)

    def missing_member(root: Path, s: str = train[0]) -> None:
        members = read_members(root / s)
        key = members[0][0].name.split(".")[0]
        drop = next(m.name for m, _ in members if m.name.startswith(key) and m.name.endswith(".npy"))
        write_members(root / s, [(m, d) for m, d in members if m.name != drop])
        reindex(root, s)

    def duplicated_sample(root: Path, s: str = train[0]) -> None:
        members = read_members(root / s)
        key = members[0][0].name.split(".")[0]
        first = [(m, d) for m, d in members if m.name.startswith(key)]
        write_members(root / s, members + [(tarfile.TarInfo(m.name), d) for m, d in first])
        reindex(root, s)

    first_key = read_members(shards / train[0])[0][0].name.split(".")[0]
    cases += [
        Case(f"extra member in {train[0]}", "train", extra_member, (train[0], f"key {first_key}")),
        Case(f"member missing in {train[0]}", "train", missing_member, (train[0], f"key {first_key}")),
        Case(f"a sample twice in {train[0]}", "train", duplicated_sample, (train[0],)),
    ]
    return cases


def _window_missing(d: bytes) -> bytes:
    """The second wearable window of the member (3 channels x 1440 minutes) all NaN: missing through and through."""
    a = np.load(io.BytesIO(d))
    a[3 * 1440 : 6 * 1440] = np.nan
    return npy_bytes(a)


def _with_inf(d: bytes, value: float = np.inf) -> bytes:
    a = np.load(io.BytesIO(d))
    a[-1] = value
    return npy_bytes(a)


def _packed_edit(modality: str, which: int, offset: int, last_axis: int) -> Callable[[bytes], bytes]:
    """An edit of ``meta.json`` (re-signed by the case): the ``which``-th ``modality`` measurement placed
    ``offset`` values later in its member, its last axis ``last_axis`` longer. Its member no longer tiles."""

    def change(d: bytes) -> bytes:
        meta = json.loads(d)
        entries = [m for ev in meta["events"] for m in ev["measurements"] if m["modality"] == modality]
        entries[which]["offset"] += offset
        entries[which]["shape"][-1] += last_axis
        return dumps(meta)

    return change


def _truncate(root: Path, shard: str, at: int, reidx: bool) -> None:
    data = (root / shard).read_bytes()
    (root / shard).write_bytes(data[:at])
    if reidx:
        reindex(root, shard)


def _member_expect(root: Path, original: Path) -> tuple[str, ...]:
    """Shard, key and member that differ between the two folders (for the member cases)."""
    for p in sorted(root.glob("*.tar")):
        if p.read_bytes() != (original / p.name).read_bytes():
            old = dict((m.name, d) for m, d in read_members(original / p.name))
            changed = [m.name for m, d in read_members(p) if old.get(m.name) != d]
            name = next((n for n in changed if not n.endswith(".meta.json")), changed[0])  # meta.json: re-signed
            key, member = name.split(".", 1)
            return p.name, f"key {key}", member
    raise AssertionError("nothing changed")


def test_no_sample_is_lost_silently(shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original: dict[str, dict[str, str]] = {}
    home: dict[str, str] = {}  # key -> its shard
    for split in ("train", "val"):
        original[split] = {tl.key: _digest(tl) for tl in ShardDataset(shards, split, shuffle=False)}
        for url in ShardDataset(shards, split).urls:
            home.update({s["__key__"]: Path(url).name for s in tar_samples(url)})
    tally = {"cases": 0, "error": 0, "exact skip": 0, "harmless": 0, "silent losses": 0}
    failures: list[str] = []
    harmless: list[str] = []
    for i, case in enumerate(_cases(shards)):
        root = tmp_path / f"case{i}"
        shutil.copytree(shards, root)
        case.edit(root)
        expect = _member_expect(root, shards) if case.expect == ("@member",) else case.expect
        tally["cases"] += 1
        orig = original[case.split]

        # 1. raise: an error naming shard (key, member), or exactly the original timelines
        try:
            got = {tl.key: _digest(tl) for tl in ShardDataset(root, case.split, shuffle=False)}
        except DataError as err:
            tally["error"] += 1
            if not all(e in str(err) for e in expect):
                failures.append(f"{case.name}: error does not name {expect}: {err}")
        else:
            if got == orig:
                tally["harmless"] += 1
                harmless.append(case.name)
            else:
                tally["silent losses"] += len(set(orig) - set(got)) or 1
                failures.append(
                    f"{case.name}: no error, but {len(set(orig) - set(got))} samples lost "
                    f"/ {sum(got.get(k) != v for k, v in orig.items())} changed"
                )
        # 2. verify=True always raises: every case changed the bytes or the index
        try:
            list(ShardDataset(root, case.split, shuffle=False, verify=True))
            failures.append(f"{case.name}: verify=True passed")
        except DataError:
            pass
        # 3. skip: exactly len - skipped timelines, unchanged, every lost sample counted or in a named shard
        try:
            ds = ShardDataset(root, case.split, shuffle=False, on_error="skip")
            out = list(ds)
        except DataError:  # an index that cannot be read at all: refused, not skipped
            pass
        else:
            keys = [tl.key for tl in out]
            named = {s for s in home.values() if any(s in e for e in ds.errors)}
            lost = set(orig) - set(keys)
            silent = [k for k in lost if home[k] not in named]
            changed = [tl.key for tl in out if orig.get(tl.key) != _digest(tl)]
            if len(out) != ds.num_samples - ds.skipped or len(set(keys)) != len(keys) or silent or changed:
                tally["silent losses"] += len(silent) + len(changed) + abs(len(out) - (ds.num_samples - ds.skipped))
                failures.append(
                    f"{case.name}: skip yielded {len(out)} of {ds.num_samples} with skipped={ds.skipped}; "
                    f"{len(silent)} lost unreported, {len(changed)} changed"
                )
            elif ds.skipped or ds.errors:
                tally["exact skip"] += 1
        # 4. omnimodal-shard verify names the shard
        rc = shard_cli(["verify", str(root)])
        err = capsys.readouterr().err
        if rc != 1 or expect[0] not in err:
            failures.append(f"{case.name}: verify exit {rc}, does not name {expect[0]}: {err[-300:]}")
        shutil.rmtree(root)
    line = (
        "fault injection: {cases} cases; loader raised a DataError naming the shard: {error}; "
        "exact skips: {exact skip}; harmless (data unchanged): {harmless}; silent losses: {silent losses}"
    ).format(**tally)
    with capsys.disabled():
        print(f"\n{line}\n  harmless: {', '.join(harmless)}")
    assert not failures, "\n".join([line, *failures])
    assert tally["silent losses"] == 0 and tally["cases"] >= 60
