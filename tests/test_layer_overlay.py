"""``apply_layer(..., whiteouts="overlay")``: layers as overlayfs upper directories.

The main property: each layer applied into its own empty directory (over the ones below
as ``lowers``), then mounted read-only as an overlay (``lowerdir=Ln:...:L1``), shows
exactly the tree the flat apply (``whiteouts="remove"``) of the same layers builds, entry
by entry, mtimes included (directory mtimes are never compared, see ``harness.tree``).
Nothing needs ignoring: the kernel hides its own ``trusted.overlay.*`` xattrs and the
whiteout devices from the mounted view. What overlayfs cannot reproduce is pinned by
tests at the end (``test_limit_*``).

Then unit cases for what the upper holds (whiteout devices, the opaque xattr), and the
breakout suite run in overlay mode with each case's prepared root as the lower layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import stat
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import pytest
from harness import images
from harness.images import Entry, chardev, directory, file, hardlink, opaque, symlink, whiteout
from harness.tree import assert_same_tree, read_xattrs
from harness.tree import snapshot as tree_snapshot

from unlade.errors import LayerError
from unlade.layer import OPAQUE_XATTR, apply_layer

pytestmark = pytest.mark.root

T = images.DEFAULT_MTIME


def _apply(root: Path, entries: Sequence[Entry], **kw: object) -> None:
    apply_layer(io.BytesIO(images.layer_tar(entries)), root, **kw)  # type: ignore[arg-type]


def flat_apply(layers: Sequence[Sequence[Entry]], root: Path) -> Path:
    """The reference: every layer applied in turn to one directory."""
    root.mkdir()
    for entries in layers:
        _apply(root, entries)
    return root


def overlay_apply(layers: Sequence[Sequence[Entry]], base: Path) -> list[Path]:
    """Each layer into its own empty directory over the ones below; returns them oldest
    first."""
    dirs: list[Path] = []
    for i, entries in enumerate(layers):
        upper = base / f"L{i + 1}"
        upper.mkdir(parents=True)
        _apply(upper, entries, whiteouts="overlay", lowers=dirs[::-1])
        dirs.append(upper)
    return dirs


@contextlib.contextmanager
def mounted(dirs: Sequence[Path], mnt: Path) -> Iterator[Path]:
    """``dirs`` (oldest first) mounted read-only as one overlay at ``mnt``."""
    lowers = [str(d) for d in reversed(dirs)]
    if len(lowers) == 1:  # overlayfs wants two lower directories at least
        empty = mnt.parent / f"{mnt.name}-empty"
        empty.mkdir()
        lowers.append(str(empty))
    mnt.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={':'.join(lowers)}",
                    str(mnt)], check=True, capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def assert_overlay_is_flat(layers: Sequence[Sequence[Entry]], tmp: Path) -> list[Path]:
    flat = flat_apply(layers, tmp / "flat")
    dirs = overlay_apply(layers, tmp / "layers")
    with mounted(dirs, tmp / "mnt") as mnt:
        assert_same_tree(flat, mnt)
    return dirs


# ----------------------------------------------------------------------------- the stack


def test_tricky_layers_mounted_equal_the_flat_apply(tmp_path: Path) -> None:
    dirs = assert_overlay_is_flat(images.tricky_layers(), tmp_path)
    layer2 = dirs[1]
    # what the kernel read: whiteouts and an opaque directory, nothing deleted
    for name in ("whiteme/gone.txt", "whiteme/subdir"):
        st = os.lstat(layer2 / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(layer2 / "opaque", OPAQUE_XATTR) == b"y"
    assert sorted(os.listdir(layer2 / "opaque")) == ["new"]
    # the link to a layer-1 file went to a copy of it in layer 2 (a copy-up)
    assert os.path.samefile(layer2 / "etc/passwd", layer2 / "etc/passwd-link")


def test_lower_layers_are_not_modified(tmp_path: Path) -> None:
    layers = images.tricky_layers()
    dirs = overlay_apply(layers[:1], tmp_path / "a")
    before = tree_snapshot(dirs[0])
    upper = tmp_path / "upper"
    upper.mkdir()
    for entries in layers[1:]:
        _apply(upper, entries, whiteouts="overlay", lowers=[dirs[0]])
    assert tree_snapshot(dirs[0]) == before


#: Layer stacks for the corners of the merged view: name -> layers, oldest first.
STACKS: dict[str, list[list[Entry]]] = {
    "whiteout-then-recreate-file": [
        [directory("d"), file("d/f", "old\n")],
        [directory("d"), whiteout("d/f"), file("d/f", "new\n", mtime=T + 5)],
    ],
    "whiteout-then-recreate-dir-is-empty": [
        [directory("d"), directory("d/sub"), file("d/sub/old", "old\n")],
        [whiteout("d/sub"), directory("d/sub", mode=0o750), file("d/sub/new", "new\n")],
    ],
    "whiteout-then-missing-parent-is-new": [
        [directory("d"), file("d/old", "old\n")],
        [whiteout("d"), file("d/new", "new\n")],
    ],
    "whiteout-of-nothing": [
        [directory("d")],
        [whiteout("d/never")],
    ],
    "dir-over-a-whiteout-below": [
        [directory("d"), file("d/old", "old\n")],
        [whiteout("d")],
        [directory("d"), file("d/new", "new\n")],
    ],
    "file-over-dir-then-dir-again": [
        [directory("d"), file("d/old", "old\n")],
        [file("d", "a file\n")],
        [directory("d", mode=0o711)],
    ],
    "same-layer-file-then-dir-over-lower-dir": [
        [directory("d"), file("d/old", "old\n")],
        [file("d", "a file\n"), directory("d"), file("d/new", "new\n")],
    ],
    "lower-dir-replaced-by-file-and-symlink": [
        [directory("a"), file("a/x", "x\n"), directory("b"), file("b/y", "y\n")],
        [file("a", "now a file\n"), symlink("b", "a")],
    ],
    "lower-symlink-to-dir-replaced-by-dir": [
        [directory("real"), file("real/x", "x\n"), symlink("link", "real")],
        [directory("link"), file("link/y", "y\n")],
    ],
    "write-through-a-lower-symlink": [
        [directory("usr"), directory("usr/lib", mode=0o750, uid=7, gid=8,
                                     xattrs={"user.k": "v"}),
         symlink("lib", "usr/lib")],
        [file("lib/libx.so", "x\n")],
    ],
    "write-through-lower-symlink-chain-absolute": [
        [directory("a"), directory("a/b"), symlink("c", "/a"), symlink("a/d", "../c/b")],
        [file("a/d/f", "f\n"), file("c/g", "g\n")],
    ],
    "missing-parent-copies-lower-dir-attributes": [
        [directory("srv", mode=0o2750, uid=12, gid=34, xattrs={"user.a": "1"}),
         directory("srv/www", mode=0o700, uid=5, gid=6)],
        [file("srv/www/index.html", "hi\n")],
    ],
    "dir-entry-keeps-lower-xattrs": [
        [directory("d", xattrs={"user.lower": "kept"})],
        [directory("d", mode=0o711, xattrs={"user.upper": "added"})],
    ],
    "opaque-dir": [
        [directory("d"), file("d/a", "a\n"), directory("d/s"), file("d/s/b", "b\n")],
        [directory("d"), opaque("d"), file("d/c", "c\n"), directory("d/s"),
         file("d/s/e", "e\n")],
    ],
    "opaque-marker-first": [
        [directory("d"), file("d/a", "a\n")],
        [opaque("d"), directory("d"), directory("d/a"), file("d/a/z", "z\n")],
    ],
    "opaque-of-a-lower-only-dir": [
        [directory("d", mode=0o751, xattrs={"user.x": "1"}), file("d/a", "a\n")],
        [opaque("d")],
    ],
    "opaque-sweeps-what-this-layer-made-without-entry": [
        [directory("d"), directory("d/s"), file("d/s/old", "old\n")],
        [file("d/s/new", "new\n"), directory("d"), opaque("d"), file("d/t", "t\n")],
    ],
    "opaque-of-a-missing-dir": [
        [directory("x")],
        [opaque("d/e")],
    ],
    "opaque-through-a-lower-symlink": [
        [directory("real"), file("real/a", "a\n"), symlink("link", "real")],
        [opaque("link"), file("link/b", "b\n")],
    ],
    "opaque-root": [
        [directory("a"), file("a/x", "x\n"), file("top", "top\n"), directory("keep"),
         file("keep/old", "old\n")],
        [directory("keep"), file("keep/new", "new\n"), file(".wh..wh..opq"),
         file("later", "later\n")],
    ],
    "opaque-root-then-recreate": [
        [directory("a"), file("a/x", "x\n")],
        [file(".wh..wh..opq"), directory("a"), file("a/y", "y\n")],
    ],
    "hardlink-to-lower-file": [
        [directory("etc"), file("etc/passwd", "root\n", mode=0o600, uid=3, gid=4,
                                mtime=T + 9, xattrs={"user.p": "q"})],
        [hardlink("etc/passwd2", "etc/passwd", mode=0o600, uid=3, gid=4, mtime=T + 9)],
    ],
    "hardlink-to-lower-file-with-new-metadata": [
        [directory("etc"), file("etc/shadow", "s\n", mode=0o600, mtime=T + 1)],
        [directory("bin"), hardlink("bin/sh", "etc/shadow", mode=0o755, uid=1, gid=2,
                                    mtime=T + 2)],
    ],
    "hardlink-to-lower-symlink": [
        [symlink("s", "target-nowhere", mtime=T + 3)],
        [hardlink("t", "s")],
    ],
    "hardlink-to-lower-device-and-fifo": [
        [directory("dev"), chardev("dev/null", 1, 3), images.fifo("dev/p", mode=0o600)],
        [hardlink("dev/null2", "dev/null", mode=0o666), hardlink("dev/p2", "dev/p", mode=0o600)],
    ],
    "hardlink-through-lower-symlinked-dir": [
        [directory("real"), file("real/f", "f\n", mtime=T + 4), symlink("link", "real")],
        [hardlink("g", "link/f")],
    ],
    "hardlink-to-file-two-layers-down": [
        [directory("a"), file("a/f", "f\n")],
        [directory("b"), file("b/g", "g\n")],
        [hardlink("a/h", "a/f"), hardlink("b/h", "b/g")],
    ],
    "replace-copied-up-link-target": [
        [file("f", "old\n")],
        [hardlink("g", "f"), file("f", "new\n")],
    ],
    "device-and-fifo-over-lower-dir": [
        [directory("d"), file("d/x", "x\n"), directory("p")],
        [chardev("d", 1, 5), images.fifo("p")],
    ],
}


@pytest.mark.parametrize("name", list(STACKS))
def test_stack_mounted_equals_the_flat_apply(name: str, tmp_path: Path) -> None:
    assert_overlay_is_flat(STACKS[name], tmp_path)


def test_many_layers(tmp_path: Path) -> None:
    layers = [[directory("d"), file(f"d/f{i}", f"{i}\n", mtime=T + i),
               *([whiteout(f"d/f{i - 3}")] if i >= 3 else []),
               *([opaque("d")] if i == 20 else [])] for i in range(30)]
    assert_overlay_is_flat(layers, tmp_path)


# ----------------------------------------------------------------------------- the upper


def _xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def test_whiteout_is_a_root_owned_0_0_char_device(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    _apply(upper, [directory("shared", mode=0o2775, gid=50),
                   whiteout("shared/gone", uid=1000, gid=1000, mode=0o644),
                   whiteout("top")], whiteouts="overlay")
    for path in (upper / "shared/gone", upper / "top"):
        st = os.lstat(path)
        assert stat.S_ISCHR(st.st_mode)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (0, 0)
        assert stat.S_IMODE(st.st_mode) == 0
        assert (st.st_uid, st.st_gid) == (0, 0)  # not the setgid parent's group 50
    assert not (upper / "shared/.wh.gone").exists()


@pytest.mark.parametrize("earlier", [
    [file("d/x", "same layer\n")],
    [directory("d/x"), file("d/x/deep", "deep\n")],
    [symlink("d/x", "/etc")],
    [images.fifo("d/x")],
])
def test_whiteout_replaces_what_this_layer_made(earlier: list[Entry], tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    _apply(upper, [directory("d"), *earlier, whiteout("d/x")], whiteouts="overlay")
    st = os.lstat(upper / "d/x")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.listdir(upper / "d") == ["x"]


def test_opaque_marker_sets_the_xattr_and_deletes_nothing(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    _apply(upper, [directory("d"), file("d/a", "a\n"), directory("d/s"), file("d/s/b", "b\n"),
                   opaque("d"), file("d/c", "c\n")], whiteouts="overlay")
    assert _xattr(upper / "d", OPAQUE_XATTR) == b"y"
    assert sorted(os.listdir(upper / "d")) == ["a", "c", "s"]
    assert os.listdir(upper / "d/s") == ["b"]
    assert _xattr(upper / "d/s", OPAQUE_XATTR) is None
    assert not (upper / "d/.wh..wh..opq").exists()


def test_opaque_marker_creates_its_directory(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    _apply(upper, [opaque("a/b")], whiteouts="overlay")
    for path in (upper / "a", upper / "a/b"):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o755
    assert _xattr(upper / "a/b", OPAQUE_XATTR) == b"y"
    assert _xattr(upper / "a", OPAQUE_XATTR) is None
    assert os.listdir(upper / "a/b") == []


def test_opaque_root_hides_lower_top_level(tmp_path: Path) -> None:
    """The kernel ignores ``trusted.overlay.opaque`` on a layer root, so an opaque marker
    at the top is whiteouts for what lies below."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    _apply(lower, [directory("a"), file("a/x"), file("f"), directory("k"), file("k/old")])
    _apply(upper, [directory("k"), file(".wh..wh..opq")], whiteouts="overlay", lowers=[lower])
    assert sorted(os.listdir(upper)) == ["a", "f", "k"]
    for name in ("a", "f"):
        assert stat.S_ISCHR(os.lstat(upper / name).st_mode)
    assert _xattr(upper / "k", OPAQUE_XATTR) == b"y"


def test_layer_cannot_set_overlay_xattrs(tmp_path: Path) -> None:
    """``trusted.*`` from an archive is never applied: a layer cannot forge opacity, a
    redirect or a metacopy that the kernel would honour."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    _apply(lower, [directory("d"), file("d/secret-below", "x\n"), directory("other")])
    _apply(upper, [
        directory("d", xattrs={OPAQUE_XATTR: "y"}),
        directory("r", xattrs={"trusted.overlay.redirect": "/other"}),
        file("m", "", xattrs={"trusted.overlay.metacopy": "", "trusted.overlay.origin": "x"}),
    ], whiteouts="overlay", lowers=[lower])
    for path in (upper / "d", upper / "r", upper / "m"):
        assert not [k for k in read_xattrs(path) if k.startswith("trusted.")]


def test_char_device_entry_keeps_its_number(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    _apply(upper, [chardev("null", 1, 3, mode=0o666)], whiteouts="overlay")
    st = os.lstat(upper / "null")
    assert (os.major(st.st_rdev), os.minor(st.st_rdev), stat.S_IMODE(st.st_mode)) == (1, 3, 0o666)


def test_hardlink_to_missing_target_is_an_error(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    _apply(lower, [directory("d"), file("d/f")])
    with pytest.raises(LayerError, match="does not exist"):
        _apply(upper, [whiteout("d/f"), hardlink("g", "d/f")], whiteouts="overlay",
               lowers=[lower])
    upper2 = tmp_path / "upper2"
    upper2.mkdir()
    with pytest.raises(LayerError, match="directory"):
        _apply(upper2, [hardlink("g", "d")], whiteouts="overlay", lowers=[lower])


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="whiteouts"):
        apply_layer(io.BytesIO(b""), tmp_path, whiteouts="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lowers"):
        apply_layer(io.BytesIO(b""), tmp_path, lowers=[tmp_path])


# ----------------------------------------------------------------------------- limits


def test_limit_lower_hardlink_set_is_split_by_copy_up(tmp_path: Path) -> None:
    """A link to a lower file that has other names there: overlayfs (without ``index=on``)
    copies up one name only, so the new name shares the inode with that copy, not with the
    other lower names. The flat tree has all three on one inode. Real layers never do this:
    containerd and Docker write a lower file linked to again as a full file."""
    layers = [[file("a", "x\n"), hardlink("b", "a")], [hardlink("c", "a")]]
    flat = flat_apply(layers, tmp_path / "flat")
    dirs = overlay_apply(layers, tmp_path / "layers")
    with mounted(dirs, tmp_path / "mnt") as mnt:
        assert os.path.samefile(flat / "b", flat / "c")
        assert os.path.samefile(mnt / "a", mnt / "c")
        assert not os.path.samefile(mnt / "b", mnt / "c")


def test_limit_char_device_0_0_is_a_whiteout(tmp_path: Path) -> None:
    """overlayfs reads any 0:0 character device as a whiteout: such a device in a layer
    hides its name instead of appearing (containerd's overlay snapshotter does the same)."""
    layers = [[file("x", "x\n")], [chardev("x", 0, 0), chardev("y", 0, 0)]]
    flat = flat_apply(layers, tmp_path / "flat")
    dirs = overlay_apply(layers, tmp_path / "layers")
    with mounted(dirs, tmp_path / "mnt") as mnt:
        assert sorted(os.listdir(flat)) == ["x", "y"]
        assert os.listdir(mnt) == []


# ----------------------------------------------------------------------------- breakouts


def _breakout_cases() -> list[object]:
    import test_layer_breakouts as tb

    return list(tb.CASES)


def assert_no_breakout_into_upper(
    case: object, tmp_path: Path,
    apply: Callable[[BinaryIO, Path, Path], object],
    allowed: tuple[type[BaseException], ...] = (LayerError,),
) -> None:
    """Run a breakout case with its prepared root as the lower layer and an empty upper,
    filled by ``apply(stream, upper, lower)``: nothing outside the upper changes (the
    lower included) and only ``allowed`` errors, of one line naming the layer, escape."""
    import test_layer_breakouts as tb

    (tmp_path / "env").mkdir()
    env = tb.make_env(tmp_path / "env")
    for setup in case.setup:  # type: ignore[attr-defined]
        setup(env)
    data = case.raw(env) if case.raw else tb.build_tar(case.layer, env)  # type: ignore[attr-defined]
    upper = tmp_path / "upper"  # outside env.tmp, which is snapshotted
    upper.mkdir()
    before = tb.snapshot(env)
    lower_before = tree_snapshot(env.root)
    host_before = tb.host_state()
    secrets = env.leak_contents
    try:
        apply(tb.Stream(data, case.chunk), upper, env.root)  # type: ignore[attr-defined]
    except allowed as err:
        assert tb.LABEL in str(err) and "\n" not in str(err)
    canaries = [p for p in env.canaries if os.path.lexists(p)]
    for p in canaries:
        p.unlink()
    after = tb.snapshot(env)
    problems = tb.snapshot_diff(before, after)
    problems += [f"created on the host: {p}" for p in canaries]
    problems += [f"host {k} changed" for k, v in tb.host_state().items() if host_before[k] != v]
    problems += [f"outside content leaked: {p}"
                 for p in tb.leaked_files(dataclasses.replace(env, root=upper), secrets)]
    if tree_snapshot(env.root) != lower_before:
        problems.append("the lower layer changed")
    assert not problems, "BREAKOUT:\n" + "\n".join(problems)


@pytest.mark.parametrize("case", _breakout_cases(), ids=lambda c: c.name)  # type: ignore[attr-defined]
def test_breakout_suite_in_overlay_mode(case: object, tmp_path: Path) -> None:
    """Every breakout case applied in overlay mode over its prepared root."""
    import test_layer_breakouts as tb

    assert_no_breakout_into_upper(case, tmp_path, lambda stream, upper, lower: apply_layer(
        stream, upper, layer=tb.LABEL, whiteouts="overlay", lowers=[lower]))
