"""Snapshot and compare unpacked root filesystems.

A snapshot maps each relative path below the root (POSIX separators, the root itself
excluded) to a dict of properties:

* ``type``: ``file`` / ``dir`` / ``symlink`` / ``char`` / ``block`` / ``fifo`` / ``socket``
* ``mode``: permission bits incl. setuid/setgid/sticky (``stat.S_IMODE`` of ``lstat``)
* ``uid``, ``gid``
* ``size`` and ``sha256`` (files), ``target`` (symlinks), ``rdev`` = ``(major, minor)``
  (devices)
* ``xattrs``: ``{name: bytes}`` of all xattrs (incl. ``trusted.*``/``security.*``; read
  without following symlinks)
* ``hardlinks``: sorted other paths sharing the inode (files with ``st_nlink > 1``)
* ``mtime_ns``: for everything but directories (directory mtimes change as soon as an
  unpacker creates children, so implementations disagree; they are left out)
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Snapshot = dict[str, dict[str, Any]]

_TYPES = (
    (stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
    (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
)


def file_type(st: os.stat_result) -> str:
    """``file``/``dir``/``symlink``/``char``/``block``/``fifo``/``socket`` for a stat."""
    for pred, name in _TYPES:
        if pred(st.st_mode):
            return name
    return "unknown"


def read_xattrs(path: str | Path) -> dict[str, bytes]:
    """All xattrs of ``path`` (not following symlinks); ``{}`` where unsupported."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in sorted(names):
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:  # raced away or not readable
            continue
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def snapshot(
    root: str | Path,
    *,
    mtimes: bool = True,
    exclude: Iterable[str] = (),
) -> Snapshot:
    """Record every entry below ``root`` (see module docstring).

    ``mtimes=False`` drops ``mtime_ns``; ``exclude`` lists relative paths to skip (with
    everything below them).
    """
    root = os.fspath(root)
    excluded = {e.strip("/") for e in exclude}
    snap: Snapshot = {}
    inodes: dict[tuple[int, int], list[str]] = defaultdict(list)

    def walk(dirpath: str, rel: str) -> None:
        with os.scandir(dirpath) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            if r in excluded:
                continue
            st = os.lstat(e.path)
            t = file_type(st)
            info: dict[str, Any] = {
                "type": t, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
            }
            if t == "file":
                info["size"] = st.st_size
                info["sha256"] = _sha256(e.path)
                if st.st_nlink > 1:
                    inodes[(st.st_dev, st.st_ino)].append(r)
            elif t == "symlink":
                info["target"] = os.readlink(e.path)
            elif t in ("char", "block"):
                info["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            info["xattrs"] = read_xattrs(e.path)
            if mtimes and t != "dir":
                info["mtime_ns"] = st.st_mtime_ns
            snap[r] = info
            if t == "dir":
                walk(e.path, r)

    walk(root, "")
    for paths in inodes.values():
        for p in paths:
            snap[p]["hardlinks"] = sorted(q for q in paths if q != p)
    for info in snap.values():
        if info["type"] == "file":
            info.setdefault("hardlinks", [])
    return snap


def diff(a: Snapshot, b: Snapshot, *, ignore: Iterable[str] = ()) -> list[str]:
    """Human-readable differences between snapshots ``a`` (expected) and ``b`` (actual).

    ``ignore`` lists property names to skip (e.g. ``{"mtime_ns"}``).
    """
    ignored = set(ignore)
    out = []
    for path in sorted(set(a) | set(b)):
        if path not in b:
            out.append(f"{path}: only in first ({a[path]['type']})")
            continue
        if path not in a:
            out.append(f"{path}: only in second ({b[path]['type']})")
            continue
        pa, pb = a[path], b[path]
        for key in sorted(set(pa) | set(pb)):
            if key in ignored:
                continue
            va, vb = pa.get(key), pb.get(key)
            if va == vb:
                continue
            if key == "mode":
                out.append(f"{path}: mode {oct(va or 0)} != {oct(vb or 0)}")
            elif key == "xattrs":
                xa, xb = va or {}, vb or {}
                for name in sorted(set(xa) | set(xb)):
                    if xa.get(name) != xb.get(name):
                        out.append(f"{path}: xattr {name} {xa.get(name)!r} != {xb.get(name)!r}")
            else:
                out.append(f"{path}: {key} {va!r} != {vb!r}")
    return out


def assert_same_tree(
    a_root: str | Path,
    b_root: str | Path,
    *,
    mtimes: bool = True,
    ignore: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> None:
    """Assert the trees below ``a_root`` and ``b_root`` are identical (see :func:`diff`)."""
    d = diff(snapshot(a_root, mtimes=mtimes, exclude=exclude),
             snapshot(b_root, mtimes=mtimes, exclude=exclude), ignore=ignore)
    if d:
        shown = "\n  ".join(d[:50])
        more = f"\n  ... and {len(d) - 50} more" if len(d) > 50 else ""
        raise AssertionError(
            f"trees differ: {a_root} (first) vs {b_root} (second):\n  {shown}{more}")
