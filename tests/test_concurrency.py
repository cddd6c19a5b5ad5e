"""A blob is downloaded once, whoever pulls it: the ingest file of a digest is locked
(``flock``) across threads and processes, and a writer that gets the lock after someone
else stored the blob downloads nothing."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from pathlib import Path

import pytest
from harness import images
from harness.faultproxy import FaultProxy
from harness.images import PushedImage
from harness.registry import Registry
from harness.storecheck import (
    bad_blobs,
    check_problems,
    finish,
    held_ingest,
    ingest_files,
    start_unlade,
)

from unlade.content import ContentStore
from unlade.errors import DigestMismatch, Interrupted
from unlade.registry import Cancellation


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------
# The ingest lock, in one process


def test_follower_made_before_the_lock_reads_the_blob_another_writer_stored(
        tmp_path: Path) -> None:
    data = random.Random(1).randbytes(300_000)
    digest = _digest(data)
    first = ContentStore(tmp_path).writer(digest, len(data))
    assert first.acquire() is True
    second = ContentStore(tmp_path).writer(digest, len(data))
    reader = second.follow()  # before `second` holds (or waits for) the lock
    got: list[bytes] = []
    outcome: list[bool] = []
    reading = threading.Thread(target=lambda: got.append(reader.read()))
    waiting = threading.Thread(target=lambda: outcome.append(second.acquire(Cancellation())))
    reading.start()
    waiting.start()
    time.sleep(0.3)
    assert outcome == [] and got == []  # both wait for the holder
    first.write(data[:1000])
    assert (tmp_path / "ingest" / f"sha256-{digest[7:]}.part").stat().st_size == 1000
    first.write(data[1000:])
    first.commit()
    waiting.join(5)
    assert outcome == [False] and second.stored and second.done
    chunks = got
    reading.join(5)
    while chunk := reader.read(65536):
        chunks.append(chunk)
    assert b"".join(chunks) == data
    reader.close()
    first.close()
    second.close()
    assert ingest_files(tmp_path) == []


def test_writers_of_one_digest_in_many_threads_write_it_once(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(1 << 20)
    digest = _digest(data)
    store = ContentStore(tmp_path)
    wrote: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        writer = store.writer(digest, len(data))
        try:
            if writer.acquire(Cancellation()):
                with lock:
                    wrote.append(i)
                for pos in range(0, len(data), 100_000):
                    writer.write(data[pos:pos + 100_000])
                    time.sleep(0.005)
                writer.commit()
        finally:
            writer.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(wrote) == 1
    assert store.path(digest).read_bytes() == data
    assert ingest_files(tmp_path) == []
    # put() of the same content from many threads: all succeed, nothing left over
    small = b"manifest"
    threads = [threading.Thread(target=store.put, args=(_digest(small), small))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert store.path(_digest(small)).read_bytes() == small
    assert ingest_files(tmp_path) == []


def test_waiting_for_the_lock_is_cancellable(tmp_path: Path) -> None:
    data = b"x" * 5000
    digest = _digest(data)
    holder = ContentStore(tmp_path).writer(digest, len(data))
    holder.acquire()
    holder.write(data[:100])
    waiter = ContentStore(tmp_path).writer(digest, len(data))
    reader = waiter.follow()
    cancel = Cancellation()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            waiter.acquire(cancel)
        except BaseException as err:
            errors.append(err)
            waiter.fail(err)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive()
    start = time.monotonic()
    cancel.cancel()
    thread.join(5)
    assert time.monotonic() - start < 1
    assert len(errors) == 1 and isinstance(errors[0], Interrupted)
    with pytest.raises(Interrupted):
        reader.read()
    waiter.close()  # it never held the lock: the holder's files stay
    part = tmp_path / "ingest" / f"sha256-{digest[7:]}.part"
    assert part.stat().st_size == 100
    assert held_ingest(tmp_path) == sorted([part.name, part.with_suffix(".lock").name])
    holder.write(data[100:])
    holder.commit()
    holder.close()
    assert ingest_files(tmp_path) == []


def test_a_dead_writers_part_is_resumed_or_truncated(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(200_000)
    digest = _digest(data)
    store = ContentStore(tmp_path)
    part = store.ingest_path(digest)
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:70_000])  # as a writer killed part-way leaves it (lock free)
    writer = store.writer(digest, len(data))
    reader = writer.follow()
    assert writer.acquire(resume=True) is True
    assert (writer.written, writer.resumed) == (70_000, 70_000)
    assert reader.read(100_000) == data[:70_000]  # the resumed bytes can be followed
    writer.write(data[70_000:])
    writer.commit()
    assert reader.read() == data[70_000:]
    assert reader.read() == b""
    writer.close()
    reader.close()
    assert store.path(digest).read_bytes() == data
    assert ingest_files(tmp_path) == []

    # Not resumed when asked not to, nor when the leftover is longer than the blob.
    other = random.Random(4).randbytes(1000)
    for leftover, resume in ((other[:500], False), (other + b"junk", True)):
        part = store.ingest_path(_digest(other))
        part.write_bytes(leftover)
        writer = store.writer(_digest(other), len(other))
        assert writer.acquire(resume=resume) is True
        assert writer.written == writer.resumed == 0
        assert part.stat().st_size == 0
        writer.close()
    assert ingest_files(tmp_path) == []

    # A leftover that is not a prefix of the blob fails verification, and goes.
    part.write_bytes(b"garbage")
    writer = store.writer(_digest(other), len(other))
    writer.acquire(resume=True)
    writer.write(other[7:])
    with pytest.raises(DigestMismatch):
        writer.commit()
    writer.close()
    assert not store.has(_digest(other))
    assert ingest_files(tmp_path) == []


def test_clean_ingest_removes_only_what_nobody_writes(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    live_data = b"live" * 1000
    live = store.writer(_digest(live_data), len(live_data))
    live.write(live_data[:1234])
    ingest = tmp_path / "ingest"
    stale = ingest / f"sha256-{'a' * 64}.part"
    stale.write_bytes(b"s" * 300)
    stale.with_suffix(".lock").write_bytes(b"")  # its holder was killed
    lonely_lock = ingest / f"sha256-{'b' * 64}.lock"
    lonely_lock.write_bytes(b"")
    legacy = ingest / "0123456789abcdef-x1y2z3.part"  # an older unlade's random name
    legacy.write_bytes(b"l" * 50)
    other = ingest / "README"
    other.write_text("not ours")

    cleaned = store.clean_ingest()
    assert (cleaned.parts, cleaned.bytes) == (2, 350)
    assert ingest_files(tmp_path) == sorted([live.tmp_path.name, "README",
                                             live.tmp_path.with_suffix(".lock").name])
    live.write(live_data[1234:])
    live.commit()
    live.close()
    assert store.path(_digest(live_data)).read_bytes() == live_data
    assert ingest_files(tmp_path) == ["README"]
    assert store.clean_ingest() == (0, 0)
    assert ContentStore(tmp_path / "new").clean_ingest() == (0, 0)


# ---------------------------------------------------------------------------------------
# Pulls side by side


def _random_layers(seed: int, sizes: list[int]) -> list[list[images.Entry]]:
    rng = random.Random(seed)
    return [[images.directory(f"l{seed}-{i}"),
             images.file(f"l{seed}-{i}/blob.bin", rng.randbytes(size)),
             *[images.file(f"l{seed}-{i}/small-{j}", f"{seed}-{i}-{j}\n" * 50)
               for j in range(20)]]
            for i, size in enumerate(sizes)]


def _layer_sizes(info: images.ImageInfo) -> dict[str, int]:
    return {d["digest"]: d["size"] for d in info.manifest["layers"]}


@pytest.fixture(scope="module")
def shared_images(tmp_path_factory: pytest.TempPathFactory,
                  registry: Registry) -> tuple[PushedImage, PushedImage]:
    """Two images on the same three base layers, each with one layer of its own."""
    base = _random_layers(10, [600_000, 900_000, 400_000])
    layout = tmp_path_factory.mktemp("concurrency") / "layout"
    pushed = []
    for name, seed in (("one", 11), ("two", 12)):
        layers = [*base, *_random_layers(seed, [700_000])]
        pushed.append(images.build_and_push(layout, registry, f"concurrency/{name}", "t",
                                            layers, raw=True))
    one, two = pushed
    assert isinstance(one.info, images.ImageInfo) and isinstance(two.info, images.ImageInfo)
    assert one.info.layer_digests[:3] == two.info.layer_digests[:3]
    assert one.info.layer_digests[3] != two.info.layer_digests[3]
    return one, two


def _pull_args(ref: str, mode: str, tmp_path: Path, name: str) -> list[str | Path]:
    args: list[str | Path] = ["pull", "--plain-http", "--json", ref]
    if mode == "rootfs":
        args += ["--rootfs", tmp_path / f"rootfs-{name}"]
    return args


def _assert_downloaded_once(docs: list[dict], sizes: dict[str, int],  # type: ignore[type-arg]
                            proxy: FaultProxy) -> None:
    assert sum(doc["bytes_fetched"] for doc in docs) == sum(sizes.values())
    for digest in sizes:
        fetched = [layer["fetched"] for doc in docs for layer in doc["layers"]
                   if layer["digest"] == digest]
        assert fetched.count(True) == 1, (digest, fetched)
    # the registry side: one GET per layer blob, from either process
    assert proxy.blob_gets(sizes) == dict.fromkeys(sizes, 1)


@pytest.mark.root
@pytest.mark.tools
@pytest.mark.parametrize("mode", ["rootfs", "snapshots"])
def test_two_pulls_of_one_image_download_each_blob_once(
        mode: str, tmp_path: Path, shared_images: tuple[PushedImage, PushedImage]) -> None:
    image = shared_images[0]
    assert isinstance(image.info, images.ImageInfo)
    sizes = _layer_sizes(image.info)
    root = tmp_path / "store"
    # ~1.5 MiB/s per connection: each pull takes a second or two, so they overlap.
    with FaultProxy(image.registry.host, rate=1.5 * (1 << 20)) as proxy:
        ref = image.ref.replace(image.registry.host, proxy.host)
        procs = [start_unlade(root, *_pull_args(ref, mode, tmp_path, name))
                 for name in ("a", "b")]
        docs = [finish(p) for p in procs]
    assert [d["manifest_digest"] for d in docs] == [image.digest] * 2
    _assert_downloaded_once(docs, sizes, proxy)
    assert check_problems(root) == []
    assert bad_blobs(root) == []
    assert ingest_files(root) == []
    if mode == "rootfs":
        for name in ("a", "b"):
            assert (tmp_path / f"rootfs-{name}" / "l11-0" / "small-19").read_text() == \
                "11-0-19\n" * 50


@pytest.mark.root
@pytest.mark.tools
@pytest.mark.parametrize("mode", ["rootfs", "snapshots"])
def test_pulls_of_images_sharing_base_layers_download_them_once(
        mode: str, tmp_path: Path, shared_images: tuple[PushedImage, PushedImage]) -> None:
    one, two = shared_images
    assert isinstance(one.info, images.ImageInfo) and isinstance(two.info, images.ImageInfo)
    sizes = {**_layer_sizes(one.info), **_layer_sizes(two.info)}
    assert len(sizes) == 5
    root = tmp_path / "store"
    with FaultProxy(one.registry.host, rate=1.5 * (1 << 20)) as proxy:
        procs = [start_unlade(root, *_pull_args(image.ref.replace(image.registry.host,
                                                                  proxy.host),
                                                mode, tmp_path, name))
                 for image, name in ((one, "one"), (two, "two"))]
        docs = [finish(p) for p in procs]
    assert [d["manifest_digest"] for d in docs] == [one.digest, two.digest]
    _assert_downloaded_once(docs, sizes, proxy)
    own = [one.info.layer_digests[3], two.info.layer_digests[3]]
    for doc, digest in zip(docs, own, strict=True):
        assert [la["fetched"] for la in doc["layers"] if la["digest"] == digest] == [True]
    assert check_problems(root) == []
    assert bad_blobs(root) == []
    assert ingest_files(root) == []
    if mode == "rootfs":
        for name, seed in (("one", 11), ("two", 12)):
            rootfs = tmp_path / f"rootfs-{name}"
            assert (rootfs / "l10-2" / "small-0").read_text() == "10-2-0\n" * 50
            assert (rootfs / f"l{seed}-0" / "small-3").read_text() == f"{seed}-0-3\n" * 50


@pytest.mark.root
@pytest.mark.tools
def test_two_threads_of_one_process_download_each_blob_once(
        tmp_path: Path, shared_images: tuple[PushedImage, PushedImage]) -> None:
    from unlade import Client

    one, two = shared_images
    assert isinstance(one.info, images.ImageInfo) and isinstance(two.info, images.ImageInfo)
    sizes = {**_layer_sizes(one.info), **_layer_sizes(two.info)}
    results = {}
    with FaultProxy(one.registry.host, rate=2 << 20) as proxy:

        def pull(image: PushedImage, name: str) -> None:
            client = Client(tmp_path / "store", plain_http=True)
            results[name] = client.pull(image.ref.replace(image.registry.host, proxy.host),
                                        rootfs=tmp_path / name)

        threads = [threading.Thread(target=pull, args=(image, name))
                   for image, name in ((one, "one"), (two, "two"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert sorted(results) == ["one", "two"]
    docs = [results[n].to_json() for n in ("one", "two")]
    _assert_downloaded_once(docs, sizes, proxy)
    assert ingest_files(tmp_path / "store") == []
    assert (tmp_path / "two" / "l12-0" / "small-3").read_text() == "12-0-3\n" * 50


@pytest.mark.root
@pytest.mark.tools
@pytest.mark.parametrize("mode", ["rootfs", "snapshots"])
def test_a_layer_twice_in_one_image_is_downloaded_once(
        mode: str, tmp_path: Path, registry: Registry) -> None:
    a, b = _random_layers(20, [800_000, 300_000])
    image = images.build_and_push(tmp_path / "layout", registry, "concurrency/twice", "t",
                                  [a, b, a], raw=True)
    assert isinstance(image.info, images.ImageInfo)
    digests = image.info.layer_digests
    assert digests[0] == digests[2] != digests[1]
    sizes = _layer_sizes(image.info)
    root = tmp_path / "store"
    with FaultProxy(registry.host, rate=4 << 20) as proxy:
        doc = finish(start_unlade(root, *_pull_args(
            image.ref.replace(registry.host, proxy.host), mode, tmp_path, "r")))
    assert doc["bytes_fetched"] == sum(sizes.values())
    assert [la["fetched"] for la in doc["layers"]] == [True, True, False]
    assert proxy.blob_gets(sizes) == dict.fromkeys(sizes, 1)
    assert check_problems(root) == []
    assert ingest_files(root) == []
    if mode == "rootfs":
        assert (tmp_path / "rootfs-r" / "l20-0" / "small-7").read_text() == "20-0-7\n" * 50
