"""The content store holds only verified blobs, whoever writes them and however it ends."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from unlade.content import ContentStore
from unlade.errors import DigestMismatch, InvalidDigest


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_put_verifies_and_places_blob(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = b"config"
    path = store.put(_digest(data), data)
    assert path == tmp_path / "blobs" / "sha256" / _digest(data)[7:]
    assert path.read_bytes() == data
    assert store.has(_digest(data))
    assert list(store.blobs()) == [_digest(data)]


@pytest.mark.parametrize("data,size", [(b"other", None), (b"short", 10), (b"too long", 3)])
def test_bad_content_leaves_nothing(tmp_path: Path, data: bytes, size: int | None) -> None:
    store = ContentStore(tmp_path)
    digest = _digest(b"expected")
    writer = store.writer(digest, size)
    with pytest.raises(DigestMismatch):
        writer.write(data)
        writer.commit()
    writer.close()
    assert not store.has(digest)
    assert list((tmp_path / "ingest").iterdir()) == []


@pytest.mark.parametrize("bad", ["sha256:../../etc/passwd", "sha256:ABC", "md5:" + "0" * 32,
                                 "sha256:" + "0" * 63, "../x"])
def test_digest_is_validated_before_it_becomes_a_path(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidDigest):
        ContentStore(tmp_path).path(bad)


def test_follower_sees_bytes_as_they_arrive_and_ends_on_commit(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = bytes(range(256)) * 4096
    writer = store.writer(_digest(data), len(data))
    reader = writer.follow()
    got: list[bytes] = []

    def consume() -> None:
        while chunk := reader.read(10000):
            got.append(chunk)

    thread = threading.Thread(target=consume)
    thread.start()
    for i in range(0, len(data), 65536):
        writer.write(data[i : i + 65536])
    writer.commit()
    thread.join(5)
    writer.close()
    reader.close()
    assert b"".join(got) == data


def test_follower_raises_when_blob_fails_verification(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    writer = store.writer(_digest(b"right"), 5)
    reader = writer.follow()
    writer.write(b"wrong")
    assert reader.read(5) == b"wrong"
    with pytest.raises(DigestMismatch):
        writer.commit()
    with pytest.raises(DigestMismatch):
        reader.read(5)
    writer.close()
    reader.close()


def test_two_processes_writing_the_same_blob_both_succeed(tmp_path: Path) -> None:
    data = b"x" * (8 << 20)
    digest = _digest(data)
    code = (
        "import sys; from unlade.content import ContentStore\n"
        f"s = ContentStore({str(tmp_path)!r}); w = s.writer({digest!r}, {len(data)})\n"
        "for _ in range(64): w.write(b'x' * (1 << 17))\n"
        "w.commit(); w.close()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    store = ContentStore(tmp_path)
    assert store.path(digest).read_bytes() == data
    assert list((tmp_path / "ingest").iterdir()) == []
