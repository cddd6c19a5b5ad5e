"""`unlade pull REF` into snapshots, layer reuse, mount/unmount, against real overlay mounts."""

from __future__ import annotations

import json
import os
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
