"""Manifest, index and config parsing; platform choice; refusals that name what was offered."""

from __future__ import annotations

import json

import pytest

from unlade.errors import ManifestError, PlatformNotFound, UnsupportedMediaType
from unlade.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MAX_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Index,
    Manifest,
    Platform,
    layers_of,
    parse,
)

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


def _manifest(media_type: str, layer_type: str) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1,
                   "size": 10},
        "layers": [{"mediaType": layer_type, "digest": D2, "size": 20}],
    }).encode()


def _index(media_type: str, platforms: list[tuple[str, str, str]]) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": media_type,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:" + f"{i:x}" * 64,
                       "size": 1, "platform": {"os": o, "architecture": a, "variant": v}}
                      for i, (o, a, v) in enumerate(platforms, 1)],
    }).encode()


@pytest.mark.parametrize("media_type,layer_type,compression", [
    (OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar+gzip", "gzip"),
    (OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar+zstd", "zstd"),
    (OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar", "none"),
    (OCI_MANIFEST, "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "gzip"),
    (DOCKER_MANIFEST, "application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"),
    (DOCKER_MANIFEST, "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "gzip"),
    (DOCKER_MANIFEST, "application/vnd.docker.image.rootfs.diff.tar", "none"),
])
def test_layer_media_types(media_type: str, layer_type: str, compression: str) -> None:
    manifest = parse(_manifest(media_type, layer_type), None)
    assert isinstance(manifest, Manifest)
    (layer,) = layers_of(manifest, {"rootfs": {"type": "layers", "diff_ids": [D3]}})
    assert (layer.compression, layer.diff_id, layer.descriptor.digest) == (compression, D3, D2)


@pytest.mark.parametrize(("layer_type", "compression"), [
    ("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", "gzip"),
    ("application/vnd.oci.image.layer.v1.tar+zstd+encrypted", "zstd"),
    ("application/vnd.oci.image.layer.v1.tar+encrypted", "none"),
])
def test_encrypted_layer_types(layer_type: str, compression: str) -> None:
    manifest = parse(_manifest(OCI_MANIFEST, layer_type), None)
    assert isinstance(manifest, Manifest)
    (layer,) = layers_of(manifest, {"rootfs": {"diff_ids": [D3]}})
    assert (layer.compression, layer.encrypted) == (compression, True)


@pytest.mark.parametrize("layer_type,needle", [
    ("application/vnd.oci.image.layer.v1.tar+bzip2+encrypted", "bzip2"),
    ("application/x-custom", "application/x-custom"),
])
def test_unknown_layer_type_is_named(layer_type: str, needle: str) -> None:
    manifest = parse(_manifest(OCI_MANIFEST, layer_type), None)
    assert isinstance(manifest, Manifest)
    with pytest.raises(UnsupportedMediaType, match=needle):
        layers_of(manifest, {"rootfs": {"diff_ids": [D3]}})


def test_diff_id_count_must_match() -> None:
    manifest = parse(_manifest(OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar"), None)
    assert isinstance(manifest, Manifest)
    with pytest.raises(ManifestError, match="2 diff_ids for 1 layers"):
        layers_of(manifest, {"rootfs": {"diff_ids": [D3, D3]}})


def test_schema1_and_unknown_manifest_types_are_refused() -> None:
    with pytest.raises(UnsupportedMediaType, match="schema 1"):
        parse(json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode(), None)
    with pytest.raises(UnsupportedMediaType, match="application/vnd.foo.*supported"):
        parse(json.dumps({"mediaType": "application/vnd.foo"}).encode(), None)


def test_oversized_and_invalid_manifests() -> None:
    with pytest.raises(ManifestError, match="larger than"):
        parse(b" " * (MAX_MANIFEST + 1), None)
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse(b"{nope", None)
    bad = json.loads(_manifest(OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar"))
    bad["layers"][0]["digest"] = "sha256:../../x"
    with pytest.raises(Exception, match="digest"):
        parse(json.dumps(bad).encode(), None)


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_LIST])
def test_platform_selection(media_type: str) -> None:
    index = parse(_index(media_type, [("linux", "amd64", ""), ("linux", "arm64", "v8"),
                                      ("linux", "arm", "v6"), ("linux", "arm", "v7")]), None)
    assert isinstance(index, Index)

    def pick(text: str) -> str:
        return index.select(Platform.parse(text)).digest

    assert pick("linux/amd64") == "sha256:" + "1" * 64
    assert pick("linux/arm64") == "sha256:" + "2" * 64  # v8 is arm64's default variant
    assert pick("linux/arm/v7") == "sha256:" + "4" * 64
    assert pick("linux/arm/v6") == "sha256:" + "3" * 64
    with pytest.raises(PlatformNotFound, match="linux/arm/v5.*offers: linux/amd64, "
                       "linux/arm/v6, linux/arm/v7, linux/arm64/v8"):
        pick("linux/arm/v5")
    with pytest.raises(PlatformNotFound, match="windows/amd64"):
        pick("windows/amd64")


def test_platform_parse_errors() -> None:
    for bad in ("linux", "linux/", "/amd64", "a/b/c/d"):
        with pytest.raises(ManifestError, match="invalid platform"):
            Platform.parse(bad)
