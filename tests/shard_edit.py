"""Editing copies of shard folders for tests: rewrite members, re-sign them, fix up ``index.json``.

A *consistent* edit (``resign=True``, ``reindex=True``) plays a buggy writer: the bad member comes with
matching checksums in ``meta.json`` and a matching size and sha256 in ``index.json``, so only the loader's
member checks (decoding, dtype, shape, finiteness) can catch it.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.schema import dumps
from datamodules.shards.format import checksum, load_index, sha256_file


def npy_bytes(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    """``arr`` as ``.npy`` bytes (``allow_pickle`` to write an object array, as an attacker might)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def copy_shards(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read_members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def write_members(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def reindex(root: Path, name: str, **fields: Any) -> None:
    """Set shard ``name``'s ``index.json`` entry: ``fields`` as given, else its file's true bytes and sha256."""
    index = load_index(root)
    for info in index["splits"].values():
        for entry in info["shards"]:
            if entry["name"] == name:
                entry.update({"bytes": (root / name).stat().st_size, "sha256": sha256_file(root / name)})
                entry.update(fields)
    (root / "index.json").write_bytes(dumps(index))


def resign(members: list[tuple[tarfile.TarInfo, bytes]], key: str) -> None:
    """Recompute the checksums in ``key``'s ``meta.json`` (members and its own) after an edit."""
    by_name = {m.name: i for i, (m, _) in enumerate(members)}
    i = by_name[f"{key}.meta.json"]
    meta = json.loads(members[i][1])
    meta.pop("crc32", None)
    for name, inv in meta["inventory"].items():
        inv["crc32"] = checksum(members[by_name[f"{key}.{name}"]][1])
    meta["crc32"] = checksum(dumps(meta))
    members[i] = (members[i][0], dumps(meta))


def rewrite_member(
    root: Path,
    pick: Callable[[str], bool],
    change: Callable[[bytes], bytes],
    split: str = "train",
    consistent: bool = True,
) -> tuple[str, str]:
    """Rewrite the first member of ``split`` that ``pick(name)`` accepts with ``change(bytes)``, in place in
    the folder ``root``; ``consistent``: re-sign it and fix the index. Returns (shard name, member name)."""
    for entry in load_index(root)["splits"][split]["shards"]:
        members = read_members(root / entry["name"])
        target = next((m.name for m, _ in members if pick(m.name)), None)
        if target is None:
            continue
        members = [(m, change(d) if m.name == target else d) for m, d in members]
        if consistent:
            resign(members, target.split(".", 1)[0])
        write_members(root / entry["name"], members)
        if consistent:
            reindex(root, entry["name"])
        return entry["name"], target
    raise AssertionError("no member to rewrite")
