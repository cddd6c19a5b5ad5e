"""Fuzz manifests, indexes and image configs: ``manifest.parse`` (with each Content-Type a
registry may send), ``parse_config``, ``layers_of``, ``Index.select``, ``Platform.parse``
and ``chain_ids``, plus the sigstore attachment manifest reader.

The input is one JSON document, read as a manifest or index and as an image config (a
document may hold ``layers`` and ``rootfs`` both, to reach ``layers_of``'s pairing); the
Content-Type is picked by the input's length. Only :class:`~unlade.errors.ManifestError`
(and :class:`~unlade.errors.InvalidDigest` for a bad digest) may come out.

    python fuzz/fuzz_manifest.py fuzz/corpus/manifest -max_total_time=60
"""

from __future__ import annotations

import contextlib

import _fuzzutil

with _fuzzutil.instrumented(__name__ == "__main__"):
    from unlade.errors import InvalidDigest, ManifestError
    from unlade.manifest import (
        DOCKER_LIST,
        DOCKER_MANIFEST,
        OCI_INDEX,
        OCI_MANIFEST,
        Index,
        Manifest,
        Platform,
        chain_ids,
        layers_of,
        parse,
        parse_config,
    )
    from unlade.sigsources import _signature_layers

CONTENT_TYPES = (
    None, "", "application/json", OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST,
    DOCKER_LIST + "; charset=utf-8", "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
PLATFORMS = (
    Platform("linux", "amd64"), Platform("linux", "arm64", "v8"), Platform("linux", "arm", "v7"),
    Platform("windows", "amd64"),
)
ALLOWED = (ManifestError, InvalidDigest)


def _index(index: Index) -> None:
    for want in (*PLATFORMS, None):
        try:
            chosen = index.select(want)
        except ManifestError:
            continue
        assert chosen in index.manifests
        assert chosen.platform is not None


def _manifest(manifest: Manifest, data: bytes) -> None:
    try:
        config = parse_config(data)
    except ManifestError:
        config = None
    if config is not None:
        try:
            layers = layers_of(manifest, config)
        except ALLOWED:
            pass
        else:
            assert len(layers) == len(manifest.layers)
            chain_ids([layer.diff_id for layer in layers])
    # Each layer paired with its own digest as diff_id, to reach the media type checks.
    fake = {"rootfs": {"type": "layers", "diff_ids": [d.digest for d in manifest.layers]}}
    try:
        layers = layers_of(manifest, fake)
    except ALLOWED:
        return
    assert [layer.diff_id for layer in layers] == fake["rootfs"]["diff_ids"]


def TestOneInput(data: bytes) -> None:
    content_type = CONTENT_TYPES[len(data) % len(CONTENT_TYPES)]
    try:
        result = parse(data, content_type)
    except ALLOWED:
        result = None
    if isinstance(result, Index):
        _index(result)
    elif isinstance(result, Manifest):
        _manifest(result, data)
    else:
        assert result is None
    with contextlib.suppress(ALLOWED):
        _signature_layers(data, "fuzz")
    if len(data) < 200:
        with contextlib.suppress(ManifestError):
            Platform.parse(_fuzzutil.text(data))


if __name__ == "__main__":
    _fuzzutil.main(TestOneInput)
