"""Layer-application breakout tests for :func:`unlade.layer.apply_layer`.

A table of named cases in the style of containerd's ``pkg/archive/tar_test.go``
``TestBreakouts``: each case is a tiny tar (built here with :mod:`tarfile`, PAX format),
optionally a pre-populated root (``setup``, like containerd's ``fstest.Apply``), and
validators. Sources of the cases:

* ``containerd/*``: containerd ``pkg/archive/tar_test.go`` ``TestBreakouts`` with
  containerd's expected outcome (error where containerd errors, effect scoped inside the
  root where containerd scopes it). Host-absolute names that containerd uses (``/etc``,
  ``/tmp``) get a per-test token so a breakout would only ever create a uniquely named
  canary on the host, which is detected and removed.
* ``storage/*``: containers/storage ``pkg/archive/archive_test.go``
  ``TestUntarInvalidFilenames``, ``TestUntarHardlinkToSymlink``, ``TestUntarInvalidHardlink``
  and ``TestUntarInvalidSymlink`` (victim directory ``tmp/victim/hello``), with the outcome
  containerd's ``applyNaive`` would produce (symlinks are stored verbatim; hardlink targets
  are resolved inside the root, so a missing target is an error).
* ``umoci/*``: umoci ``oci/layer/tar_extract_test.go`` ``TestUnpackEntrySanitiseScoping`` and
  ``TestUnpackEntrySymlinkScoping`` (host file ``tmp/file`` next to the root).
* ``extra/*``: further path, whiteout, link, device, xattr, loop and stream-framing cases.

Every case lays out ``tmp/root`` (the root), ``tmp/outside/secret``, ``tmp/victim/hello``
and ``tmp/file`` with known contents, modes, mtimes and an xattr, snapshots everything in
``tmp`` except the root's contents (type, mode, owner, inode, link count, size, mtime,
ctime, content, link target, device number, xattrs) and asserts after the apply - whether
it raised or not - that the snapshot is unchanged, that the root is still the same
directory, that ``/etc/passwd`` on the host was not linked to or modified, that no name
appeared in the host's ``/`` or ``/etc`` and no tokenised canary (``/etc/unbroken-<tok>``,
``/tmp/breakout-<tok>``, ...) was created, and that no regular file in the root holds the
content of an outside file. Only :class:`~unlade.errors.LayerError` may escape; an expected
error must be of the right class and its one-line message must name the layer and the entry.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from unlade.errors import LayerError, MalformedLayer, TruncatedLayer

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 and not os.environ.get("CI"),
        reason="needs root (mknod, chown, xattrs); never skipped when CI is set",
    ),
]

LABEL = "sha256:5ca1ab1e-test-layer"
MTIME = 1_600_000_000  # mtime of every tar entry
SENTINEL_MTIME_NS = 1_000_000_000 * 10**9  # mtime of every outside sentinel


def _apply_layer() -> Callable[..., object]:
    # Imported per test so a missing/broken module fails each case rather than collection.
    from unlade.layer import apply_layer

    return apply_layer


# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class Env:
    tmp: Path
    root: Path
    outside: Path
    secret: Path
    victim: Path
    hello: Path
    host_file: Path
    tok: str

    @property
    def fmt(self) -> dict[str, str]:
        """Placeholders usable in entry names, link targets and validator paths."""
        return {
            "tok": self.tok,
            "tmp": str(self.tmp),
            "outside": str(self.outside),
            "secret": str(self.secret),
            "victim": str(self.victim),
        }

    def sub(self, s: str) -> str:
        return s.format_map(self.fmt)

    @property
    def canaries(self) -> list[Path]:
        """Host paths a breakout in the containerd-style cases would create."""
        return [
            Path(f"/etc/{name}-{self.tok}")
            for name in ("unbroken", "emptied", "abs", "abs2", "localpasswd")
        ] + [Path(f"/tmp/breakout-{self.tok}"), Path(f"/file-{self.tok}")]

    @property
    def leak_contents(self) -> set[bytes]:
        return {
            self.secret.read_bytes(),
            self.hello.read_bytes(),
            self.host_file.read_bytes(),
            Path("/etc/passwd").read_bytes(),
        }


def make_env(tmp: Path) -> Env:
    tok = uuid.uuid4().hex[:12]
    env = Env(
        tmp=tmp,
        root=tmp / "root",
        outside=tmp / "outside",
        secret=tmp / "outside" / "secret",
        victim=tmp / "victim",
        hello=tmp / "victim" / "hello",
        host_file=tmp / "file",
        tok=tok,
    )
    env.root.mkdir()
    env.root.chmod(0o755)
    for d in (env.outside, env.victim):
        d.mkdir()
        d.chmod(0o755)
    for path, data, mode in (
        (env.secret, f"outside secret {tok}\n".encode(), 0o640),
        (env.hello, f"victim hello {tok}\n".encode(), 0o644),
        (env.host_file, f"host content {tok}\n".encode(), 0o644),
    ):
        path.write_bytes(data)
        path.chmod(mode)
        os.setxattr(path, "user.sentinel", tok.encode())
        os.utime(path, ns=(SENTINEL_MTIME_NS, SENTINEL_MTIME_NS))
    for d in (env.outside, env.victim):
        os.utime(d, ns=(SENTINEL_MTIME_NS, SENTINEL_MTIME_NS))
    return env


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for name in sorted(names):
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError as e:
            out.append((name, f"<{e.errno}>".encode()))
    return tuple(out)


def _describe(path: str) -> tuple[object, ...]:
    st = os.lstat(path)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        kind: object = ("file", Path(path).read_bytes())
    elif stat.S_ISLNK(mode):
        kind = ("symlink", os.readlink(path))
    elif stat.S_ISDIR(mode):
        kind = ("dir",)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = ("dev", stat.S_IFMT(mode), st.st_rdev)
    else:
        kind = ("other", stat.S_IFMT(mode))
    return (
        kind,
        stat.S_IMODE(mode),
        st.st_uid,
        st.st_gid,
        st.st_ino,
        st.st_nlink,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        _xattrs(path),
    )


def snapshot(env: Env) -> dict[str, tuple[object, ...]]:
    """Everything under tmp except the root's contents (the root itself: identity only)."""
    snap: dict[str, tuple[object, ...]] = {}
    root = str(env.root)

    def walk(d: str) -> None:
        for entry in sorted(os.scandir(d), key=lambda x: x.name):
            p = entry.path
            if p == root:
                st = os.lstat(p)
                snap[p] = ("root", stat.S_IFMT(st.st_mode), st.st_ino)
                continue
            snap[p] = _describe(p)
            if entry.is_dir(follow_symlinks=False):
                walk(p)

    snap[str(env.tmp)] = _describe(str(env.tmp))
    walk(str(env.tmp))
    return snap


def snapshot_diff(
    before: dict[str, tuple[object, ...]], after: dict[str, tuple[object, ...]]
) -> list[str]:
    out = []
    for p in sorted(before.keys() | after.keys()):
        if p not in after:
            out.append(f"removed outside root: {p} (was {before[p]!r:.200})")
        elif p not in before:
            out.append(f"created outside root: {p} ({after[p]!r:.200})")
        elif before[p] != after[p]:
            out.append(f"changed outside root: {p}: {before[p]!r:.300} -> {after[p]!r:.300}")
    return out


def host_state() -> dict[str, object]:
    """/etc/passwd (the classic hardlink target) and the names in / and /etc."""
    st = os.lstat("/etc/passwd")
    return {
        "/etc/passwd": (st.st_ino, st.st_nlink, st.st_mode, st.st_uid, st.st_gid),
        "/etc/passwd content": Path("/etc/passwd").read_bytes(),
        "names in /": sorted(os.listdir("/")),
        "names in /etc": sorted(os.listdir("/etc")),
    }


def leaked_files(env: Env, secrets: set[bytes]) -> list[str]:
    """Regular files in the root whose content equals an outside file's content."""
    out = []
    for dirpath, dirnames, filenames in os.walk(env.root):
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if (
                stat.S_ISREG(st.st_mode)
                and st.st_size < 1 << 20
                and Path(p).read_bytes() in secrets
            ):
                out.append(p)
    return out


# --------------------------------------------------------------------------- tar building


@dataclass(frozen=True)
class Entry:
    name: str
    type: bytes
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""
    dev: tuple[int, int] = (0, 0)
    pax: tuple[tuple[str, str], ...] = ()


def F(name: str, data: bytes = b"", mode: int = 0o644, **xattrs: str) -> Entry:
    """Regular file; keyword xattrs use '__' for '.', e.g. user__x='1'."""
    return Entry(name, tarfile.REGTYPE, data, mode, pax=_pax(xattrs))


def D(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode)


def S(name: str, target: str, **xattrs: str) -> Entry:
    """Symlink ``name`` -> ``target`` (note: containerd's tc.Symlink takes target first)."""
    return Entry(name, tarfile.SYMTYPE, mode=0o777, linkname=target, pax=_pax(xattrs))


def H(name: str, target: str, mode: int = 0o644, **xattrs: str) -> Entry:
    """Hardlink ``name`` -> ``target`` (containerd's tc.Link takes target first)."""
    return Entry(name, tarfile.LNKTYPE, mode=mode, linkname=target, pax=_pax(xattrs))


def C(name: str, major: int, minor: int, mode: int = 0o666) -> Entry:
    return Entry(name, tarfile.CHRTYPE, mode=mode, dev=(major, minor))


def P(name: str, mode: int = 0o644) -> Entry:
    return Entry(name, tarfile.FIFOTYPE, mode=mode)


def _pax(xattrs: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(("SCHILY.xattr." + k.replace("__", "."), v) for k, v in xattrs.items())


def build_tar(entries: Sequence[Entry], env: Env | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(env.sub(e.name) if env else e.name)
            ti.type = e.type
            ti.mode = e.mode
            ti.mtime = MTIME
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.linkname = env.sub(e.linkname) if env else e.linkname
            ti.devmajor, ti.devminor = e.dev
            if e.pax:
                ti.pax_headers = dict(e.pax)
            if e.type == tarfile.REGTYPE:
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def _pad(n: int) -> int:
    return -n % 512


class Stream(io.RawIOBase):
    """A non-seekable, read-only stream; ``chunk`` caps each read (short reads)."""

    def __init__(self, data: bytes, chunk: int | None = None) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._chunk = chunk

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), len(self._data) - self._pos)
        if self._chunk is not None:
            n = min(n, self._chunk)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


# --------------------------------------------------------------------------- root helpers

Check = Callable[[Env], None]
Setup = Callable[[Env], None]


def _rel(env: Env, rel: str) -> list[str]:
    return [p for p in env.sub(rel).split("/") if p not in ("", ".")]


def phys(env: Env, rel: str) -> Path:
    """root/rel where every intermediate component must be a real directory (no symlink)."""
    p = env.root
    parts = _rel(env, rel)
    for i, part in enumerate(parts):
        p = p / part
        if i < len(parts) - 1:
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                raise AssertionError(f"{p} does not exist (looking for {rel!r})") from None
            assert stat.S_ISDIR(st.st_mode), f"{p} is not a real directory (looking for {rel!r})"
    return p


def resolve_in_root(env: Env, rel: str, max_links: int = 255) -> Path:
    """Like continuity's fs.RootPath: resolve every symlink inside root, '..' clamps at root."""
    todo = _rel(env, rel)
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        cand = env.root.joinpath(*done, part)
        try:
            st = os.lstat(cand)
        except FileNotFoundError:
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            assert links <= max_links, f"too many links resolving {rel!r}"
            target = os.readlink(cand)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
        else:
            done.append(part)
    return env.root.joinpath(*done)


def file(rel: str, data: bytes, mode: int | None = None) -> Check:
    def check(env: Env) -> None:
        p = phys(env, rel)
        assert p.is_file() and not p.is_symlink(), f"{rel!r} should be a regular file in root"
        got = p.read_bytes()
        assert got == data, f"{rel!r}: content {got!r}, expected {data!r}"
        if mode is not None:
            assert stat.S_IMODE(os.lstat(p).st_mode) == mode, f"{rel!r}: mode"

    return check


def symlink(rel: str, target: str) -> Check:
    def check(env: Env) -> None:
        p = phys(env, rel)
        assert p.is_symlink(), f"{rel!r} should be a symlink in root"
        got = os.readlink(p)
        assert got == env.sub(target), f"{rel!r}: link target {got!r}, expected {env.sub(target)!r}"

    return check


def directory(rel: str) -> Check:
    def check(env: Env) -> None:
        p = phys(env, rel)
        assert p.is_dir() and not p.is_symlink(), f"{rel!r} should be a real directory in root"

    return check


def absent(rel: str) -> Check:
    def check(env: Env) -> None:
        p = env.root.joinpath(*_rel(env, rel))
        assert not os.path.lexists(p), f"{rel!r} should not exist in root"

    return check


def children(rel: str, names: set[str]) -> Check:
    def check(env: Env) -> None:
        got = set(os.listdir(phys(env, rel) if _rel(env, rel) else env.root))
        want = {env.sub(n) for n in names}
        assert got == want, f"entries of {rel!r}: {sorted(got)}, expected {sorted(want)}"

    return check


def same(a: str, b: str) -> Check:
    """containerd's sameFile: both resolved inside root name the same inode."""

    def check(env: Env) -> None:
        pa, pb = resolve_in_root(env, a), resolve_in_root(env, b)
        sa, sb = os.stat(pa), os.stat(pb)
        assert (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino), f"{a!r} and {b!r} differ"

    return check


def not_same(a: str, b: str) -> Check:
    def check(env: Env) -> None:
        sa, sb = os.stat(resolve_in_root(env, a)), os.stat(resolve_in_root(env, b))
        assert (sa.st_dev, sa.st_ino) != (sb.st_dev, sb.st_ino), f"{a!r} and {b!r} are the same"

    return check


def hardlinked(a: str, b: str) -> Check:
    """Both physical names (final component not followed) are the same inode."""

    def check(env: Env) -> None:
        sa, sb = os.lstat(phys(env, a)), os.lstat(phys(env, b))
        assert sa.st_ino == sb.st_ino, f"{a!r} and {b!r} are not hardlinked"

    return check


def chardev(rel: str, major: int, minor: int) -> Check:
    def check(env: Env) -> None:
        st = os.lstat(phys(env, rel))
        assert stat.S_ISCHR(st.st_mode), f"{rel!r} should be a char device"
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (major, minor)

    return check


def fifo(rel: str) -> Check:
    def check(env: Env) -> None:
        assert stat.S_ISFIFO(os.lstat(phys(env, rel)).st_mode), f"{rel!r} should be a fifo"

    return check


def xattr(rel: str, name: str, value: bytes | None) -> Check:
    def check(env: Env) -> None:
        got = dict(_xattrs(str(phys(env, rel)))).get(name)
        assert got == value, f"{rel!r}: xattr {name} = {got!r}, expected {value!r}"

    return check


def mkdir(rel: str, mode: int = 0o755) -> Setup:
    def setup(env: Env) -> None:
        p = env.root.joinpath(*_rel(env, rel))
        p.mkdir(parents=True)
        p.chmod(mode)

    return setup


def mkfile(rel: str, data: bytes, mode: int = 0o644) -> Setup:
    def setup(env: Env) -> None:
        p = env.root.joinpath(*_rel(env, rel))
        p.write_bytes(data)
        p.chmod(mode)

    return setup


def mksym(rel: str, target: str) -> Setup:
    def setup(env: Env) -> None:
        os.symlink(env.sub(target), env.root.joinpath(*_rel(env, rel)))

    return setup


def mklink(old: str, new: str) -> Setup:
    def setup(env: Env) -> None:
        os.link(env.root.joinpath(*_rel(env, old)), env.root.joinpath(*_rel(env, new)))

    return setup


def outside_file(path: str, data: bytes, mode: int) -> Setup:
    """Create an extra sentinel outside root (before the snapshot)."""

    def setup(env: Env) -> None:
        p = Path(env.sub(path))
        p.write_bytes(data)
        p.chmod(mode)

    return setup


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    name: str
    layer: Sequence[Entry] = ()
    raw: Callable[[Env], bytes] | None = None  # raw stream instead of `layer`
    setup: Sequence[Setup] = ()
    check: Sequence[Check] = ()
    error: type[LayerError] | None = None
    # The error message must contain one of these (formatted with Env.fmt); () = label only.
    mentions: tuple[str, ...] = ()
    error_optional: bool = False  # either a clean error or success + `check`
    chunk: int | None = None
    pathlike_root: bool = False

    def __repr__(self) -> str:
        return f"Case({self.name})"


ETC_PASSWD = (mkdir("etc"), mkfile("etc/passwd", b"inside"))
ETC_ALL_USERS = (mkdir("etc"), mkfile("etc/passwd", b"all users"))
UNB = "unbroken-{tok}"
CTR = b"container content"


def _whiteout_error(name: str, entry: str) -> Case:
    return Case(
        f"containerd/{name}",
        setup=ETC_PASSWD,
        layer=[F(entry)],
        error=LayerError,
        mentions=(entry,),
        check=[file("etc/passwd", b"inside")],
    )


CONTAINERD: list[Case] = [
    Case(
        "containerd/SymlinkAbsolute",
        layer=[D("etc"), S("localetc", "/etc"), F(f"/localetc/{UNB}", b"unbroken")],
        check=[file(f"etc/{UNB}", b"unbroken"), symlink("localetc", "/etc")],
    ),
    Case(
        "containerd/SymlinkUpAndOut",
        layer=[
            D("etc"),
            D("dummy"),
            S("localetc", "/dummy/../etc"),
            F(f"/localetc/{UNB}", b"unbroken"),
        ],
        check=[file(f"etc/{UNB}", b"unbroken"), directory("dummy")],
    ),
    Case(
        "containerd/SymlinkMultipleAbsolute",
        layer=[
            D("etc"),
            D("dummy"),
            S("/dummy/etc", "/etc"),
            S("localetc", "/dummy/etc"),
            F(f"/dummy/etc/{UNB}", b"unbroken"),
        ],
        check=[file(f"etc/{UNB}", b"unbroken"), symlink("dummy/etc", "/etc")],
    ),
    Case(
        "containerd/SymlinkMultipleRelative",
        layer=[
            D("etc"),
            D("dummy"),
            S("/dummy/etc", "/etc"),
            S("localetc", "./dummy/etc"),
            F(f"/dummy/etc/{UNB}", b"unbroken"),
        ],
        check=[file(f"etc/{UNB}", b"unbroken"), symlink("localetc", "./dummy/etc")],
    ),
    Case(
        "containerd/SymlinkEmptyFile",
        layer=[
            D("etc"),
            F("etc/emptied-{tok}", b"notempty"),
            S("localetc", "/etc"),
            F("/localetc/emptied-{tok}", b""),
        ],
        check=[file("etc/emptied-{tok}", b""), symlink("localetc", "/etc")],
    ),
    Case(
        "containerd/HardlinkRelative",
        layer=[
            D("etc", 0o770),
            F("/etc/passwd", b"inside"),
            D("breakouts"),
            S("breakouts/d1", "../../etc"),
            H("breakouts/mypasswd", "/breakouts/d1/passwd"),
        ],
        check=[same("/breakouts/mypasswd", "/etc/passwd"), file("breakouts/mypasswd", b"inside")],
    ),
    Case(
        "containerd/HardlinkDownAndOut",
        layer=[
            D("etc", 0o770),
            F("/etc/passwd", b"inside"),
            D("breakouts"),
            D("downandout"),
            S("breakouts/d1", "../downandout/../../etc"),
            H("breakouts/mypasswd", "/breakouts/d1/passwd"),
        ],
        check=[same("/breakouts/mypasswd", "/etc/passwd"), file("breakouts/mypasswd", b"inside")],
    ),
    Case(
        "containerd/HardlinkAbsolute",
        layer=[
            D("etc", 0o770),
            F("/etc/passwd", b"inside"),
            S("localetc", "/etc"),
            H("localpasswd-{tok}", "/localetc/passwd"),
        ],
        check=[
            same("localpasswd-{tok}", "/etc/passwd"),
            hardlinked("localpasswd-{tok}", "etc/passwd"),
        ],
    ),
    Case(
        "containerd/HardlinkRelativeLong",
        layer=[
            D("etc", 0o770),
            F("/etc/passwd", b"inside"),
            S("localetc", "../../../../../../../etc"),
            H("localpasswd-{tok}", "/localetc/passwd"),
        ],
        check=[
            same("localpasswd-{tok}", "/etc/passwd"),
            hardlinked("localpasswd-{tok}", "etc/passwd"),
        ],
    ),
    Case(
        "containerd/HardlinkRelativeUpAndOut",
        layer=[
            D("etc", 0o770),
            F("/etc/passwd", b"inside"),
            S("localetc", "upandout/../../../etc"),
            H("localpasswd-{tok}", "/localetc/passwd"),
        ],
        check=[
            same("localpasswd-{tok}", "/etc/passwd"),
            hardlinked("localpasswd-{tok}", "etc/passwd"),
        ],
    ),
    Case(
        "containerd/HardlinkDirectRelative",
        layer=[
            D("etc", 0o770),
            F("/etc/passwd", b"inside"),
            H("localpasswd-{tok}", "../../../../../etc/passwd"),
        ],
        check=[
            same("localpasswd-{tok}", "/etc/passwd"),
            hardlinked("localpasswd-{tok}", "etc/passwd"),
        ],
    ),
    Case(
        "containerd/HardlinkDirectAbsolute",
        layer=[D("etc", 0o770), F("/etc/passwd", b"inside"), H("localpasswd-{tok}", "/etc/passwd")],
        check=[same("localpasswd-{tok}", "/etc/passwd"), file("localpasswd-{tok}", b"inside")],
    ),
    Case(
        "containerd/SymlinkParentDirectory",
        layer=[
            D("etc", 0o770),
            F("/etc/passwd", b"inside"),
            S("..", "/etc/"),
            H("localpasswd-{tok}", "/etc/passwd"),
        ],
        check=[
            same("/localpasswd-{tok}", "/etc/passwd"),
            children("", {"etc", "localpasswd-{tok}"}),
        ],
    ),
    Case(
        "containerd/SymlinkEmptyFilename",
        layer=[
            D("etc", 0o770),
            F("/etc/passwd", b"inside"),
            S("", "/etc/"),
            H("localpasswd-{tok}", "/etc/passwd"),
        ],
        check=[
            same("/localpasswd-{tok}", "/etc/passwd"),
            children("", {"etc", "localpasswd-{tok}"}),
        ],
    ),
    Case(
        "containerd/SymlinkParentRelative",
        layer=[
            D("etc", 0o770),
            F("/etc/passwd", b"inside"),
            S("localetc/sub/..", "/etc/"),
            H("/localetc/localpasswd-{tok}", "/etc/passwd"),
        ],
        check=[
            same("/localetc/localpasswd-{tok}", "/etc/passwd"),
            symlink("localetc", "/etc/"),
            hardlinked("etc/localpasswd-{tok}", "etc/passwd"),
        ],
    ),
    Case(
        "containerd/SymlinkSlashEnded",
        layer=[
            D("etc", 0o770),
            F("/etc/passwd", b"inside"),
            D("localetc/", 0o770),
            H("/localetc/localpasswd-{tok}", "/etc/passwd"),
        ],
        check=[directory("localetc"), hardlinked("localetc/localpasswd-{tok}", "etc/passwd")],
    ),
    Case(
        "containerd/SymlinkOverrideDirectory",
        setup=(*ETC_PASSWD, mkdir("localetc")),
        layer=[S("localetc", "/etc"), H("/localetc/localpasswd-{tok}", "/etc/passwd")],
        check=[symlink("localetc", "/etc"), hardlinked("etc/localpasswd-{tok}", "etc/passwd")],
    ),
    Case(
        "containerd/SymlinkOverrideDirectoryRelative",
        setup=(*ETC_PASSWD, mkdir("localetc")),
        layer=[S("localetc", "../../etc"), H("/localetc/localpasswd-{tok}", "/etc/passwd")],
        check=[symlink("localetc", "../../etc"), hardlinked("etc/localpasswd-{tok}", "etc/passwd")],
    ),
    Case(
        "containerd/DirectoryOverrideSymlink",
        setup=(*ETC_PASSWD, mksym("localetc", "/etc")),
        layer=[D("/localetc/"), H("/localetc/localpasswd-{tok}", "/etc/passwd")],
        check=[
            directory("localetc"),
            hardlinked("localetc/localpasswd-{tok}", "etc/passwd"),
            absent("etc/localpasswd-{tok}"),
        ],
    ),
    Case(
        "containerd/DirectoryOverrideSymlinkAndHardlink",
        setup=(
            *ETC_PASSWD,
            mksym("localetc", "etc"),
            mklink("etc/passwd", "etc/localpasswd-{tok}"),
        ),
        layer=[D("/localetc/"), F("/localetc/localpasswd-{tok}", b"different")],
        check=[
            directory("localetc"),
            file("localetc/localpasswd-{tok}", b"different"),
            not_same("/localetc/localpasswd-{tok}", "/etc/passwd"),
            file("etc/passwd", b"inside"),
            hardlinked("etc/localpasswd-{tok}", "etc/passwd"),
        ],
    ),
    _whiteout_error("WhiteoutRootParent", ".wh..."),
    _whiteout_error("WhiteoutParent", "etc/.wh..."),
    _whiteout_error("WhiteoutRoot", ".wh.."),
    _whiteout_error("WhiteoutCurrentDirectory", "etc/.wh.."),
    Case(
        "containerd/WhiteoutSymlink",
        setup=(*ETC_ALL_USERS, mksym("localetc", "/etc")),
        layer=[F(".wh.localetc")],
        check=[file("etc/passwd", b"all users"), absent("localetc")],
    ),
    Case(
        "containerd/WhiteoutSymlinkPath",
        setup=(
            *ETC_ALL_USERS,
            mkfile("etc/whitedout", b"ahhhh whiteout"),
            mksym("localetc", "/etc"),
        ),
        layer=[F("localetc/.wh.whitedout")],
        check=[
            file("etc/passwd", b"all users"),
            absent("etc/whitedout"),
            symlink("localetc", "/etc"),
        ],
    ),
    Case(
        "containerd/WhiteoutDirectoryName",
        setup=(
            *ETC_ALL_USERS,
            mkfile("etc/whitedout", b"ahhhh whiteout"),
            mksym("localetc", "/etc"),
        ),
        layer=[F(".wh.etc/somefile", b"non-empty")],
        check=[
            file("etc/passwd", b"all users"),
            file(".wh.etc/somefile", b"non-empty"),
            file("etc/whitedout", b"ahhhh whiteout"),
        ],
    ),
    Case(
        "containerd/WhiteoutDeadSymlinkParent",
        setup=(*ETC_ALL_USERS, mksym("localetc", "/dne")),
        layer=[F("localetc/.wh.etc")],
        check=[file("etc/passwd", b"all users"), symlink("localetc", "/dne")],
    ),
    Case(
        "containerd/WhiteoutRelativePath",
        setup=(*ETC_ALL_USERS, mksym("localetc", "/dne")),
        layer=[F("dne/../.wh.etc")],
        check=[absent("etc"), symlink("localetc", "/dne")],
    ),
    Case(
        "containerd/SymlinkOverridePath",
        layer=[
            D("foo"),
            D("foo/tmp"),
            F("foo/tmp/breakout-{tok}", b"\x00\x01\x02"),
            S("foo", "/"),
            F("foo/tmp/breakout-{tok}", b"\x03\x04\x05"),
            D("foo"),
            D("foo/tmp"),
            F("foo/tmp/breakout-{tok}", b"\x06\x07\x08"),
        ],
        check=[
            file("foo/tmp/breakout-{tok}", b"\x06\x07\x08"),
            file("tmp/breakout-{tok}", b"\x03\x04\x05"),
        ],
    ),
    Case(
        "containerd/HardlinkSymlinkBeforeCreateTarget",
        layer=[
            D("etc", 0o770),
            S("localpasswd-{tok}", "/etc/passwd"),
            H("localpasswd-{tok}-dup", "localpasswd-{tok}"),
            F("/etc/passwd", b"after"),
        ],
        check=[
            same("localpasswd-{tok}-dup", "/etc/passwd"),
            symlink("localpasswd-{tok}-dup", "/etc/passwd"),
            hardlinked("localpasswd-{tok}-dup", "localpasswd-{tok}"),
            file("etc/passwd", b"after"),
        ],
    ),
    Case(
        "containerd/HardlinkSymlinkRelative",
        layer=[
            D("etc", 0o770),
            F("/etc/passwd", b"inside"),
            S("passwdlink", "../../../../../etc/passwd"),
            H("localpasswd-{tok}", "/passwdlink"),
        ],
        check=[
            symlink("localpasswd-{tok}", "../../../../../etc/passwd"),
            hardlinked("localpasswd-{tok}", "passwdlink"),
            same("/localpasswd-{tok}", "/etc/passwd"),
        ],
    ),
    Case(
        "containerd/HardlinkSymlinkAbsolute",
        layer=[
            D("etc", 0o770),
            F("/etc/passwd", b"inside"),
            S("passwdlink", "/etc/passwd"),
            H("localpasswd-{tok}", "/passwdlink"),
        ],
        check=[
            symlink("localpasswd-{tok}", "/etc/passwd"),
            hardlinked("localpasswd-{tok}", "passwdlink"),
            same("/localpasswd-{tok}", "/etc/passwd"),
        ],
    ),
    Case(
        # td/perm400 (0400) and td/also-exists-outside-root are outside the root; the
        # symlink entry's absolute name lands inside the root, the hardlink must link that
        # in-root symlink itself, and no chmod may follow it to perm400.
        "containerd/HardlinkSymlinkChmod",
        setup=(
            outside_file("{tmp}/perm400", b"...", 0o400),
            outside_file("{tmp}/also-exists-outside-root", b"...", 0o640),
        ),
        layer=[
            S("{tmp}/also-exists-outside-root", "{tmp}/perm400"),
            H("sketchylink", "{tmp}/also-exists-outside-root"),
        ],
        check=[
            symlink("sketchylink", "{tmp}/perm400"),
            hardlinked("sketchylink", "{tmp}/also-exists-outside-root"),
        ],
    ),
]


def _storage(
    name: str, entries: list[Entry], check: Sequence[Check] = (), error_entry: str = ""
) -> Case:
    return Case(
        f"storage/{name}",
        layer=entries,
        check=check,
        error=LayerError if error_entry else None,
        mentions=(error_entry,) if error_entry else (),
    )


STORAGE: list[Case] = [
    # TestUntarInvalidFilenames
    _storage(
        "InvalidFilenames-dotdot",
        [F("../victim/dotdot")],
        [file("victim/dotdot", b"", 0o644), children("", {"victim"})],
    ),
    _storage(
        "InvalidFilenames-slash-dotdot",
        [F("/../victim/slash-dotdot")],
        [file("victim/slash-dotdot", b"", 0o644), children("", {"victim"})],
    ),
    # TestUntarHardlinkToSymlink: a hardlink to a symlink links the symlink itself
    _storage(
        "HardlinkToSymlink",
        [S("symlink1", "regfile"), H("symlink2", "symlink1"), F("regfile")],
        [symlink("symlink2", "regfile"), hardlinked("symlink2", "symlink1"), file("regfile", b"")],
    ),
    # TestUntarInvalidHardlink: the targets resolve inside the (empty) root -> missing
    _storage("InvalidHardlink-dotdot", [H("dotdot", "../victim/hello")], error_entry="dotdot"),
    _storage(
        "InvalidHardlink-slash-dotdot",
        [H("slash-dotdot", "/../victim/hello")],
        error_entry="slash-dotdot",
    ),
    _storage(
        "InvalidHardlink-write-victim",
        [H("loophole-victim", "../victim", 0o755), F("loophole-victim/file")],
        error_entry="loophole-victim",
    ),
    _storage(
        "InvalidHardlink-hardlink-symlink",
        [H("loophole-victim", "../victim", 0o755), S("symlink", "loophole-victim/hello")],
        error_entry="loophole-victim",
    ),
    _storage(
        "InvalidHardlink-hardlink-hardlink",
        [H("loophole-victim", "../victim", 0o755), H("hardlink", "loophole-victim/hello")],
        error_entry="loophole-victim",
    ),
    _storage(
        "InvalidHardlink-remove-victim",
        [H("loophole-victim", "../victim", 0o755), F("loophole-victim")],
        error_entry="loophole-victim",
    ),
    # TestUntarInvalidSymlink: symlinks are stored verbatim, used only inside the root
    _storage(
        "InvalidSymlink-dotdot",
        [S("dotdot", "../victim/hello")],
        [symlink("dotdot", "../victim/hello")],
    ),
    _storage(
        "InvalidSymlink-slash-dotdot",
        [S("slash-dotdot", "/../victim/hello")],
        [symlink("slash-dotdot", "/../victim/hello")],
    ),
    _storage(
        "InvalidSymlink-write-victim",
        [S("loophole-victim", "../victim"), F("loophole-victim/file")],
        [symlink("loophole-victim", "../victim"), file("victim/file", b"")],
    ),
    _storage(
        "InvalidSymlink-symlink-symlink",
        [S("loophole-victim", "../victim"), S("symlink", "loophole-victim/hello")],
        [symlink("loophole-victim", "../victim"), symlink("symlink", "loophole-victim/hello")],
    ),
    _storage(
        "InvalidSymlink-symlink-hardlink",
        [S("loophole-victim", "../victim"), H("hardlink", "loophole-victim/hello")],
        [symlink("loophole-victim", "../victim"), absent("hardlink")],
        error_entry="hardlink",
    ),
    _storage(
        "InvalidSymlink-remove-victim",
        [S("loophole-victim", "../victim"), F("loophole-victim")],
        [file("loophole-victim", b"")],
    ),
    _storage(
        "InvalidSymlink-nested-newdir",
        [S("dir/loophole", "../../victim"), F("dir/loophole/newdir/newfile")],
        [symlink("dir/loophole", "../../victim"), file("victim/newdir/newfile", b"")],
    ),
]


def _umoci_sanitise(name: str, prefix: str) -> Case:
    return Case(
        f"umoci/SanitiseScoping-{name}", layer=[F(prefix + "/file", CTR)], check=[file("file", CTR)]
    )


def _umoci_symlink(name: str, prefix: str) -> Case:
    # umoci's host file is tmp/file; for prefixes that a naive extractor would follow to
    # the host's "/", the name carries the token so such a breakout only makes a canary.
    fname = "file-{tok}" if prefix.startswith("/") else "file"
    return Case(
        f"umoci/SymlinkScoping-{name}",
        setup=(mksym("link", prefix),),
        layer=[F(f"link/{fname}", CTR)],
        check=[file(fname, CTR), symlink("link", prefix), children("", {"link", fname})],
    )


UMOCI: list[Case] = [
    _umoci_sanitise("GarbagePrefix", "/.."),
    _umoci_sanitise("DotDotPrefix", ".."),
    _umoci_symlink("RootPrefix", "/"),
    _umoci_symlink("GarbagePrefix1", "/../"),
    _umoci_symlink("GarbagePrefix2", "/../../../../../../../../../../../../../../../"),
    _umoci_symlink("GarbagePrefix3", "/./.././.././.././.././.././.././.././.././../"),
    _umoci_symlink("DotDotPrefix", ".."),
]


# ---- raw streams


def _one_file(name: str, data: bytes) -> bytes:
    """A tar with one file: header at 0, data at 512 (asserted)."""
    raw = build_tar([F(name, data)])
    assert raw[:100].rstrip(b"\0") == name.encode() and raw[512 : 512 + len(data)] == data
    return raw


def _truncated_mid_data(env: Env) -> bytes:
    return _one_file("big", b"x" * 3000)[: 512 + 1000]


def _truncated_mid_header(env: Env) -> bytes:
    raw = build_tar([F("first.txt", b"1" * 10), F("second.txt", b"2" * 10)])
    assert raw[1024:1034] == b"second.txt"
    return raw[: 1024 + 300]


def _corrupt_checksum(env: Env) -> bytes:
    raw = bytearray(build_tar([F("first.txt", b"1" * 10), F("second.txt", b"2" * 10)]))
    assert raw[1024:1034] == b"second.txt"
    raw[1024 + 148 : 1024 + 156] = b"0000001\0"
    return bytes(raw)


def _zero_block_then_header(env: Env) -> bytes:
    # One zero block, then another header: Go's archive/tar (containerd) reports ErrHeader;
    # Python's tarfile would silently stop and hide "hidden.txt".
    first = build_tar([F("first.txt", b"1" * 10)])[:1024]
    hidden = build_tar([F("hidden.txt", b"h" * 10)])
    return first + b"\0" * 512 + hidden


def _no_padding_no_end(env: Env) -> bytes:
    return _one_file("a", b"12345")[: 512 + 5]


def _partial_padding(env: Env) -> bytes:
    return _one_file("a", b"12345")[: 512 + 100]


def _no_end_blocks(env: Env) -> bytes:
    return _one_file("a", b"12345")[:1024]


def _one_end_block(env: Env) -> bytes:
    return _one_file("a", b"12345")[:1536]


def _chain(n: int, end: str) -> list[Entry]:
    return [S(f"l{i}", f"l{i + 1}") for i in range(n - 1)] + [
        S(f"l{n - 1}", end),
        F("l0/f", b"chain"),
    ]


BIG = bytes(range(256)) * 9  # 2304 bytes


EXTRA: list[Case] = [
    Case(
        "extra/AbsoluteMemberName",
        layer=[F("/etc/abs-{tok}", b"abs"), F("//etc/./abs2-{tok}", b"abs2")],
        check=[
            file("etc/abs-{tok}", b"abs"),
            file("etc/abs2-{tok}", b"abs2"),
            children("", {"etc"}),
        ],
    ),
    Case(
        "extra/DotDotMemberName",
        layer=[F("../../x", b"x"), F("a/../../b/../../y", b"y"), D("../../../d")],
        check=[file("x", b"x"), file("y", b"y"), directory("d"), children("", {"x", "y", "d"})],
    ),
    Case(
        "extra/WhiteoutEmptyName",
        setup=ETC_PASSWD,
        layer=[F("etc/.wh.")],
        error=LayerError,
        mentions=("etc/.wh.",),
        check=[file("etc/passwd", b"inside")],
    ),
    Case(
        # lnk -> ../outside resolves to root/outside: the in-root copy goes, the host one stays.
        "extra/WhiteoutThroughSymlinkedParentOutside",
        setup=(
            mkdir("outside"),
            mkfile("outside/secret", b"in-root copy"),
            mkfile("outside/keep", b"k"),
        ),
        layer=[
            S("lnk", "../outside"),
            F("lnk/.wh.secret"),
            S("alnk", "{outside}"),
            F("alnk/.wh.secret"),
        ],
        check=[absent("outside/secret"), file("outside/keep", b"k"), symlink("lnk", "../outside")],
    ),
    Case(
        "extra/OpaqueThroughSymlinkedParentOutside",
        setup=(mkdir("outside"), mkfile("outside/secret", b"in-root copy"), mkdir("outside/sub")),
        layer=[S("lnk", "../outside"), F("lnk/new", b"new"), F("lnk/.wh..wh..opq")],
        check=[children("outside", {"new"}), file("outside/new", b"new")],
    ),
    Case(
        "extra/WhiteoutMissingTarget",
        setup=ETC_PASSWD,
        layer=[F(".wh.nothing"), F("etc/.wh.nothing"), F("nodir/.wh.nothing"), F("after", b"a")],
        check=[file("etc/passwd", b"inside"), file("after", b"a"), absent(".wh.nothing")],
    ),
    Case(
        # A hardlink to /etc/passwd with no etc/passwd in the root must not reach the host's.
        "extra/HardlinkEtcPasswdMissingInRoot",
        layer=[H("pwlink", "/etc/passwd")],
        error=LayerError,
        mentions=("pwlink",),
        check=[absent("pwlink")],
    ),
    Case(
        "extra/HardlinkHostAbsolutePath",
        layer=[H("pwnlink", "{secret}")],
        error=LayerError,
        mentions=("pwnlink",),
        check=[absent("pwnlink")],
    ),
    Case(
        # ../victim/hello resolves to root/victim/hello, never tmp/victim/hello.
        "extra/HardlinkDotDotTargetScoped",
        setup=(mkdir("victim"), mkfile("victim/hello", b"in-root hello")),
        layer=[H("dotdot", "../victim/hello"), H("deep", "../../../../victim/../victim/hello")],
        check=[
            hardlinked("dotdot", "victim/hello"),
            hardlinked("deep", "victim/hello"),
            file("dotdot", b"in-root hello"),
        ],
    ),
    Case(
        "extra/HardlinkToDirectory",
        setup=(mkdir("victim"),),
        layer=[H("dirlink", "victim")],
        error=LayerError,
        mentions=("dirlink",),
    ),
    Case(
        "extra/HardlinkTargetDotDotBase",
        layer=[D("sub"), H("dotdotlink", "sub/../..")],
        error=LayerError,
        mentions=("dotdotlink",),
    ),
    Case(
        "extra/SymlinkedDirReplacedThenWrittenThrough",
        setup=(mkdir("d"), mkfile("d/keep", b"keep"), mkdir("e")),
        layer=[
            S("d", "../outside"),
            F("d/secret", b"pwned"),
            S("e", "{outside}"),
            F("e/secret", b"pwned2", mode=0o4755),
        ],
        check=[
            symlink("d", "../outside"),
            file("outside/secret", b"pwned"),
            symlink("e", "{outside}"),
            file("{outside}/secret", b"pwned2", 0o4755),
        ],
    ),
    Case(
        "extra/DeviceThroughSymlink",
        layer=[S("dev", "{outside}"), C("dev/null", 1, 3), C("dev/secret", 1, 3), P("dev/fifo")],
        check=[
            symlink("dev", "{outside}"),
            chardev("{outside}/null", 1, 3),
            chardev("{outside}/secret", 1, 3),
            fifo("{outside}/fifo"),
        ],
    ),
    Case(
        # xattrs on a symlink entry and on a hardlink to it must never reach the symlink's
        # target (containerd: lsetxattr; user.* on a symlink -> EPERM -> ignored); an entry
        # created through a symlinked parent gets its xattr in the root.
        "extra/XattrsThroughSymlink",
        layer=[
            S("lnk", "{secret}", user__pwned="1"),
            H("hl", "lnk", user__pwned="2"),
            S("dlnk", "{outside}"),
            F("dlnk/secret", b"inner", user__inner="yes"),
        ],
        check=[
            symlink("lnk", "{secret}"),
            hardlinked("hl", "lnk"),
            file("{outside}/secret", b"inner"),
            xattr("{outside}/secret", "user.inner", b"yes"),
        ],
    ),
    Case(
        # ".", "", "..", "./" and "/" all resolve to the root itself: containerd ignores them.
        "extra/DotAndEmptyNames",
        layer=[
            F(".", b"dot"),
            F("", b"empty"),
            D("./"),
            F("..", b"dotdot"),
            D("/"),
            F("after", b"after"),
        ],
        check=[children("", {"after"}), file("after", b"after")],
    ),
    Case(
        "extra/SymlinkLoop",
        layer=[S("a", "b"), S("b", "a"), F("a/x", b"x")],
        error=LayerError,
        mentions=("a/x",),
        check=[symlink("a", "b"), symlink("b", "a")],
    ),
    Case(
        "extra/SymlinkSelfLoopHardlink",
        layer=[S("self", "self"), H("selfloop-link", "self/x")],
        error=LayerError,
        mentions=("selfloop-link",),
    ),
    Case(
        # 45 links: containerd (limit 255) writes root/outside/f; a kernel-resolved
        # RESOLVE_IN_ROOT (limit 40) gives ELOOP. Either is fine, if the error is clean.
        "extra/SymlinkChain45",
        layer=_chain(45, "../outside"),
        error=LayerError,
        error_optional=True,
        mentions=("l0/f",),
        check=[file("outside/f", b"chain")],
    ),
    Case(
        "extra/SymlinkChain300",
        layer=_chain(300, "../outside"),
        error=LayerError,
        mentions=("l0/f",),
        check=[absent("outside")],
    ),
    Case(
        "extra/ParentIsRegularFile",
        layer=[F("f", b"f"), F("f/x", b"x")],
        error=LayerError,
        mentions=("f/x",),
        check=[file("f", b"f")],
    ),
    Case(
        "extra/GrandparentIsRegularFile",
        layer=[F("g", b"g"), D("g/a/"), F("g/a/b", b"b")],
        error=LayerError,
        mentions=("g/a",),
        check=[file("g", b"g")],
    ),
    Case(
        "extra/TruncatedMidData",
        raw=_truncated_mid_data,
        error=TruncatedLayer,
        mentions=("big",),
    ),
    Case(
        "extra/TruncatedMidHeader",
        raw=_truncated_mid_header,
        error=TruncatedLayer,
        mentions=(),
    ),
    Case(
        "extra/CorruptHeaderChecksum",
        raw=_corrupt_checksum,
        error=MalformedLayer,
        mentions=("second.txt", "first.txt"),
        check=[absent("second.txt")],
    ),
    Case(
        "extra/ZeroBlockThenHeader",
        raw=_zero_block_then_header,
        error=MalformedLayer,
        check=[absent("hidden.txt")],
    ),
    Case(
        "extra/NoPaddingNoEndBlocks",
        raw=_no_padding_no_end,
        check=[file("a", b"12345"), children("", {"a"})],
    ),
    Case(
        "extra/EndsInPadding",
        raw=_partial_padding,
        check=[file("a", b"12345"), children("", {"a"})],
    ),
    Case("extra/NoEndBlocks", raw=_no_end_blocks, check=[file("a", b"12345"), children("", {"a"})]),
    Case("extra/OneEndBlock", raw=_one_end_block, check=[file("a", b"12345"), children("", {"a"})]),
    Case("extra/EmptyStream", raw=lambda env: b"", check=[children("", set())]),
    Case(
        "extra/ShortReadsPathLikeRoot",
        layer=[
            D("d"),
            F("d/big", BIG, 0o600),
            S("d/l", "big"),
            H("d/h", "d/big", 0o600),
            F("d/small", b"s"),
        ],
        chunk=7,
        pathlike_root=True,
        check=[
            file("d/big", BIG, 0o600),
            symlink("d/l", "big"),
            hardlinked("d/h", "d/big"),
            file("d/small", b"s"),
        ],
    ),
]

CASES: list[Case] = CONTAINERD + STORAGE + UMOCI + EXTRA


def test_case_names_unique() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_layer_breakout(case: Case, tmp_path: Path) -> None:
    apply_layer = _apply_layer()
    env = make_env(tmp_path)
    for setup in case.setup:
        setup(env)
    data = case.raw(env) if case.raw else build_tar(case.layer, env)
    before = snapshot(env)
    host_before = host_state()
    secrets = env.leak_contents

    err: LayerError | None = None
    unexpected: BaseException | None = None
    root_arg: str | os.PathLike[str] = env.root if case.pathlike_root else str(env.root)
    try:
        apply_layer(Stream(data, case.chunk), root_arg, layer=LABEL)
    except LayerError as e:
        err = e
    except Exception as e:
        unexpected = e

    # 1. Nothing outside the root changed, whatever happened.
    canaries = [p for p in env.canaries if os.path.lexists(p)]
    for p in canaries:
        p.unlink()
    problems = snapshot_diff(before, snapshot(env))
    problems += [f"created on the host: {p}" for p in canaries]
    host_after = host_state()
    problems += [
        f"host {k} changed: {host_before[k]!r:.300} -> {host_after[k]!r:.300}"
        for k in host_before
        if host_after[k] != host_before[k]
    ]
    problems += [f"outside content leaked into root: {p}" for p in leaked_files(env, secrets)]
    if problems:
        pytest.fail("BREAKOUT:\n" + "\n".join(problems), pytrace=False)

    # 2. Only LayerError may escape apply_layer.
    if unexpected is not None:
        raise AssertionError(
            f"apply_layer raised {type(unexpected).__name__} instead of a LayerError: {unexpected}"
        ) from unexpected

    # 3. The expected outcome.
    if err is not None:
        msg = str(err)
        if case.error is None:
            pytest.fail(f"expected success, got {type(err).__name__}: {msg}", pytrace=False)
        if not isinstance(err, case.error):
            pytest.fail(
                f"expected {case.error.__name__}, got {type(err).__name__}: {msg}", pytrace=False
            )
        if "\n" in msg:
            pytest.fail(f"message is not one line: {msg!r}", pytrace=False)
        if LABEL not in msg:
            pytest.fail(f"message does not name the layer {LABEL!r}: {msg!r}", pytrace=False)
        wanted = [env.sub(m) for m in case.mentions]
        if wanted and not any(w in msg for w in wanted):
            pytest.fail(f"message names none of {wanted}: {msg!r}", pytrace=False)
    elif case.error is not None and not case.error_optional:
        pytest.fail(f"expected {case.error.__name__}, got success", pytrace=False)

    assert stat.S_ISDIR(os.lstat(env.root).st_mode), "root is no longer a directory"
    if err is None or not case.error_optional:
        for check in case.check:
            check(env)
