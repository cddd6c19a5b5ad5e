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

With ``speculative=True`` a layer goes into its upper before the layers below it exist:
they are taken to hold nothing, and every question the overlay apply would have asked them
is written down in a :class:`Speculation`, with what its answer decided. Once the lowers
are complete, :meth:`Speculation.settle` asks those questions again; where the real answer
could not have changed the upper, or only changed the metadata of a directory the layer
created (which is then corrected), the upper is what the ordinary apply makes. Otherwise
the caller applies the layer again, the ordinary way.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Literal, TypeVar

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

if TYPE_CHECKING:
    from .limits import Limits

WHITEOUT_PREFIX = ".wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
MAX_SYMLINKS = 255  # as containerd's continuity fs.RootPath
MAX_DEPTH = 256  # directory levels; real images stay below 40, PATH_MAX allows ~2000
_FD_CACHE = 256
_NAME_CACHE = 4096  # resolved parent names kept (tar order makes hits recent ones)
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_NS = (1 << 63) - 1
OPAQUE_XATTR = "trusted.overlay.opaque"

Whiteouts = Literal["remove", "overlay"]
_T = TypeVar("_T")

# What the answer of a question to the lower layers decided (a speculative apply records
# them per path, or-ed): how a path was resolved through it, whether a directory entry would
# copy up a lower directory, whether a new directory must be opaque, whether a non-directory
# was made where a resolution had passed (the ordinary apply would then forget resolutions).
_Q_RESOLVE, _Q_DIR, _Q_ISDIR, _Q_OTHER = 1, 2, 4, 8
# How a speculative apply made a directory: where the ordinary apply copies up a lower
# directory if there is one (no opaque upper directory above); with its metadata set by a
# directory entry (made by one, or taken over later); implicitly inside a missing parent that
# may be such a copy-up, before an entry took that over (so with the group the parent has,
# which its copy-up may change).
_M_COPY, _M_ENTRY, _M_INHERIT = 1, 2, 4


@dataclass(slots=True)
class LayerStats:
    """What one application did, for progress and ``--json``."""

    entries: int = 0
    files: int = 0
    file_bytes: int = 0
    speculation: Speculation | None = None  # set by a speculative apply, to be settled


class Speculate(Exception):
    """A speculative apply met something only the lower layers can decide (or failed, which
    the ordinary apply must repeat to give the true error): apply the layer again over the
    real lowers. Not an :class:`~unlade.errors.UnladeError`: it never reaches a user."""


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
        # Directories this apply created, so empty then: a name in one that the layer has
        # not unpacked yet cannot exist, and needs no lstat (a third of the per-file
        # syscalls of a first layer). Only the flat apply uses it.
        self.fresh: set[tuple[str, ...]] = set()

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
            if len(self._names) >= _NAME_CACHE:
                self._names.clear()  # bounded, so memory stays flat in the entry count
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
            self.fresh.add(canon[: i + 1])

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
                self._unseen(canon, part)
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

    def _unseen(self, canon: tuple[str, ...], part: str) -> None:
        """Hook: ``part`` of the missing directory ``canon`` is passed without a look."""


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
        self, parent: tuple[str, ...], part: str, why: int = 0
    ) -> tuple[os.stat_result | None, int]:
        """The topmost lower entry ``part`` of the merged directory ``parent`` and its
        lower's index; (None, -1) if no lower shows one (absent or whited out). ``why``
        says what the answer decides (``_Q_*``), for a speculative apply to write down."""
        for i in self.stack(parent):
            st = _lstat(part, self.lowers[i].fd(parent))
            if st is not None:
                return (None, -1) if is_whiteout(st) else (st, i)
        return None, -1

    def lookup(
        self, parent: tuple[str, ...], part: str, why: int = 0
    ) -> tuple[os.stat_result | None, int]:
        """``part`` of the merged directory ``parent`` as the mount will show it, and where
        it comes from (-1: the upper, else a lower's index); (None, -1) if absent."""
        ufd = self.upper_fd(parent)
        if ufd is not None:
            st = _lstat(part, ufd)
            if st is not None:
                return (None, -1) if is_whiteout(st) else (st, -1)
        return self.lower_entry(parent, part, why)

    def layer_fd(self, layer: int, canon: tuple[str, ...]) -> int:
        return self.fd(canon) if layer < 0 else self.lowers[layer].fd(canon)

    def _entry(self, canon: tuple[str, ...], part: str) -> tuple[os.stat_result | None, int]:
        st, layer = self.lookup(canon, part, _Q_RESOLVE)
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
            self._new_dir(here, st is None)

    def _new_dir(self, canon: tuple[str, ...], fresh: bool) -> None:
        """Hook: the missing parent ``canon`` was made (``fresh``: not over a whiteout)
        where the lowers show no directory."""

    def merge_dir(self, canon: tuple[str, ...]) -> None:
        """Hook: a directory entry took over the upper directory ``canon``."""

    def removed_dir(self, canon: tuple[str, ...]) -> None:
        """Hook: the upper directory ``canon`` was removed with all below it."""

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


class _SpecFS(_OverlayFS):
    """An upper over lower layers that are not known yet.

    Every question to the lowers is answered "nothing there" and recorded in ``spec`` with
    what it decides, unless an opaque upper directory hides the lowers at that point (then
    "nothing" is the true answer, whatever they hold). Nothing is ever read from a lower.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root, ())
        self.spec = Speculation()
        self._cuts: dict[tuple[str, ...], bool] = {}

    def invalidate(self) -> None:
        super().invalidate()
        self._cuts.clear()

    def _cut(self, canon: tuple[str, ...]) -> bool:
        """Does an opaque upper directory on the way to ``canon`` hide the lowers there (as
        ``stack`` would find it now)? The root's opacity counts for nothing, as there."""
        found = self._cuts.get(canon)
        if found is None:
            found = False
            ufd: int | None = self.root_fd
            for i, part in enumerate(canon):
                if ufd is None:
                    break
                if self._opaque(ufd, part):
                    found = True
                    break
                ufd = self.upper_fd(canon[: i + 1])
            self._cuts[canon] = found
        return found

    def _ask(self, path: tuple[str, ...], why: int) -> None:
        queries = self.spec.queries
        if not why or (why == _Q_OTHER and path not in queries):
            return  # the answer decides nothing (a non-directory hides whatever is below)
        if len(path) > MAX_DEPTH:
            raise Speculate(f"path is more than {MAX_DEPTH} directories deep")
        if not self._cut(path[:-1]):
            queries[path] = queries.get(path, 0) | why
            if why == _Q_DIR:
                self.spec.new_dir(path, _M_COPY | _M_ENTRY)

    def lower_entry(
        self, parent: tuple[str, ...], part: str, why: int = 0
    ) -> tuple[os.stat_result | None, int]:
        self._ask((*parent, part), why)
        return None, -1

    def lower_is_dir(self, parent: tuple[str, ...], name: str) -> bool:
        self._ask((*parent, name), _Q_ISDIR)
        return False

    def _unseen(self, canon: tuple[str, ...], part: str) -> None:
        self._ask((*canon, part), _Q_RESOLVE)

    def _new_dir(self, canon: tuple[str, ...], fresh: bool) -> None:
        how = _M_COPY if fresh and not self._cut(canon[:-1]) else 0
        if self.spec.copied_up(canon[:-1]):
            how |= _M_INHERIT
        if how:
            self.spec.new_dir(canon, how)

    def merge_dir(self, canon: tuple[str, ...]) -> None:
        self.spec.took_over(canon)

    def removed_dir(self, canon: tuple[str, ...]) -> None:
        self.spec.removed_dir(canon)

    def copy_up_dir(self, parent: tuple[str, ...], name: str) -> None:
        raise Speculate(f"{'/'.join((*parent, name))!r} would be copied up")

    def copy_up(self, parent: tuple[str, ...], name: str, layer: int) -> None:
        raise Speculate(f"{'/'.join((*parent, name))!r} would be copied up")


class _LowerView(_OverlayFS):
    """The lowers alone, as a speculative apply's questions were put to them: under an
    upper that hides nothing (questions asked where the upper did were not recorded)."""

    def upper_fd(self, canon: tuple[str, ...]) -> int | None:
        return None


def _lower_xattrs(dir_fd: int, name: str) -> dict[str, bytes] | None:
    """The xattrs a copy-up of the lower directory ``name`` takes, if all are ``user.*``
    (None otherwise: ACLs and security labels interact with the mode and with what is
    created below, in ways a later fix-up cannot repeat)."""
    path = f"/proc/self/fd/{dir_fd}/{name}"
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out: dict[str, bytes] = {}
    for key in names:
        if key.startswith("trusted."):
            continue
        if not key.startswith("user."):
            return None
        try:
            out[key] = os.getxattr(path, key, follow_symlinks=False)
        except OSError as err:
            if err.errno != errno.ENODATA:
                raise
    return out


# A directory's correction: path, owner, mode, xattrs (see Speculation._fix).
_Fix = tuple[tuple[str, ...], tuple[int, int] | None, int | None, dict[str, bytes]]


class Speculation:
    """What a speculative apply assumed about the lower layers, to be checked against them.

    ``queries`` maps each path whose lower entry was asked for (where no opaque upper
    directory hid it) to what the answer decided (``_Q_*`` bits). ``dirs`` maps each new
    directory that the ordinary apply copies up instead if the lowers have a directory
    there, to when it was made and how (``_M_*`` bits); ``gone`` each upper directory the
    layer removed again to when, so that a fix-up only goes to the directory it was made
    for. Paths are tuples of names, shared with the resolver: a few hundred bytes each, one
    per path that was new to the upper.
    """

    __slots__ = ("_clock", "dirs", "gone", "queries")

    def __init__(self) -> None:
        self.queries: dict[tuple[str, ...], int] = {}
        self.dirs: dict[tuple[str, ...], tuple[int, int]] = {}
        self.gone: dict[tuple[str, ...], int] = {}
        self._clock = 0

    def new_dir(self, path: tuple[str, ...], how: int) -> None:
        self._clock += 1
        self.dirs[path] = (self._clock, how)

    def took_over(self, path: tuple[str, ...]) -> None:
        made = self.dirs.get(path)
        if made is not None and self._alive(path, made[0]):
            self.dirs[path] = (made[0], made[1] | _M_ENTRY)

    def copied_up(self, path: tuple[str, ...]) -> bool:
        """Might ``path`` still have the mode of a lower directory's copy-up now?"""
        made = self.dirs.get(path)
        return made is not None and made[1] & (_M_COPY | _M_ENTRY) == _M_COPY \
            and self._alive(path, made[0])

    def removed_dir(self, path: tuple[str, ...]) -> None:
        self._clock += 1
        self.gone[path] = self._clock

    def _alive(self, path: tuple[str, ...], when: int) -> bool:
        """Is the directory made at ``when`` still the one at ``path`` (neither it nor a
        directory above it removed since)?"""
        gone = self.gone
        if not gone:
            return True
        return all(gone.get(path[:i], 0) < when for i in range(1, len(path) + 1))

    def settle(
        self, upper: str | os.PathLike[str], lowers: Sequence[str | os.PathLike[str]]
    ) -> bool:
        """Check the speculation against the real ``lowers`` (newest first, as for
        :func:`apply_layer`) of the ``upper`` it was made in, and correct the upper where
        that is enough. True: ``upper`` now is what the ordinary apply over ``lowers``
        makes. False: it is not; wipe it and apply the layer again with ``lowers``. The
        lowers are only read; the upper is only corrected once every check has passed."""
        if not lowers or (not self.queries and not self.dirs):
            return True
        try:
            view = _LowerView(upper, lowers)
            try:
                fixes = self._check(view)
            finally:
                view.close()
            if fixes is None:
                return False
            return self._fix(upper, fixes)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"no space left on device settling {os.fspath(upper)!r}") \
                    from None
            return False  # the ordinary apply meets it again, and says what it is

    def _check(self, view: _LowerView) -> list[_Fix] | None:
        """Re-ask every question; the fix-ups the answers need, or None if a redo does."""
        for path, why in self.queries.items():
            parent, name = path[:-1], path[-1]
            if why & _Q_ISDIR and view.lower_is_dir(parent, name):
                return None  # a new directory there would have been opaque
            if not why & (_Q_RESOLVE | _Q_DIR):
                continue
            st, _ = view.lower_entry(parent, name)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                # a resolution went on through it, creating or looking no differently; but
                # a non-directory made there later would have made the ordinary apply
                # resolve names afresh, where the speculative one trusted its cache
                if why & _Q_OTHER:
                    return None
            elif why & _Q_RESOLVE:
                return None  # a symlink to follow, or a non-directory to fail on
            # else a directory entry over a lower non-directory: a new directory either way
        fixes: list[_Fix] = []
        for path, (when, how) in self.dirs.items():
            parent, name = path[:-1], path[-1]
            st, layer = view.lower_entry(parent, name) if how & _M_COPY else (None, -1)
            if st is not None and stat.S_ISDIR(st.st_mode):  # the ordinary apply copied up
                xattrs = _lower_xattrs(view.lowers[layer].fd(parent), name)
                if xattrs is None:
                    return None
                if not self._alive(path, when):
                    continue  # removed again, as the copy-up would have been
                if how & _M_ENTRY:  # which set owner, mode and times after the copy-up
                    if xattrs:
                        fixes.append((path, None, None, xattrs))
                else:
                    fixes.append((path, (st.st_uid, st.st_gid), stat.S_IMODE(st.st_mode),
                                  xattrs))
            elif how & _M_INHERIT and not how & _M_ENTRY and self._alive(path, when):
                # new in both, made in a missing parent: the copy-up of a setgid directory
                # there handed its group down
                above, _ = view.lower_entry(parent[:-1], parent[-1])
                if above is not None and stat.S_ISDIR(above.st_mode) and \
                        above.st_mode & stat.S_ISGID:
                    fixes.append((path, (-1, above.st_gid), None, {}))
        return fixes

    @staticmethod
    def _fix(upper: str | os.PathLike[str], fixes: list[_Fix]) -> bool:
        """Give each directory what the ordinary apply gave it: the owner (-1: unchanged)
        and mode of a copy-up, unless an entry set them later (then None), and the copied
        xattrs no entry set (entries set theirs after the copy-up)."""
        fs = RootFS(upper)
        try:
            for path, owner, mode, xattrs in fixes:
                pfd = fs.fd(path[:-1])
                name = path[-1]
                here = _lstat(name, pfd)
                if here is None or not stat.S_ISDIR(here.st_mode):
                    return False
                if owner is not None:
                    os.chown(name, *owner, dir_fd=pfd, follow_symlinks=False)
                if xattrs:
                    target = f"/proc/self/fd/{pfd}/{name}"
                    have = set(os.listxattr(target, follow_symlinks=False))
                    for key, value in xattrs.items():
                        if key not in have:
                            os.setxattr(target, key, value, follow_symlinks=False)
                if mode is not None:
                    os.chmod(name, mode, dir_fd=pfd)
                fs.release()
        finally:
            fs.close()
        return True


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


class _Unpacked:
    """The (directory, name) pairs a layer unpacked, in 8 bytes each plus a fixed filter.

    Sets of names cost ~110 bytes an entry, which made memory grow with the image. Pairs
    are kept as their 64-bit ``hash`` (keyed per process, so collisions are chance, about
    1 in 10^10 for a million entries, and cannot be aimed at); a Bloom filter answers
    "certainly not" at once, before an lstat the answer spares. The exact set is only
    built for the rare opaque-whiteout sweep.
    """

    _BITS = 1 << 21
    _MASK = _BITS - 1

    def __init__(self) -> None:
        self._hashes = array("q")
        self._bloom = bytearray(self._BITS >> 3)
        self._exact: set[int] | None = None

    def add(self, parent: tuple[str, ...], name: str) -> None:
        h = hash((parent, name))
        self._hashes.append(h)
        if self._exact is not None:
            self._exact.add(h)
        bloom, mask = self._bloom, self._MASK
        i = h & mask
        bloom[i >> 3] |= 1 << (i & 7)
        i = (h >> 21) & mask
        bloom[i >> 3] |= 1 << (i & 7)

    def may_hold(self, parent: tuple[str, ...], name: str) -> bool:
        """False: certainly not unpacked; True: perhaps."""
        h = hash((parent, name))
        bloom, mask = self._bloom, self._MASK
        i = h & mask
        if not bloom[i >> 3] & (1 << (i & 7)):
            return False
        i = (h >> 21) & mask
        return bool(bloom[i >> 3] & (1 << (i & 7)))

    def exact(self) -> set[int]:
        """The hashes of every pair, for lookups by ``hash((parent, name))`` (built once,
        then kept up to date: a layer with one opaque whiteout often has many)."""
        if self._exact is None:
            self._exact = set(self._hashes)
        return self._exact


class _Applier:
    def __init__(self, reader: TarReader, rootfs: RootFS) -> None:
        self.reader = reader
        self.fs = rootfs
        self.ov = rootfs if isinstance(rootfs, _OverlayFS) else None
        self.stats = LayerStats()
        self.unpacked = _Unpacked()
        self.dirs: list[tuple[str, int, int]] = []
        self.stream_failed = False  # the failure came from reading, not from applying

    def _read(self, items: Iterator[_T]) -> Iterator[_T]:
        """``items``, noting whether reading them failed (a speculative apply passes such a
        failure on: no redo can cure it)."""
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except BaseException:
                self.stream_failed = True
                raise
            yield item

    def run(self) -> None:
        for entry in self._read(iter(self.reader)):
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

        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, base)
            return

        opaque = False
        if self.ov is not None:
            st, opaque = self._overlay_replace(self.ov, entry, parent, base)
            pfd = fs.fd(parent)
        elif parent in fs.fresh and not self.unpacked.may_hold(parent, base) \
                and (*parent, base) not in fs.fresh:
            st = None  # see RootFS.fresh
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
                    fs.fresh.add((*parent, base))
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
        self.unpacked.add(parent, base)

    def _overlay_replace(
        self, ov: _OverlayFS, entry: Entry, parent: tuple[str, ...], base: str
    ) -> tuple[os.stat_result | None, bool]:
        """Make way in the upper for ``entry`` as the flat apply does in the rootfs.

        Returns the existing upper directory to merge into (None: create the entry) and
        whether a new directory must be opaque. What only a lower layer holds is not
        removed: the new upper entry hides it. A directory entry over a lower directory
        copies that directory up, so it keeps what the flat apply would keep (its xattrs).
        """
        st, layer = ov.lookup(parent, base, _Q_DIR if entry.type == DIR else _Q_OTHER)
        if st is not None and stat.S_ISDIR(st.st_mode) and entry.type == DIR:
            if layer >= 0:
                ov.copy_up_dir(parent, base)
            else:
                ov.merge_dir((*parent, base))
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
        for piece in self._read(self.reader.data()):
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
            if self.ov is not None:
                self.ov.removed_dir((*parent, base))
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
        if isinstance(ov, _SpecFS):
            raise Speculate("an opaque layer root hides names only the lower layers know")
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

        unpacked = self.unpacked.exact()

        def sweep(canon: tuple[str, ...]) -> None:
            for name, is_dir in _scandir(self.fs.fd(canon)):
                if hash((canon, name)) not in unpacked:
                    self._remove(canon, name)
                elif is_dir:
                    sweep((*canon, name))

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
    speculative: bool = False,
    limits: Limits | None = None,
) -> LayerStats:
    """Apply the uncompressed tar ``stream`` to the directory ``root``.

    ``whiteouts="remove"`` builds a flat rootfs: ``root`` holds the layers below, and
    whiteouts and opaque markers delete from it. ``whiteouts="overlay"`` fills ``root`` as
    an overlayfs upper directory, normally empty, over ``lowers`` (the directories of the
    layers below, newest first, as in ``lowerdir=``; they are only read): whiteouts become
    0:0 character devices, opaque markers the ``trusted.overlay.opaque`` xattr, and the
    mounted stack then shows what the flat apply builds.

    ``speculative=True`` (overlay only, no ``lowers``) fills the empty ``root`` before the
    lower layers are known; the returned ``speculation`` must then be settled against them
    (:meth:`Speculation.settle`) before the upper is used. Where it meets what only the
    lowers decide, or fails in a way the lowers might explain, it raises
    :class:`Speculate`: the layer must be applied again over the real lowers, which gives
    the true outcome. Failures of the stream itself are raised as without speculation.

    Reads ``stream`` exactly up to the end of the archive (the caller drains the rest so
    its digest covers every byte). Raises :class:`~unlade.errors.LayerError` subclasses
    whose message names ``layer`` and the entry at fault.

    ``limits`` bound entries, path lengths and xattr sizes (default: the stream's own
    ``limits`` attribute, as a :class:`~unlade.pull.VerifyingStream` carries, else
    :data:`~unlade.limits.DEFAULT_LIMITS`).
    """
    if whiteouts not in ("remove", "overlay"):
        raise ValueError(f"whiteouts must be 'remove' or 'overlay', not {whiteouts!r}")
    if lowers and whiteouts != "overlay":
        raise ValueError("lowers are only used with whiteouts='overlay'")
    if speculative and (whiteouts != "overlay" or lowers):
        raise ValueError("a speculative apply needs whiteouts='overlay' and no lowers")
    reader = TarReader(stream, limits if limits is not None else getattr(stream, "limits", None))
    rootfs: RootFS
    if speculative:
        rootfs = _SpecFS(root)
    elif whiteouts == "overlay":
        rootfs = _OverlayFS(root, lowers)
    else:
        rootfs = RootFS(root)
        if not os.listdir(rootfs.root):
            rootfs.fresh.add(())
    applier = _Applier(reader, rootfs)
    try:
        try:
            applier.run()
        except Speculate as err:
            raise Speculate(f"{layer}: entry {shown(reader.entry_name)}: {err}") from None
        except Exception as err:
            if speculative and not applier.stream_failed and _undecided(err):
                raise Speculate(f"{layer}: entry {shown(reader.entry_name)}: "
                                f"failed without the lower layers ({err})") from None
            raise
    except _Fail as err:
        raise err.kind(f"{layer}: entry {shown(reader.entry_name)}: {err}") from None
    except UnladeError as err:
        if isinstance(err, LayerError) and layer not in str(err):  # else it names it
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
    if isinstance(rootfs, _SpecFS):
        applier.stats.speculation = rootfs.spec
    return applier.stats


def _undecided(err: Exception) -> bool:
    """Might the lower layers have turned this failure of a speculative apply into
    success, or into another failure? (Only a full disk is certain to stay.)"""
    if isinstance(err, OSError):
        return err.errno not in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(err, (_Fail, LayerError, ValueError, OverflowError, RecursionError))
