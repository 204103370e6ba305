"""Where a shard folder lives and how its files are read: a local folder, or a remote one streamed shard by shard.

A root (``data.root``) is one of

- a local folder: a path, or ``file:///path``;
- ``http://`` / ``https://`` URL of the folder (``index.json`` and the shards under it), streamed with the
  standard library: each shard one GET, read front to back;
- any other ``scheme://`` URL that fsspec has a backend for (``s3://`` with s3fs, ``gs://`` with gcsfs, ...);
- ``pipe:COMMAND``, WebDataset's convention: a shell command that writes one file to stdout, ``{name}`` in it
  standing for the file's name (``index.json``, ``train-000000.tar``), e.g.
  ``pipe:aws s3 cp s3://bucket/shards/{name} -`` or ``pipe:curl -sfL --netrc https://host/shards/{name}``.

Nothing from a remote folder is trusted more than from a disk: :meth:`ShardStore.open_shard` checks the size
``index.json`` lists as the bytes come (up front too, where the server announces a length) and, with ``sha256``,
holds the shard (in memory, then a temporary file) until its checksum matches, so no sample of a damaged shard
is used. Every error names the URL (credentials in it are never shown). A remote folder cannot be listed, so
shards left out of ``index.json`` go unnoticed there: ``omnimodal-shard verify`` where the folder is written
catches them.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import hashlib
import http.client
import io
import json
import logging
import os
import re
import shlex
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..schema import DataError
from .format import INDEX_NAME, REBUILD, load_index, shard_file_problem, unlisted_shards

log = logging.getLogger(__name__)

#: http(s): seconds a connection or a read may stall before it is an error
HTTP_TIMEOUT_S = 60.0
#: http(s): pauses before the retries of a request that failed in a way that may pass (connection refused or
#: reset, timeout, HTTP 408/425/429/5xx; never a 404 or 403); a shard cut off mid-stream resumes where it stopped
#: (an HTTP Range request) after the same pauses, when the server takes ranges
RETRY_DELAYS_S: tuple[float, ...] = (1.0, 4.0)
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
#: ``sha256``: a remote shard is held while its checksum is computed: in memory up to this, then on disk
SPOOL_BYTES = 256 << 20
CHUNK = 1 << 20
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_FAILING = "check that the server is up and that the shard folder's URL (data.root) is right"


def is_remote(root: str | os.PathLike) -> bool:
    """Is ``root`` a URL (other than ``file://``) or a ``pipe:`` command rather than a local folder?"""
    return ShardStore.kind_of(os.fspath(root)) != "local"


def shard_root(root: str | os.PathLike) -> Path | str:
    """``root`` as the loader takes it: a local folder as a :class:`Path` (``file://`` stripped), a URL or a
    ``pipe:`` command as the string it is."""
    return ShardStore(root).root


def read_index(root: str | os.PathLike) -> dict[str, Any]:
    """``index.json`` of a shard folder, local or remote (:func:`~datamodules.shards.format.load_index`)."""
    return ShardStore(root).index()


def shown_url(url: str) -> str:
    """``url`` as messages show it: without a ``user:password@`` part."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", url)


class ShardStore:
    """A shard folder (module docstring): what the loader asks of it, the same for every kind of root. Holds
    only its kind and root (no connection), so it travels to DataLoader workers."""

    def __init__(self, root: str | os.PathLike) -> None:
        text = os.fspath(root)
        self.kind = self.kind_of(text)
        self.root: Path | str
        if self.kind == "local":
            self.root = Path(text[len("file://") :] if text.startswith("file://") else text)
        elif self.kind == "pipe":
            if "{name}" not in text:
                raise DataError(
                    "a pipe: root needs {name} where the file's name goes",
                    where=text,
                    hint="e.g. 'pipe:aws s3 cp s3://bucket/shards/{name} -' (index.json and each shard are "
                    "fetched by the command with its name in place of {name})",
                )
            self.root = text
        else:
            self.root = text.rstrip("/")
            parts = urllib.parse.urlsplit(self.root)
            if parts.username or parts.password:
                raise DataError(
                    "the URL holds credentials, which would be logged with the config",
                    where=shown_url(text),
                    hint="keep them out of data.root: e.g. 'pipe:curl -sfL --netrc https://host/shards/{name}'",
                )
            if parts.query or parts.fragment:
                raise DataError(
                    "a URL with a query or fragment (?... #...) cannot name a shard folder",
                    where=shown_url(text),
                    hint="use the folder's plain URL, or a pipe: command that fetches {name} (signed URLs)",
                )
            if self.kind == "fsspec":
                _fsspec_check(parts.scheme, shown_url(text))

    @staticmethod
    def kind_of(root: str) -> str:
        """``local``, ``http``, ``fsspec`` or ``pipe``."""
        if root.startswith("pipe:"):
            return "pipe"
        m = _SCHEME.match(root)
        if not m or m.group(1).lower() == "file":
            return "local"
        return "http" if m.group(1).lower() in ("http", "https") else "fsspec"

    def url(self, name: str) -> str:
        """Where the folder's file ``name`` is read from: a path, a URL or a command (``pipe:...``)."""
        if isinstance(self.root, Path):
            return str(self.root / name)
        if self.kind == "pipe":
            return self.root.replace("{name}", shlex.quote(name))
        return f"{self.root}/{urllib.parse.quote(name)}"

    def shown(self, name: str | None = None) -> str:
        """The folder (or its file ``name``) as messages name it."""
        if name is None:
            return str(self.root)
        return self.url(name) if self.kind == "local" else shown_url(self.url(name))

    def where(self, url: str) -> str:
        """How a shard's messages name it: a local shard by its file name, a remote one by its whole URL."""
        return Path(url).name if self.kind == "local" else shown_url(url)

    def index(self) -> dict[str, Any]:
        """The folder's ``index.json``."""
        if isinstance(self.root, Path):
            return load_index(self.root)
        url = self.url(INDEX_NAME)
        with contextlib.closing(self._source(url, "shard index not found")) as source:
            data = Stream(source, None, shown_url(url)).read()
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(
                f"shard index is not valid JSON ({exc})", where=shown_url(url), hint=f"{_FAILING}; {REBUILD}"
            ) from None

    def unlisted(self, index: dict[str, Any]) -> list[str]:
        """Shards in the folder that ``index.json`` does not list: only a local folder can be listed."""
        return unlisted_shards(self.root, index) if isinstance(self.root, Path) else []

    @contextlib.contextmanager
    def open_shard(self, url: str, entry: dict[str, Any], sha256: bool = False) -> Iterator[BinaryIO | None]:
        """The shard at ``url`` (one of :meth:`url`'s) checked against its ``index.json`` ``entry``: its size
        (before any byte is used where the size is known up front, else as the bytes come) and, with ``sha256``,
        its checksum before any byte is used; a :class:`DataError` naming it. A remote shard comes as a binary file
        read front to back; a local one is checked and None comes (the reader opens the file itself)."""
        where = self.where(url)
        if isinstance(self.root, Path):
            problem = shard_file_problem(Path(url), entry, sha256=sha256)
            if problem:
                raise DataError(problem, where=where, hint=REBUILD)
            yield None
            return
        with contextlib.closing(self._source(url, "shard listed in index.json is missing")) as source:
            stream = Stream(source, int(entry["bytes"]), where)
            if not sha256:
                yield stream
                return
            with spooled(stream, entry["sha256"], where) as held:
                yield held

    def _source(self, url: str, missing: str) -> Source:
        if self.kind == "http":
            return HttpSource(url, missing)
        if self.kind == "pipe":
            return PipeSource(url[len("pipe:") :])
        return FsspecSource(url, missing)


def _fsspec_check(scheme: str, where: str) -> None:
    """A clear error now, not in a DataLoader worker, when fsspec has no backend for ``scheme``."""
    try:
        import fsspec  # noqa: PLC0415 - only for fsspec URLs

        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as exc:
        raise DataError(
            f"cannot read {scheme}:// URLs ({exc})",
            where=where,
            hint="install the fsspec backend for it (s3fs for s3://, gcsfs for gs://, ...), or use a local path, "
            "an http(s):// URL or a pipe: command",
        ) from None


# ----------------------------------------------------------------------------------------------
# Sources: one remote file read front to back.


class Source(abc.ABC):
    """One remote file being read front to back: :meth:`read`, the ``size`` announced up front (None if not),
    :meth:`finish` once it has all come (a command's exit status), :meth:`close`. ``where`` names it."""

    size: int | None = None
    where: str = ""

    @abc.abstractmethod
    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end."""

    def finish(self) -> None:  # noqa: B027 - a default: most sources have no exit status
        """Called once the source has ended: raises if the end was a failure."""

    def close(self) -> None:  # noqa: B027 - a default: nothing to release
        """Release the connection or process (also when the file was not read to its end)."""


def _pause(where: str, why: object, attempt: int) -> bool:
    """Sleep before retry ``attempt`` (0-based) and say so; False once the retries are used up."""
    if attempt >= len(RETRY_DELAYS_S):
        return False
    log.warning("%s: %s; retrying in %.0f s", where, why, RETRY_DELAYS_S[attempt])
    time.sleep(RETRY_DELAYS_S[attempt])
    return True


class HttpSource(Source):
    """An http(s) URL: one GET, retried on failures that may pass; cut off mid-stream, resumed with a Range
    request (``If-Range``: only if the file is unchanged) where the server takes ranges."""

    def __init__(self, url: str, missing: str) -> None:
        self.url, self.where, self.missing = url, shown_url(url), missing
        self.got = self.resumes = 0
        self._validator: str | None = None
        self._resp = self._get()
        length = self._resp.headers.get("Content-Length")
        self.size = int(length) if length and length.isdigit() else None
        self._ranges = self._resp.headers.get("Accept-Ranges", "").lower() == "bytes"
        self._validator = self._resp.headers.get("ETag") or self._resp.headers.get("Last-Modified")

    def _get(self) -> http.client.HTTPResponse:
        headers = {"User-Agent": "omnimodal"}
        if self.got:
            headers["Range"] = f"bytes={self.got}-"
            if self._validator:
                headers["If-Range"] = self._validator
        attempt = 0
        while True:
            try:
                resp = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=HTTP_TIMEOUT_S)
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code in (404, 410):
                    raise DataError(
                        f"{self.missing} (HTTP {exc.code} {exc.reason})", where=self.where, hint=_FAILING
                    ) from None
                if exc.code not in TRANSIENT_HTTP or not _pause(self.where, f"HTTP {exc.code}", attempt):
                    raise DataError(
                        f"the server answered HTTP {exc.code} {exc.reason}",
                        where=self.where,
                        hint="the server needs credentials: fetch with a pipe: command ('pipe:curl -sfL --netrc "
                        "URL/{name}')"
                        if exc.code in (401, 403)
                        else _FAILING,
                    ) from None
            except ValueError as exc:  # urllib's word for a URL it cannot parse
                raise DataError(f"not a URL urllib can fetch ({exc})", where=self.where, hint=_FAILING) from None
            except (OSError, http.client.HTTPException) as exc:  # URLError, refused, reset, timed out
                why = getattr(exc, "reason", exc)
                if not _pause(self.where, why, attempt):
                    raise DataError(f"cannot reach the server ({why})", where=self.where, hint=_FAILING) from None
            else:
                if self.got and resp.status != 206:
                    resp.close()
                    raise DataError(
                        f"the connection broke after {self.got} bytes and the server sent the file again from the "
                        "start: it changed while being read, or the server ignores Range requests",
                        where=self.where,
                        hint=_FAILING,
                    )
                return resp
            attempt += 1

    def read(self, n: int) -> bytes:
        while True:
            try:
                data = self._resp.read(n)
            except (OSError, http.client.HTTPException) as exc:
                why: object = exc
            else:
                if data or self.size is None or self.got >= self.size:
                    self.got += len(data)
                    return data
                why = "the server closed the connection"
            if not self._ranges or not _pause(self.where, f"{why} after {self.got} bytes", self.resumes):
                raise DataError(
                    f"the connection broke after {self.got} of {self.size or '?'} bytes ({why})",
                    where=self.where,
                    hint=_FAILING,
                )
            self.resumes += 1
            self._resp.close()
            self._resp = self._get()

    def close(self) -> None:
        self._resp.close()


class PipeSource(Source):
    """A ``pipe:`` command's standard output; its exit status is checked at the end (a failed ``curl -f`` or
    ``aws s3 cp`` is an error with the tail of what it wrote to stderr)."""

    def __init__(self, command: str) -> None:
        self.where = f"pipe:{command}"
        self._err = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=self._err)
        except OSError as exc:
            self._err.close()
            raise DataError(f"cannot start the command ({exc})", where=self.where) from None

    def read(self, n: int) -> bytes:
        return self._proc.stdout.read(n)  # type: ignore[union-attr] - stdout=PIPE

    def finish(self) -> None:
        status = self._proc.wait()
        if status:
            self._err.seek(0)
            tail = self._err.read()[-800:].decode(errors="replace").strip()
            raise DataError(
                f"the command exited with status {status}" + (f" ({tail})" if tail else ""),
                where=self.where,
                hint="check the command: run it in a shell with {name} replaced by index.json",
            )

    def close(self) -> None:
        if self._proc.poll() is None:  # not read to the end (the slot had what it needed): stop it
            self._proc.kill()
        self._proc.stdout.close()  # type: ignore[union-attr]
        self._proc.wait()
        self._err.close()


class FsspecSource(Source):
    """An fsspec URL (``s3://``, ``gs://``, ``memory://``, ...), opened with the backend fsspec has for it."""

    def __init__(self, url: str, missing: str) -> None:
        import fsspec  # noqa: PLC0415 - only for fsspec URLs

        self.where = shown_url(url)
        try:
            self._f = fsspec.open(url, "rb").open()
        except FileNotFoundError:
            raise DataError(missing, where=self.where, hint=_FAILING) from None
        except Exception as exc:  # noqa: BLE001 - every backend raises its own types (auth, network, ...)
            raise DataError(f"cannot open it ({type(exc).__name__}: {exc})", where=self.where, hint=_FAILING) from None
        size = getattr(self._f, "size", None)
        self.size = size if isinstance(size, int) else None

    def read(self, n: int) -> bytes:
        return self._f.read(n)

    def close(self) -> None:
        self._f.close()


# ----------------------------------------------------------------------------------------------
# Streams: a source as the forward-only binary file that tarfile reads.


class Stream(io.RawIOBase):
    """A :class:`Source` as a binary file for ``tarfile`` (``read``, ``tell``, ``seek`` forward, and back within the
    last :data:`KEEP` bytes), checked against ``size`` (the bytes ``index.json`` lists; None: unchecked): the size
    the source announces at once, then as the bytes come (no byte past it; at the end, exactly it). Any failure
    of the source is a :class:`DataError` naming ``where``."""

    KEEP = 1 << 13  # tarfile seeks back 512 bytes once, at the end of the archive

    def __init__(self, source: Source, size: int | None, where: str) -> None:
        super().__init__()
        self.source, self.size, self.where = source, size, where
        self.pos = self.got = 0  # the reader's position; bytes from the source so far
        self.recent: collections.deque[bytes] = collections.deque()  # the last chunks, >= KEEP bytes: a seek back
        self.kept = 0  # bytes in recent
        self.ended = False
        if size is not None and source.size is not None and source.size != size:
            raise DataError(
                f"shard is {source.size} bytes, {INDEX_NAME} lists {size}: it is truncated or was changed",
                where=where,
                hint=REBUILD,
            )

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence not in (io.SEEK_SET, io.SEEK_CUR):
            raise io.UnsupportedOperation("a streamed shard seeks from its start or its position only")
        target = offset + (self.pos if whence == io.SEEK_CUR else 0)
        if target < self.got - self.kept:
            raise io.UnsupportedOperation(f"{self.where}: cannot seek back to byte {target} of a streamed shard")
        while self.got < target and self._pull(min(target - self.got, CHUNK)):
            pass
        self.pos = min(target, self.got)
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        everything = n is None or n < 0
        parts = []
        if self.pos < self.got:  # after a seek back: from the chunks kept first
            held = b"".join(self.recent)
            start = len(held) - (self.got - self.pos)
            parts.append(held[start:] if everything else held[start : start + n])
        want = -1 if everything else n - sum(map(len, parts))
        while everything or want > 0:
            data = self._pull(CHUNK if everything else want)
            if not data:
                break
            parts.append(data)
            want -= len(data)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos += len(out)
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def _pull(self, n: int) -> bytes:
        """Up to ``n`` (> 0) more bytes from the source (fewer only at its end), checked against ``size``."""
        if self.ended:
            return b""
        parts: list[bytes] = []
        while n > 0:
            try:
                data = self.source.read(n)
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - a pipe or fsspec backend raises its own types
                raise DataError(
                    f"reading stopped after {self.got} bytes ({type(exc).__name__}: {exc})",
                    where=self.where,
                    hint=_FAILING,
                ) from None
            if not data:
                self.ended = True
                break
            self.got += len(data)
            n -= len(data)
            parts.append(data)
        if self.size is not None and self.got > self.size:
            raise DataError(
                f"shard is longer than the {self.size} bytes {INDEX_NAME} lists: it was changed",
                where=self.where,
                hint=REBUILD,
            )
        if self.ended:
            self.source.finish()
            if self.size is not None and self.got < self.size:
                raise DataError(
                    f"shard ends after {self.got} bytes, {INDEX_NAME} lists {self.size}: it is truncated",
                    where=self.where,
                    hint=REBUILD,
                )
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if data:
            self.recent.append(data)
            self.kept += len(data)
            while self.kept - len(self.recent[0]) >= self.KEEP:
                self.kept -= len(self.recent.popleft())
        return data


@contextlib.contextmanager
def spooled(stream: Stream, sha256: str, where: str) -> Iterator[BinaryIO]:
    """All of ``stream`` held (in memory up to :data:`SPOOL_BYTES`, then in a temporary file, removed after), given
    back only if its sha256 is ``sha256``."""
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as held:
        h = hashlib.sha256()
        while data := stream.read(CHUNK):
            h.update(data)
            held.write(data)
        if h.hexdigest() != sha256:
            raise DataError(
                f"shard's sha256 differs from {INDEX_NAME}: its bytes were changed", where=where, hint=REBUILD
            )
        held.seek(0)
        yield held  # type: ignore[misc] - a binary file
