"""Shard format: keyed subject hashes, member encoding, deterministic tar writing, the index.

A shard is a WebDataset tar ``{split}-{index:06d}.tar`` holding one sample per subject: members
``{key}.meta.json`` and one ``{key}.{modality}.npy`` per modality (:func:`member_name`). Tar headers carry
no time, owner or permissions that vary, so the same input gives byte-identical shards.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import io
import json
import math
import os
import re
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

try:  # ISA-L (python-isal): the same CRC-32 as zlib's, some ten times as fast (the loader checks every member)
    from isal.isal_zlib import crc32
except ImportError:  # a platform without its wheel
    from zlib import crc32

from ..schema import DataError

SECRET_ENV = "OMNIMODAL_SHARD_SECRET"
INDEX_NAME = "index.json"
KEY_HEX_CHARS = 24  # 96 bits: collisions are negligible for any cohort
REBUILD = (
    "rebuild the shards with omnimodal-shard (or restore this shard from the build); "
    "`omnimodal-shard verify DIR` lists every problem"
)


def resolve_secret(secret: str | None = None) -> bytes:
    """The pseudonymisation secret: given explicitly (config) or from ``$OMNIMODAL_SHARD_SECRET``."""
    secret = secret if secret else os.environ.get(SECRET_ENV)
    if not secret:
        raise DataError(
            "no pseudonymisation secret",
            hint=f"set {SECRET_ENV} (or 'secret' in the build config) to a long random string "
            "kept outside the shards; the same secret gives the same keys on a rebuild",
        )
    if len(secret) < 16:
        raise DataError(
            "pseudonymisation secret is shorter than 16 characters",
            hint="use a long random string, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`",
        )
    return secret.encode()


def subject_key(subject_id: str, secret: bytes) -> str:
    """Keyed hash (HMAC-SHA256) of a raw subject id: the only subject identifier that leaves the builder."""
    return hmac.new(secret, str(subject_id).encode(), hashlib.sha256).hexdigest()[:KEY_HEX_CHARS]


def member_name(modality: str) -> str:
    """A sample's member of one modality: all its measurements end to end, flat (``meta.json`` gives each one's
    ``offset`` in it and ``shape``). One member per modality, not per measurement: the loader's cost is mostly
    per member (tar header, checksum, decode, checks), and a wearable stream alone is dozens of windows."""
    return f"{modality}.npy"


def encode_array(array: np.ndarray, storage_dtype: str) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array.astype(storage_dtype, copy=False)), allow_pickle=False)
    return buf.getvalue()


# ``.npy`` header as numpy writes it (``np.lib.format``): the dict literal with sorted keys, then space
# padding and a newline. Only this exact form, with a plain numeric little/big-endian/unordered descr, C order
# and shape dims without leading zeros, takes the fast path; any other header goes through ``np.load``.
_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|][biuf][1248])', 'fortran_order': False, "
    rb"'shape': \((|(?:0|[1-9][0-9]*),|(?:0|[1-9][0-9]*)(?:, (?:0|[1-9][0-9]*))+)\), \} *\n"
)
_NPY_MAX_HEADER = 10000  # np.load's default max_header_size: a longer header is its error


@functools.lru_cache(maxsize=4096)
def _npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], int] | None:
    """(dtype, shape, nbytes) of a header in numpy's own form, or None for any other header."""
    m = _NPY_HEADER.fullmatch(header)
    if m is None or len(header) > _NPY_MAX_HEADER:
        return None
    dtype = np.dtype(m[1].decode())
    shape = tuple(int(d) for d in m[2].split(b",") if d.strip())
    return dtype, shape, dtype.itemsize * math.prod(shape)


def _decode_fast(data: bytes | bytearray, copy: bool = True) -> np.ndarray | None:
    """A plain C-order numeric ``.npy`` array without ``np.load``'s header parsing (about 150 us a member);
    None for anything else (other versions or headers, truncated data), left to ``np.load``. ``copy=False``:
    a view of ``data`` (read-only for ``bytes``; the caller copies it, as a cast does)."""
    if len(data) < 10 or data[:6] != _NPY_MAGIC or data[7] != 0:
        return None
    major = data[6]
    if major == 1:
        start, length = 10, int.from_bytes(data[8:10], "little")
    elif major in (2, 3) and len(data) >= 12:
        start, length = 12, int.from_bytes(data[8:12], "little")
    else:
        return None
    parsed = _npy_header(bytes(data[start : start + length]))
    if parsed is None:
        return None
    dtype, shape, nbytes = parsed
    offset = start + length
    if nbytes == 0 or len(data) - offset < nbytes:  # empty: np.load; short: its EOF error
        return None
    view = np.frombuffer(data, dtype, nbytes // dtype.itemsize, offset).reshape(shape)
    # a copy, as np.load gives: writable, owning its memory, not holding the member's bytes alive
    return view.copy() if copy else view


def cast_array(array: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
    """A new C-order copy of ``array`` as ``dtype``; float16 -> float32 through torch, whose vectorised
    conversion is some twenty times NumPy's (the loader's largest cost per sample without it)."""
    out = np.empty(array.shape, dtype)
    if array.dtype == np.float16 and out.dtype == np.float32:
        with warnings.catch_warnings():  # torch warns of a read-only source (a member's bytes); it only reads it
            warnings.simplefilter("ignore", UserWarning)
            source = torch.from_numpy(array)
        torch.from_numpy(out).copy_(source)
    else:
        np.copyto(out, array, casting="unsafe")
    return out


def decode_array(data: bytes | bytearray, where: str = "", copy: bool = True) -> np.ndarray:
    """A ``.npy`` member's array, never unpickled: a :class:`DataError` naming ``where`` if it is not one.
    ``copy=False`` may give a read-only view of ``data``."""
    arr = _decode_fast(data, copy)
    if arr is not None:
        return arr
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several types for bad bytes
        if "allow_pickle" in str(exc):  # numpy's advice to unpickle it: never followed for data from disk
            what = "it holds Python objects (pickled)" if data.startswith(b"\x93NUMPY") else "not .npy data"
            raise DataError(f"not a numeric array ({what})", where=where, hint=REBUILD) from None
        raise DataError(
            f"cannot decode member: not a valid .npy array ({type(exc).__name__}: {exc})", where=where, hint=REBUILD
        ) from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise DataError(
            f"not a numeric array (dtype {getattr(arr, 'dtype', type(arr).__name__)})", where=where, hint=REBUILD
        )
    return arr


def checksum(data: bytes) -> str:
    """CRC-32 of a member's bytes as 8 hex digits: what ``meta.json`` records for each member (and itself)."""
    return f"{crc32(data):08x}"


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
        self.shards.append(
            {"name": path.name, "samples": self._count, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        )
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
        raise DataError(
            "shard index not found", where=str(path), hint="point the loader at a folder written by `omnimodal-shard`"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(
            f"shard index is not valid JSON ({exc})", where=str(path), hint="rebuild the shards with `omnimodal-shard`"
        ) from exc


def index_problems(index: dict[str, Any], split: str) -> list[str]:
    """What is wrong with one split's entries in ``index.json`` (fields, types, the sample total)."""
    info = index.get("splits", {}).get(split)
    if not isinstance(info, dict) or not isinstance(info.get("shards"), list) or not _count(info.get("samples")):
        return [f"split {split!r}: needs 'samples' (a count) and 'shards' (a list)"]
    problems, names = [], set()
    for i, e in enumerate(info["shards"]):
        name = e.get("name") if isinstance(e, dict) else None
        what = f"split {split!r}, shard entry {i + 1} ({name or 'no name'})"
        if not isinstance(name, str) or not name.endswith(".tar") or "/" in name or name in names:
            problems.append(f"{what}: 'name' must be a distinct FILE.tar in the folder")
        names.add(name)
        fields = e if isinstance(e, dict) else {}
        bad = [k for k, ok in (("samples", _count), ("bytes", _count), ("sha256", _sha256)) if not ok(fields.get(k))]
        if bad:
            problems.append(f"{what}: missing or invalid {', '.join(repr(k) for k in bad)}")
    if not problems and sum(e["samples"] for e in info["shards"]) != info["samples"]:
        problems.append(
            f"split {split!r} lists {info['samples']} samples but its shards hold "
            f"{sum(e['samples'] for e in info['shards'])}"
        )
    return problems


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def unlisted_shards(root: str | os.PathLike, index: dict[str, Any]) -> list[str]:
    """``.tar`` files in the folder that no split of ``index.json`` lists (their samples would go unread)."""
    listed = {
        e.get("name")
        for info in index.get("splits", {}).values()
        if isinstance(info, dict)
        for e in info.get("shards", [])
        if isinstance(e, dict)
    }
    return sorted(p.name for p in Path(root).glob("*.tar") if p.name not in listed)


def shard_file_problem(path: Path, entry: dict[str, Any], sha256: bool = False) -> str | None:
    """Does the shard file match its ``index.json`` entry? Its size (and with ``sha256`` its checksum)."""
    if not path.is_file():
        return "shard listed in index.json is missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"shard is {size} bytes, index.json lists {entry['bytes']}: it is truncated or was changed"
    if sha256 and sha256_file(path) != entry["sha256"]:
        return "shard's sha256 differs from index.json: its bytes were changed"
    return None


def verify_shards(root: str | os.PathLike, index: dict[str, Any] | None = None) -> list[str]:
    """Check ``index.json``'s entries and every shard's size and sha256 against them; return the problems
    found, each naming the shard (members and sample counts: :func:`datamodules.loader.verify_folder`)."""
    root = Path(root)
    index = index or load_index(root)
    problems = [f"{root / INDEX_NAME}: {p}" for s in index.get("splits", {}) for p in index_problems(index, s)]
    problems += [
        f"{root / name}: not listed in {INDEX_NAME} (its samples would never be read)"
        for name in unlisted_shards(root, index)
    ]
    if problems:
        return problems
    for info in index["splits"].values():
        for entry in info["shards"]:
            problem = shard_file_problem(root / entry["name"], entry, sha256=True)
            if problem:
                problems.append(f"{root / entry['name']}: {problem}")
    return problems


# ----------------------------------------------------------------------------------------------
# Reading a shard (:func:`tar_samples`): every header's checksum is checked, and nothing but the
# end-of-archive zeros may follow the last member.


def tar_samples(path: str | os.PathLike, stream: BinaryIO | None = None) -> Iterator[dict[str, Any]]:
    """The samples of one shard in file order, ``{"__key__": KEY, "__url__": path, SUFFIX: bytes, ...}``;
    read from ``stream`` when given (a remote shard: ``path`` is its URL), else from the file ``path``.

    A :class:`DataError` naming the shard (and member) for unreadable tar data (a header whose checksum fails,
    a member cut short), a member that is not a ``KEY.SUFFIX`` regular file, a key seen twice, or anything but
    zeros after the last member; the sample cut short by such damage is not yielded.

    The shards are the ustar archives :class:`TarShardWriter` writes, so this reads ustar headers itself, a
    few microseconds a member where ``tarfile`` takes some thirty (the loader's largest cost per sample once
    batches cross from workers in one buffer; ``scripts/bench/feed.py``): the same checks, the same errors."""
    name = Path(path).name
    with open(path, "rb") if stream is None else contextlib.nullcontext(stream) as f:
        sample: dict[str, Any] | None = None
        seen: set[str] = set()
        offset = 0
        while True:
            header = _read(f, _BLOCK, name)
            member = _member_header(header, offset, name, sample)
            if member is None:  # a zero block: the end-of-archive marker, then nothing but zeros
                rest = header + _read(f, -1, name)
                if len(rest) < 2 * _BLOCK or rest.count(0) != len(rest):
                    if rest.strip(b"\0"):
                        raise _corrupt(offset, name, sample)
                    after = f" after key {sample['__key__']}" if sample else ""
                    raise DataError(
                        f"ends without the end-of-archive marker (truncated){after}", where=name, hint=REBUILD
                    )
                break
            member_name, size = member
            key, dot, suffix = member_name.partition(".")
            if not key or not dot or "/" in member_name:
                raise DataError(f"member {member_name!r} is not a KEY.SUFFIX file", where=name, hint=REBUILD)
            if suffix.startswith("__"):  # __key__, __url__, ...: the names of the sample's own fields
                raise DataError(f"member {member_name!r} has a reserved suffix (__...)", where=name, hint=REBUILD)
            data = _read_member(f, size, name)
            if len(data) != size:
                raise DataError(f"member {member_name!r} is cut short", where=name, hint=REBUILD)
            pad = -size % _BLOCK
            if pad and len(_read(f, pad, name)) != pad:
                raise DataError(f"member {member_name!r} is cut short", where=name, hint=REBUILD)
            offset += _BLOCK + size + pad
            if sample is not None and key != sample["__key__"]:
                yield sample
                sample = None
            if sample is None:
                if key in seen:
                    raise DataError(f"key {key} appears twice", where=name, hint=REBUILD)
                seen.add(key)
                sample = {"__key__": key, "__url__": str(path)}
            elif suffix in sample:
                raise DataError(f"member {member_name!r} appears twice", where=name, hint=REBUILD)
            sample[suffix] = data
        if sample is not None:
            yield sample


_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REGULAR = (b"0", b"\0")  # ustar type flags of a regular file (and the pre-POSIX one)


def _read(f: BinaryIO, n: int, name: str) -> bytes:
    try:
        return f.read(n)
    except OSError as exc:
        raise DataError(f"unreadable tar data ({exc})", where=name, hint=REBUILD) from None


def _read_member(f: BinaryIO, n: int, name: str) -> bytes:
    """``n`` bytes (fewer at the end of the data) in one copy: ``read`` fills a new ``bytes`` as it reads, where
    ``readinto`` a ``bytearray`` first zeroes it (a pass over the member's bytes: a fifth of reading a shard,
    ``scripts/bench/decode.py``). Arrays decoded from it are read-only views, copied into the batch by collation."""
    data = _read(f, n, name)
    while 0 < len(data) < n:  # a network stream may give it in parts
        more = _read(f, n - len(data), name)
        if not more:
            break
        data += more
    return data


def _member_header(header: bytes, offset: int, name: str, sample: dict[str, Any] | None) -> tuple[str, int] | None:
    """``(member name, size)`` of the ustar header at ``offset``; None for a zero block (or a short read: the
    caller's end check names it). A header that fails its checksum or is not a plain file is an error."""
    if len(header) < _BLOCK or header == _ZERO_BLOCK:
        return None
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        raise _corrupt(offset, name, sample) from None
    unsigned = sum(header) - sum(header[148:156]) + 256  # the checksum field counts as eight spaces
    if stored != unsigned:  # some writers sum the bytes as signed chars
        high = sum(b >= 128 for b in header[:148]) + sum(b >= 128 for b in header[156:])
        if stored != unsigned - 256 * high:
            raise _corrupt(offset, name, sample)
    member = header[:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar" and header[345] != 0:
        member = header[345:500].split(b"\0", 1)[0] + b"/" + member
    try:
        member_name = member.decode()
        size = _tar_number(header[124:136])
    except (ValueError, UnicodeDecodeError):
        raise _corrupt(offset, name, sample) from None
    if header[156:157] not in _REGULAR:
        raise DataError(f"member {member_name!r} is not a KEY.SUFFIX file", where=name, hint=REBUILD)
    return member_name, size


def _corrupt(offset: int, name: str, sample: dict[str, Any] | None) -> DataError:
    after = f" after key {sample['__key__']}" if sample else ""
    return DataError(f"has unreadable data at byte {offset} (a corrupt tar header){after}", where=name, hint=REBUILD)


def _tar_number(field: bytes) -> int:
    """A tar header number: octal digits, or GNU base-256 (first byte 0x80)."""
    if field[0] == 0x80:
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0
