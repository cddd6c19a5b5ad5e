"""``apply_layer(..., speculative=True)`` and ``Speculation.settle``.

The property: applying every layer of a stack speculatively into its own empty upper (no
lowers known), then settling them bottom-up, redoing the ordinary way those that do not
settle, leaves exactly the uppers that applying each layer over its real lowers leaves,
entry by entry, the ``trusted.overlay.opaque`` xattr included, and raises the same error
class where the ordinary apply fails. Checked on seeded random stacks (differentially),
on the overlay stacks of ``test_layer_overlay`` (mounted, against the flat apply), and on
realistic layers, which must settle without a redo. The breakout suite runs speculatively
too.
"""

from __future__ import annotations

import io
import os
import posixpath
import random
import shutil
import stat
import tarfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import pytest
from harness import images
from harness.images import Entry, chardev, directory, file, hardlink, opaque, symlink, whiteout
from harness.tree import Snapshot, assert_same_tree, diff
from harness.tree import snapshot as tree_snapshot
from test_layer_overlay import STACKS, assert_no_breakout_into_upper, flat_apply, mounted

from unlade.errors import LayerError
from unlade.layer import OPAQUE_XATTR, Speculate, Speculation, apply_layer

pytestmark = pytest.mark.root

T = images.DEFAULT_MTIME


def _stream(entries: Sequence[Entry]) -> io.BytesIO:
    return io.BytesIO(images.layer_tar(entries))


def speculate(entries: Sequence[Entry], upper: Path) -> Speculation | None:
    """Apply ``entries`` speculatively into the new directory ``upper``; None if the apply
    asked for a redo."""
    upper.mkdir(parents=True)
    try:
        stats = apply_layer(_stream(entries), upper, whiteouts="overlay", speculative=True)
    except Speculate:
        return None
    assert stats.speculation is not None
    return stats.speculation


def exact(entries: Sequence[Entry], upper: Path, lowers: Sequence[Path]) -> None:
    apply_layer(_stream(entries), upper, whiteouts="overlay", lowers=lowers)


def serial_stack(layers: Sequence[Sequence[Entry]], base: Path
                 ) -> tuple[list[Path], type[LayerError] | None]:
    """Each layer over its real lowers; stops at the first layer that fails."""
    dirs: list[Path] = []
    for i, entries in enumerate(layers):
        upper = base / f"L{i + 1}"
        upper.mkdir(parents=True)
        try:
            exact(entries, upper, dirs[::-1])
        except LayerError as err:
            return dirs, type(err)
        dirs.append(upper)
    return dirs, None


def speculative_stack(layers: Sequence[Sequence[Entry]], base: Path, outcomes: Counter[str]
                      ) -> tuple[list[Path], type[LayerError] | None]:
    """All layers speculatively first (as if in parallel), then settled bottom-up; a layer
    that does not settle is wiped and applied again over its (settled) lowers."""
    uppers = [base / f"L{i + 1}" for i in range(len(layers))]
    specs = [speculate(entries, upper) for entries, upper in zip(layers, uppers, strict=True)]
    for i, (entries, upper, spec) in enumerate(zip(layers, uppers, specs, strict=True)):
        lowers = uppers[:i][::-1]
        if spec is None:
            outcomes["speculate"] += 1
        elif spec.settle(upper, lowers):
            outcomes["settled"] += 1
            continue
        else:
            outcomes["redo"] += 1
        shutil.rmtree(upper)
        upper.mkdir()
        try:
            exact(entries, upper, lowers)
        except LayerError as err:
            return uppers[:i], type(err)
    return uppers, None


def _entry_path(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def _upper_snapshot(upper: Path) -> Snapshot:
    """The tree, but for the mtimes of whiteouts: they are when the apply made them (and
    hidden by the mount)."""
    snap = tree_snapshot(upper)
    for info in snap.values():
        if info["type"] == "char" and info["rdev"] == (0, 0):
            info.pop("mtime_ns")
    return snap


def assert_same_uppers(serial: Sequence[Path], spec: Sequence[Path],
                       layers: Sequence[Sequence[Entry]]) -> None:
    """Entry by entry, and the mtime of each directory the layer has an entry for (where
    the ordinary apply gave it that entry's mtime: directories of a layer that are only
    parents get the time of their last change, in both)."""
    assert len(serial) == len(spec)
    for a, b, entries in zip(serial, spec, layers, strict=False):
        problems = diff(_upper_snapshot(a), _upper_snapshot(b))
        assert not problems, f"{a} vs {b}:\n  " + "\n  ".join(problems[:50])
        for e in entries:
            if e.type != tarfile.DIRTYPE:
                continue
            rel = _entry_path(e.name)
            if not rel:
                continue
            pa, pb = a / rel, b / rel
            if pa.is_symlink() or not pa.is_dir() or pa.resolve() != pa:
                continue
            if os.lstat(pa).st_mtime_ns == int(e.mtime) * 10**9:
                assert os.lstat(pb).st_mtime_ns == os.lstat(pa).st_mtime_ns, rel


# ----------------------------------------------------------------------------- random stacks

TOP = ["a", "b", "etc", "usr"]
MID = ["x", "lib", "y"]
LOW = ["p", "q"]
TARGETS = ["a", "b/x", "/a", "/usr/lib", "../a", "..", "x", "nowhere", "../../b/y", "/",
           "a/x/../y", "/nowhere/p", "lib", "../usr", "/etc/x/p", "y/q", "../lib/p"]
DIR_MODES = [0o755, 0o755, 0o755, 0o700, 0o750, 0o2775, 0o1777, 0o555]
FILE_MODES = [0o644, 0o600, 0o4755, 0o755, 0o000]


class RandomStack:
    """Random layers over a small name space: directories mostly at the top two levels,
    files mostly below them, links to names used before, every kind now and then where
    it does not belong (most stacks must apply, but some must fail)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.files: list[str] = []

    def path(self, *depths: int) -> str:
        rng = self.rng
        depth = rng.choice(depths)
        parts = [rng.choice(TOP)]
        if depth >= 2:
            parts.append(rng.choice(MID if depth == 3 or rng.random() < 0.6 else LOW))
        if depth >= 3:
            parts.append(rng.choice(LOW))
        return rng.choice(["", "", "", "./"]) + "/".join(parts)

    def owner(self) -> dict[str, int]:
        return {"uid": self.rng.choice([0, 0, 1000]), "gid": self.rng.choice([0, 0, 50])}

    def xattrs(self) -> dict[str, bytes | str]:
        if self.rng.random() < 0.25:
            return {self.rng.choice(["user.a", "user.b"]): self.rng.choice(["1", "2", "3"])}
        return {}

    def entry(self) -> Entry:
        rng = self.rng
        kind = rng.random()
        mtime = T + rng.randrange(100)
        if kind < 0.25:
            return directory(self.path(1, 2, 2, 2, 3) + rng.choice(["", "/"]),
                             mode=rng.choice(DIR_MODES), mtime=mtime, xattrs=self.xattrs(),
                             **self.owner())
        if kind < 0.55:
            name = self.path(*[1] + [2] * 5 + [3] * 14)
            self.files.append(name)
            return file(name, rng.randbytes(rng.randrange(6)), mode=rng.choice(FILE_MODES),
                        mtime=mtime, xattrs=self.xattrs(), **self.owner())
        if kind < 0.64:
            return symlink(self.path(1, 2, 2, 3, 3, 3), rng.choice(TARGETS), mtime=mtime,
                           **self.owner())
        if kind < 0.70:
            target = rng.choice(self.files) if self.files and rng.random() < 0.9 else \
                self.path(1, 2, 3)
            return hardlink(self.path(2, 3, 3), target, mode=rng.choice(FILE_MODES),
                            mtime=mtime, **self.owner())
        if kind < 0.82:
            return whiteout(self.path(1, 2, 2, 3))
        if kind < 0.89:
            return opaque(self.path(1, 1, 2))
        if kind < 0.995:
            if rng.random() < 0.5:
                return chardev(self.path(2, 3, 3), 1, rng.choice([3, 5]), mtime=mtime,
                               **self.owner())
            return images.fifo(self.path(2, 3, 3), mode=0o600, mtime=mtime, **self.owner())
        return file(".wh..wh..opq")

    def base(self) -> list[Entry]:
        """A bottom layer with directories at most names, with varied metadata (later
        layers of a real image mostly write below directories of the first)."""
        rng = self.rng
        out: list[Entry] = []
        for top in TOP:
            if rng.random() < 0.85:
                out.append(directory(top, mode=rng.choice(DIR_MODES), xattrs=self.xattrs(),
                                     **self.owner()))
                for mid in MID:
                    if rng.random() < 0.5:
                        out.append(directory(f"{top}/{mid}", mode=rng.choice(DIR_MODES),
                                             xattrs=self.xattrs(), **self.owner()))
        return out

    def layers(self) -> list[list[Entry]]:
        rng = self.rng
        layers = [self.base() + [self.entry() for _ in range(rng.randrange(0, 6))]]
        for _ in range(rng.randrange(1, 4)):
            layers.append([self.entry() for _ in range(rng.randrange(1, 10))])
        return layers


def random_stack(rng: random.Random) -> list[list[Entry]]:
    return RandomStack(rng).layers()


def test_random_stacks_settle_to_the_serial_uppers(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    outcomes: Counter[str] = Counter()
    errors = 0
    for n in range(300):
        layers = random_stack(rng)
        base = tmp_path / str(n)
        serial, serial_error = serial_stack(layers, base / "serial")
        spec, spec_error = speculative_stack(layers, base / "spec", outcomes)
        try:
            assert spec_error is serial_error
            assert_same_uppers(serial, spec, layers)
        except AssertionError as err:
            raise AssertionError(f"stack {n}: {layers}\n{err}") from None
        errors += serial_error is not None
        shutil.rmtree(base)
    # the stacks exercise every outcome: settled, redone, refused, failing
    assert outcomes["settled"] > 300
    assert outcomes["redo"] > 20
    assert outcomes["speculate"] > 20
    assert errors > 5


# ----------------------------------------------------------------------------- mounted


def spec_overlay_apply(layers: Sequence[Sequence[Entry]], base: Path) -> list[Path]:
    dirs, error = speculative_stack(layers, base, Counter())
    assert error is None
    return dirs


@pytest.mark.parametrize("name", ["tricky", *STACKS])
def test_speculative_stack_mounted_equals_the_flat_apply(name: str, tmp_path: Path) -> None:
    layers = images.tricky_layers() if name == "tricky" else STACKS[name]
    flat = flat_apply(layers, tmp_path / "flat")
    dirs = spec_overlay_apply(layers, tmp_path / "layers")
    with mounted(dirs, tmp_path / "mnt") as mnt:
        assert_same_tree(flat, mnt)
    serial, _ = serial_stack(layers, tmp_path / "serial")
    assert_same_uppers(serial, dirs, layers)


# ----------------------------------------------------------------------------- settling


def _base_layer() -> list[Entry]:
    return [
        directory("usr"), directory("usr/lib", mode=0o700, uid=1000, gid=1000),
        directory("usr/share", mode=0o750, uid=7, gid=8, xattrs={"user.keep": "me"}),
        directory("etc", mode=0o700),
        file("etc/passwd", "root\n"), file("etc/group", "root\n"),
        directory("var", mode=0o1777), directory("var/lib", uid=1000),
    ]


#: Layers over ``_base_layer`` as image builders write them; all must settle.
REALISTIC: dict[str, list[Entry]] = {
    "files-under-lower-dirs-no-parent-entries": [
        file("usr/lib/pkg/lib.so", "so\n", mode=0o755),
        file("usr/share/doc/pkg/README", "doc\n"),
        file("var/lib/pkg/state", "s\n"),
    ],
    "files-with-parent-entries": [
        directory("usr/"), directory("usr/lib/", mode=0o700, uid=1000, gid=1000),
        directory("usr/lib/pkg/"), file("usr/lib/pkg/lib.so", "so\n", mode=0o755),
        directory("usr/share/", mode=0o750, uid=7, gid=8),
        file("usr/share/new", "n\n"),
    ],
    "parent-entry-after-its-children": [
        file("usr/lib/pkg/lib.so", "so\n"), directory("usr/lib", mode=0o755),
        directory("usr/share", mode=0o755, xattrs={"user.other": "x"}),
        file("usr/share/f", "f\n"),
    ],
    "replace-and-whiteout-lower-files": [
        directory("etc"), file("etc/passwd", "root\nuser\n", mode=0o644),
        whiteout("etc/group"), file("etc/hostname", "h\n"),
    ],
    "whiteout-of-a-lower-dir-and-new-dirs": [
        whiteout("var/lib"), directory("opt"), directory("opt/app", mode=0o750, uid=5),
        file("opt/app/bin", "bin\n", mode=0o755), symlink("usr/bin", "../opt/app"),
    ],
    "docker-style-dot-slash-names": [
        directory("./usr/"), directory("./usr/lib/"), file("./usr/lib/x.so", "x\n"),
        directory("./etc/"), file("./etc/passwd", "p\n"),
    ],
    "opaque-dir-that-exists-below": [
        directory("usr/share"), opaque("usr/share"), file("usr/share/only", "o\n"),
    ],
}


@pytest.mark.parametrize("name", list(REALISTIC))
def test_realistic_layers_settle_without_a_redo(name: str, tmp_path: Path) -> None:
    layers = [_base_layer(), REALISTIC[name]]
    serial, error = serial_stack(layers, tmp_path / "serial")
    assert error is None
    upper = tmp_path / "spec" / "L2"
    spec = speculate(layers[1], upper)
    assert spec is not None
    assert spec.settle(upper, [serial[0]])
    assert_same_uppers(serial[1:], [upper], layers[1:])


def test_missing_parents_take_the_lower_metadata_when_settled(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    exact(_base_layer(), lower, [])
    upper = tmp_path / "upper"
    spec = speculate([file("usr/lib/pkg/f", "f\n"), file("usr/share/g", "g\n")], upper)
    assert spec is not None
    # before settling: new 0755 directories, as if nothing were below
    assert stat.S_IMODE(os.lstat(upper / "usr/lib").st_mode) == 0o755
    assert spec.settle(upper, [lower])
    st = os.lstat(upper / "usr/lib")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 1000, 1000)
    assert os.getxattr(upper / "usr/share", "user.keep") == b"me"
    assert stat.S_IMODE(os.lstat(upper / "usr/lib/pkg").st_mode) == 0o755


def test_memory_of_a_big_layer_is_one_record_per_new_directory(tmp_path: Path) -> None:
    entries = [directory("usr"), directory("usr/lib")]
    for d in range(100):
        entries.append(directory(f"usr/lib/d{d}"))
        entries += [file(f"usr/lib/d{d}/f{i}") for i in range(100)]
    entries += [file(f"usr/share/m{d}/f") for d in range(50)]  # missing parents
    spec = speculate(entries, tmp_path / "upper")
    assert spec is not None
    assert len(spec.queries) == 2 + 100 + 1 + 50
    assert len(spec.dirs) == len(spec.queries)


def test_setgid_lower_dir_hands_its_group_down_when_settled(tmp_path: Path) -> None:
    """The copy-up of a setgid missing parent gives the new directories made in it its
    group; the speculative apply made them in a plain directory."""
    lower = tmp_path / "lower"
    lower.mkdir()
    exact([directory("srv", mode=0o2775, gid=50), directory("srv/old", gid=7)], lower, [])
    layer = [file("srv/www/html/index", "i\n"), file("srv/old/new/f", "f\n")]
    upper = tmp_path / "upper"
    spec = speculate(layer, upper)
    assert spec is not None
    assert os.lstat(upper / "srv/www").st_gid == 0
    assert spec.settle(upper, [lower])
    serial = tmp_path / "serial"
    serial.mkdir()
    exact(layer, serial, [lower])
    assert_same_uppers([serial], [upper], [layer])
    assert os.lstat(upper / "srv/www").st_gid == 50
    assert os.lstat(upper / "srv/www/html").st_gid == 0  # www is not setgid: 0755
    assert os.lstat(upper / "srv/old/new").st_gid == 0  # old is not setgid


@pytest.mark.parametrize(("lower", "layer"), [
    # a lower symlink on the way: the ordinary apply writes through it
    ([directory("usr"), directory("usr/lib"), symlink("lib", "usr/lib")],
     [file("lib/x.so", "x\n")]),
    # a lower file where this layer needs a directory: the ordinary apply fails
    ([file("etc", "not a dir\n")], [file("etc/passwd", "p\n")]),
    # a new directory over a whiteout that hides a lower directory must be opaque
    ([directory("d"), file("d/old")], [whiteout("d"), file("d/new", "n\n")]),
])
def test_what_the_lowers_decide_is_redone(lower: list[Entry], layer: list[Entry],
                                          tmp_path: Path) -> None:
    base = tmp_path / "lower"
    base.mkdir()
    exact(lower, base, [])
    upper = tmp_path / "upper"
    spec = speculate(layer, upper)
    assert spec is not None
    before = tree_snapshot(upper)
    assert not spec.settle(upper, [base])
    assert tree_snapshot(upper) == before  # a refused settle changes nothing


@pytest.mark.parametrize("layer", [
    [hardlink("g", "etc/passwd")],  # its target may be below
    [file(".wh..wh..opq")],  # hides names only the lowers know
    [whiteout("d/.."), file("f")],  # a failure: the ordinary apply gives the true error
])
def test_speculate_is_raised(layer: list[Entry], tmp_path: Path) -> None:
    (tmp_path / "upper").mkdir()
    with pytest.raises(Speculate) as info:
        apply_layer(_stream(layer), tmp_path / "upper", layer="L", whiteouts="overlay",
                    speculative=True)
    assert not isinstance(info.value, LayerError)
    assert str(info.value).startswith("L: ")


def test_stream_errors_are_not_speculation(tmp_path: Path) -> None:
    data = images.layer_tar([file("a", "x" * 2000)])
    (tmp_path / "upper").mkdir()
    with pytest.raises(LayerError, match="stream ends"):
        apply_layer(io.BytesIO(data[:1024]), tmp_path / "upper", whiteouts="overlay",
                    speculative=True)


def test_settle_over_opaque_upper_dir_asks_nothing(tmp_path: Path) -> None:
    """Below a directory this layer made opaque the lowers are hidden: what they hold
    there cannot matter, even a symlink where the layer has a directory."""
    lower = tmp_path / "lower"
    lower.mkdir()
    exact([directory("d"), symlink("d/s", "/elsewhere"), file("d/f")], lower, [])
    upper = tmp_path / "upper"
    spec = speculate([directory("d"), opaque("d"), file("d/s/x", "x\n")], upper)
    assert spec is not None
    assert spec.settle(upper, [lower])
    serial = tmp_path / "serial"
    serial.mkdir()
    exact([directory("d"), opaque("d"), file("d/s/x", "x\n")], serial, [lower])
    assert_same_tree(serial, upper)
    assert os.getxattr(upper / "d", OPAQUE_XATTR) == b"y"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="speculative"):
        apply_layer(io.BytesIO(b""), tmp_path, speculative=True)
    with pytest.raises(ValueError, match="speculative"):
        apply_layer(io.BytesIO(b""), tmp_path, whiteouts="overlay", lowers=[tmp_path],
                    speculative=True)


# ----------------------------------------------------------------------------- breakouts


def _breakout_cases() -> list[object]:
    import test_layer_breakouts as tb

    return list(tb.CASES)


@pytest.mark.parametrize("case", _breakout_cases(), ids=lambda c: c.name)  # type: ignore[attr-defined]
def test_breakout_suite_speculatively(case: object, tmp_path: Path) -> None:
    """Every breakout case applied speculatively into an empty upper, then settled with the
    case's prepared root as the lower: nothing outside the upper changes (the lower
    included), and only LayerError or Speculate escapes."""
    import test_layer_breakouts as tb

    def apply(stream: BinaryIO, upper: Path, lower: Path) -> None:
        stats = apply_layer(stream, upper, layer=tb.LABEL, whiteouts="overlay",
                            speculative=True)
        assert stats.speculation is not None
        stats.speculation.settle(upper, [lower])

    assert_no_breakout_into_upper(case, tmp_path, apply, (LayerError, Speculate))
