"""The threads that inflate and hash a layer beside its application: same bytes, same
errors, same digest as reading inline, and nothing left running when a reader stops."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import threading
import time
from pathlib import Path

import pytest

from unlade.content import ContentStore
from unlade.decompress import ReadAhead
from unlade.errors import DigestMismatch, MalformedLayer, StoreError, TruncatedLayer
from unlade.pull import VerifyingStream


def _threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


class _Short(io.RawIOBase):
    """A source that returns at most ``most`` bytes per readinto (as pipes and gzip
    member ends do)."""

    def __init__(self, data: bytes, most: int) -> None:
        self._src = io.BytesIO(data)
        self._most = most

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        return self._src.readinto(buf[: self._most])


@pytest.mark.parametrize("size", [0, 1, 1 << 18, (1 << 20) + 7])
@pytest.mark.parametrize("want", [1, 512, 1 << 18, 1 << 20])
def test_readahead_returns_the_same_bytes_and_hash_whatever_the_sizes(size: int,
                                                                      want: int) -> None:
    data = os.urandom(size)
    ahead = ReadAhead(_Short(data, 40_000).readinto, hasher=hashlib.sha256(),
                      chunk=1 << 16, depth=1)
    got = []
    while piece := ahead.read(want):
        assert len(piece) <= want
        got.append(bytes(piece))  # a view: only valid until the next read
    assert ahead.read(want) == b""  # the end stays the end
    assert ahead.hexdigest() == hashlib.sha256(data).hexdigest()
    ahead.close()
    assert b"".join(got) == data


def test_readahead_recycles_a_fixed_set_of_buffers() -> None:
    ahead = ReadAhead(io.BytesIO(os.urandom(5 << 20)).readinto, hasher=hashlib.sha256(),
                      chunk=1 << 16, depth=2)
    buffers = set()
    while piece := ahead.read(1 << 16):
        buffers.add(id(piece.obj))  # type: ignore[union-attr]
    ahead.close()
    assert 1 < len(buffers) <= 4


def test_readahead_read_all() -> None:
    data = os.urandom(300_000)
    ahead = ReadAhead(io.BytesIO(data).readinto, chunk=4096)
    assert ahead.read() == data
    with pytest.raises(ValueError):
        ahead.hexdigest()  # no hasher
    ahead.close()


def test_an_error_of_the_source_reaches_the_reader_after_the_bytes_before_it() -> None:
    calls = 0

    def readinto(buf: memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise MalformedLayer("corrupt gzip data")
        buf[:10] = (b"a" if calls == 1 else b"b") * 10
        return 10

    ahead = ReadAhead(readinto, hasher=hashlib.sha256(), chunk=10)
    assert ahead.read(100) == b"a" * 10
    assert ahead.read(100) == b"b" * 10
    with pytest.raises(MalformedLayer, match="corrupt gzip"):
        ahead.read(100)
    with pytest.raises(MalformedLayer):  # and again: the stream is broken for good
        ahead.read(100)
    with pytest.raises(ValueError):
        ahead.hexdigest()  # no digest of a stream that failed
    ahead.close()


def test_close_stops_a_source_that_is_ahead_and_blocked_on_a_full_queue() -> None:
    reads = 0

    def endless(buf: memoryview) -> int:
        nonlocal reads
        reads += 1
        buf[:] = b"x" * len(buf)
        return len(buf)

    before = len(_threads("unlade-"))
    ahead = ReadAhead(endless, hasher=hashlib.sha256(), chunk=1024, depth=2)
    time.sleep(0.05)
    assert ahead.read(1024) == b"x" * 1024
    ahead.close()
    assert len(_threads("unlade-")) == before
    settled = reads
    time.sleep(0.05)
    assert reads == settled  # nothing reads after close


def test_close_wakes_a_follow_reader_waiting_for_a_download(tmp_path: Path) -> None:
    data = b"layer bytes" * 1000
    writer = ContentStore(tmp_path).writer("sha256:" + hashlib.sha256(data).hexdigest(),
                                           len(data))
    writer.write(data[:100])
    raw = writer.follow()
    ahead = ReadAhead(raw.readinto, chunk=4096, interrupt=raw.abandon)
    assert ahead.read(4096) == data[:100]
    time.sleep(0.05)  # the thread now waits for bytes the writer will not send
    started = time.monotonic()
    ahead.close()
    assert time.monotonic() - started < 2
    raw.close()
    writer.close()
    with pytest.raises(ValueError):
        raw.read(1)


def test_abandoned_follow_reader_reports_it(tmp_path: Path) -> None:
    writer = ContentStore(tmp_path).writer("sha256:" + "0" * 64, 10)
    raw = writer.follow()
    raw.abandon()
    with pytest.raises(StoreError, match="reader closed"):
        raw.read(1)
    writer.close()


def _verifying(tmp_path: Path, payload: bytes, diff_id: str) -> VerifyingStream:
    blob = gzip.compress(payload)
    store = ContentStore(tmp_path)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    store.put(digest, blob)
    return VerifyingStream(store, digest, "application/vnd.oci.image.layer.v1.tar+gzip", diff_id)


def test_verifying_stream_checks_the_diffid_on_close(tmp_path: Path) -> None:
    payload = os.urandom(700_000)
    good = _verifying(tmp_path, payload, "sha256:" + hashlib.sha256(payload).hexdigest())
    assert good.read(1000) == payload[:1000]
    good.close()  # reads the rest and verifies
    bad = _verifying(tmp_path / "b", payload, "sha256:" + "1" * 64)
    with pytest.raises(DigestMismatch, match="diffID mismatch"):
        bad.close()
    assert not _threads("unlade-inflate") and not _threads("unlade-hash")


def test_verifying_stream_release_skips_verification(tmp_path: Path) -> None:
    stream = _verifying(tmp_path, b"abc" * 100_000, "sha256:" + "1" * 64)
    stream.read(10)
    stream.release()  # what a failed apply does: no diffID error masks the apply's
    assert not _threads("unlade-inflate") and not _threads("unlade-hash")


def test_truncated_gzip_is_a_truncated_layer(tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    blob = gzip.compress(payload)[:-100]
    store = ContentStore(tmp_path)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    store.put(digest, blob)
    stream = VerifyingStream(store, digest, "application/vnd.oci.image.layer.v1.tar+gzip",
                             "sha256:" + hashlib.sha256(payload).hexdigest())
    with pytest.raises(TruncatedLayer, match="gzip stream ends early"):
        stream.close()
    assert not _threads("unlade-inflate") and not _threads("unlade-hash")


def test_corrupt_gzip_is_a_malformed_layer(tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    blob = bytearray(gzip.compress(payload))
    blob[-8:-4] = bytes(4)  # the CRC-32 of the member
    store = ContentStore(tmp_path)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    store.put(digest, bytes(blob))
    stream = VerifyingStream(store, digest, "application/vnd.oci.image.layer.v1.tar+gzip",
                             "sha256:" + hashlib.sha256(payload).hexdigest())
    with pytest.raises(MalformedLayer, match="corrupt gzip data"):
        stream.close()
