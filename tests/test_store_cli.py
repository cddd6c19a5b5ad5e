"""The store commands: images, inspect, rm, prune and check, against real pulls."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from harness import images
from harness.images import PushedImage
from harness.protocols import RunUnlade
from harness.registry import Registry

pytestmark = [pytest.mark.root, pytest.mark.tools]


def _two_images(tmp_path: Path, registry: Registry) -> tuple[str, str]:
    base = [images.directory("etc"), images.file("etc/base", os.urandom(5000))]
    layout = tmp_path / "layout"
    images.build_layout(layout, "one", [base, [images.file("one", "1")]])
    images.build_layout(layout, "two", [base, [images.file("two", "2")]])
    images.push(layout, "one", registry, "store/one")
    images.push(layout, "two", registry, "store/two")
    return f"{registry.host}/store/one:one", f"{registry.host}/store/two:two"


def test_images_inspect_rm_prune_check(tmp_path: Path, registry: Registry,
                                       run_unlade: RunUnlade, unlade_root: Path) -> None:
    one, two = _two_images(tmp_path, registry)
    pulled = {}
    for ref in (one, two):
        doc = json.loads(run_unlade("pull", "--plain-http", "--json", ref, check=True).stdout)
        pulled[ref] = doc
    # the shared base layer was fetched once
    assert pulled[two]["layers"][0]["fetched"] is False

    listed = json.loads(run_unlade("images", "--json", check=True).stdout)
    assert {r["ref"]: r["manifest_digest"] for r in listed} == {
        one: pulled[one]["manifest_digest"], two: pulled[two]["manifest_digest"]}

    doc = json.loads(run_unlade("inspect", one, "--json", check=True).stdout)
    assert doc["manifest_digest"] == pulled[one]["manifest_digest"]
    assert [x["diff_id"] for x in doc["layers"]] == [x["diff_id"] for x in pulled[one]["layers"]]
    assert doc["layers"][0]["chain_id"] == doc["layers"][0]["diff_id"]
    assert doc["layers"][1]["chain_id"] != doc["layers"][1]["diff_id"]
    assert doc["config"]["rootfs"]["diff_ids"] == [x["diff_id"] for x in doc["layers"]]

    assert "checked" in run_unlade("check", check=True).stdout

    blobs = unlade_root / "blobs" / "sha256"
    before = {p.name for p in blobs.iterdir()}
    run_unlade("rm", one, check=True)
    assert "pruned 1 images" in run_unlade("prune", check=True).stdout
    after = {p.name for p in blobs.iterdir()}
    gone = before - after
    # one's manifest, config and own layer went; the shared base layer stayed for two
    assert pulled[one]["manifest_digest"][7:] in gone
    assert pulled[one]["layers"][1]["digest"][7:] in gone
    assert pulled[two]["layers"][0]["digest"][7:] in after
    assert run_unlade("check").returncode == 0

    # corrupt a blob: check finds it and fails
    victim = blobs / pulled[two]["layers"][1]["digest"][7:]
    victim.write_bytes(b"tampered")
    proc = run_unlade("check")
    assert proc.returncode == 1 and "content hashes to" in proc.stdout

    missing = run_unlade("inspect", one)
    assert missing.returncode == 1 and "not in the store" in missing.stderr


def test_library_records_pulls(tmp_path: Path, tricky_image: PushedImage) -> None:
    from unlade import Client

    client = Client(tmp_path / "store", plain_http=True)
    result = client.pull(tricky_image.ref)
    (summary,) = client.images()
    assert summary.manifest_digest == result.manifest_digest
    assert client.check().ok
