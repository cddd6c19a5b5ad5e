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

With ``whiteouts="overlay"`` the layer goes into an empty *upper* directory of its own, to
be stacked by the kernel's overlayfs over the layers below it (containerd's overlay apply,
``OverlayConvertWhiteout``): a whiteout becomes a 0:0 character device and an opaque
marker the ``trusted.overlay.opaque`` xattr. Names are then resolved in the *merged* view
of the upper over its ``lowers`` (whiteouts, opaque directories and lower symlinks
honoured as the kernel will), and what a lower layer holds is copied up where the flat
apply would modify it in place, so that the mounted stack shows the tree the flat apply
builds.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal

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
OPAQUE_XATTR = "trusted.overlay.opaque"

Whiteouts = Literal["remove", "overlay"]


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
        if len(canon) > real and not create:
            raise _Fail(f"{'/'.join(canon)!r} does not exist")
        if create:
            self._make(canon, real)
        return canon

    def _make(self, canon: tuple[str, ...], real: int) -> None:
        """Create the missing directories ``canon[real:]`` (0755, owned by us)."""
        for i in range(real, len(canon)):
            parent = self.fd(canon[:i])
            os.mkdir(canon[i], 0o755, dir_fd=parent)
            os.chmod(canon[i], 0o755, dir_fd=parent)  # as mkdir(0755) under any umask

    def _entry(self, canon: tuple[str, ...], part: str) -> tuple[os.stat_result | None, int]:
        """What ``part`` in the directory ``canon`` is (None: nothing), and the descriptor
        of the directory holding it (to read a symlink)."""
        parent = self.fd(canon)
        try:
            return os.stat(part, dir_fd=parent, follow_symlinks=False), parent
        except FileNotFoundError:
            return None, parent

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
            st, parent = self._entry(canon, part)
            if st is None:
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


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def is_whiteout(st: os.stat_result) -> bool:
    """An overlayfs whiteout: a character device numbered 0:0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _copy_xattrs(src: int | str, dst: int | str, *, link: bool = False) -> None:
    """Copy all but ``trusted.*`` xattrs (what overlayfs copies up, minus its own)."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for key in names:
        if key.startswith("trusted."):
            continue
        try:
            os.setxattr(dst, key, os.getxattr(src, key, follow_symlinks=False),
                        follow_symlinks=False)
        except OSError as err:
            if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA):
                continue
            if err.errno == errno.EPERM and key.startswith("user.") and link:
                continue
            raise


class _OverlayFS(RootFS):
    """The upper directory being filled (the root), seen merged over read-only ``lowers``
    (newest first) as the kernel's overlayfs will show the stack.

    Resolution walks the merged view: the upper first, then each lower in which the
    directory is still merged (a non-directory, a whiteout or an opaque directory ends
    the stack below it), so a symlink or directory of a lower layer is followed as the flat
    apply follows it. Directories are opened only in the layer they were found in, with
    the same one-component ``O_NOFOLLOW`` walk, so no lower layer is ever written and
    nothing outside the upper is created.
    """

    def __init__(self, root: str | os.PathLike[str], lowers: Sequence[str | os.PathLike[str]]):
        super().__init__(root)
        self.lowers: list[RootFS] = []
        self._stacks: dict[tuple[str, ...], tuple[int, ...]] = {}
        try:
            for lower in lowers:
                self.lowers.append(RootFS(lower))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        super().close()
        for lower in self.lowers:
            lower.close()

    def invalidate(self) -> None:
        super().invalidate()
        self._stacks.clear()

    def release(self) -> None:
        super().release()
        for lower in self.lowers:
            lower.release()

    def upper_fd(self, canon: tuple[str, ...]) -> int | None:
        """Descriptor of ``canon`` in the upper, None if the upper has no such directory."""
        try:
            return self.fd(canon)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise

    def _opaque(self, dir_fd: int, name: str) -> bool:
        try:
            value = os.getxattr(f"/proc/self/fd/{dir_fd}/{name}", OPAQUE_XATTR,
                                follow_symlinks=False)
        except OSError:
            return False
        return value == b"y"

    def set_opaque(self, dir_fd: int, name: str) -> None:
        os.setxattr(f"/proc/self/fd/{dir_fd}/{name}", OPAQUE_XATTR, b"y",
                    follow_symlinks=False)
        self.invalidate()

    def stack(self, canon: tuple[str, ...]) -> tuple[int, ...]:
        """Indices of the lowers whose directory ``canon`` is merged into the view (canon
        must be a directory of the merged view). The kernel ignores an opaque layer root,
        so the root merges every lower."""
        if not canon:
            return tuple(range(len(self.lowers)))
        found = self._stacks.get(canon)
        if found is not None:
            return found
        parent, part = canon[:-1], canon[-1]
        out: list[int] = []
        ufd = self.upper_fd(parent)
        if ufd is None or _lstat(part, ufd) is None or not self._opaque(ufd, part):
            for i in self.stack(parent):
                lfd = self.lowers[i].fd(parent)
                st = _lstat(part, lfd)
                if st is None:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    break
                out.append(i)
                if self._opaque(lfd, part):
                    break
        self._stacks[canon] = found = tuple(out)
        return found

    def lower_entry(
        self, parent: tuple[str, ...], part: str
    ) -> tuple[os.stat_result | None, int]:
        """The topmost lower entry ``part`` of the merged directory ``parent`` and its
        lower's index; (None, -1) if no lower shows one (absent or whited out)."""
        for i in self.stack(parent):
            st = _lstat(part, self.lowers[i].fd(parent))
            if st is not None:
                return (None, -1) if is_whiteout(st) else (st, i)
        return None, -1

    def lookup(
        self, parent: tuple[str, ...], part: str
    ) -> tuple[os.stat_result | None, int]:
        """``part`` of the merged directory ``parent`` as the mount will show it, and where
        it comes from (-1: the upper, else a lower's index); (None, -1) if absent."""
        ufd = self.upper_fd(parent)
        if ufd is not None:
            st = _lstat(part, ufd)
            if st is not None:
                return (None, -1) if is_whiteout(st) else (st, -1)
        return self.lower_entry(parent, part)

    def layer_fd(self, layer: int, canon: tuple[str, ...]) -> int:
        return self.fd(canon) if layer < 0 else self.lowers[layer].fd(canon)

    def _entry(self, canon: tuple[str, ...], part: str) -> tuple[os.stat_result | None, int]:
        st, layer = self.lookup(canon, part)
        return st, (self.layer_fd(layer, canon) if st is not None else -1)

    def resolve_dir(self, name: str, *, create: bool) -> tuple[str, ...]:
        canon = super().resolve_dir(name, create=create)
        if create:  # a cached name may have been resolved without creating
            self._make(canon, len(canon))
        return canon

    def _make(self, canon: tuple[str, ...], real: int) -> None:
        """Make every directory of ``canon`` exist in the upper: the first ``real`` are
        directories of the merged view (copied up from their lower if the upper lacks
        them), the rest are new (0755, as the flat apply's mkparent)."""
        if canon in self._fds:
            return
        for i in range(len(canon)):
            here = canon[: i + 1]
            if here in self._fds:
                continue
            pfd = self.fd(canon[:i])
            name = canon[i]
            st = _lstat(name, pfd)
            if st is not None and stat.S_ISDIR(st.st_mode):
                continue
            if st is not None and not is_whiteout(st):
                raise _Fail(f"{'/'.join(here)!r} is not a directory")
            if i < real:
                self.copy_up_dir(canon[:i], name)
                continue
            opaque = False
            if st is not None:  # a whiteout this layer made: the directory is new
                os.unlink(name, dir_fd=pfd)
                opaque = self.lower_is_dir(canon[:i], name)
            os.mkdir(name, 0o755, dir_fd=pfd)
            os.chmod(name, 0o755, dir_fd=pfd)
            if opaque:
                self.set_opaque(pfd, name)

    def lower_is_dir(self, parent: tuple[str, ...], name: str) -> bool:
        """Would a new upper directory ``name`` merge with a lower one? (Then it must be
        made opaque to be new, as the kernel does for a directory made over a whiteout.)"""
        for i in self.stack(parent):
            st = _lstat(name, self.lowers[i].fd(parent))
            if st is not None:
                return stat.S_ISDIR(st.st_mode)
        return False

    def copy_up_dir(self, parent: tuple[str, ...], name: str) -> None:
        """Create the upper directory ``parent/name`` with the owner, mode, xattrs and
        times of the lower directory it merges with (containerd's mkparent with parents),
        so the merged directory looks as it did below."""
        sfd = self.lowers[self.stack((*parent, name))[0]].fd(parent)
        st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
        pfd = self.fd(parent)
        os.mkdir(name, 0o700, dir_fd=pfd)
        os.chown(name, st.st_uid, st.st_gid, dir_fd=pfd, follow_symlinks=False)
        _copy_xattrs(f"/proc/self/fd/{sfd}/{name}", f"/proc/self/fd/{pfd}/{name}")
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=pfd)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=pfd, follow_symlinks=False)

    def copy_up(self, parent: tuple[str, ...], name: str, layer: int) -> None:
        """Copy the lower non-directory ``parent/name`` (from lower ``layer``) into the
        upper, with its owner, mode, xattrs and times, as overlayfs copies a file up before
        it is linked to."""
        sfd = self.lowers[layer].fd(parent)
        st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
        self._make(parent, len(parent))
        pfd = self.fd(parent)
        mode = st.st_mode
        link = stat.S_ISLNK(mode)
        if stat.S_ISREG(mode):
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
            try:
                dst = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
                try:
                    _copy_data(src, dst)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
        elif link:
            os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=pfd)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=pfd)
        else:
            raise _Fail(f"cannot copy up {'/'.join((*parent, name))!r}")
        os.chown(name, st.st_uid, st.st_gid, dir_fd=pfd, follow_symlinks=False)
        _copy_xattrs(f"/proc/self/fd/{sfd}/{name}", f"/proc/self/fd/{pfd}/{name}", link=link)
        if not link:
            os.chmod(name, stat.S_IMODE(mode), dir_fd=pfd)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=pfd, follow_symlinks=False)


def _copy_data(src: int, dst: int) -> None:
    """Copy a whole file by descriptors, in the kernel where it can (reflinks on btrfs and
    xfs), else through a buffer."""
    try:
        while os.copy_file_range(src, dst, 1 << 30):
            pass
        return
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while chunk := os.read(src, 1 << 20):
        while chunk:
            chunk = chunk[os.write(dst, chunk):]


def _scandir(dir_fd: int) -> list[tuple[str, bool]]:
    """Names in the directory ``dir_fd`` (an ``O_PATH`` descriptor), and which are
    directories (not following symlinks)."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as it:
            return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    finally:
        os.close(fd)


def _listdir(dir_fd: int) -> list[str]:
    return [name for name, _ in _scandir(dir_fd)]


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
        self.ov = rootfs if isinstance(rootfs, _OverlayFS) else None
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

        opaque = False
        if self.ov is not None:
            st, opaque = self._overlay_replace(self.ov, entry, parent, base)
            pfd = fs.fd(parent)
        else:
            st = _lstat(base, pfd)
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
            if opaque and self.ov is not None:
                self.ov.set_opaque(pfd, base)
        finally:
            if fd >= 0:
                os.close(fd)
        self.unpacked.add(path)

    def _overlay_replace(
        self, ov: _OverlayFS, entry: Entry, parent: tuple[str, ...], base: str
    ) -> tuple[os.stat_result | None, bool]:
        """Make way in the upper for ``entry`` as the flat apply does in the rootfs.

        Returns the existing upper directory to merge into (None: create the entry) and
        whether a new directory must be opaque. What only a lower layer holds is not
        removed: the new upper entry hides it. A directory entry over a lower directory
        copies that directory up, so it keeps what the flat apply would keep (its xattrs).
        """
        st, layer = ov.lookup(parent, base)
        if st is not None and stat.S_ISDIR(st.st_mode) and entry.type == DIR:
            if layer >= 0:
                ov.copy_up_dir(parent, base)
            return _lstat(base, ov.fd(parent)), False
        upper = _lstat(base, ov.fd(parent))
        opaque = False
        if upper is not None:
            self._remove(parent, base, upper)
            # a directory over a whiteout (or over something this layer made) must not
            # show what lower layers hold under that name
            opaque = entry.type == DIR and ov.lower_is_dir(parent, base)
        if st is not None and (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            ov.invalidate()  # names resolved through it may now resolve elsewhere
        return None, opaque

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
        if self.ov is not None:
            st, layer = self.ov.lookup(tcanon, tbase)
            if st is None:
                raise _Fail(f"hardlink target {entry.linkname!r} does not exist")
            if layer >= 0:  # in a lower layer: link to a copy-up, as overlayfs would
                if stat.S_ISDIR(st.st_mode):
                    raise _Fail(f"hardlink target {entry.linkname!r} is a directory")
                self.ov.copy_up(tcanon, tbase, layer)
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
        if self.ov is not None:
            self._mkwhiteout(parent, original)

    def _mkwhiteout(self, parent: tuple[str, ...], name: str) -> None:
        """The overlayfs whiteout hiding ``name`` of lower layers: a 0:0 character device,
        mode 0, owned by 0:0 (whatever a setgid parent would hand down)."""
        pfd = self.fs.fd(parent)
        os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
        os.chown(name, 0, 0, dir_fd=pfd, follow_symlinks=False)
        os.chmod(name, 0, dir_fd=pfd)
        self.fs.invalidate()  # what it hides may be a directory or symlink names pass

    def _opaque(self, parent: tuple[str, ...]) -> None:
        """Remove what lower layers put below ``parent`` and this layer did not add.

        In an overlay upper there is nothing of lower layers to remove: the directory is
        marked opaque instead. What this layer made below it without an entry of its own
        (missing parents) is still swept, as the flat apply sweeps it.
        """
        self._sweep(parent)
        if self.ov is None:
            return
        if parent:
            pfd = self.fs.fd(parent[:-1])
            self.ov.set_opaque(pfd, parent[-1])
        else:
            self._opaque_root(self.ov)

    def _opaque_root(self, ov: _OverlayFS) -> None:
        """The kernel ignores an opaque layer root, so hide the lower layers' top level
        by hand: a whiteout for each name the upper lacks, opacity for each upper
        directory that would merge with a lower one."""
        names: set[str] = set()
        for lower in ov.lowers:
            names.update(_listdir(lower.root_fd))
        for name in sorted(names):
            st, _ = ov.lower_entry((), name)
            if st is None:
                continue
            upper = _lstat(name, ov.root_fd)
            if upper is None:
                self._mkwhiteout((), name)
            elif stat.S_ISDIR(upper.st_mode) and stat.S_ISDIR(st.st_mode):
                ov.set_opaque(ov.root_fd, name)

    def _sweep(self, parent: tuple[str, ...]) -> None:
        """Remove below ``parent`` what this layer did not unpack (containerd's walk)."""

        def sweep(canon: tuple[str, ...]) -> None:
            for name, is_dir in _scandir(self.fs.fd(canon)):
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
    stream: BinaryIO,
    root: str | os.PathLike[str],
    *,
    layer: str = "layer",
    whiteouts: Whiteouts = "remove",
    lowers: Sequence[str | os.PathLike[str]] = (),
) -> LayerStats:
    """Apply the uncompressed tar ``stream`` to the directory ``root``.

    ``whiteouts="remove"`` builds a flat rootfs: ``root`` holds the layers below, and
    whiteouts and opaque markers delete from it. ``whiteouts="overlay"`` fills ``root`` as
    an overlayfs upper directory, normally empty, over ``lowers`` (the directories of the
    layers below, newest first, as in ``lowerdir=``; they are only read): whiteouts become
    0:0 character devices, opaque markers the ``trusted.overlay.opaque`` xattr, and the
    mounted stack then shows what the flat apply builds.

    Reads ``stream`` exactly up to the end of the archive (the caller drains the rest so
    its digest covers every byte). Raises :class:`~unlade.errors.LayerError` subclasses
    whose message names ``layer`` and the entry at fault.
    """
    if whiteouts not in ("remove", "overlay"):
        raise ValueError(f"whiteouts must be 'remove' or 'overlay', not {whiteouts!r}")
    if lowers and whiteouts != "overlay":
        raise ValueError("lowers are only used with whiteouts='overlay'")
    reader = TarReader(stream)
    rootfs = _OverlayFS(root, lowers) if whiteouts == "overlay" else RootFS(root)
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
