"""A full disk (issue 9): the store on a small tmpfs. The pull fails with "no space left
on …", leaves no temporary files and no half-made snapshot, the store checks clean, and
once space is freed the next pull succeeds, without downloading again the blobs that
were verified before the disk filled up."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import images
from harness.protocols import RunUnlade
from harness.registry import Registry
from harness.storecheck import bad_blobs, check_problems

pytestmark = [pytest.mark.root]

MiB = 1 << 20


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[Path]:
    """A directory on a 3 MiB tmpfs (``remount`` grows it)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def grow(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def leftovers(root: Path) -> list[str]:
    """Temporary files of the store: ingest ``.part`` files and anything else that is
    neither a verified blob nor a committed record."""
    found = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith((".part", ".tmp")) or ".unlade-" in name:
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def push(tmp_path: Path, registry: Registry, repo: str, sizes: list[int]) -> str:
    layers = [[images.file(f"blob{i}", os.urandom(n))] for i, n in enumerate(sizes)]
    images.build_and_push(tmp_path / repo.replace("/", "-"), registry, repo, "t", layers,
                          raw=True)
    return f"{registry.host}/{repo}:t"


def test_store_fills_up_while_downloading(small_store: Path, registry: Registry,
                                          run_unlade: RunUnlade, tmp_path: Path) -> None:
    """Two incompressible layers of 1 and 4 MiB into a 3 MiB store: the download of the
    second fails; its partial blob is removed (it would only keep the disk full), the
    first, verified, stays; with 16 MiB the pull completes fetching only the second."""
    ref = push(tmp_path, registry, "full/download", [1 * MiB, 4 * MiB])
    root = small_store / "store"
    conf = tmp_path / "unlade.toml"  # one download at a time: the first is complete
    conf.write_text("max_concurrent_downloads = 1\n")  # when the second fills the disk
    proc = run_unlade("--config", conf, "pull", "--plain-http", "--no-unpack", ref, root=root)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlade: error: no space left on "), lines
    assert leftovers(root) == []
    assert bad_blobs(root) == [] and check_problems(root) == []
    assert used(small_store) < 2 * MiB, "the partial blob was not removed"
    grow(small_store, "16m")
    proc = run_unlade("--config", conf, "pull", "--plain-http", "--json", "--no-unpack", ref,
                      root=root, check=True)
    doc = json.loads(proc.stdout)
    assert [layer["fetched"] for layer in doc["layers"]] == [False, True]
    assert leftovers(root) == [] and check_problems(root) == []


@pytest.mark.parametrize("mode", ["rootfs", "snapshots"])
def test_store_fills_up_while_unpacking(small_store: Path, registry: Registry,
                                        run_unlade: RunUnlade, tmp_path: Path,
                                        mode: str) -> None:
    """A 1.2 MiB layer fits the store's 3 MiB as a blob, but not unpacked beside it: the
    unpack fails, no snapshot or rootfs is half-made, and after growing the disk the pull
    completes from the stored blob."""
    ref = push(tmp_path, registry, f"full/unpack-{mode}", [int(1.2 * MiB), int(1.2 * MiB)])
    root = small_store / "store"
    target = small_store / "rootfs"
    args = ["pull", "--plain-http", "--json", ref]
    args += ["--rootfs", str(target)] if mode == "rootfs" else ["--snapshotter", "native"]
    proc = run_unlade(*args, root=root)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left on " in lines[0], lines
    assert not target.exists()
    assert [p for p in small_store.iterdir() if p.name.startswith(".rootfs.unlade-")] == []
    assert leftovers(root) == []
    assert bad_blobs(root) == [] and check_problems(root) == []
    if mode == "snapshots":
        listing = run_unlade("images", "--json", root=root, check=True)
        assert json.loads(listing.stdout) == [], "a half-unpacked image was recorded"
    kept = {"sha256:" + p.name for p in (root / "blobs" / "sha256").iterdir()}
    grow(small_store, "32m")
    proc = run_unlade(*args, root=root, check=True)
    doc = json.loads(proc.stdout)
    # what was verified before the disk filled up is not downloaded again (which blobs
    # those are depends on how the downloads and the unpack raced for the space)
    assert [la["fetched"] for la in doc["layers"]] == \
        [la["digest"] not in kept for la in doc["layers"]], (kept, doc["layers"])
    assert check_problems(root) == []
    if mode == "rootfs":
        assert (target / "blob0").stat().st_size == int(1.2 * MiB)
