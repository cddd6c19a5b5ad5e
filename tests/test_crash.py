"""Pulls killed with SIGKILL leave a store that checks clean and nothing half-written in
sight, and the next pull downloads only what is missing (resuming a killed writer's
``.part``).

The kill moments are seeded random fractions of a full pull's measured duration (through
a rate-limited proxy, ~1-2 s), stratified so that together they cover the whole pull:
startup, download, decompression and application, the final rename or snapshot commit.
Each moment kills a pull into a store of its own (``--rootfs`` and snapshots in turn);
in half of them the next pull, resuming, is killed too; then a last pull must fetch
exactly what is missing. ``UNLADE_CRASH_KILLS`` raises the number of moments (default
50), ``UNLADE_CRASH_SEED`` changes them.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
    open_ingest_locks,
    part_size,
    start_unlade,
    still_to_fetch,
    stored,
)
from harness.tree import Snapshot, diff, snapshot

pytestmark = [pytest.mark.root, pytest.mark.tools]

KILLS = max(50, int(os.environ.get("UNLADE_CRASH_KILLS", "50")))
#: A file to append one JSON line per store to (moment, mode, which pulls were killed),
#: for the README's figures.
REPORT = os.environ.get("UNLADE_CRASH_REPORT")
SEED = int(os.environ.get("UNLADE_CRASH_SEED", "5318008"))
CHUNKS = 6  # test items, for xdist to spread
MODES = ("rootfs", "snapshots")  # pull --rootfs DIR, or into the store's snapshots
RATE = 1.5 * (1 << 20)  # bytes per second per connection
LAYER_SIZES = (1_500_000, 1_200_000, 500_000)  # random, so compressed they stay as big


@dataclass
class CrashImage:
    image: PushedImage
    ref: str  # through ``proxy``
    proxy: FaultProxy
    layers: list[tuple[str, int]]  # (digest, size)
    seconds: dict[str, float]  # a whole uninterrupted pull, per mode
    tree: Snapshot  # the complete rootfs

    @property
    def total(self) -> int:
        return sum(size for _, size in self.layers)


def _layers(seed: int) -> list[list[images.Entry]]:
    rng = random.Random(seed)
    return [[images.directory(f"layer{i}"),
             *[images.file(f"layer{i}/text-{j}", f"{i}-{j} " * 400) for j in range(30)],
             images.file(f"layer{i}/random.bin", rng.randbytes(size)),
             images.symlink(f"layer{i}/link", "random.bin")]
            for i, size in enumerate(LAYER_SIZES)]


def _pull_args(ref: str, mode: str, target: Path) -> list[str | Path]:
    args: list[str | Path] = ["pull", "--plain-http", "--json", ref]
    return [*args, "--rootfs", target] if mode == "rootfs" else args


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory, registry: Registry
          ) -> Iterator[CrashImage]:
    """The image, a rate-limited proxy to it, and a full pull timed in each mode."""
    work = tmp_path_factory.mktemp("crash")
    image = images.build_and_push(work / "layout", registry, "crash/img", "t", _layers(7),
                                  raw=True)
    assert isinstance(image.info, images.ImageInfo)
    layers = [(d["digest"], d["size"]) for d in image.info.manifest["layers"]]
    with FaultProxy(registry.host, rate=RATE) as proxy:
        ref = image.ref.replace(registry.host, proxy.host)
        seconds = {}
        for mode in MODES:
            start = time.monotonic()
            doc = finish(start_unlade(work / f"calibrate-{mode}",
                                      *_pull_args(ref, mode, work / "rootfs")))
            seconds[mode] = time.monotonic() - start
            assert doc["bytes_fetched"] == sum(size for _, size in layers)
        yield CrashImage(image, ref, proxy, layers, seconds, snapshot(work / "rootfs"))


def _moments() -> list[float]:
    """KILLS fractions of a pull's duration: one in each of KILLS equal slices of
    [0, 1.15) (a little past the end, to catch the last steps), in seeded random order."""
    rng = random.Random(SEED)
    slices = list(range(KILLS))
    rng.shuffle(slices)
    return [(s + rng.random()) / KILLS * 1.15 for s in slices]


def _assert_consistent(root: Path, crash: CrashImage, target: Path | None, where: str
                       ) -> None:
    """What a killed pull may leave: nothing locked, nothing wrong, nothing partial."""
    assert held_ingest(root) == [], where
    assert check_problems(root) == [], where
    assert bad_blobs(root) == [], where
    if target is not None and target.exists():
        assert diff(crash.tree, snapshot(target)) == [], f"{where}: partial rootfs"


def _final_pull(root: Path, crash: CrashImage, mode: str, target: Path, where: str) -> None:
    """The pull after the kills downloads exactly what the store lacks: each missing
    layer blob once, from where a killed writer's ``.part`` ends."""
    todo = still_to_fetch(root, crash.layers)
    mark = len(crash.proxy.requests)
    doc = finish(start_unlade(root, *_pull_args(crash.ref, mode, target)))
    assert doc["bytes_fetched"] == sum(todo.values()), (where, todo)
    gets = crash.proxy.blob_gets([d for d, _ in crash.layers], since=mark)
    assert gets == {d: int(todo.get(d, 0) > 0) for d, _ in crash.layers}, (where, todo)
    sizes = dict(crash.layers)
    for seen in crash.proxy.requests[mark:]:
        digest = seen.path.rsplit("/blobs/", 1)[-1]
        if digest in todo:
            offset = sizes[digest] - todo[digest]
            assert seen.headers.get("Range") == (f"bytes={offset}-" if offset else None), \
                (where, seen)
    for layer, (digest, _) in zip(doc["layers"], crash.layers, strict=True):
        assert layer["fetched"] == (digest in todo), (where, layer)
    _assert_consistent(root, crash, target if mode == "rootfs" else None, where)
    assert ingest_files(root) == [], where
    if mode == "rootfs":
        assert diff(crash.tree, snapshot(target)) == [], where


def _kill_at(root: Path, crash: CrashImage, mode: str, target: Path, delay: float,
             where: str) -> bool:
    """Start a pull and SIGKILL it after ``delay`` seconds; whether it was still running.
    Either way, what it leaves must be consistent."""
    proc = start_unlade(root, *_pull_args(crash.ref, mode, target))
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), f"{where}: exit {proc.returncode}\n{err}"
    if proc.returncode == 0 and mode == "rootfs":
        assert diff(crash.tree, snapshot(target)) == [], where
    _assert_consistent(root, crash, target if mode == "rootfs" else None, where)
    return proc.returncode == -signal.SIGKILL


def _crash_store(index: int, crash: CrashImage, fraction: float, tmp_path: Path) -> bool:
    """A pull into a new store killed at ``fraction`` of a whole pull's duration; half
    of the time, the pull after it (resuming) is killed too, at a random moment of what
    it has left to do; then a final pull. Returns whether the first pull was killed."""
    mode = MODES[index % len(MODES)]
    root = tmp_path / f"store{index}"
    delay = fraction * crash.seconds[mode]
    killed = _kill_at(root, crash, mode, tmp_path / f"rootfs{index}-0", delay,
                      f"store {index} ({mode}): pull killed after {delay:.3f} s")
    second = None
    if index % 4 >= 2:  # both modes
        left = sum(still_to_fetch(root, crash.layers).values()) / crash.total
        again = random.Random(SEED + index).uniform(0.2, 0.2 + left * crash.seconds[mode])
        second = _kill_at(root, crash, mode, tmp_path / f"rootfs{index}-1", again,
                          f"store {index} ({mode}): pull killed after {delay:.3f} s, the "
                          f"next one after {again:.3f} s")
    _final_pull(root, crash, mode, tmp_path / f"rootfs{index}-final",
                f"store {index} ({mode}): final pull (first killed after {delay:.3f} s)")
    if REPORT:
        import json

        with open(REPORT, "a") as f:
            f.write(json.dumps({"store": index, "mode": mode, "fraction": round(fraction, 4),
                                "killed": killed, "second_killed": second}) + "\n")
    return killed


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_sigkill_at_random_moments(chunk: int, crash: CrashImage, tmp_path: Path) -> None:
    moments = _moments()
    per = -(-KILLS // CHUNKS)
    mine = list(enumerate(moments))[chunk * per:(chunk + 1) * per]
    killed = [_crash_store(index, crash, fraction, tmp_path) for index, fraction in mine]
    # Moments well inside a pull must have found it running (late ones may not).
    assert all(k for k, (_, f) in zip(killed, mine, strict=True) if f < 0.4), (killed, mine)


def test_the_moments_cover_a_whole_pull() -> None:
    moments = sorted(_moments())
    assert len(moments) == KILLS >= 50
    assert moments[0] < 1.15 / KILLS and moments[-1] > 1.15 * (KILLS - 1) / KILLS
    assert all(b - a < 2 * 1.15 / KILLS for a, b in itertools.pairwise(moments))


# ---------------------------------------------------------------------------------------
# Kills around the ingest lock


def _wait_for(predicate, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def _lock_names(crash: CrashImage) -> list[str]:
    return sorted(f"{d.replace(':', '-')}.lock" for d, _ in crash.layers)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_pull_killed_while_waiting_for_the_lock_leaves_the_holder_alone(
        sig: signal.Signals, crash: CrashImage, tmp_path: Path) -> None:
    root = tmp_path / "store"
    registry = crash.image.registry.host
    locks = _lock_names(crash)
    with FaultProxy(registry, rate=512 << 10) as slow, FaultProxy(registry) as fast:
        holder = start_unlade(root, *_pull_args(crash.ref.replace(crash.proxy.host, slow.host),
                                                "rootfs", tmp_path / "holder"))
        _wait_for(lambda: set(locks) <= set(held_ingest(root)), "the holder has the locks")
        waiter = start_unlade(root, *_pull_args(crash.ref.replace(crash.proxy.host, fast.host),
                                                "rootfs", tmp_path / "waiter"))
        waited: list[str] = []

        def waiting() -> bool:
            waited[:] = [n for n in open_ingest_locks(root, waiter.pid) if n in locks]
            return bool(waited)

        _wait_for(waiting, "the waiter waits for a layer's lock")
        time.sleep(0.2)
        assert set(waited) <= set(held_ingest(root))  # held by the holder, still
        assert holder.poll() is None
        sent = time.monotonic()
        waiter.send_signal(sig)
        _, err = waiter.communicate(timeout=30)
        gone = time.monotonic() - sent
        assert holder.poll() is None  # it was not waiting for the waiter
        doc = finish(holder)
    if sig == signal.SIGINT:
        assert waiter.returncode == 130, err
        assert gone < 3  # the wait for the lock heeds Ctrl-C
    else:
        assert waiter.returncode == -signal.SIGKILL
    digests = [d for d, _ in crash.layers]
    assert fast.blob_gets(digests) == dict.fromkeys(digests, 0)
    assert doc["bytes_fetched"] == crash.total
    assert slow.blob_gets(digests) == dict.fromkeys(digests, 1)
    assert not (tmp_path / "waiter").exists()
    assert diff(crash.tree, snapshot(tmp_path / "holder")) == []
    assert check_problems(root) == []
    assert bad_blobs(root) == []
    assert ingest_files(root) == []


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] in "Tt"


def test_the_waiter_takes_over_when_the_lock_holder_is_killed(
        crash: CrashImage, tmp_path: Path) -> None:
    root = tmp_path / "store"
    registry = crash.image.registry.host
    big = [d for d, size in crash.layers if size > (1 << 20)]
    locks = _lock_names(crash)
    with FaultProxy(registry, rate=400 << 10) as slow, \
            FaultProxy(registry, rate=4 << 20) as other:
        holder = start_unlade(root, *_pull_args(crash.ref.replace(crash.proxy.host, slow.host),
                                                "rootfs", tmp_path / "holder"))
        # urllib3 hands over 1 MiB reads: wait until a big layer is partly written
        _wait_for(lambda: any(part_size(root, d) > 0 for d in big), "a .part has bytes")
        waiter = start_unlade(root, *_pull_args(crash.ref.replace(crash.proxy.host,
                                                                  other.host),
                                                "rootfs", tmp_path / "waiter"))
        _wait_for(lambda: any(n in locks for n in open_ingest_locks(root, waiter.pid)),
                  "the waiter waits for a lock")
        holder.send_signal(signal.SIGSTOP)  # so that what it leaves can be measured
        _wait_for(lambda: _stopped(holder.pid), "the holder stops")
        left = {d: part_size(root, d) for d, _ in crash.layers if not stored(root, d)}
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        doc = finish(waiter)
    assert holder.returncode == -signal.SIGKILL
    assert not (tmp_path / "holder").exists()
    assert diff(crash.tree, snapshot(tmp_path / "waiter")) == []
    # The waiter fetched each blob the holder had not stored, from where the holder's
    # .part ended (the proxy saw the Range), and nothing else.
    assert any(left.get(d, 0) > 0 for d in big), left
    ranges = {r.path.rsplit("/blobs/", 1)[1]: r.headers.get("Range")
              for r in other.requests if "/blobs/" in r.path and r.method == "GET"}
    assert {d: v for d, v in ranges.items() if d in left} == {
        d: f"bytes={n}-" if n else None for d, n in left.items()}
    assert not set(ranges) & ({d for d, _ in crash.layers} - set(left))
    sizes = dict(crash.layers)
    assert doc["bytes_fetched"] == sum(sizes[d] - n for d, n in left.items())
    assert doc["bytes_fetched"] < crash.total
    assert [la["fetched"] for la in doc["layers"]] == [d in left for d, _ in crash.layers]
    assert check_problems(root) == []
    assert bad_blobs(root) == []
    assert ingest_files(root) == []
