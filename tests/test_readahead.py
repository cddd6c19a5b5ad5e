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
from unlade.decompress import GZIP, BackgroundHash, ReadAhead, open_decompressed
from unlade.errors import DigestMismatch, MalformedLayer, StoreError, TruncatedLayer
from unlade.pull import VerifyingStream


def _threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


@pytest.mark.parametrize("size", [0, 1, 1 << 18, (1 << 20) + 7])
@pytest.mark.parametrize("want", [1, 512, 1 << 18, 1 << 20])
def test_readahead_returns_the_same_bytes_whatever_the_read_sizes(size: int, want: int) -> None:
    data = os.urandom(size)
    src = io.BytesIO(data)
    ahead = ReadAhead(src.read, chunk=1 << 16, depth=3)
    got = []
    while piece := ahead.read(want):
        assert len(piece) <= want
        got.append(piece)
    assert ahead.read(want) == b""  # the end stays the end
    ahead.close()
    assert b"".join(got) == data


def test_readahead_read_all() -> None:
    data = os.urandom(300_000)
    ahead = ReadAhead(io.BytesIO(data).read, chunk=4096)
    assert ahead.read() == data
    ahead.close()


def test_an_error_of_the_source_reaches_the_reader_after_the_bytes_before_it() -> None:
    def source() -> object:
        yield b"a" * 10
        yield b"b" * 10
        raise MalformedLayer("corrupt gzip data")

    parts = source()
    ahead = ReadAhead(lambda n: next(parts), chunk=10)  # type: ignore[arg-type,return-value]
    assert ahead.read(100) == b"a" * 10
    assert ahead.read(100) == b"b" * 10
    with pytest.raises(MalformedLayer, match="corrupt gzip"):
        ahead.read(100)
    with pytest.raises(MalformedLayer):  # and again: the stream is broken for good
        ahead.read(100)
    ahead.close()


def test_close_stops_a_source_that_is_ahead_and_blocked_on_a_full_queue() -> None:
    reads = 0

    def endless(n: int) -> bytes:
        nonlocal reads
        reads += 1
        return b"x" * n

    before = len(_threads("unlade-inflate"))
    ahead = ReadAhead(endless, chunk=1024, depth=2)
    time.sleep(0.05)
    assert ahead.read(1024) == b"x" * 1024
    ahead.close()
    assert len(_threads("unlade-inflate")) == before
    settled = reads
    time.sleep(0.05)
    assert reads == settled  # nothing reads after close


def test_close_wakes_a_follow_reader_waiting_for_a_download(tmp_path: Path) -> None:
    data = b"layer bytes" * 1000
    writer = ContentStore(tmp_path).writer("sha256:" + hashlib.sha256(data).hexdigest(),
                                           len(data))
    writer.write(data[:100])
    raw = writer.follow()
    ahead = ReadAhead(raw.read, chunk=4096, interrupt=raw.abandon)
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


@pytest.mark.parametrize("chunks", [0, 1, 100])
def test_background_hash_equals_hashlib(chunks: int) -> None:
    parts = [os.urandom(5000 + i) for i in range(chunks)]
    bg = BackgroundHash("sha256", depth=2)
    for part in parts:
        bg.update(part)
    assert bg.hexdigest() == hashlib.sha256(b"".join(parts)).hexdigest()
    with pytest.raises(ValueError):
        bg.update(b"late")


def test_background_hash_close_ends_its_thread() -> None:
    before = len(_threads("unlade-hash"))
    bg = BackgroundHash("sha512")
    bg.update(b"x")
    bg.close()
    bg.close()
    assert len(_threads("unlade-hash")) == before


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


def test_truncated_gzip_is_a_truncated_layer_through_the_thread(tmp_path: Path) -> None:
    blob = gzip.compress(os.urandom(200_000))[:-100]
    ahead = ReadAhead(open_decompressed(io.BytesIO(blob), GZIP).read)
    with pytest.raises(EOFError):
        while ahead.read(1 << 16):
            pass
    ahead.close()
    from unlade.pull import _Hashing

    stream = _Hashing(open_decompressed(io.BytesIO(blob), GZIP), GZIP, background=True)
    ahead = ReadAhead(stream.read)
    with pytest.raises(TruncatedLayer, match="ends early"):
        while ahead.read(1 << 16):
            pass
    ahead.close()
    stream.hash.close()
