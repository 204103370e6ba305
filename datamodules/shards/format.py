"""Shard format: keyed subject hashes, member encoding, deterministic tar writing, the index.

A shard is a WebDataset tar ``{split}-{index:06d}.tar`` holding one sample per subject: members
``{key}.meta.json`` and ``{key}.e{index:04d}.{modality}.npy``. Tar headers carry no time, owner or
permissions that vary, so the same input gives byte-identical shards.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from ..schema import DataError

SECRET_ENV = "OMNIMODAL_SHARD_SECRET"
INDEX_NAME = "index.json"
KEY_HEX_CHARS = 24  # 96 bits: collisions are negligible for any cohort


def resolve_secret(secret: str | None = None) -> bytes:
    """The pseudonymisation secret: given explicitly (config) or from ``$OMNIMODAL_SHARD_SECRET``."""
    secret = secret if secret else os.environ.get(SECRET_ENV)
    if not secret:
        raise DataError("no pseudonymisation secret",
                        hint=f"set {SECRET_ENV} (or 'secret' in the build config) to a long random string "
                             "kept outside the shards; the same secret gives the same keys on a rebuild")
    if len(secret) < 16:
        raise DataError("pseudonymisation secret is shorter than 16 characters",
                        hint="use a long random string, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`")
    return secret.encode()


def subject_key(subject_id: str, secret: bytes) -> str:
    """Keyed hash (HMAC-SHA256) of a raw subject id: the only subject identifier that leaves the builder."""
    return hmac.new(secret, str(subject_id).encode(), hashlib.sha256).hexdigest()[:KEY_HEX_CHARS]


def member_name(index: int, modality: str) -> str:
    return f"e{index:04d}.{modality}.npy"


def encode_array(array: np.ndarray, storage_dtype: str) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array.astype(storage_dtype, copy=False)), allow_pickle=False)
    return buf.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class TarShardWriter:
    """Writes samples into ``{prefix}-{index:06d}.tar`` files, starting a new shard past a sample or
    byte limit. Each shard is written to a temporary name and renamed when complete (atomic)."""

    def __init__(self, root: Path, prefix: str, max_samples: int, max_bytes: int) -> None:
        self.root, self.prefix = root, prefix
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.shards: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._file: Any = None
        self._count = self._bytes = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        size = sum(512 + len(d) + (-len(d)) % 512 for d in members.values())
        if self._tar is not None and (self._count >= self.max_samples or self._bytes + size > self.max_bytes):
            self._finish()
        if self._tar is None:
            self._open()
        for suffix in sorted(members, key=lambda s: (s != "meta.json", s)):
            data = members[suffix]
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._bytes += size

    def close(self) -> list[dict[str, Any]]:
        if self._tar is not None:
            self._finish()
        return self.shards

    def _path(self) -> Path:
        return self.root / f"{self.prefix}-{len(self.shards):06d}.tar"

    def _open(self) -> None:
        self._file = open(self._path().with_suffix(".tar.tmp"), "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._count = self._bytes = 0

    def _finish(self) -> None:
        assert self._tar is not None
        self._tar.close()
        self._file.close()
        path = self._path()
        os.replace(path.with_suffix(".tar.tmp"), path)
        self.shards.append({"name": path.name, "samples": self._count, "bytes": path.stat().st_size,
                            "sha256": sha256_file(path)})
        self._tar = self._file = None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_index(root: str | os.PathLike) -> dict[str, Any]:
    """Read ``index.json`` of a shard folder (sample counts, sizes, checksums, specs, vocabulary)."""
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        raise DataError("shard index not found", where=str(path),
                        hint="point the loader at a folder written by `omnimodal-shard`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"shard index is not valid JSON ({exc})", where=str(path),
                        hint="rebuild the shards with `omnimodal-shard`") from exc


def verify_shards(root: str | os.PathLike, index: dict[str, Any] | None = None) -> list[str]:
    """Check every shard's size and sha256 against the index; return the problems found."""
    root = Path(root)
    index = index or load_index(root)
    problems = []
    for split, info in index["splits"].items():
        for shard in info["shards"]:
            p = root / shard["name"]
            if not p.is_file():
                problems.append(f"{p}: missing")
            elif p.stat().st_size != shard["bytes"] or sha256_file(p) != shard["sha256"]:
                problems.append(f"{p}: size or checksum differs from {INDEX_NAME}")
    return problems
