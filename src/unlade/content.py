"""A content-addressed blob store that only ever holds verified content.

Blobs live at ``ROOT/blobs/sha256/<hex>``. A blob is written to a temporary file in
``ROOT/ingest`` (same filesystem), hashed as it arrives, and renamed into place only once
its size and digest match; two processes fetching the same blob each write their own temp
file and the second rename simply replaces identical content. While a blob is still being
written, readers can *follow* it, which is how a layer is applied while it downloads.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import DigestMismatch, NoSpace, StoreError, UnladeError
from .reference import validate_digest


def _hex(digest: str) -> tuple[str, str]:
    algo, _, hexpart = validate_digest(digest).partition(":")
    return algo, hexpart


class ContentStore:
    """Blobs by digest under ``root``; creating the directories on first use."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.ingest_dir = self.root / "ingest"

    def path(self, digest: str) -> Path:
        """Where a blob lives; the digest is validated before it becomes a path."""
        algo, hexpart = _hex(digest)
        return self.root / "blobs" / algo / hexpart

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def open(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    def read_small(self, digest: str, limit: int) -> bytes:
        """Read a stored manifest/config, refusing anything larger than ``limit``."""
        with self.open(digest) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise StoreError(f"blob {digest} is larger than {limit} bytes")
        return data

    def put(self, digest: str, data: bytes) -> Path:
        """Store small content already in memory (manifests, configs) after verifying it."""
        writer = self.writer(digest, len(data))
        try:
            writer.write(data)
            return writer.commit()
        finally:
            writer.close()

    def writer(self, digest: str, size: int | None) -> BlobWriter:
        target = self.path(digest)
        try:
            self.ingest_dir.mkdir(parents=True, exist_ok=True)
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot use content store {self.root}: {err.strerror}") from None
        return BlobWriter(self.ingest_dir, target, digest, size)

    def blobs(self) -> Iterator[str]:
        base = self.root / "blobs"
        if not base.is_dir():
            return
        for algo_dir in sorted(base.iterdir()):
            for blob in sorted(algo_dir.iterdir()):
                yield f"{algo_dir.name}:{blob.name}"


class BlobWriter:
    """A blob being written: hashed on the way in, verified before it is renamed into
    place, and readable (``follow()``) by another thread while it grows."""

    def __init__(self, tmpdir: Path, target: Path, digest: str, size: int | None) -> None:
        self.digest = digest
        self.size = size
        self.target = target
        algo, _ = _hex(digest)
        self._hash = hashlib.new(algo)
        fd, name = tempfile.mkstemp(dir=tmpdir, prefix=target.name[:16] + "-", suffix=".part")
        self._fd = fd
        self.tmp_path = Path(name)
        self.written = 0
        self._cond = threading.Condition()
        self._done = False
        self._error: BaseException | None = None

    # -- writer side ---------------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> None:
        if self.size is not None and self.written + len(data) > self.size:
            raise DigestMismatch(
                f"blob {self.digest}: more data than the {self.size} bytes announced"
            )
        self._hash.update(data)
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"no space left on device writing blob {self.digest}") from None
            raise
        with self._cond:
            self.written += len(data)
            self._cond.notify_all()

    def commit(self) -> Path:
        """Verify size and digest, make the bytes durable, and rename into place."""
        try:
            if self.size is not None and self.written != self.size:
                raise DigestMismatch(
                    f"blob {self.digest}: got {self.written} bytes, expected {self.size}"
                )
            actual = f"{self._hash.name}:{self._hash.hexdigest()}"
            if actual != self.digest:
                raise DigestMismatch(f"digest mismatch: expected {self.digest}, got {actual}")
            os.fdatasync(self._fd)
            with self._cond:
                os.rename(self.tmp_path, self.target)
                self._done = True
                self._cond.notify_all()
        except BaseException as err:
            self.fail(err)
            raise
        return self.target

    def fail(self, err: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = err
            self._cond.notify_all()

    def close(self) -> None:
        """Release the temp file; an uncommitted blob's bytes are discarded."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if not self._done:
            with contextlib.suppress(FileNotFoundError):
                self.tmp_path.unlink()
            self.fail(StoreError(f"blob {self.digest}: download abandoned"))

    # -- reader side ---------------------------------------------------------------------
    def follow(self) -> _FollowReader:
        """A reader of the blob's bytes as they arrive; it ends when the blob is committed
        and raises the writer's error if the blob fails verification."""
        with self._cond:
            path = self.target if self._done else self.tmp_path
            return _FollowReader(self, os.open(path, os.O_RDONLY | os.O_CLOEXEC))

    def _wait(self, pos: int) -> int:
        with self._cond:
            while self.written <= pos and not self._done and self._error is None:
                self._cond.wait()
            if self._error is not None:
                err = self._error
                if isinstance(err, UnladeError):
                    raise type(err)(str(err))
                raise StoreError(f"blob {self.digest}: {err}")
            return self.written


class _FollowReader:
    def __init__(self, writer: BlobWriter, fd: int) -> None:
        self._writer = writer
        self._fd = fd
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        available = self._writer._wait(self._pos)
        want = available - self._pos if n < 0 else min(n, available - self._pos)
        if want <= 0:
            return b""
        data = os.pread(self._fd, want, self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        available = self._writer._wait(self._pos)
        view = memoryview(buf)[: available - self._pos]
        if not view:
            return 0
        n = os.preadv(self._fd, [view], self._pos)
        self._pos += n
        return n

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> _FollowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
