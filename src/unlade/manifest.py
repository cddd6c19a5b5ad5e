"""Manifests, indexes, configs and platforms: the OCI and Docker v2 schema 2 vocabulary.

Parsing is strict about what would change the result (media types, digests, sizes,
diff_ids) and lenient about the rest, like containerd. Schema 1, encrypted layers and
unknown media types are refused with the media type named, never guessed at.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .decompress import GZIP, NONE, ZSTD
from .errors import ManifestError, PlatformNotFound, UnsupportedMediaType
from .reference import validate_digest

MAX_MANIFEST = 4 << 20  # bytes; checked before parsing, as containerd does

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

CONFIG_TYPES = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)

LAYER_TYPES: dict[str, str] = {
    "application/vnd.oci.image.layer.v1.tar": NONE,
    "application/vnd.oci.image.layer.v1.tar+gzip": GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": NONE,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": GZIP,
    "application/vnd.docker.image.rootfs.diff.tar": NONE,
}
#: ocicrypt's encrypted layers (containers/ocicrypt spec/spec.go), by what is inside.
ENCRYPTED_LAYER_TYPES: dict[str, str] = {
    "application/vnd.oci.image.layer.v1.tar+encrypted": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip+encrypted": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd+encrypted": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+encrypted": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip+encrypted": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd+encrypted": "zstd",
}

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386",
         "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]``, as ``--platform`` takes it."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ManifestError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0].lower(), parts[1].lower(), parts[2].lower() if len(parts) > 2 else "")

    @classmethod
    def host(cls) -> Platform:
        machine = _platform.machine().lower()
        arch = _ARCH.get(machine, machine)
        variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine, "")
        return cls("linux", arch, variant)

    def matches(self, other: Platform, *, strict_variant: bool) -> bool:
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        if not strict_variant:
            return True
        norm = {"arm64": "v8"}.get(self.architecture, "")
        return (self.variant or norm) == (other.variant or norm)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise ManifestError(f"{what} is not a JSON object")
        digest, size = obj.get("digest"), obj.get("size")
        if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
            raise ManifestError(f"{what} lacks a valid digest and size")
        plat = obj.get("platform")
        annotations, urls = obj.get("annotations") or {}, obj.get("urls") or []
        if not isinstance(annotations, dict) or not isinstance(urls, list):
            raise ManifestError(f"{what} has malformed annotations or urls")
        return cls(
            media_type=str(obj.get("mediaType", "")),
            digest=validate_digest(digest),
            size=size,
            platform=Platform(str(plat.get("os", "")), str(plat.get("architecture", "")),
                              str(plat.get("variant", "")))
            if isinstance(plat, dict) else None,
            annotations={str(k): str(v) for k, v in annotations.items()},
            urls=tuple(str(u) for u in urls),
        )


@dataclass(frozen=True)
class Layer:
    descriptor: Descriptor
    compression: str
    diff_id: str
    encrypted: bool = False  # ocicrypt: the blob must be decrypted before it is inflated


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]

    def select(self, want: Platform | None) -> Descriptor:
        """The manifest for ``want`` (the host when None); variant respected if asked."""
        target = want or Platform.host()
        candidates = [d for d in self.manifests
                      if d.platform and d.platform.matches(target, strict_variant=True)]
        if not candidates and not (want and want.variant):
            candidates = [d for d in self.manifests
                          if d.platform and d.platform.matches(target, strict_variant=False)]
        if not candidates:
            offered = ", ".join(sorted({str(d.platform) for d in self.manifests if d.platform}))
            raise PlatformNotFound(
                f"no manifest for platform {target}; the image offers: {offered or 'none'}"
            )
        return candidates[0]


def _load(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST:
        raise ManifestError(f"{what} is larger than {MAX_MANIFEST} bytes")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ManifestError(f"{what} is not valid JSON ({str(err)[:100]})") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return obj


def parse(data: bytes, content_type: str | None) -> Manifest | Index:
    """Parse a manifest or index; the JSON ``mediaType`` wins over a generic Content-Type."""
    obj = _load(data, "manifest")
    media_type = obj.get("mediaType") or (content_type or "").split(";")[0].strip()
    if not media_type:
        media_type = OCI_INDEX if "manifests" in obj else OCI_MANIFEST
    if media_type in SCHEMA1 or obj.get("schemaVersion") == 1:
        raise UnsupportedMediaType(
            "Docker schema 1 manifests are not supported (deprecated since 2019); "
            "re-push the image with a current tool"
        )
    if media_type in INDEX_TYPES:
        items = obj.get("manifests")
        if not isinstance(items, list):
            raise ManifestError("index has no manifests list")
        return Index(media_type, tuple(Descriptor.from_json(m, "index entry") for m in items))
    if media_type in MANIFEST_TYPES:
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise ManifestError("manifest has no layers list")
        return Manifest(
            media_type,
            Descriptor.from_json(obj.get("config"), "manifest config"),
            tuple(Descriptor.from_json(lay, f"layer {i + 1}") for i, lay in enumerate(layers)),
        )
    raise UnsupportedMediaType(
        f"unsupported manifest media type {media_type!r}; supported: {ACCEPT}"
    )


def parse_config(data: bytes) -> dict[str, Any]:
    return _load(data, "image config")


def layers_of(manifest: Manifest, config: dict[str, Any]) -> list[Layer]:
    """Pair each layer with its compression and its diffID from the config."""
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(manifest.layers):
        raise ManifestError(
            f"image config lists {len(diff_ids) if isinstance(diff_ids, list) else 'no'} "
            f"diff_ids for {len(manifest.layers)} layers"
        )
    out = []
    for i, (desc, diff_id) in enumerate(zip(manifest.layers, diff_ids, strict=True)):
        compression = LAYER_TYPES.get(desc.media_type)
        encrypted = compression is None and desc.media_type in ENCRYPTED_LAYER_TYPES
        if encrypted:
            compression = ENCRYPTED_LAYER_TYPES[desc.media_type]
        if compression is None:
            raise UnsupportedMediaType(
                f"layer {i + 1} has unsupported media type {desc.media_type!r}"
            )
        if not isinstance(diff_id, str):
            raise ManifestError(f"diff_id {i + 1} is not a string")
        out.append(Layer(desc, compression, validate_digest(diff_id), encrypted))
    return out


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The OCI chain IDs of a layer stack: what identifies an unpacked layer together with
    everything below it (and what containerd keys its committed snapshots by)."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else
                   "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out
