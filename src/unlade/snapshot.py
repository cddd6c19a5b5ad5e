"""Snapshotters: each layer unpacked once, kept by chainID, and stacked into a rootfs.

A snapshot is the filesystem of one layer *chain* (the layer and all below it), so two
images sharing their bottom layers share those snapshots. Two implementations, as in
containerd:

* :class:`OverlaySnapshotter` keeps each layer as an overlayfs upper directory (applied
  with ``whiteouts="overlay"``) and mounts a chain as one overlay: unpacking a layer costs
  only that layer, and a rootfs costs a mount.
* :class:`NativeSnapshotter` keeps each chain as a full copy (parent copied, then the layer
  applied flat): it works on any filesystem and kernel, at the price of disk and copying.

State is recorded in the store's :class:`~unlade.metastore.MetaStore` (keyed by
snapshotter kind and chainID): a snapshot is claimed ``preparing`` before its directory is
filled and flipped to ``committed`` only once the layer is fully applied and its stream
fully read (so a stream that verifies its digest at the end can still veto it). Any
failure removes the directory and the record. A per-chain lock file (``flock``, released
by the kernel if the holder dies) makes concurrent unpacks of one chain, from threads or
processes, unpack it once; a ``preparing`` record found under the lock was left by a
holder that died, and is discarded.

The layers of one image are unpacked in parallel (:meth:`Snapshotter.unpack_chain`): an
overlay layer whose lower layers are not finished yet is applied *speculatively* into its
own directory, as if the lowers could not change its outcome, and settled once they are
committed: :meth:`unlade.layer.Speculation.settle` re-checks every decision that depended
on the lowers and either applies small fix-ups or says the layer must be applied again,
so the result is always exactly the serial one.

Layout below ``root`` (every level 0700, so an image's device nodes and setuid files are
out of other users' reach): ``snapshots/<n>/fs`` (``n`` a small counter: overlay mount
options must fit in one page), ``active/<n>/{fs,work}`` for writable mounts, with a
``target`` file naming the mount point, and ``locks/``.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar, Protocol, cast

from .errors import NoSpace, StoreError
from .layer import LayerStats, Speculate, Whiteouts, apply_layer
from .metastore import MetaStore, MountRecord, Snapshot

__all__ = [
    "ChainLayer",
    "Mount",
    "NativeSnapshotter",
    "OverlaySnapshotter",
    "Snapshotter",
    "Stream",
    "StreamOpener",
]

_PAGE = os.sysconf("SC_PAGE_SIZE")


class Stream(Protocol):
    """An uncompressed layer tar. It may verify what it read when it reaches its end or
    is closed, and raise: the snapshot is then not committed."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


#: Opens the layer's stream; called only if the layer really has to be unpacked.
StreamOpener = Callable[[], Stream]


@dataclass
class ChainLayer:
    """One layer of a chain to unpack: its chainID, how to open its stream (possibly
    twice: a speculative apply that cannot be settled is redone), a label for errors, and
    the application's counts, filled in if this call unpacked it."""

    chain_id: str
    open: StreamOpener
    label: str = "layer"
    stats: LayerStats | None = None
    speculative: bool = False  # applied before its lowers were done
    redone: bool = False  # ... and its speculation did not hold: applied again


@dataclass(frozen=True)
class Mount:
    """What was mounted at ``target``: ``mount -t TYPE -o OPTIONS SOURCE TARGET``, run in
    ``cwd`` when that is set (overlay layer paths made relative to fit in one page)."""

    type: str
    source: str
    options: tuple[str, ...]
    target: str
    cwd: str | None = None
    active: str | None = None  # the writable mount's own directory, removed on unmount


class Snapshotter(abc.ABC):
    """Unpacks layers into snapshots keyed by chainID and mounts chains of them.

    One snapshotter per ``root``; ``meta`` (the store's meta store) records its snapshots
    under its :attr:`name`, with directories relative to the meta store's directory.
    """

    name: ClassVar[str]
    whiteouts: ClassVar[Whiteouts]
    parallel: ClassVar[bool] = False  # can a layer be unpacked before its lowers are done?

    def __init__(self, root: str | os.PathLike[str], meta: MetaStore) -> None:
        self.root = Path(os.path.abspath(root))
        self.meta = meta
        self.base = Path(os.path.abspath(meta.path.parent))
        self.snapshots_dir = self.root / "snapshots"
        self.active_dir = self.root / "active"
        self.locks_dir = self.root / "locks"
        try:
            for d in (self.root, self.snapshots_dir, self.active_dir, self.locks_dir):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"snapshot root {self.root}: {err.strerror or err}") from None

    @classmethod
    def supported(cls, root: str | os.PathLike[str]) -> bool:
        """Whether this kind of snapshotter works with ``root`` on this kernel."""
        return True

    # -- records ---------------------------------------------------------------------------
    def _get(self, chain_id: str) -> Snapshot | None:
        return self.meta.snapshot(self.name, chain_id)

    def path(self, record: Snapshot) -> Path:
        """The snapshot's own directory (``fs`` below it holds its files)."""
        return self.base / record.dir

    def _record_dir(self, directory: Path) -> str:
        try:
            return str(directory.relative_to(self.base))
        except ValueError:
            return str(directory)

    def _own(self, record: Snapshot) -> Snapshot:
        """``record``, checked to be one of this snapshotter's."""
        if self.path(record).parent != self.snapshots_dir:
            raise StoreError(
                f"snapshot {record.chain_id} is in {self.path(record)}, not in this "
                f"{self.name} snapshotter ({self.snapshots_dir})")
        return record

    def get(self, chain_id: str) -> Snapshot | None:
        """The committed snapshot of ``chain_id``, if there is one."""
        record = self._get(chain_id)
        return self._own(record) if record is not None and record.state == "committed" \
            else None

    def fs_dir(self, record: Snapshot) -> Path:
        """The directory holding the snapshot's files."""
        return self.path(record) / "fs"

    def lock_path(self, chain_id: str) -> Path:
        return self.locks_dir / (hashlib.sha256(chain_id.encode()).hexdigest()[:32] + ".lock")

    @contextlib.contextmanager
    def _locked(self, chain_id: str) -> Iterator[Path]:
        """Hold the chain's lock file. Whoever deletes it must do so while holding it;
        a waiter then finds it gone (or replaced) after locking, and locks afresh."""
        path = self.lock_path(chain_id)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    now = os.stat(path)
                except FileNotFoundError:
                    now = None
                mine = os.fstat(fd)
                if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            yield path
        finally:
            os.close(fd)

    def _discard(self, record: Snapshot) -> None:
        """Forget a snapshot, then delete its directory (a record never outlives its
        directory, so a directory without a record is only ever garbage).

        A stale ``preparing`` snapshot may have stale children: the dead unpacker claimed
        them in the same run (a live one claims a child only over a committed parent or
        one it claimed itself), so they go too, deepest first."""
        doomed = [record]
        children: dict[str | None, list[Snapshot]] = {}
        for snap in self.meta.snapshots(self.name):
            children.setdefault(snap.parent, []).append(snap)
        for snap in doomed:
            doomed += children.get(snap.chain_id, [])
        for snap in reversed(doomed):
            self.meta.remove_snapshot(self.name, snap.chain_id)
            _rmtree(self.path(snap))

    # -- unpack ----------------------------------------------------------------------------
    def unpack(
        self,
        chain_id: str,
        parent_chain_id: str | None,
        stream_opener: StreamOpener,
        *,
        layer: str = "layer",
        stats: LayerStats | None = None,
    ) -> Snapshot:
        """Unpack the layer whose chain is ``chain_id`` on top of the committed snapshot
        ``parent_chain_id`` (None: the bottom layer), unless it is committed already.

        Returns the committed snapshot. If it exists (or another thread or process
        commits it while we wait for its lock), ``stream_opener`` is not called. Else the
        stream is applied, then read to its end and closed, and only then is the snapshot
        committed; on any failure its directory and record are removed and the error
        propagates. ``stats``, if given, receives the application's counts.
        """
        if parent_chain_id is not None and self.get(parent_chain_id) is None \
                and self.get(chain_id) is None:
            raise StoreError(f"cannot unpack {chain_id}: its parent snapshot "
                                 f"{parent_chain_id} is not unpacked")
        item = ChainLayer(chain_id, stream_opener, layer)
        self._unpack(parent_chain_id, [item], workers=1)
        if stats is not None and item.stats is not None:
            stats.entries, stats.files, stats.file_bytes = \
                item.stats.entries, item.stats.files, item.stats.file_bytes
        result = self.get(chain_id)
        if result is None:
            raise StoreError(f"snapshot {chain_id} vanished right after its commit")
        return result

    def unpack_chain(
        self, layers: Sequence[ChainLayer], *, workers: int | None = None,
        abort: Callable[[], None] | None = None,
    ) -> list[bool]:
        """Unpack a whole chain (bottom layer first), reusing every layer already
        committed, with up to ``workers`` layers (default: the CPU count) applied at once.

        Returns, per layer, whether this call unpacked it. On failure every snapshot this
        call claimed and had not committed is removed, ``abort`` (if given) is called first
        so that streams blocked on their source end, and the first error propagates.
        """
        return self._unpack(None, layers, workers=workers or os.cpu_count() or 1,
                            abort=abort)

    def _unpack(
        self, base: str | None, layers: Sequence[ChainLayer], *, workers: int,
        abort: Callable[[], None] | None = None,
    ) -> list[bool]:
        """Claim what is missing (chain locks taken bottom-up: every chain sharing a
        prefix takes the same locks in the same order, so two of them cannot deadlock),
        then fill and commit in order."""
        claimed: dict[int, Path] = {}
        with contextlib.ExitStack() as locks:
            try:
                parent = base
                for i, item in enumerate(layers):
                    if self.get(item.chain_id) is None:
                        locks.enter_context(self._locked(item.chain_id))
                        record = self._get(item.chain_id)
                        if record is not None and record.state != "committed":
                            self._discard(self._own(record))  # its unpacker died
                            record = None
                        if record is None:
                            claimed[i] = self._claim(item.chain_id, parent)
                    parent = item.chain_id
                if claimed:
                    self._fill_chain(base, layers, claimed, workers, abort)
            except BaseException:
                for i in sorted(claimed, reverse=True):  # children before parents
                    record = self._get(layers[i].chain_id)
                    if record is not None and record.state != "committed":
                        with contextlib.suppress(Exception):
                            self.meta.remove_snapshot(self.name, layers[i].chain_id)
                    if record is None or record.state != "committed":
                        _rmtree(claimed[i])
                raise
        return [i in claimed for i in range(len(layers))]

    def _claim(self, chain_id: str, parent: str | None) -> Path:
        directory = _new_dir(self.snapshots_dir)
        try:
            claimed = self.meta.prepare_snapshot(self.name, chain_id, parent,
                                                 self._record_dir(directory))
        except BaseException:
            _rmtree(directory)
            raise
        if not claimed:
            _rmtree(directory)
            raise StoreError(f"snapshot {chain_id} is being prepared outside its lock")
        return directory

    def _below(self, base: str | None, layers: Sequence[ChainLayer], claimed: dict[int, Path],
               i: int) -> list[Path]:
        """The fs directories under layer ``i``, topmost first."""
        out = [claimed[j] / "fs" if j in claimed else self.fs_dir(self._committed(layers[j]))
               for j in range(i - 1, -1, -1)]
        if base is not None:
            out += self._lowers(self._committed_id(base))
        return out

    def _committed(self, item: ChainLayer) -> Snapshot:
        return self._committed_id(item.chain_id)

    def _committed_id(self, chain_id: str) -> Snapshot:
        record = self.get(chain_id)
        if record is None:
            raise StoreError(f"snapshot {chain_id} is not unpacked")
        return record

    def _lowers(self, record: Snapshot | None) -> list[Path]:
        """The fs directories of ``record`` and all below it, topmost first."""
        out: list[Path] = []
        while record is not None:
            out.append(self.fs_dir(record))
            if record.parent is None:
                break
            below = self.get(record.parent)
            if below is None:
                raise StoreError(f"snapshot {record.parent} (below {record.chain_id}) "
                                 "is missing")
            record = below
        return out

    def _commit(self, item: ChainLayer, directory: Path, stats: LayerStats) -> None:
        item.stats = stats
        self.meta.commit_snapshot(self.name, item.chain_id, _disk_usage(directory))

    def _fill_chain(
        self, base: str | None, layers: Sequence[ChainLayer], claimed: dict[int, Path],
        workers: int, abort: Callable[[], None] | None,
    ) -> None:
        """Fill the claimed snapshots and commit them bottom-up. Layers whose lowers are
        all committed are applied exactly; the others, speculatively (if this kind
        can), all on a pool of ``workers`` threads; settling happens here, in order."""
        order = sorted(claimed)
        if not self.parallel or workers <= 1 or len(order) == 1:
            for i in order:
                fs = claimed[i] / "fs"
                stats = self._fill(fs, self._below(base, layers, claimed, i), layers[i])
                self._commit(layers[i], claimed[i], stats)
            return
        stop = threading.Event()
        pool = ThreadPoolExecutor(min(workers, len(order)),
                                  thread_name_prefix="unlade-unpack")
        futures: dict[int, Future[LayerStats]] = {}
        try:
            for i in order:
                exact = all(j not in claimed for j in range(i))
                lowers = self._below(base, layers, claimed, i) if exact else []
                layers[i].speculative = not exact
                futures[i] = pool.submit(self._apply_new, claimed[i] / "fs", layers[i],
                                         lowers, not exact, stop)
            for i in order:
                fs = claimed[i] / "fs"
                try:
                    stats = futures[i].result()
                    settled = stats.speculation is None or stats.speculation.settle(
                        fs, self._below(base, layers, claimed, i))
                except Speculate:
                    settled = False
                if not settled:
                    layers[i].redone = True
                    _rmtree(fs)
                    stats = self._apply_new(fs, layers[i],
                                            self._below(base, layers, claimed, i), False, None)
                self._commit(layers[i], claimed[i], stats)
        except BaseException:
            stop.set()
            if abort is not None:
                abort()
            raise
        finally:
            while True:
                try:
                    pool.shutdown(wait=True, cancel_futures=True)
                    break
                except KeyboardInterrupt:
                    stop.set()

    def _apply_new(self, fs: Path, item: ChainLayer, lowers: Sequence[Path],
                   speculative: bool, stop: threading.Event | None) -> LayerStats:
        fs.mkdir(mode=0o755)
        fs.chmod(0o755)
        return self._apply(fs, item, lowers, speculative=speculative, stop=stop)

    def _apply(self, fs: Path, item: ChainLayer, lowers: Sequence[Path] = (), *,
               speculative: bool = False, stop: threading.Event | None = None) -> LayerStats:
        """Apply the layer's freshly opened stream to ``fs``, read it to its end, close it
        (which may verify it)."""
        stream: Stream = item.open()
        if stop is not None:
            stream = _Stoppable(stream, stop)
        try:
            if speculative:
                stats = apply_layer(cast(BinaryIO, stream), fs, layer=item.label,
                                    whiteouts=self.whiteouts, speculative=True)
            else:
                stats = apply_layer(cast(BinaryIO, stream), fs, layer=item.label,
                                    whiteouts=self.whiteouts, lowers=lowers)
            while stream.read(1 << 20):
                pass
        finally:
            stream.close()
        return stats

    @abc.abstractmethod
    def _fill(self, fs: Path, lowers: list[Path], item: ChainLayer) -> LayerStats:
        """Create ``fs`` (it does not exist yet) holding the snapshot's files; ``lowers``
        are the fs directories below, topmost first."""

    def remove(self, chain_id: str) -> None:
        """Delete a snapshot no other snapshot builds on (mounted ones must be unmounted
        first: nothing here checks)."""
        with self._locked(chain_id) as lock:
            record = self._get(chain_id)
            if record is None:
                return
            self._own(record)
            children = [s.chain_id for s in self.meta.snapshots(self.name)
                        if s.parent == chain_id]
            if children:
                raise StoreError(f"snapshot {chain_id} has children: {', '.join(children)}")
            self._discard(record)
            lock.unlink()

    # -- mounts ----------------------------------------------------------------------------
    def _chain(self, chain_ids_top_first: Sequence[str]) -> list[Snapshot]:
        """The committed snapshots of the chain, checked to be one (each the parent of the
        one above it, the last a bottom layer)."""
        if not chain_ids_top_first:
            raise StoreError("nothing to mount: no snapshots given")
        records = []
        for i, chain_id in enumerate(chain_ids_top_first):
            record = self.get(chain_id)
            if record is None:
                raise StoreError(f"snapshot {chain_id} is not unpacked")
            below = chain_ids_top_first[i + 1] if i + 1 < len(chain_ids_top_first) else None
            if record.parent != below:
                raise StoreError(f"snapshot {chain_id} sits on {record.parent or 'nothing'}, "
                                 f"not on {below or 'nothing'}")
            records.append(record)
        return records

    def mounts(
        self, chain_ids_top_first: Sequence[str], target: str | os.PathLike[str], *,
        writable: bool, image: str | None = None,
    ) -> Mount:
        """Mount the chain (its snapshots, topmost first) at the existing directory
        ``target`` and return what was mounted. A writable mount gets a fresh directory of
        its own under ``active/``, so the snapshots themselves are never written;
        :meth:`unmount` removes it. The mount is recorded (with ``image``, the manifest
        digest it shows) so that prune keeps its snapshots and removal of the image is
        refused until it is unmounted."""
        records = self._chain(chain_ids_top_first)
        target_path = Path(os.path.realpath(target))  # as /proc/self/mountinfo shows it
        if not target_path.is_dir():
            raise StoreError(f"mount target {target_path} is not a directory")
        active = _new_dir(self.active_dir) if writable else None
        try:
            if active is not None:
                (active / "target").write_text(str(target_path))
            mount = self._mount_spec(records, target_path, active)
            self.meta.add_mount(MountRecord(
                str(target_path), self.name, chain_ids_top_first[0], image,
                self._record_dir(active) if active is not None else None, time.time()))
            try:
                _mount(mount)
            except BaseException:
                self.meta.remove_mount(str(target_path))
                raise
        except BaseException:
            if active is not None:
                _rmtree(active)
            raise
        return mount

    @abc.abstractmethod
    def _mount_spec(self, records: list[Snapshot], target: Path,
                    active: Path | None) -> Mount:
        """What to mount (preparing ``active`` for a writable mount)."""

    def unmount(self, target: str | os.PathLike[str]) -> None:
        """Unmount ``target`` (if mounted) and delete its writable directory and record."""
        target_path = os.path.realpath(target)
        if _is_mountpoint(target_path):
            _run(["umount", target_path], f"unmount {target_path}")
        mine = []
        for entry in os.scandir(self.active_dir):
            with contextlib.suppress(OSError):
                if Path(entry.path, "target").read_text() == target_path:
                    mine.append(int(entry.name))
        if mine:  # the newest, should several mounts have been stacked there
            _rmtree(self.active_dir / str(max(mine)))
        if not _is_mountpoint(target_path):
            self.meta.remove_mount(target_path)


class _Stoppable:
    """A stream that ends with an error once ``stop`` is set (another layer failed)."""

    def __init__(self, stream: Stream, stop: threading.Event) -> None:
        self._stream = stream
        self._stop = stop

    def read(self, size: int = -1, /) -> bytes:
        if self._stop.is_set():
            raise StoreError("unpack stopped: another layer failed")
        return self._stream.read(size)

    def close(self) -> None:
        self._stream.close()


class OverlaySnapshotter(Snapshotter):
    """Each layer an overlayfs upper directory; a chain is mounted as one overlay (a
    read-only bind mount for a single read-only layer, which overlayfs cannot mount)."""

    name = "overlayfs"
    whiteouts: ClassVar[Whiteouts] = "overlay"
    parallel = True

    @classmethod
    def supported(cls, root: str | os.PathLike[str]) -> bool:
        """Whether overlayfs can be mounted with layers in ``root`` here: tries it, with a
        whiteout and an opaque directory, as unpacking and mounting will (fails in a user
        namespace without the privileges, on a filesystem without ``trusted.*`` xattrs or
        ``d_type``, or on overlayfs itself)."""
        try:
            Path(root).mkdir(mode=0o700, parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".overlay-check-", dir=root))
        except OSError:
            return False
        try:
            lower, upper, wd, mnt = (work / n for n in ("l", "u", "w", "m"))
            for d in (lower, upper, wd, mnt):
                d.mkdir()
            (lower / "gone").write_bytes(b"")
            (lower / "d").mkdir()
            (lower / "d" / "hidden").write_bytes(b"")
            os.mknod(upper / "gone", stat.S_IFCHR, 0)
            (upper / "d").mkdir()
            os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")
            opts = f"lowerdir={lower},upperdir={upper},workdir={wd}"
            # In a mount namespace of its own, so that the trial mount dies with it even
            # if we are killed right now (a leftover mount would pin the store).
            proc = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 'mount -t overlay overlay -o "$1" "$2" && ls -A "$2" && echo -- '
                 '&& ls -A "$2/d"', "sh", opts, str(mnt)],
                capture_output=True, text=True, timeout=30)
            return proc.returncode == 0 and proc.stdout.split() == ["d", "--"]
        except (OSError, subprocess.CalledProcessError):
            return False
        finally:
            _rmtree(work)

    def _fill(self, fs: Path, lowers: list[Path], item: ChainLayer) -> LayerStats:
        return self._apply_new(fs, item, lowers, False, None)

    def _mount_spec(self, records: list[Snapshot], target: Path,
                    active: Path | None) -> Mount:
        layers = [self.fs_dir(r) for r in records]
        if active is None and len(layers) == 1:
            return Mount("bind", str(layers[0]), ("bind", "ro"), str(target))
        extra = ("index=off",) if os.path.exists("/sys/module/overlay/parameters/index") \
            else ()
        upper = work = None
        if active is not None:
            upper, work = active / "fs", active / "work"
            upper.mkdir(mode=0o755)
            upper.chmod(0o755)
            work.mkdir(mode=0o700)

        def options(base: Path | None) -> tuple[str, ...]:
            def p(path: Path) -> str:
                return os.path.relpath(path, base) if base is not None else str(path)

            opts = [] if active is not None else ["ro"]
            opts.append("lowerdir=" + ":".join(p(x) for x in layers))
            if upper is not None and work is not None:
                opts += [f"upperdir={p(upper)}", f"workdir={p(work)}"]
            return (*opts, *extra)

        opts, cwd = options(None), None
        # the kernel reads one page of options, and ',' or ':' in a path would split it
        if len(",".join(opts)) >= _PAGE or any(c in str(self.root) for c in ",:"):
            opts, cwd = options(self.snapshots_dir), str(self.snapshots_dir)
            if len(",".join(opts)) >= _PAGE:
                raise StoreError(f"too many layers ({len(layers)}) for one overlay mount")
        return Mount("overlay", "overlay", opts, str(target), cwd,
                     str(active) if active is not None else None)


class NativeSnapshotter(Snapshotter):
    """Each chain a full copy: the parent's tree copied (``cp -a``, reflinked where the
    filesystem can), then the layer applied flat. Mounted with a bind mount."""

    name = "native"
    whiteouts: ClassVar[Whiteouts] = "remove"

    def _fill(self, fs: Path, lowers: list[Path], item: ChainLayer) -> LayerStats:
        if not lowers:
            fs.mkdir(mode=0o755)
            fs.chmod(0o755)
        else:
            _copy_tree(lowers[0], fs)
        return self._apply(fs, item)

    def _mount_spec(self, records: list[Snapshot], target: Path,
                    active: Path | None) -> Mount:
        top = self.fs_dir(records[0])
        if active is None:
            return Mount("bind", str(top), ("bind", "ro"), str(target))
        _copy_tree(top, active / "fs")
        return Mount("bind", str(active / "fs"), ("bind",), str(target), None, str(active))


# -- helpers -------------------------------------------------------------------------------


def _new_dir(base: Path) -> Path:
    """A new directory ``base/<n>``, n one more than the largest there (mkdir is the
    arbiter between concurrent callers)."""
    n = max((int(name) for name in os.listdir(base) if name.isdigit()), default=0) + 1
    while True:
        try:
            (base / str(n)).mkdir(mode=0o700)
            return base / str(n)
        except FileExistsError:
            n += 1


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _disk_usage(path: Path) -> int:
    """Bytes allocated below ``path``, each inode counted once (hardlinks). Only inodes
    with several links are remembered, so memory does not grow with the file count."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (".", *dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def _run(args: list[str], what: str, cwd: str | None = None) -> None:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = " ".join((proc.stderr or proc.stdout).split()) or f"exit {proc.returncode}"
        if "No space left" in detail:
            place = args[-1] if args else what
            raise NoSpace(f"no space left on device: {what} failed ({place})")
        raise StoreError(f"{what}: {detail}")


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy ``src`` to the new ``dst`` with everything a rootfs holds: owners, modes,
    times, xattrs, hardlinks, devices (``cp -a``; reflinks where the filesystem can)."""
    _run(["cp", "-a", "--reflink=auto", "--", str(src), str(dst)], f"copy {src} to {dst}")


def _mount(m: Mount) -> None:
    if m.type == "bind":
        args = ["mount", "-o", ",".join(m.options), "--", m.source, m.target]
    else:
        args = ["mount", "-t", m.type, "-o", ",".join(m.options), "--", m.source, m.target]
    _run(args, f"mount {m.type} at {m.target}", cwd=m.cwd)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _is_mountpoint(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return any(_unescape(line.split(" ")[4]) == path for line in f)
    except OSError as err:
        if err.errno == errno.ENOENT:
            return os.path.ismount(path)
        raise
