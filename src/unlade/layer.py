"""Apply one layer's tar stream to a root filesystem, safely against hostile input.

The semantics are containerd's ``pkg/archive`` ``applyNaive`` so that a rootfs built here
is the one containerd builds: names are cleaned, the parent directory of every entry is
resolved *inside* the root (symlinks followed as if the root were ``/``, ``..`` clamped at
the root), missing parents are created 0755, an existing entry is replaced unless both are
directories, whiteouts remove, opaque markers empty a directory of what lower layers put
there, ``trusted.*`` xattrs are not applied, and directory mtimes are set last.

Safety does not rest on string checks: every operation is an ``*at`` system call relative
to a directory file descriptor reached by walking real directories one component at a time
with ``O_NOFOLLOW``; a symlink met on the way is resolved by this module, against the root.
Nothing this code opens or creates can therefore lie outside the root.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO

from .errors import LayerError, LayerEscape, MalformedLayer, NoSpace, UnladeError
from .tarstream import (
    BLOCKDEV,
    CHAR,
    DIR,
    FIFO,
    GLOBAL,
    HARDLINK,
    REG,
    SYMLINK,
    Entry,
    TarReader,
    shown,
)

WHITEOUT_PREFIX = ".wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
MAX_SYMLINKS = 255  # as containerd's continuity fs.RootPath
MAX_DEPTH = 256  # directory levels; real images stay below 40, PATH_MAX allows ~2000
_FD_CACHE = 256
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_NS = (1 << 63) - 1


@dataclass(slots=True)
class LayerStats:
    """What one application did, for progress and ``--json``."""

    entries: int = 0
    files: int = 0
    file_bytes: int = 0


class _Fail(Exception):
    """Internal: an entry-level failure, turned into a LayerError naming layer and entry."""

    def __init__(self, message: str, kind: type[LayerError] = LayerError) -> None:
        super().__init__(message)
        self.kind = kind


class RootFS:
    """Directory descriptors of one root, reached only through in-root resolution.

    Resolved parents are cached by the name used in the layer and by their canonical
    in-root path; removing a directory or symlink clears the name cache, because only such
    a removal can change where a name resolves to.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self.root_fd = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        self._fds: OrderedDict[tuple[str, ...], int] = OrderedDict()
        self._names: dict[str, tuple[str, ...]] = {}
        self._retired: list[int] = []

    def close(self) -> None:
        self.invalidate()
        self.release()
        os.close(self.root_fd)

    def invalidate(self) -> None:
        """Forget every cached resolution (after a removal that may change them)."""
        self._retired.extend(self._fds.values())
        self._fds.clear()
        self._names.clear()

    def release(self) -> None:
        """Close descriptors dropped from the cache. Only called between entries: while an
        entry is applied, a descriptor it holds must not be closed (and its number reused)."""
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def fd(self, canon: tuple[str, ...]) -> int:
        """Descriptor of a canonical (symlink-free) in-root directory path."""
        if not canon:
            return self.root_fd
        fd = self._fds.get(canon)
        if fd is not None:
            self._fds.move_to_end(canon)
            return fd
        depth = len(canon) - 1  # open downwards from the deepest cached ancestor
        while depth and canon[:depth] not in self._fds:
            depth -= 1
        fd = self._fds[canon[:depth]] if depth else self.root_fd
        for i in range(depth, len(canon)):
            fd = os.open(canon[i], _DIR_FLAGS, dir_fd=fd)
            self._fds[canon[: i + 1]] = fd
        while len(self._fds) > _FD_CACHE:
            self._retired.append(self._fds.popitem(last=False)[1])
        return fd

    def resolve_dir(self, name: str, *, create: bool) -> tuple[str, ...]:
        """Canonical in-root path of directory ``name``, following symlinks inside the
        root; missing directories are made 0755 when ``create`` (containerd's mkparent)."""
        canon = self._names.get(name)
        if canon is None:
            canon = self._walk((), name.split("/"), create, [0])
            self._names[name] = canon
        return canon

    def _walk(
        self, canon: tuple[str, ...], parts: list[str], create: bool, links: list[int]
    ) -> tuple[str, ...]:
        """Resolve ``parts`` from ``canon``; missing directories left in the result are
        created (0755, as containerd's mkparent) when ``create``, else reported."""
        canon, real = self._resolve(canon, parts, links)
        if len(canon) > MAX_DEPTH:
            raise _Fail(f"path is more than {MAX_DEPTH} directories deep", MalformedLayer)
        if len(canon) > real:
            if not create:
                raise _Fail(f"{'/'.join(canon)!r} does not exist")
            for i in range(real, len(canon)):
                parent = self.fd(canon[:i])
                os.mkdir(canon[i], 0o755, dir_fd=parent)
                os.chmod(canon[i], 0o755, dir_fd=parent)  # as mkdir(0755) under any umask
        return canon

    def _resolve(
        self, canon: tuple[str, ...], parts: list[str], links: list[int]
    ) -> tuple[tuple[str, ...], int]:
        """Like continuity's RootPath: a missing component is taken lexically (so
        ``missing/../x`` is ``x``). Returns the path and how many of its leading
        components exist as directories."""
        real = len(canon)
        for part in parts:
            if part in ("", "."):
                continue
            if part == "..":
                canon = canon[:-1]
                real = min(real, len(canon))
                continue
            if len(canon) > real:  # below a missing directory: nothing to look at
                canon = (*canon, part)
                continue
            parent = self.fd(canon)
            try:
                st = os.stat(part, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                canon = (*canon, part)
                continue
            if stat.S_ISDIR(st.st_mode):
                canon = (*canon, part)
                real = len(canon)
            elif stat.S_ISLNK(st.st_mode):
                links[0] += 1
                if links[0] > MAX_SYMLINKS:
                    raise _Fail("too many levels of symbolic links")
                target = os.readlink(part, dir_fd=parent)
                canon, real = self._resolve(() if target.startswith("/") else canon,
                                            target.split("/"), links)
            else:
                raise _Fail(f"{'/'.join((*canon, part))!r} is not a directory")
        return canon, real


def _clean(name: str) -> str:
    """Go's filepath.Clean relative to the root ('' is the root itself); ``..`` that would
    climb above the root is clamped there, as containerd scopes it."""
    cleaned = posixpath.normpath("/" + name).lstrip("/")
    return "" if cleaned == "." else cleaned


def _bound(ns: int) -> int:
    return ns if 0 <= ns <= _MAX_NS else 0


class _Applier:
    def __init__(self, reader: TarReader, rootfs: RootFS) -> None:
        self.reader = reader
        self.fs = rootfs
        self.stats = LayerStats()
        self.unpacked: set[tuple[str, ...]] = set()
        self.dirs: list[tuple[str, int, int]] = []

    def run(self) -> None:
        for entry in self.reader:
            self.stats.entries += 1
            if entry.type != GLOBAL:
                self.apply(entry)
            self.fs.release()
        for name, atime, mtime in reversed(self.dirs):
            self._dir_times(name, atime, mtime)

    def apply(self, entry: Entry) -> None:
        name = _clean(entry.name)
        if not name:
            return  # the root itself: containerd ignores it
        ppath, base = posixpath.split(name)
        fs = self.fs
        parent = fs.resolve_dir(ppath, create=True)
        pfd = fs.fd(parent)
        path = (*parent, base)

        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, base)
            return

        try:
            st: os.stat_result | None = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not (stat.S_ISDIR(st.st_mode) and entry.type == DIR):
            self._remove(parent, base, st)
            pfd = fs.fd(parent)
            st = None

        typ = entry.type
        fd = -1
        try:
            if typ == REG:
                fd = os.open(base, _FILE_FLAGS, 0o600, dir_fd=pfd)
                self._write(fd, entry)
            elif typ == DIR:
                if st is None:
                    os.mkdir(base, 0o700, dir_fd=pfd)
                self.dirs.append((name, entry.atime_ns or 0, entry.mtime_ns))
            elif typ == SYMLINK:
                os.symlink(entry.linkname, base, dir_fd=pfd)
            elif typ == HARDLINK:
                self._hardlink(entry, pfd, base)
            elif typ in (CHAR, BLOCKDEV, FIFO):
                kind = {CHAR: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK, FIFO: stat.S_IFIFO}[typ]
                dev = os.makedev(entry.devmajor, entry.devminor) if typ != FIFO else 0
                os.mknod(base, kind | 0o600, dev, dir_fd=pfd)
            self._metadata(entry, fd, pfd, base)
        finally:
            if fd >= 0:
                os.close(fd)
        self.unpacked.add(path)

    def _write(self, fd: int, entry: Entry) -> None:
        written = 0
        for piece in self.reader.data():
            while piece:
                n = os.write(fd, piece)
                piece = piece[n:]
                written += n
        self.stats.files += 1
        self.stats.file_bytes += written

    def _hardlink(self, entry: Entry, pfd: int, base: str) -> None:
        target = _clean(entry.linkname)
        tparent, tbase = posixpath.split(target)
        if not tbase:
            raise _Fail(f"hardlink to the root directory ({entry.linkname!r})", LayerEscape)
        tcanon = self.fs.resolve_dir(tparent, create=False)
        tfd = self.fs.fd(tcanon)
        try:
            os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise _Fail(f"hardlink target {entry.linkname!r} does not exist") from None

    def _metadata(self, entry: Entry, fd: int, pfd: int, base: str) -> None:
        is_link = entry.type == SYMLINK
        if entry.type == HARDLINK:
            is_link = stat.S_ISLNK(os.stat(base, dir_fd=pfd, follow_symlinks=False).st_mode)
        if fd >= 0:
            os.fchown(fd, entry.uid, entry.gid)
        else:
            os.chown(base, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
        if entry.xattrs:
            self._xattrs(entry, fd, pfd, base, is_link)
        if not is_link:
            if fd >= 0:
                os.fchmod(fd, entry.mode)
            else:  # not a symlink: we just made it, so following is following nothing
                os.chmod(base, entry.mode, dir_fd=pfd)
        if entry.type != DIR:
            mtime = _bound(entry.mtime_ns)
            times = (max(_bound(entry.atime_ns or 0), mtime), mtime)
            if fd >= 0:
                os.utime(fd, ns=times)
            else:
                os.utime(base, ns=times, dir_fd=pfd, follow_symlinks=False)

    def _xattrs(self, entry: Entry, fd: int, pfd: int, base: str, is_link: bool) -> None:
        target: int | str = fd if fd >= 0 else f"/proc/self/fd/{pfd}/{base}"
        for key, value in entry.xattrs.items():
            if key.startswith("trusted."):
                continue  # admin attributes from an archive: containerd refuses them too
            try:
                if fd >= 0:
                    os.setxattr(fd, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as err:
                if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    continue
                if err.errno == errno.EPERM and key.startswith("user.") and (
                    is_link or entry.type in (CHAR, BLOCKDEV, FIFO)
                ):
                    continue  # user.* only exists on regular files and directories
                raise

    def _remove(
        self, parent: tuple[str, ...], base: str, st: os.stat_result | None = None
    ) -> None:
        """Remove ``base`` (recursively) from the directory ``parent``, if it exists."""
        pfd = self.fs.fd(parent)
        if st is None:
            try:
                st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(base, dir_fd=pfd)
        else:
            os.unlink(base, dir_fd=pfd)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            self.fs.invalidate()  # names resolved through it may now resolve elsewhere

    def _whiteout(self, parent: tuple[str, ...], base: str) -> None:
        if base == WHITEOUT_OPAQUE:
            self._opaque(parent)
            return
        original = base[len(WHITEOUT_PREFIX) :]
        if original in ("", ".", ".."):
            raise _Fail(f"invalid whiteout {base!r} escapes its directory", LayerEscape)
        self._remove(parent, original)

    def _opaque(self, parent: tuple[str, ...]) -> None:
        """Remove what lower layers put below ``parent`` and this layer did not add."""

        def sweep(canon: tuple[str, ...]) -> None:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                         dir_fd=self.fs.fd(canon))
            try:
                with os.scandir(fd) as it:
                    names = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            finally:
                os.close(fd)
            for name, is_dir in names:
                path = (*canon, name)
                if path not in self.unpacked:
                    self._remove(canon, name)
                elif is_dir:
                    sweep(path)

        sweep(parent)

    def _dir_times(self, name: str, atime: int, mtime: int) -> None:
        try:
            canon = self.fs.resolve_dir(name, create=False)
            if canon:
                mtime = _bound(mtime)
                os.utime(canon[-1], ns=(max(_bound(atime), mtime), mtime),
                         dir_fd=self.fs.fd(canon[:-1]), follow_symlinks=False)
        except (_Fail, FileNotFoundError, NotADirectoryError):
            pass  # removed or replaced again later in the same layer


def apply_layer(
    stream: BinaryIO, root: str | os.PathLike[str], *, layer: str = "layer"
) -> LayerStats:
    """Apply the uncompressed tar ``stream`` to the directory ``root``.

    Reads ``stream`` exactly up to the end of the archive (the caller drains the rest so
    its digest covers every byte). Raises :class:`~unlade.errors.LayerError` subclasses
    whose message names ``layer`` and the entry at fault.
    """
    reader = TarReader(stream)
    rootfs = RootFS(root)
    applier = _Applier(reader, rootfs)
    try:
        applier.run()
    except _Fail as err:
        raise err.kind(f"{layer}: entry {shown(reader.entry_name)}: {err}") from None
    except UnladeError as err:
        if isinstance(err, LayerError):
            raise type(err)(f"{layer}: {err}") from None
        raise
    except (ValueError, OverflowError) as err:  # NUL in a name, device number too large
        raise MalformedLayer(f"{layer}: entry {shown(reader.entry_name)}: {err}") from None
    except RecursionError:
        raise MalformedLayer(f"{layer}: entry {shown(reader.entry_name)}: tree too deep") from None
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"{layer}: no space left on device writing {shown(reader.entry_name)}") \
                from None
        raise LayerError(
            f"{layer}: entry {shown(reader.entry_name)}: {err.strerror or err}"
        ) from None
    finally:
        rootfs.close()
    return applier.stats
