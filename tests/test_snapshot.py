"""Snapshotters: layers unpacked once per chainID, chains mounted as the flat rootfs.

Every test runs against both :class:`OverlaySnapshotter` and :class:`NativeSnapshotter`:
the mounted chain must equal the flat apply of the same layers entry by entry (mtimes
included), an unpacked chain is never unpacked again, a failed unpack leaves neither a
directory nor a record, and concurrent unpacks of one chain unpack it once.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from harness import images
from harness.images import Entry, directory, file, whiteout
from harness.tree import assert_same_tree
from harness.tree import snapshot as tree_snapshot

from unlade.errors import LayerError, StoreError, TruncatedLayer
from unlade.layer import LayerStats, apply_layer
from unlade.metastore import MetaStore
from unlade.snapshot import (
    ChainLayer,
    NativeSnapshotter,
    OverlaySnapshotter,
    Snapshotter,
    _is_mountpoint,
)

pytestmark = pytest.mark.root

KINDS = [OverlaySnapshotter, NativeSnapshotter]


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The OCI chainIDs of a stack of diffIDs, bottom first."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else
                   "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


class Layers:
    """Uncompressed tars of a stack of layers and their chainIDs."""

    def __init__(self, layers: Sequence[Sequence[Entry]]) -> None:
        self.entries = [list(e) for e in layers]
        self.tars = [images.layer_tar(e) for e in layers]
        self.chain = chain_ids(["sha256:" + hashlib.sha256(t).hexdigest() for t in self.tars])

    def flat(self, root: Path) -> Path:
        root.mkdir()
        for tar in self.tars:
            apply_layer(io.BytesIO(tar), root)
        return root

    def unpack(self, sn: Snapshotter, upto: int | None = None) -> list[str]:
        """Unpack the stack bottom up; returns the chainIDs topmost first."""
        n = len(self.tars) if upto is None else upto
        for i in range(n):
            sn.unpack(self.chain[i], self.chain[i - 1] if i else None,
                      lambda t=self.tars[i]: io.BytesIO(t), layer=f"layer {i + 1}")
        return self.chain[:n][::-1]


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[MetaStore]:
    store = MetaStore(tmp_path / "store" / "meta.db")
    yield store
    store.close()


@pytest.fixture(params=KINDS, ids=lambda k: k.name)
def kind(request: pytest.FixtureRequest) -> type[Snapshotter]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def sn(kind: type[Snapshotter], tmp_path: Path, meta: MetaStore) -> Iterator[Snapshotter]:
    snapshotter = kind(tmp_path / "store" / kind.name, meta)
    yield snapshotter
    # never leave a mount behind, whatever the test did
    for entry in os.scandir(tmp_path):
        if entry.name.startswith("mnt") and _is_mountpoint(entry.path):
            subprocess.run(["umount", "-l", entry.path], check=False)


def _dirs(sn: Snapshotter) -> list[str]:
    return sorted(os.listdir(sn.snapshots_dir))


def _mnt(tmp_path: Path, name: str = "mnt") -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


# ----------------------------------------------------------------------------- mounting


def test_tricky_chain_mounted_read_only_equals_flat_apply(sn: Snapshotter, tmp_path: Path) -> None:
    layers = Layers(images.tricky_layers())
    flat = layers.flat(tmp_path / "flat")
    top_first = layers.unpack(sn)
    mnt = _mnt(tmp_path)
    mount = sn.mounts(top_first, mnt, writable=False)
    try:
        assert _is_mountpoint(str(mnt))
        assert_same_tree(flat, mnt)
        with pytest.raises(OSError):
            (mnt / "new").write_text("read-only\n")
    finally:
        sn.unmount(mnt)
    assert not _is_mountpoint(str(mnt))
    assert mount.active is None
    if isinstance(sn, OverlaySnapshotter):
        assert mount.type == "overlay"
        assert mount.options[0] == "ro"
        assert f"lowerdir={':'.join(str(sn.fs_dir(sn.get(c))) for c in top_first)}" \
            in mount.options  # type: ignore[arg-type]


def test_writable_mount_has_its_own_directory(sn: Snapshotter, tmp_path: Path) -> None:
    layers = Layers(images.tricky_layers())
    flat = layers.flat(tmp_path / "flat")
    top_first = layers.unpack(sn)
    before = {c: tree_snapshot(sn.fs_dir(sn.get(c))) for c in top_first}  # type: ignore[arg-type]
    mnt = _mnt(tmp_path)
    mount = sn.mounts(top_first, mnt, writable=True)
    assert mount.active is not None and Path(mount.active).parent == sn.active_dir
    try:
        assert_same_tree(flat, mnt)
        (mnt / "etc/hostname").write_text("changed\n")
        (mnt / "new").write_text("new\n")
        os.remove(mnt / "etc/passwd")
    finally:
        sn.unmount(mnt)
    assert not Path(mount.active).exists()
    assert os.listdir(sn.active_dir) == []
    for c in top_first:  # the snapshots were not written
        assert tree_snapshot(sn.fs_dir(sn.get(c))) == before[c]  # type: ignore[arg-type]


@pytest.mark.parametrize("writable", [False, True])
def test_single_layer_mount(sn: Snapshotter, tmp_path: Path, writable: bool) -> None:
    layers = Layers(images.tricky_layers()[:1])
    flat = layers.flat(tmp_path / "flat")
    mnt = _mnt(tmp_path)
    mount = sn.mounts(layers.unpack(sn), mnt, writable=writable)
    try:
        assert_same_tree(flat, mnt)
    finally:
        sn.unmount(mnt)
    assert mount.type == ("overlay" if writable and isinstance(sn, OverlaySnapshotter)
                          else "bind")


def test_partial_chain_mounts_its_own_tree(sn: Snapshotter, tmp_path: Path) -> None:
    layers = Layers(images.tricky_layers())
    layers.unpack(sn)
    flat = Layers(images.tricky_layers()[:2]).flat(tmp_path / "flat")
    mnt = _mnt(tmp_path)
    sn.mounts(layers.chain[:2][::-1], mnt, writable=False)
    try:
        assert_same_tree(flat, mnt)
    finally:
        sn.unmount(mnt)


def test_many_layers_fit_in_the_mount_options(sn: Snapshotter, tmp_path: Path) -> None:
    """More layers than absolute paths fit in one page of overlay options."""
    n = 90
    layers = Layers([[directory("d"), file(f"d/f{i}", f"{i}\n"),
                      *([whiteout(f"d/f{i - 1}")] if i % 7 == 0 and i else [])]
                     for i in range(n)])
    flat = layers.flat(tmp_path / "flat")
    mnt = _mnt(tmp_path)
    mount = sn.mounts(layers.unpack(sn), mnt, writable=True)
    try:
        assert_same_tree(flat, mnt)
    finally:
        sn.unmount(mnt)
    if isinstance(sn, OverlaySnapshotter):
        assert len(str(sn.snapshots_dir)) * n > os.sysconf("SC_PAGE_SIZE")
        assert mount.cwd == str(sn.snapshots_dir)


def test_root_path_with_option_separators(
    kind: type[Snapshotter], tmp_path: Path, meta: MetaStore
) -> None:
    """',' and ':' split overlay options: such a root is mounted with relative paths."""
    sn = kind(tmp_path / "st,o:re" / kind.name, meta)
    layers = Layers(images.tricky_layers())
    flat = layers.flat(tmp_path / "flat")
    mnt = _mnt(tmp_path, "mnt,1")
    mount = sn.mounts(layers.unpack(sn), mnt, writable=True)
    try:
        assert_same_tree(flat, mnt)
    finally:
        sn.unmount(mnt)
    assert not _is_mountpoint(str(mnt)) and os.listdir(sn.active_dir) == []
    if isinstance(sn, OverlaySnapshotter):
        assert mount.cwd == str(sn.snapshots_dir)


def test_mount_refuses_a_broken_chain(sn: Snapshotter, tmp_path: Path) -> None:
    layers = Layers(images.tricky_layers())
    top_first = layers.unpack(sn)
    mnt = _mnt(tmp_path)
    for bad in (top_first[::-1], top_first[:2], [top_first[0], top_first[2]], []):
        with pytest.raises(StoreError):
            sn.mounts(bad, mnt, writable=True)
    with pytest.raises(StoreError, match="not unpacked"):
        sn.mounts(["sha256:" + "0" * 64], mnt, writable=False)
    assert not _is_mountpoint(str(mnt))
    assert os.listdir(sn.active_dir) == []


# ----------------------------------------------------------------------------- unpacking


def _realistic_layers() -> list[list[Entry]]:
    """What images mostly are: a base, then layers adding files under its directories
    (with and without entries for those directories), replacing and deleting its files."""
    base = [images.directory("usr", mode=0o755), images.directory("usr/lib", mode=0o750,
                                                                    uid=7, gid=7),
            images.directory("etc", mode=0o755), images.file("etc/passwd", "root:x:0:0\n"),
            images.file("etc/gone", "bye"), images.file("usr/lib/libc", os.urandom(3000))]
    pkg = [images.file("usr/lib/pkg/mod.py", "print(1)\n"), images.file("usr/bin/tool", "t")]
    conf = [images.directory("etc", mode=0o755), images.file("etc/passwd", "root:x:0:0\nu\n"),
            images.whiteout("etc/gone"), images.directory("srv/app", mode=0o700)]
    return [base, pkg, conf, [images.file("usr/lib/pkg/extra", "e")]]


@pytest.mark.parametrize("source", ["tricky", "realistic"])
def test_chain_unpacked_in_parallel_equals_flat_apply(
    sn: Snapshotter, tmp_path: Path, source: str
) -> None:
    """All layers at once on two workers: the overlay layers above the bottom one go in
    speculatively; the realistic ones all settle without being applied again, and the
    mounted chain is the flat tree either way."""
    stack = images.tricky_layers() if source == "tricky" else _realistic_layers()
    layers = Layers(stack)
    flat = layers.flat(tmp_path / "flat")
    opened = [0] * len(layers.tars)

    def opener(i: int) -> io.BytesIO:
        opened[i] += 1
        return io.BytesIO(layers.tars[i])

    items = [ChainLayer(c, lambda i=i: opener(i), f"layer {i + 1}")
             for i, c in enumerate(layers.chain)]
    assert sn.unpack_chain(items, workers=2) == [True] * len(items)
    assert all(item.stats is not None and item.stats.entries == len(entries)
               for item, entries in zip(items, layers.entries, strict=True))
    if isinstance(sn, OverlaySnapshotter):
        assert [item.speculative for item in items] == [False] + [True] * (len(items) - 1)
        if source == "realistic":
            assert not any(item.redone for item in items)
            assert opened == [1] * len(items)
    mnt = _mnt(tmp_path)
    sn.mounts(layers.chain[::-1], mnt, writable=False)
    try:
        assert_same_tree(flat, mnt)
    finally:
        sn.unmount(mnt)
    # a second image on the same base: only its own layer is unpacked, exactly
    more = Layers([*stack, [images.file("more", "m")]])
    again = [ChainLayer(c, lambda i=i: io.BytesIO(more.tars[i])) for i, c in enumerate(more.chain)]
    assert sn.unpack_chain(again, workers=2) == [False] * len(items) + [True]
    assert not again[-1].speculative


def test_failed_layer_in_a_parallel_chain_leaves_only_committed_snapshots(
    sn: Snapshotter, meta: MetaStore
) -> None:
    layers = Layers(_realistic_layers())
    tars = list(layers.tars)
    tars[2] = tars[2][: tars[2].index(b"root:x:0:0\nu") + 3]  # the third layer is cut short
    items = [ChainLayer(c, lambda t=t: io.BytesIO(t), f"layer {i + 1}")
             for i, (c, t) in enumerate(zip(layers.chain, tars, strict=True))]
    with pytest.raises(TruncatedLayer, match="layer 3"):
        sn.unpack_chain(items, workers=2)
    records = meta.snapshots(sn.name)
    assert all(r.state == "committed" for r in records)
    assert [r.chain_id for r in records] == layers.chain[:2]
    assert sorted(os.listdir(sn.snapshots_dir)) == sorted(r.dir.split("/")[-1] for r in records)


def test_snapshot_records(sn: Snapshotter, meta: MetaStore) -> None:
    layers = Layers(images.tricky_layers())
    stats = LayerStats()
    layers.unpack(sn, upto=2)
    sn.unpack(layers.chain[2], layers.chain[1], lambda: io.BytesIO(layers.tars[2]),
              stats=stats)
    assert stats.entries == len(layers.entries[2]) and stats.files == 2
    records = [meta.snapshot(sn.name, c) for c in layers.chain]
    assert [r.parent for r in records] == [None, *layers.chain[:2]]  # type: ignore[union-attr]
    for r in records:
        assert r is not None and r.state == "committed" and r.size > 0
        assert sn.path(r).parent == sn.snapshots_dir and (sn.path(r) / "fs").is_dir()
        assert not Path(r.dir).is_absolute()  # relative to the store: it can move
    assert _dirs(sn) == ["1", "2", "3"]


def test_second_unpack_does_nothing(sn: Snapshotter) -> None:
    layers = Layers(images.tricky_layers())
    layers.unpack(sn)
    dirs, first = _dirs(sn), sn.get(layers.chain[-1])

    def must_not_open() -> io.BytesIO:
        raise AssertionError("the stream of a committed snapshot was opened")

    again = sn.unpack(layers.chain[-1], layers.chain[-2], must_not_open)
    assert again == first
    assert _dirs(sn) == dirs


def test_second_snapshotter_on_the_store_sees_the_snapshot(
    kind: type[Snapshotter], tmp_path: Path, meta: MetaStore
) -> None:
    layers = Layers(images.tricky_layers()[:1])
    layers.unpack(kind(tmp_path / "store" / kind.name, meta))
    with MetaStore(meta.path) as other:
        sn2 = kind(tmp_path / "store" / kind.name, other)
        assert sn2.unpack(layers.chain[0], None, lambda: 1 / 0) == meta.snapshot(  # type: ignore
            kind.name, layers.chain[0])


class _Broken(io.BytesIO):
    def close(self) -> None:
        super().close()
        raise LayerError("digest veto")


@pytest.mark.parametrize("how", ["truncated", "opener-fails", "close-vetoes", "bad-parent"])
def test_failed_unpack_leaves_no_dir_and_no_record(
    sn: Snapshotter, meta: MetaStore, how: str
) -> None:
    layers = Layers(images.tricky_layers())
    layers.unpack(sn, upto=1)
    dirs = _dirs(sn)
    tar = layers.tars[1]
    cut = tar.index(b"layer2\n") + 3  # inside etc/hostname's data
    opener = {
        "truncated": lambda: io.BytesIO(tar[:cut]),
        "opener-fails": lambda: (_ for _ in ()).throw(OSError("cannot open")),
        "close-vetoes": lambda: _Broken(tar),
        "bad-parent": lambda: io.BytesIO(tar),
    }[how]
    parent = layers.chain[0] if how != "bad-parent" else "sha256:" + "f" * 64
    error = {"truncated": TruncatedLayer, "opener-fails": OSError, "close-vetoes": LayerError,
             "bad-parent": StoreError}[how]
    with pytest.raises(error):
        sn.unpack(layers.chain[1], parent, opener)
    assert meta.snapshot(sn.name, layers.chain[1]) is None
    assert _dirs(sn) == dirs
    # and the chain can still be unpacked afterwards
    sn.unpack(layers.chain[1], layers.chain[0], lambda: io.BytesIO(tar))
    assert sn.get(layers.chain[1]) is not None


def test_unpack_after_a_crash_discards_the_stale_record(sn: Snapshotter, meta: MetaStore) -> None:
    """A process that died mid-unpack left ``preparing`` and a half-filled directory; the
    next unpack (holding the chain's lock, so the old holder is gone) starts afresh."""
    layers = Layers(images.tricky_layers()[:1])
    stale = sn.snapshots_dir / "7"
    (stale / "fs").mkdir(parents=True)
    (stale / "fs" / "half").write_text("half\n")
    assert meta.prepare_snapshot(sn.name, layers.chain[0], None, str(stale))
    record = sn.unpack(layers.chain[0], None, lambda: io.BytesIO(layers.tars[0]))
    assert record.state == "committed" and record.dir != str(stale)
    assert not stale.exists()


def test_stale_parent_takes_its_stale_children_along(sn: Snapshotter, meta: MetaStore) -> None:
    """A pull killed mid-chain leaves a parent and its child both ``preparing``: the next
    unpack of the parent discards both (the child's record would otherwise dangle)."""
    layers = Layers(_realistic_layers()[:2])
    dirs = [sn.snapshots_dir / n for n in ("7", "8")]
    for d in dirs:
        (d / "fs").mkdir(parents=True)
    assert meta.prepare_snapshot(sn.name, layers.chain[0], None, str(dirs[0]))
    assert meta.prepare_snapshot(sn.name, layers.chain[1], layers.chain[0], str(dirs[1]))
    items = [ChainLayer(c, lambda t=t: io.BytesIO(t)) for c, t in
             zip(layers.chain, layers.tars, strict=True)]
    assert sn.unpack_chain(items) == [True, True]
    assert not any(d.exists() for d in dirs)
    assert [r.state for r in meta.snapshots(sn.name)] == ["committed", "committed"]


@pytest.mark.parametrize("shared", [True, False], ids=["one-snapshotter", "two-stores"])
def test_concurrent_unpacks_of_one_chain(
    kind: type[Snapshotter], tmp_path: Path, meta: MetaStore, shared: bool
) -> None:
    layers = Layers(images.tricky_layers()[:1])
    root = tmp_path / "store" / kind.name
    opened = []
    lock = threading.Lock()

    class Slow(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            time.sleep(0.01)
            return super().read(512 if size is None or size < 0 else min(size, 512))

    def opener() -> io.BytesIO:
        with lock:
            opened.append(threading.get_ident())
        return Slow(layers.tars[0])

    results: list[object] = []
    start = threading.Barrier(2)

    def worker() -> None:
        store = meta if shared else MetaStore(meta.path)
        try:
            start.wait()
            results.append(kind(root, store).unpack(layers.chain[0], None, opener))
        except BaseException as err:
            results.append(err)
        finally:
            if not shared:
                store.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2 and results[0] == results[1], results
    assert len(opened) == 1
    assert [s.chain_id for s in meta.snapshots()] == [layers.chain[0]]
    assert os.listdir(root / "snapshots") == [Path(meta.snapshots()[0].dir).name]
    assert len(results) == 2


def test_remove(sn: Snapshotter, meta: MetaStore) -> None:
    layers = Layers(images.tricky_layers())
    layers.unpack(sn)
    with pytest.raises(StoreError, match="children"):
        sn.remove(layers.chain[0])
    top = sn.get(layers.chain[-1])
    sn.remove(layers.chain[-1])
    assert meta.snapshot(sn.name, layers.chain[-1]) is None
    assert top is not None and not sn.path(top).exists()
    sn.remove(layers.chain[-1])  # gone already: nothing to do
    sn.unpack(layers.chain[-1], layers.chain[-2], lambda: io.BytesIO(layers.tars[-1]))
    assert sn.get(layers.chain[-1]) is not None


def test_kinds_keep_their_own_snapshots_of_a_chain(tmp_path: Path, meta: MetaStore) -> None:
    layers = Layers(images.tricky_layers()[:1])
    overlay = OverlaySnapshotter(tmp_path / "store" / "overlayfs", meta)
    layers.unpack(overlay)
    native = NativeSnapshotter(tmp_path / "store" / "native", meta)
    record = native.unpack(layers.chain[0], None, lambda: io.BytesIO(layers.tars[0]))
    assert record.snapshotter == "native" and native.path(record).parent == native.snapshots_dir
    assert {s.snapshotter for s in meta.snapshots()} == {"overlayfs", "native"}
    # a snapshotter of the same kind elsewhere must not take the other's directories
    elsewhere = OverlaySnapshotter(tmp_path / "elsewhere", meta)
    with pytest.raises(StoreError, match="not in this overlayfs snapshotter"):
        elsewhere.unpack(layers.chain[0], None, lambda: io.BytesIO(layers.tars[0]))


# ----------------------------------------------------------------------------- support


def test_overlay_supported_here(tmp_path: Path) -> None:
    assert OverlaySnapshotter.supported(tmp_path / "root")
    assert NativeSnapshotter.supported(tmp_path / "root")
    assert os.listdir(tmp_path / "root") == []  # the check cleans up


def test_overlay_unsupported_on_overlayfs(tmp_path: Path) -> None:
    """An upper directory cannot live on overlayfs itself (a rootfs inside a container):
    the check says so instead of failing later."""
    for d in ("l", "u", "w", "m"):
        (tmp_path / d).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={tmp_path / 'l'},upperdir={tmp_path / 'u'},"
                    f"workdir={tmp_path / 'w'}", str(tmp_path / "m")], check=True)
    try:
        assert not OverlaySnapshotter.supported(tmp_path / "m" / "root")
    finally:
        subprocess.run(["umount", str(tmp_path / "m")], check=True)
