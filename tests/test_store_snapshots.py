"""`unlade pull REF` into snapshots, layer reuse, mount/unmount, against real overlay mounts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from harness import images
from harness.protocols import RunUnlade
from harness.registry import Registry
from harness.tree import assert_same_tree

pytestmark = [pytest.mark.root, pytest.mark.tools]


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_pull_into_snapshots_reuses_layers_and_mounts_the_same_tree(
    snapshotter: str, tmp_path: Path, registry: Registry, run_unlade: RunUnlade
) -> None:
    layout = tmp_path / "layout"
    tricky = images.tricky_layers()
    images.build_layout(layout, "one", tricky)
    images.build_layout(layout, "two", [*tricky, [images.file("extra", "only in two")]])
    images.push(layout, "one", registry, f"snap/{snapshotter}")
    images.push(layout, "two", registry, f"snap/{snapshotter}")
    one, two = (f"{registry.host}/snap/{snapshotter}:{t}" for t in ("one", "two"))

    first = json.loads(run_unlade("pull", "--plain-http", "--json", "--snapshotter",
                                  snapshotter, one, check=True).stdout)
    assert all(layer["unpacked"] for layer in first["layers"])
    second = json.loads(run_unlade("pull", "--plain-http", "--json", "--snapshotter",
                                   snapshotter, two, check=True).stdout)
    # only the new layer is fetched and unpacked
    assert [layer["fetched"] for layer in second["layers"]] == [False] * len(tricky) + [True]
    assert [layer["unpacked"] for layer in second["layers"]] == [False] * len(tricky) + [True]

    flat = tmp_path / "flat"
    run_unlade("pull", "--plain-http", two, "--rootfs", flat, check=True)
    target = tmp_path / "mnt"
    target.mkdir()
    run_unlade("mount", "--snapshotter", snapshotter, two, target, check=True)
    try:
        assert_same_tree(flat, target)
        (target / "written").write_text("private")  # a writable mount; snapshots untouched
    finally:
        run_unlade("unmount", "--snapshotter", snapshotter, target, check=True)
    assert list(target.iterdir()) == []
    again = tmp_path / "mnt2"
    again.mkdir()
    run_unlade("mount", "--snapshotter", snapshotter, two, again, check=True)
    try:
        assert not (again / "written").exists()
        assert (again / "extra").read_text() == "only in two"
    finally:
        run_unlade("unmount", "--snapshotter", snapshotter, again, check=True)
    assert os.listdir(again) == []


def _pair(tmp_path: Path, registry: Registry, repo: str) -> tuple[str, str]:
    """Two images sharing a base layer, each with a layer of its own."""
    base = [images.directory("etc"), images.file("etc/base", os.urandom(5000))]
    layout = tmp_path / "layout"
    images.build_layout(layout, "a", [base, [images.file("a", "a")]])
    images.build_layout(layout, "b", [base, [images.file("b", "b")]])
    images.push(layout, "a", registry, repo)
    images.push(layout, "b", registry, repo)
    return f"{registry.host}/{repo}:a", f"{registry.host}/{repo}:b"


def _snapshot_dirs(root: Path) -> set[str]:
    base = root / "snapshots-overlayfs" / "snapshots"
    return set(os.listdir(base)) if base.is_dir() else set()


def _check(run_unlade: RunUnlade) -> dict[str, object]:
    proc = run_unlade("check", "--json")
    doc = json.loads(proc.stdout)
    assert (proc.returncode == 0) == doc["ok"]
    return doc  # type: ignore[no-any-return]


def test_prune_keeps_what_images_and_mounts_use(
    tmp_path: Path, registry: Registry, run_unlade: RunUnlade, unlade_root: Path
) -> None:
    a, b = _pair(tmp_path, registry, "prune/pair")
    for ref in (a, b):
        run_unlade("pull", "--plain-http", "-q", "--snapshotter", "overlayfs", ref, check=True)
    assert len(_snapshot_dirs(unlade_root)) == 3  # base, a's top, b's top
    doc = _check(run_unlade)
    assert doc["ok"] and doc["snapshots"] == 3 and doc["images"] == 2

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run_unlade("mount", b, mnt, check=True)
    try:
        refused = run_unlade("rm", b)
        assert refused.returncode == 1
        assert f"in use: mounted at {mnt}" in refused.stderr
        run_unlade("rm", a, check=True)
        pruned = json.loads(run_unlade("prune", "--json", check=True).stdout)
        assert (pruned["images"], pruned["snapshots"]) == (1, 1)  # a's own layer only
        assert len(_snapshot_dirs(unlade_root)) == 2
        assert (mnt / "b").read_text() == "b" and (mnt / "etc" / "base").exists()
        assert _check(run_unlade)["ok"]
    finally:
        run_unlade("unmount", mnt, check=True)
    run_unlade("rm", b, check=True)
    pruned = json.loads(run_unlade("prune", "--json", check=True).stdout)
    assert (pruned["images"], pruned["snapshots"]) == (1, 2)
    assert _snapshot_dirs(unlade_root) == set()
    assert list((unlade_root / "snapshots-overlayfs" / "active").iterdir()) == []
    doc = _check(run_unlade)
    assert doc["ok"] and (doc["blobs"], doc["snapshots"]) == (0, 0)


def test_check_tells_lies_from_leftovers(
    tmp_path: Path, registry: Registry, run_unlade: RunUnlade, unlade_root: Path
) -> None:
    """A committed snapshot without its directory is damage; a ``preparing`` one (what a
    killed pull leaves) is only a note, and prune sweeps it."""
    from unlade.metastore import MetaStore

    a, _ = _pair(tmp_path, registry, "check/pair")
    run_unlade("pull", "--plain-http", "-q", "--snapshotter", "overlayfs", a, check=True)
    with MetaStore(unlade_root / "meta.db") as meta:
        top = meta.snapshots()[-1]
        half = unlade_root / "snapshots-overlayfs" / "snapshots" / "99"
        (half / "fs").mkdir(parents=True)
        assert meta.prepare_snapshot("overlayfs", "sha256:" + "e" * 64, top.chain_id,
                                     str(half.relative_to(unlade_root)))
    doc = _check(run_unlade)
    assert doc["ok"] and len(doc["notes"]) == 1  # type: ignore[arg-type]
    assert "half-unpacked" in doc["notes"][0]  # type: ignore[index]
    pruned = json.loads(run_unlade("prune", "--json", check=True).stdout)
    assert pruned["snapshots"] == 1 and not half.exists()
    assert _check(run_unlade)["notes"] == []

    import shutil
    shutil.rmtree(unlade_root / top.dir)
    proc = run_unlade("check")
    assert proc.returncode == 1
    assert f"overlayfs snapshot {top.chain_id[:19]}: directory {top.dir}/fs is missing" \
        in proc.stdout


def test_bad_input_to_mount_and_bundle(
    tmp_path: Path, registry: Registry, run_unlade: RunUnlade, unlade_root: Path
) -> None:
    a, _ = _pair(tmp_path, registry, "bad/pair")
    run_unlade("pull", "--plain-http", "-q", a, check=True)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    cases = [
        (("mount", f"{registry.host}/bad/pair:nope", tmp_path), "is not in the store"),
        (("mount", a, full), f"mount target {full} is not empty"),
        (("mount", a, tmp_path / "absent"), "is not a directory"),
        (("bundle", a, full), f"bundle directory {full} is not empty"),
        (("unmount", tmp_path), "nothing of this store is mounted"),
        (("rm", "nope:1"), "is not in the store"),
    ]
    for args, message in cases:
        proc = run_unlade(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert message in proc.stderr and proc.stderr.count("\n") == 1, (args, proc.stderr)
    assert (full / "x").read_text() == "x"


def test_overlay_unsupported_is_explained_and_auto_falls_back(
    tmp_path: Path, registry: Registry, run_unlade: RunUnlade
) -> None:
    """A store on overlayfs (unlade inside a container) cannot hold overlay upper
    directories: asking for overlayfs says so and names the way out; the default picks
    native there."""
    a, _ = _pair(tmp_path, registry, "nooverlay/pair")
    for d in ("l", "u", "w", "m"):
        (tmp_path / d).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={tmp_path / 'l'},upperdir={tmp_path / 'u'},"
                    f"workdir={tmp_path / 'w'}", str(tmp_path / "m")], check=True)
    try:
        root = tmp_path / "m" / "store"
        proc = run_unlade("pull", "--plain-http", "-q", "--snapshotter", "overlayfs", a,
                          root=root)
        assert proc.returncode == 1
        assert "overlayfs cannot be mounted" in proc.stderr
        assert "use --snapshotter native" in proc.stderr
        doc = json.loads(run_unlade("pull", "--plain-http", "--json", a, root=root,
                                    check=True).stdout)
        assert all(layer["unpacked"] for layer in doc["layers"])
        assert (root / "snapshots-native" / "snapshots").is_dir()
        assert not (root / "snapshots-overlayfs" / "snapshots").exists()
    finally:
        subprocess.run(["umount", str(tmp_path / "m")], check=True)


def test_store_from_a_newer_unlade_is_refused(run_unlade: RunUnlade, unlade_root: Path) -> None:
    import sqlite3

    from unlade.metastore import SCHEMA_VERSION, MetaStore

    MetaStore(unlade_root / "meta.db").close()
    db = sqlite3.connect(unlade_root / "meta.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    proc = run_unlade("images")
    assert proc.returncode == 1
    assert "written by a newer unlade" in proc.stderr and proc.stderr.count("\n") == 1


def test_prune_waits_for_a_running_pull(
    tmp_path: Path, registry: Registry, run_unlade: RunUnlade, unlade_root: Path
) -> None:
    """A prune started while a pull is downloading and unpacking (nothing of it recorded
    yet) must neither remove its blobs nor its half-made snapshots: it waits."""
    import time

    from harness.faultproxy import FaultProxy
    from harness.storecheck import finish, start_unlade

    layout = tmp_path / "layout"
    images.build_layout(layout, "t", [[images.file("big", os.urandom(3 << 20))],
                                      [images.file("more", os.urandom(1 << 20))]])
    images.push(layout, "t", registry, "prune/busy")
    with FaultProxy(registry.host, rate=2 << 20) as proxy:  # the pull takes ~2 s
        ref = f"{proxy.host}/prune/busy:t"
        pull = start_unlade(unlade_root, "pull", "--plain-http", "--json", ref)
        deadline = time.monotonic() + 30
        while not list((unlade_root / "ingest").glob("*.part")) if (
                unlade_root / "ingest").is_dir() else True:
            assert time.monotonic() < deadline and pull.poll() is None
            time.sleep(0.02)
        started = time.monotonic()
        pruned = json.loads(run_unlade("prune", "--json", check=True).stdout)
        waited = time.monotonic() - started
        doc = finish(pull)
    # it waited for the pull to finish (which had most of its bytes still to fetch)
    assert waited > 0.5 and doc["seconds"] > 0.5
    assert (pruned["blobs"], pruned["snapshots"]) == (0, 0)
    assert all(layer["unpacked"] for layer in doc["layers"])
    check = json.loads(run_unlade("check", "--json", check=True).stdout)
    assert check["ok"] and check["snapshots"] == 2 and check["images"] == 1
