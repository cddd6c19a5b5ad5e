"""A content-addressed blob store that only ever holds verified content.

Blobs live at ``ROOT/blobs/<algo>/<hex>``. A blob is written to ``ROOT/ingest/<algo>-<hex>
.part`` (same filesystem), hashed as it arrives, and renamed into place only once its size
and digest match. The ingest file of a digest is guarded by an ``flock`` on
``ROOT/ingest/<algo>-<hex>.lock``, so across threads and processes one writer at a time
fetches a blob: the others wait for the lock and then find the blob stored. The kernel
drops the lock of a writer that dies (``kill -9``); the next holder resumes its ``.part``
(re-hashing the bytes already there). Lock files are deleted only by their holder, and a
waiter that finds its locked file gone or replaced locks afresh. While a blob is being
written, readers can *follow* it, which is how a layer is applied while it downloads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from .errors import DigestMismatch, NoSpace, StoreError, UnladeError
from .reference import validate_digest

#: Seconds between two attempts at an ingest lock held by someone else.
LOCK_POLL = 0.05
_READ = 1 << 20


def _hex(digest: str) -> tuple[str, str]:
    algo, _, hexpart = validate_digest(digest).partition(":")
    return algo, hexpart


class Sleeper(Protocol):
    """What waits between two lock attempts; ``registry.Cancellation`` is one (its
    ``sleep`` raises once the pull is cancelled)."""

    def sleep(self, seconds: float) -> None: ...


class _PlainSleep:
    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class IngestCleanup(NamedTuple):
    """What :meth:`ContentStore.clean_ingest` removed: ``.part`` files and their bytes
    (their lock files go too)."""

    parts: int
    bytes: int


class _FileLock:
    """An exclusive ``flock`` on ``path``, which only its holder may delete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def acquire(self, sleeper: Sleeper | None, poll: float = LOCK_POLL) -> bool:
        """Take the lock; without ``sleeper`` only try once (False if it is held)."""
        fd = -1
        try:
            while True:
                if fd < 0:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if sleeper is None:
                        os.close(fd)
                        return False
                    sleeper.sleep(poll)
                    continue
                mine = os.fstat(fd)
                try:
                    now = os.stat(self.path)
                except FileNotFoundError:
                    now = None
                if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                    self.fd, fd = fd, -1
                    return True
                os.close(fd)  # its holder deleted it after we opened it: lock afresh
                fd = -1
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise

    def release(self) -> None:
        """Delete the lock file (we hold it, so nobody else can be using it) and unlock."""
        if self.fd < 0:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        finally:
            os.close(self.fd)
            self.fd = -1


def _unlink(path: Path) -> int:
    """Remove ``path``; its size, or -1 if it was not there."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return -1
    return size


class ContentStore:
    """Blobs by digest under ``root``; creating the directories on first use."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.ingest_dir = self.root / "ingest"

    def path(self, digest: str) -> Path:
        """Where a blob lives; the digest is validated before it becomes a path."""
        algo, hexpart = _hex(digest)
        return self.root / "blobs" / algo / hexpart

    def ingest_path(self, digest: str) -> Path:
        """Where a blob is written before it is verified (``.lock`` beside it)."""
        algo, hexpart = _hex(digest)
        return self.ingest_dir / f"{algo}-{hexpart}.part"

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
        """A writer for ``digest``; it takes the digest's ingest lock at its first write
        (or earlier, with :meth:`BlobWriter.acquire`)."""
        target = self.path(digest)
        try:
            self.ingest_dir.mkdir(parents=True, exist_ok=True)
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot use content store {self.root}: {err.strerror}") from None
        return BlobWriter(self.ingest_path(digest), target, digest, size)

    def blobs(self) -> Iterator[str]:
        base = self.root / "blobs"
        if not base.is_dir():
            return
        for algo_dir in sorted(base.iterdir()):
            for blob in sorted(algo_dir.iterdir()):
                yield f"{algo_dir.name}:{blob.name}"

    def clean_ingest(self) -> IngestCleanup:
        """Remove the ingest files nobody is writing (a pull killed part-way leaves its
        ``.part`` and ``.lock``); files whose lock is held are left alone."""
        try:
            names = os.listdir(self.ingest_dir)
        except FileNotFoundError:
            return IngestCleanup(0, 0)
        keys = sorted({name.rsplit(".", 1)[0] for name in names
                       if name.endswith((".part", ".lock"))})
        parts = freed = 0
        for key in keys:
            lock = _FileLock(self.ingest_dir / f"{key}.lock")
            if not lock.acquire(None):
                continue  # being written
            try:
                size = _unlink(self.ingest_dir / f"{key}.part")
                if size >= 0:
                    parts += 1
                    freed += size
            finally:
                lock.release()  # which deletes the lock file
        return IngestCleanup(parts, freed)


class BlobWriter:
    """A blob being written: hashed on the way in, verified before it is renamed into
    place, and readable (``follow()``) by another thread while it grows.

    Writing needs the digest's ingest lock: :meth:`acquire` waits for it (the first
    :meth:`write` or :meth:`commit` takes it if need be). If the blob is in the store by
    then, nothing is written to disk: the writer is done (its readers read the stored
    blob), and bytes still written to it are only checked against the digest.
    """

    def __init__(self, tmp_path: Path, target: Path, digest: str, size: int | None) -> None:
        self.digest = digest
        self.size = size
        self.target = target
        self.tmp_path = tmp_path
        algo, _ = _hex(digest)
        self._algo = algo
        self._hash = hashlib.new(algo)
        self._lock = _FileLock(tmp_path.with_suffix(".lock"))
        self._fd = -1
        self.written = 0  # bytes in the blob so far, resumed ones included
        self.resumed = 0  # bytes taken over from an earlier writer's .part
        self.stored = False  # found in the store when the lock was taken
        self._acquired = False
        self._readable = 0  # bytes followers may read (the whole blob once done)
        self._cond = threading.Condition()
        self._done = False
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._done

    # -- writer side ---------------------------------------------------------------------
    def acquire(self, sleeper: Sleeper | None = None, *, resume: bool = False) -> bool:
        """Take the digest's ingest lock, polling while someone else holds it (between
        attempts ``sleeper.sleep`` runs, which may raise to give up). Returns False if
        the blob is stored by then: the writer is done, nothing is to be fetched. Else
        the caller writes it; with ``resume`` a ``.part`` left by a writer that died is
        kept (its bytes are hashed, ``written`` says how many) instead of truncated."""
        if self._acquired:
            return not self.stored
        with self._cond:
            if self._error is not None:
                self._raise_error()
        self._lock.acquire(sleeper or _PlainSleep())
        try:
            if self.target.is_file():
                _unlink(self.tmp_path)  # a dead writer's leftover: the blob is there
                self._lock.release()
                with self._cond:
                    self._acquired = self.stored = self._done = True
                    self._readable = self.target.stat().st_size
                    self._cond.notify_all()
                return False
            fd = os.open(self.tmp_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                have = os.fstat(fd).st_size
                if not resume or (self.size is not None and have > self.size):
                    have = 0
                os.ftruncate(fd, have)
                pos = 0
                while pos < have:
                    chunk = os.pread(fd, min(_READ, have - pos), pos)
                    if not chunk:
                        raise StoreError(f"blob {self.digest}: ingest file shrank")
                    self._hash.update(chunk)
                    pos += len(chunk)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            _unlink(self.tmp_path)
            self._lock.release()
            raise
        with self._cond:
            self._fd = fd
            self.written = self.resumed = self._readable = have
            self._acquired = True
            self._cond.notify_all()
        return True

    def write(self, data: bytes | memoryview) -> None:
        if not self._acquired:
            self.acquire()
        if self.size is not None and self.written + len(data) > self.size:
            raise DigestMismatch(
                f"blob {self.digest}: more data than the {self.size} bytes announced"
            )
        self._hash.update(data)
        if self.stored:  # someone else stored it: only check what we are given
            self.written += len(data)
            return
        if self._fd < 0:
            raise StoreError(f"blob {self.digest}: write after commit or close")
        view = memoryview(data)
        try:
            pos = self.written
            while view:
                n = os.pwrite(self._fd, view, pos)
                view = view[n:]
                pos += n
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"no space left on device writing blob {self.digest}") from None
            raise
        with self._cond:
            self.written += len(data)
            self._readable = self.written
            self._cond.notify_all()

    def commit(self) -> Path:
        """Verify size and digest, make the bytes durable, rename into place and let go
        of the ingest lock."""
        try:
            if not self._acquired:
                self.acquire()
            if self.size is not None and self.written != self.size:
                raise DigestMismatch(
                    f"blob {self.digest}: got {self.written} bytes, expected {self.size}"
                )
            actual = f"{self._algo}:{self._hash.hexdigest()}"
            if actual != self.digest:
                raise DigestMismatch(f"digest mismatch: expected {self.digest}, got {actual}")
            if self.stored:
                return self.target
            if self._fd < 0:
                raise StoreError(f"blob {self.digest}: commit after close")
            os.fdatasync(self._fd)
            with self._cond:
                os.rename(self.tmp_path, self.target)
                self._done = True
                self._cond.notify_all()
            os.close(self._fd)
            self._fd = -1
            self._lock.release()
        except BaseException as err:
            self.fail(err)
            raise
        return self.target

    def fail(self, err: BaseException) -> None:
        with self._cond:
            if self._error is None and not self._done:
                self._error = err
            self._cond.notify_all()

    def close(self) -> None:
        """Let go of the temp file and the lock; an uncommitted blob's bytes are
        discarded (and its followers fail)."""
        self.fail(StoreError(f"blob {self.digest}: download abandoned"))
        with self._cond:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        if self._lock.held:
            if not self._done:
                _unlink(self.tmp_path)
            self._lock.release()

    # -- reader side ---------------------------------------------------------------------
    def follow(self) -> _FollowReader:
        """A reader of the blob's bytes as they arrive; it ends when the blob is committed
        and raises the writer's error if the blob fails verification. It may be made
        before the writer holds the lock: it then waits for the first bytes."""
        return _FollowReader(self)

    def _raise_error(self) -> None:
        err = self._error
        if isinstance(err, UnladeError):
            raise type(err)(str(err))
        raise StoreError(f"blob {self.digest}: {err}")

    def _wait(self, reader: _FollowReader) -> int:
        """Wait until there is more than ``reader`` has read (or the end); open its file
        once there is one. Returns how many bytes are readable."""
        with self._cond:
            while not self._done and self._error is None and not reader._abandoned and (
                    self._fd < 0 or self._readable <= reader._pos):
                self._cond.wait()
            if reader._abandoned:
                raise StoreError(f"blob {self.digest}: reader closed")
            if self._error is not None:
                self._raise_error()
            if reader._fd < 0:
                path = self.target if self._done else self.tmp_path
                reader._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            return self._readable


class _FollowReader:
    def __init__(self, writer: BlobWriter) -> None:
        self._writer = writer
        self._fd = -1
        self._pos = 0
        self._closed = False
        self._abandoned = False

    def read(self, n: int = -1) -> bytes:
        if self._closed:
            raise ValueError("read from a closed reader")
        available = self._writer._wait(self)
        want = available - self._pos if n < 0 else min(n, available - self._pos)
        if want <= 0:
            return b""
        data = os.pread(self._fd, want, self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("read from a closed reader")
        available = self._writer._wait(self)
        view = memoryview(buf)[: max(available - self._pos, 0)]
        if not view:
            return 0
        n = os.preadv(self._fd, [view], self._pos)
        self._pos += n
        return n

    def readable(self) -> bool:
        return True

    def abandon(self) -> None:
        """Make a read waiting for more bytes (in another thread) give up now."""
        with self._writer._cond:
            self._abandoned = True
            self._writer._cond.notify_all()

    def close(self) -> None:
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> _FollowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
