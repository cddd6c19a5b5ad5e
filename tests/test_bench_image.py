"""The benchmark image: built from real packages, pushed to a local registry, pulled back.

Builds the small variant (busybox + numpy/pandas wheels from PyPI, a few seconds), so the
figures in ``image.json`` are checked against what a real pull applies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.tools import require_tool

import unlade
from unlade.bench.image import BenchImage, LocalRegistry, build_image, push

pytestmark = [pytest.mark.root, pytest.mark.tools]


@pytest.fixture(scope="module")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> BenchImage:
    """The small image, built once for this module."""
    require_tool("busybox", "tar")
    return build_image(tmp_path_factory.mktemp("bench-small"), small=True, log=lambda _: None)


def test_small_image_pushes_and_pulls_with_the_built_figures(
    small_image: BenchImage, tmp_path: Path
) -> None:
    image = small_image
    workdir = image.layout.parent
    saved = json.loads((workdir / "image.json").read_text())
    assert BenchImage.from_json(saved) == image

    # Tens of MB with a few thousand files, in the shape of the full image.
    assert len(image.layers) == 2
    assert 10 << 20 < image.total_compressed < 60 << 20
    assert image.total_uncompressed > 2 * image.total_compressed
    assert 2000 < image.entries < 10000
    assert image.entries == sum(la.entries for la in image.layers)
    assert image.file_bytes == sum(la.file_bytes for la in image.layers)

    # The layout is a valid OCI layout whose config lists the diffIDs we measured.
    blobs = image.layout / "blobs" / "sha256"
    index = json.loads((image.layout / "index.json").read_text())
    [desc] = index["manifests"]
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == image.tag
    assert desc["digest"] == image.manifest_digest
    manifest = json.loads((blobs / image.manifest_digest[7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    assert config["rootfs"]["diff_ids"] == [la.diff_id for la in image.layers]
    assert [(d["digest"], d["size"]) for d in manifest["layers"]] == [
        (la.digest, la.size_compressed) for la in image.layers
    ]

    with LocalRegistry(tmp_path / "registry") as registry:
        ref = push(image, registry, "bench/image")
        assert ref == f"{registry.host}/bench/image:small"
        rootfs = tmp_path / "rootfs"
        result = unlade.Client(tmp_path / "store", plain_http=True).pull(ref, rootfs=rootfs)

    assert result.manifest_digest == image.manifest_digest
    assert [(la.digest, la.diff_id) for la in result.layers] == [
        (la["digest"], la["diff_id"]) for la in saved["layers"]
    ]
    assert [(la.entries, la.file_bytes) for la in result.layers] == [
        (la["entries"], la["file_bytes"]) for la in saved["layers"]
    ]
    assert os.readlink(rootfs / "bin" / "sh") == "/bin/busybox"
    assert (rootfs / "bin" / "busybox").stat().st_size > 500_000
    site = rootfs / "usr/local/lib/python3.11/site-packages"
    for package in ("numpy", "pandas", "dateutil", "pytz", "tzdata", "six.py"):
        assert (site / package).exists(), package
    # Usable as it stands: this interpreter imports a pure-Python package from the rootfs.
    out = subprocess.run([sys.executable, "-c", "import six; print(six.__version__)"],
                         env={"PYTHONPATH": str(site)}, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "1.17.0"


def test_second_build_is_cached(small_image: BenchImage) -> None:
    lines: list[str] = []
    again = build_image(small_image.layout.parent, small=True, log=lines.append)
    assert again == small_image
    assert lines == [f"bench image small: cached in {small_image.layout}"]


def test_local_registry_stops(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path / "registry")
    with registry:
        host = registry.host
        assert host.startswith("127.0.0.1:")
    with pytest.raises(unlade.UnladeError):
        _ = registry.host
