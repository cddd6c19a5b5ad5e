"""Fuzz layer application (``layer.apply_layer``): tar streams applied inside a throwaway
root, with the check that nothing outside the root appeared, changed or went away.

Every run works in a fresh directory (on tmpfs when there is one) laid out as::

    WORK/box/root/            the root the layer is applied to (remade for every input)
    WORK/box/outside/secret   sentinels next to the root ...
    WORK/box/victim/hello
    WORK/box/file
    WORK/box/lower/...        ... and a lower layer, for the overlay applies (read only)

Before each input the root is remade: for a flat apply, either empty or holding a small
tree with symlinks that lead out of it if the kernel ever followed them (``esc ->
../outside``, ``abs -> WORK/box/outside``, ``up -> ../../..``); for an overlay apply, an
empty upper over ``box/lower`` (which holds such symlinks too). After the apply, whether
it raised or not, everything in WORK but the root's contents must be as before (type,
mode, owner, inode, link count, size, times, content, link target, xattrs), the root must
still be the same directory, no file in it may hold the outside secret, and the host's
``/``, ``/etc`` and ``/etc/passwd`` must be untouched.

The first byte of the input picks how (its value modulo 6): 0 and 1, the rest of the input
is the tar stream itself (flat / overlay apply); 2 to 5, the rest drives a generator of
tar members (``tarfile``-built, in PAX, GNU or ustar format) from a vocabulary of breakout
material -- ``..`` and absolute names, symlinks and hardlinks to the sentinels, whiteouts
and opaque markers, devices, long names, PAX records and xattrs -- applied flat (2, 3),
over the lower (4), or speculatively and then settled against the lower (5).

Allowed: :class:`~unlade.errors.LayerError` (and NoSpace), and ``Speculate`` from a
speculative apply.

    python fuzz/fuzz_layer.py fuzz/corpus/layer -max_total_time=60
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import uuid

import _fuzzutil

with _fuzzutil.instrumented(__name__ == "__main__"):
    from unlade.errors import LayerError, NoSpace
    from unlade.layer import Speculate, apply_layer

MTIME_NS = 1_000_000_000 * 10**9
TOKEN = uuid.uuid4().hex
WORK = os.path.realpath(tempfile.mkdtemp(
    prefix="unlade-fuzz-layer-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
atexit.register(shutil.rmtree, WORK, True)
BOX = os.path.join(WORK, "box")
ROOT = os.path.join(BOX, "root")
LOWER = os.path.join(BOX, "lower")
SECRET = f"outside secret {TOKEN}\n".encode()


def _xattr(path: str, key: str, value: bytes) -> None:
    with contextlib.suppress(OSError):  # none on this filesystem: the rest is compared
        os.setxattr(path, key, value, follow_symlinks=False)


def _setup() -> None:
    os.makedirs(os.path.join(BOX, "outside"))
    os.makedirs(os.path.join(BOX, "victim"))
    for rel, data, mode in (
        ("outside/secret", SECRET, 0o640),
        ("victim/hello", f"victim hello {TOKEN}\n".encode(), 0o644),
        ("file", f"host file {TOKEN}\n".encode(), 0o644),
    ):
        path = os.path.join(BOX, rel)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        _xattr(path, "user.sentinel", TOKEN.encode())
        os.utime(path, ns=(MTIME_NS, MTIME_NS))
    _populate(LOWER)
    os.symlink("../../../..", os.path.join(LOWER, "dir", "deep"))
    os.mkdir(os.path.join(LOWER, "opq"))
    _xattr(os.path.join(LOWER, "opq"), "trusted.overlay.opaque", b"y")
    _xattr(os.path.join(LOWER, "dir"), "user.lower", b"copied up")  # settle's xattr fix-up
    os.mkdir(os.path.join(LOWER, "sgid"))
    if os.geteuid() == 0:
        os.chown(os.path.join(LOWER, "sgid"), -1, 1234)
    os.chmod(os.path.join(LOWER, "sgid"), 0o2775)  # a copy-up hands its group down
    with contextlib.suppress(PermissionError):  # an overlayfs whiteout (needs root)
        os.mknod(os.path.join(LOWER, "wh"), stat.S_IFCHR | 0o600, os.makedev(0, 0))
    for d in ("outside", "victim"):
        os.utime(os.path.join(BOX, d), ns=(MTIME_NS, MTIME_NS))


def _populate(root: str) -> None:
    """The tree a flat apply starts from (and the lower of an overlay apply)."""
    os.mkdir(root)
    os.chmod(root, 0o755)
    os.mkdir(os.path.join(root, "dir"))
    with open(os.path.join(root, "dir", "file"), "wb") as f:
        f.write(b"inner\n")
    with open(os.path.join(root, "file"), "wb") as f:
        f.write(b"root file\n")
    os.symlink("../outside", os.path.join(root, "esc"))
    os.symlink(os.path.join(BOX, "outside"), os.path.join(root, "abs"))
    os.symlink("../../..", os.path.join(root, "up"))
    os.symlink(os.path.join(BOX, "outside", "secret"), os.path.join(root, "abs-secret"))


# -- what must not change ----------------------------------------------------------------


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in sorted(names))


def _describe(path: str, st: os.stat_result) -> tuple[object, ...]:
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            kind: object = f.read()
    elif stat.S_ISLNK(st.st_mode):
        kind = os.readlink(path)
    else:
        kind = st.st_rdev
    return (kind, st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_nlink, st.st_size,
            st.st_mtime_ns, st.st_ctime_ns, _xattrs(path))


def _snapshot() -> dict[str, object]:
    """Everything in WORK but the root (whose name must stay a directory) and the mtime
    of BOX (which remaking the root changes); the host's names in / and /etc."""
    snap: dict[str, object] = {}

    def walk(d: str) -> None:
        for entry in os.scandir(d):
            if entry.path == ROOT:
                continue
            st = entry.stat(follow_symlinks=False)
            snap[entry.path] = _describe(entry.path, st)
            if stat.S_ISDIR(st.st_mode):
                walk(entry.path)

    snap[WORK] = _describe(WORK, os.lstat(WORK))
    snap[BOX] = sorted(set(os.listdir(BOX)) - {"root"})
    walk(BOX)
    passwd = os.lstat("/etc/passwd")
    snap["/etc/passwd"] = (passwd.st_ino, passwd.st_nlink, passwd.st_mode, passwd.st_size,
                           passwd.st_mtime_ns, passwd.st_ctime_ns)
    snap["names in /"] = sorted(os.listdir("/"))
    snap["names in /etc"] = sorted(os.listdir("/etc"))
    return snap


def _leaks() -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size == len(SECRET):
                with open(path, "rb") as f:
                    if f.read() == SECRET:
                        out.append(path)
    return out


def _rmtree(path: str) -> None:
    def retry(func, p, _exc):  # type: ignore[no-untyped-def]
        # as non-root, a 0000 directory must be opened up before it can be emptied
        os.chmod(os.path.dirname(p), 0o700)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o700)
        func(p)

    shutil.rmtree(path, onerror=retry)


_setup()
BEFORE = _snapshot()


# -- tar generation ----------------------------------------------------------------------

PARTS = (
    "a", "b", "dir", "file", "esc", "abs", "up", "abs-secret", "secret", "..", ".", "",
    "outside", "victim", "etc", "deep", "opq", "wh", "sgid", ".wh.a", ".wh.dir", ".wh.esc",
    ".wh..wh..opq", ".wh.", ".wh..", ".wh...", "x" * 101, "y" * 255, "\u00e9", "\udcff",
)
TARGETS = (
    "", ".", "..", "/", "a", "dir", "dir/file", "file", "esc", "esc/secret", "abs/secret",
    "up", "abs-secret", "deep", "../outside", "../outside/secret", "../../..", "../file",
    "../../box/outside/secret", os.path.join(BOX, "outside"),
    os.path.join(BOX, "outside", "secret"), os.path.join(BOX, "victim"), BOX, WORK,
    "../victim/hello", "../../../../../../../..", "z" * 120,
)
KINDS = (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
         tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"\0")
MODES = (0o644, 0o755, 0o777, 0, 0o4755, 0o2755, 0o1777, 0o7777, 0o200)
IDS = (0, 0, 1000, 65534, 1 << 21, (1 << 31) - 1, (1 << 32) - 1, 1 << 32, 1 << 40)
TIMES = (0, 1_600_000_000, 2_000_000_000, -1, 1 << 33, 1 << 62)
PAX_KEYS = (
    "path", "linkpath", "mtime", "atime", "uid", "gid", "size", "SCHILY.xattr.user.x",
    "SCHILY.xattr.user.long", "SCHILY.xattr.trusted.overlay.opaque",
    "SCHILY.xattr.security.capability", "SCHILY.xattr.", "GNU.sparse.major", "comment",
)
PAX_VALUES = ("y", "", "0", "1", "1.5", "-1.25", "99999999999999999999", "abc", "dir/file",
              "../outside/secret", os.path.join(BOX, "outside"), "x" * 300)
FORMATS = (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT)


def _name(b: _fuzzutil.Bytes, vocabulary: tuple[str, ...]) -> str:
    if b.int(8) == 0:
        return _fuzzutil.text(b.chunk(40))
    prefix = b.pick(("", "", "/", "./", "../", "//"))
    return prefix + "/".join(b.pick(vocabulary) for _ in range(1 + b.int(4)))


def _member(b: _fuzzutil.Bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(_name(b, PARTS))
    info.type = b.pick(KINDS)
    info.mode = b.pick(MODES) if b.int(4) else b.int(1 << 16)
    info.uid, info.gid = b.pick(IDS), b.pick(IDS)
    info.mtime = b.pick(TIMES)
    info.uname = info.gname = b.pick(("", "root"))
    if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = _name(b, TARGETS) if b.int(4) == 0 else b.pick(TARGETS)
    if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = b.pick((0, 1, 5, 4095)), b.pick((0, 3, 255, 1 << 20))
    pax = {}
    for _ in range(b.int(4) if b.int(3) == 0 else 0):
        pax[b.pick(PAX_KEYS)] = b.pick(PAX_VALUES) if b.int(3) else _fuzzutil.text(b.chunk(24))
    info.pax_headers = pax
    data = b.chunk(48) if info.type in (tarfile.REGTYPE, tarfile.CONTTYPE, b"\0") else b""
    info.size = len(data)
    return info, data


def _generate(b: _fuzzutil.Bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=b.pick(FORMATS)) as tar:
        for _ in range(1 + b.int(12)):
            info, data = _member(b)
            tar.addfile(info, io.BytesIO(data) if data else None)
        end = tar.offset + 2 * tarfile.BLOCKSIZE  # without tarfile's padding to 10 KiB
    out = buf.getvalue()[:end]
    cut = b.int(8)
    if cut == 1:
        out = out[: b.int(len(out) + 1)]  # truncated somewhere
    elif cut == 2:
        out = out.rstrip(b"\0") + b.chunk(600)  # no end marker, maybe garbage
    return out


# -- the harness -------------------------------------------------------------------------


def _apply(tar: bytes, how: str, populated: bool) -> None:
    if how == "flat" and populated:
        _populate(ROOT)
    else:
        os.mkdir(ROOT)
    ino = os.lstat(ROOT).st_ino
    try:
        if how == "flat":
            apply_layer(io.BytesIO(tar), ROOT, layer="fuzz")
        elif how == "overlay":
            apply_layer(io.BytesIO(tar), ROOT, layer="fuzz", whiteouts="overlay",
                        lowers=[LOWER])
        else:
            stats = apply_layer(io.BytesIO(tar), ROOT, layer="fuzz", whiteouts="overlay",
                                speculative=True)
            assert stats.speculation is not None
            stats.speculation.settle(ROOT, [LOWER])
    except (LayerError, NoSpace) as err:
        assert "\n" not in str(err), "an error message must be one line"
        assert "fuzz" in str(err), f"the message does not name the layer: {err}"
    except Speculate:
        assert how == "speculative"
    finally:
        st = os.lstat(ROOT)
        problems = []
        if not stat.S_ISDIR(st.st_mode) or st.st_ino != ino:
            problems.append("the root is no longer the directory it was")
        after = _snapshot()
        for key in sorted(BEFORE.keys() | after.keys()):
            if BEFORE.get(key) != after.get(key):
                problems.append(f"{key}: {BEFORE.get(key)!r:.300} -> {after.get(key)!r:.300}")
        problems += [f"the outside secret was copied to {p}" for p in _leaks()]
        _rmtree(ROOT)
        assert not problems, "outside the root: " + "; ".join(problems)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    how = data[0] % 6
    if how < 2:
        _apply(data[1:], ("flat", "overlay")[how], populated=True)
        return
    b = _fuzzutil.Bytes(data[1:])
    try:
        tar = _generate(b)
    except (ValueError, OverflowError, tarfile.TarError, UnicodeError):
        return  # a member tarfile cannot write in that format
    _apply(tar, ("flat", "flat", "overlay", "speculative")[how - 2], populated=how == 2)


if __name__ == "__main__":
    _fuzzutil.main(TestOneInput)
