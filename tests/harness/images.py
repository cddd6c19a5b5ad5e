"""Build OCI image layouts from tar entries, and push them to a test registry.

Typical use::

    from harness import images as im

    layers = [
        [im.dir("etc"), im.file("etc/hostname", b"box\\n")],
        [im.whiteout("etc/hostname"), im.symlink("etc/localtime", "/usr/share/zoneinfo/UTC")],
    ]
    info = im.build_layout(tmp_path / "layout", "v1", layers)
    digest = im.push(info.layout, "v1", registry, "test/img")

Layer tars are written in PAX format by :mod:`tarfile` (UTF-8 names, no ``./`` prefix,
empty ``uname``/``gname``). ``xattrs`` become ``SCHILY.xattr.NAME`` PAX records; binary
values are passed through byte-exact.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import random
import shutil
import struct
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .registry import Registry

# ----------------------------------------------------------------------------------------------
# Media types

OCI_LAYOUT_VERSION = "1.0.0"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REF_NAME = "org.opencontainers.image.ref.name"

Compression = Literal["gzip", "zstd", "none"]
LAYER_MEDIA_TYPES: dict[str, str] = {
    "gzip": MT_OCI_LAYER_GZIP,
    "zstd": MT_OCI_LAYER_ZSTD,
    "none": MT_OCI_LAYER,
}

#: Default mtime of entries (2020-09-13T12:26:40Z).
DEFAULT_MTIME = 1_600_000_000

# ----------------------------------------------------------------------------------------------
# Entries


@dataclass
class Entry:
    """One tar entry of a layer. Build them with the helper functions below.

    ``mtime`` is seconds since the epoch: an ``int``, a ``float`` or an exact decimal string
    such as ``"1600000000.123456789"`` (written as a PAX ``mtime`` record, nanosecond exact).
    ``xattrs`` values may be ``bytes`` (byte-exact) or ``str`` (UTF-8 encoded).
    ``pax`` holds extra raw PAX records (override anything written by default).
    """

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int | float | str = DEFAULT_MTIME
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes | str] = field(default_factory=dict)
    uname: str = ""
    gname: str = ""
    pax: dict[str, str] = field(default_factory=dict)

    def tarinfo(self) -> tarfile.TarInfo:
        """The :class:`tarfile.TarInfo` for this entry (``size`` set from ``data``)."""
        ti = tarfile.TarInfo(self.name)
        ti.type = self.type
        ti.mode = self.mode
        ti.uid = self.uid
        ti.gid = self.gid
        ti.uname = self.uname
        ti.gname = self.gname
        ti.linkname = self.linkname
        ti.devmajor = self.devmajor
        ti.devminor = self.devminor
        ti.size = len(self.data) if self.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
        pax: dict[str, str] = {}
        if isinstance(self.mtime, str):
            ti.mtime = int(float(self.mtime))
            pax["mtime"] = self.mtime
        else:
            ti.mtime = self.mtime
        for key, value in self.xattrs.items():
            raw = value.encode() if isinstance(value, str) else value
            # tarfile writes str values; surrogateescape round-trips arbitrary bytes (it then
            # adds a "hdrcharset=BINARY" record, which readers ignore for SCHILY.xattr.*).
            pax[f"SCHILY.xattr.{key}"] = raw.decode("utf-8", "surrogateescape")
        pax.update(self.pax)
        ti.pax_headers = pax
        return ti


def file(
    name: str,
    data: bytes | str = b"",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int | float | str = DEFAULT_MTIME,
    xattrs: Mapping[str, bytes | str] | None = None,
    **kw: Any,
) -> Entry:
    """A regular file (``data`` str is UTF-8 encoded)."""
    if isinstance(data, str):
        data = data.encode()
    return Entry(name, tarfile.REGTYPE, data, mode, uid, gid, mtime,
                 xattrs=dict(xattrs or {}), **kw)


def directory(
    name: str,
    mode: int = 0o755,
    uid: int = 0,
    gid: int = 0,
    mtime: int | float | str = DEFAULT_MTIME,
    xattrs: Mapping[str, bytes | str] | None = None,
    **kw: Any,
) -> Entry:
    """A directory (tarfile appends the trailing ``/``)."""
    return Entry(name.rstrip("/"), tarfile.DIRTYPE, b"", mode, uid, gid, mtime,
                 xattrs=dict(xattrs or {}), **kw)


#: Alias of :func:`directory` (shadows the builtin only as ``images.dir``).
dir = directory


def symlink(name: str, target: str, uid: int = 0, gid: int = 0,
            mtime: int | float | str = DEFAULT_MTIME, **kw: Any) -> Entry:
    """A symbolic link ``name -> target`` (mode 0777)."""
    return Entry(name, tarfile.SYMTYPE, b"", 0o777, uid, gid, mtime, linkname=target, **kw)


def hardlink(name: str, target: str, mode: int = 0o644, uid: int = 0, gid: int = 0,
             mtime: int | float | str = DEFAULT_MTIME, **kw: Any) -> Entry:
    """A hard link to ``target`` (a path in this or a lower layer, relative to the root).

    The header's own mode/uid/gid/mtime are ignored by umoci (and Docker/containerd): the
    link shares the target's inode. Pass the target's values to avoid ambiguity.
    """
    return Entry(name, tarfile.LNKTYPE, b"", mode, uid, gid, mtime, linkname=target, **kw)


def chardev(name: str, major: int, minor: int, mode: int = 0o666, **kw: Any) -> Entry:
    """A character device."""
    return Entry(name, tarfile.CHRTYPE, mode=mode, devmajor=major, devminor=minor, **kw)


def blockdev(name: str, major: int, minor: int, mode: int = 0o660, **kw: Any) -> Entry:
    """A block device."""
    return Entry(name, tarfile.BLKTYPE, mode=mode, devmajor=major, devminor=minor, **kw)


def fifo(name: str, mode: int = 0o644, **kw: Any) -> Entry:
    """A named pipe."""
    return Entry(name, tarfile.FIFOTYPE, mode=mode, **kw)


def whiteout(path: str, **kw: Any) -> Entry:
    """Whiteout deleting ``path`` from lower layers: an empty file ``DIR/.wh.NAME``."""
    parent, _, base = path.rstrip("/").rpartition("/")
    return file(f"{parent}/.wh.{base}" if parent else f".wh.{base}", b"", **kw)


def opaque(directory_path: str, **kw: Any) -> Entry:
    """Opaque-directory marker ``DIR/.wh..wh..opq`` hiding lower-layer contents of the dir."""
    return file(f"{directory_path.rstrip('/')}/.wh..wh..opq", b"", **kw)


# ----------------------------------------------------------------------------------------------
# Layers, blobs, layouts


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """An uncompressed PAX tar of ``entries``, in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tf:
        for e in entries:
            ti = e.tarinfo()
            tf.addfile(ti, io.BytesIO(e.data) if ti.size else None)
    return buf.getvalue()


def _zstd_compress(data: bytes) -> bytes:
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14
    except ImportError:
        try:
            from backports import zstd  # type: ignore[import-not-found,no-redef]
        except ImportError:
            zstd = None  # type: ignore[assignment]
    if zstd is not None:
        return zstd.compress(data)
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True,
                          check=True).stdout


def compress(data: bytes, compression: Compression) -> bytes:
    """Compress a layer tar (gzip is deterministic: mtime 0, no file name)."""
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return _zstd_compress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Compact, key-sorted JSON encoding used for configs/manifests/indexes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def init_layout(layout: Path) -> Path:
    """Create an empty OCI layout at ``layout`` (idempotent)."""
    layout = Path(layout)
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    if not (layout / "index.json").exists():
        (layout / "index.json").write_bytes(
            canonical_json({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": []}))
    return layout


def write_blob(layout: Path, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
    """Store ``data`` under ``blobs/sha256`` and return its descriptor."""
    digest = sha256_digest(data)
    p = Path(layout) / "blobs" / "sha256" / digest.split(":", 1)[1]
    if not p.exists():
        p.write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}


def read_blob(layout: Path, digest: str) -> bytes:
    """The bytes of blob ``digest`` in ``layout``."""
    return (Path(layout) / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def tag_descriptor(layout: Path, tag: str, descriptor: Mapping[str, Any]) -> None:
    """Point ``tag`` (``org.opencontainers.image.ref.name``) at ``descriptor`` in index.json."""
    index_path = Path(layout) / "index.json"
    index = json.loads(index_path.read_text())
    manifests = [m for m in index.get("manifests", [])
                 if m.get("annotations", {}).get(REF_NAME) != tag]
    desc = copy.deepcopy(dict(descriptor))
    desc.setdefault("annotations", {})[REF_NAME] = tag
    manifests.append(desc)
    index["manifests"] = manifests
    index_path.write_bytes(canonical_json(index))


@dataclass
class ImageInfo:
    """What :func:`build_layout` wrote."""

    layout: Path
    tag: str
    manifest_digest: str
    manifest: dict[str, Any]
    manifest_bytes: bytes
    config_digest: str
    config: dict[str, Any]
    layer_digests: list[str]
    diff_ids: list[str]
    descriptor: dict[str, Any]


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def build_image(
    layout: Path,
    layers: Sequence[Sequence[Entry] | bytes],
    compression: Compression | Sequence[Compression] = "gzip",
    os: str = "linux",
    arch: str = "amd64",
    variant: str | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> ImageInfo:
    """Write config, layers and manifest blobs into ``layout`` without tagging them.

    Each layer is a list of :class:`Entry` or an already built uncompressed tar (bytes).
    ``compression`` is one value for all layers or one per layer. ``config_overrides`` is
    deep-merged into the image config (e.g. ``{"config": {"Env": [...]}}``).
    """
    layout = init_layout(Path(layout))
    comps = [compression] * len(layers) if isinstance(compression, str) else list(compression)
    if len(comps) != len(layers):
        raise ValueError("need one compression per layer")
    layer_descs, diff_ids = [], []
    for layer, comp in zip(layers, comps, strict=True):
        tar = layer if isinstance(layer, bytes) else layer_tar(layer)
        diff_ids.append(sha256_digest(tar))
        layer_descs.append(write_blob(layout, compress(tar, comp), LAYER_MEDIA_TYPES[comp]))
    config: dict[str, Any] = {
        "created": "2020-09-13T12:26:40Z",
        "architecture": arch,
        "os": os,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2020-09-13T12:26:40Z", "created_by": f"harness layer {i}"}
                    for i in range(len(layers))],
    }
    if variant:
        config["variant"] = variant
    if config_overrides:
        _deep_merge(config, config_overrides)
    config_bytes = canonical_json(config)
    config_desc = write_blob(layout, config_bytes, MT_OCI_CONFIG)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": config_desc,
        "layers": layer_descs,
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    manifest_bytes = canonical_json(manifest)
    platform = {"os": os, "architecture": arch, **({"variant": variant} if variant else {})}
    mdesc = write_blob(layout, manifest_bytes, MT_OCI_MANIFEST, platform=platform)
    return ImageInfo(layout, "", mdesc["digest"], manifest, manifest_bytes,
                     config_desc["digest"], config, [d["digest"] for d in layer_descs],
                     diff_ids, mdesc)


def build_layout(
    layout: Path,
    tag: str,
    layers: Sequence[Sequence[Entry] | bytes],
    compression: Compression | Sequence[Compression] = "gzip",
    os: str = "linux",
    arch: str = "amd64",
    variant: str | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> ImageInfo:
    """Build a single-platform image into OCI layout ``layout`` and tag it ``tag``.

    The layout may already hold other tags (they are kept; ``tag`` is replaced).
    See :func:`build_image` for the parameters.
    """
    info = build_image(layout, layers, compression, os, arch, variant, config_overrides,
                       annotations)
    desc = {k: v for k, v in info.descriptor.items() if k != "platform"}
    tag_descriptor(layout, tag, desc)
    info.tag = tag
    return info


@dataclass
class PlatformImage:
    """One platform of a multi-platform image for :func:`build_index_layout`."""

    arch: str
    layers: Sequence[Sequence[Entry] | bytes]
    os: str = "linux"
    variant: str | None = None
    compression: Compression | Sequence[Compression] = "gzip"


@dataclass
class IndexInfo:
    """What :func:`build_index_layout` wrote."""

    layout: Path
    tag: str
    index_digest: str
    index: dict[str, Any]
    index_bytes: bytes
    images: dict[str, ImageInfo]  # keyed by "os/arch[/variant]"


def default_platform_images() -> list[PlatformImage]:
    """linux/amd64 and linux/arm64/v8 images whose ``/etc/arch`` holds the architecture."""
    out = []
    for arch, variant in (("amd64", None), ("arm64", "v8")):
        out.append(PlatformImage(arch, [[
            directory("etc"),
            file("etc/arch", f"{arch}\n"),
            file(f"only-{arch}", arch),
        ]], variant=variant))
    return out


def build_index_layout(
    layout: Path,
    tag: str,
    platforms: Sequence[PlatformImage] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> IndexInfo:
    """Build an OCI image index (default: :func:`default_platform_images`) tagged ``tag``."""
    platforms = list(platforms) if platforms is not None else default_platform_images()
    images: dict[str, ImageInfo] = {}
    descs = []
    for p in platforms:
        info = build_image(layout, p.layers, p.compression, p.os, p.arch, p.variant)
        key = "/".join(x for x in (p.os, p.arch, p.variant) if x)
        images[key] = info
        descs.append(info.descriptor)
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": descs}
    if annotations:
        index["annotations"] = dict(annotations)
    index_bytes = canonical_json(index)
    idesc = write_blob(layout, index_bytes, MT_OCI_INDEX)
    tag_descriptor(layout, tag, idesc)
    return IndexInfo(Path(layout), tag, idesc["digest"], index, index_bytes, images)


def tagged_descriptor(layout: Path, tag: str) -> dict[str, Any]:
    """The index.json descriptor tagged ``tag``."""
    index = json.loads((Path(layout) / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get(REF_NAME) == tag:
            return m
    raise KeyError(f"tag {tag!r} not in {layout}/index.json")


# ----------------------------------------------------------------------------------------------
# Pushing


def skopeo_dest_args(registry: Registry) -> list[str]:
    """skopeo ``--dest-*`` options to reach ``registry`` (TLS trust and credentials)."""
    args = []
    if registry.tls:
        args.append(f"--dest-cert-dir={registry.cert_dir}")
    else:
        args.append("--dest-tls-verify=false")
    if registry.username is not None:
        args.append(f"--dest-creds={registry.username}:{registry.password}")
    else:
        args.append("--dest-no-creds")
    return args


def push(
    layout: Path,
    tag: str,
    registry: Registry,
    repo: str,
    dest_tag: str | None = None,
    fmt: Literal["oci", "v2s2"] = "oci",
    all_platforms: bool | None = None,
    extra_args: Sequence[str] = (),
) -> str:
    """Push ``oci:LAYOUT:TAG`` to ``registry/REPO:DEST_TAG`` with skopeo; return the digest.

    ``fmt="v2s2"`` converts to Docker schema 2 media types (gzip layers only; skopeo rejects
    zstd for v2s2). Multi-platform indexes are pushed with ``--multi-arch=all`` unless
    ``all_platforms`` is False. With ``fmt="oci"`` skopeo keeps blobs byte-identical,
    except that it gzips uncompressed (``tar``) layers; use :func:`push_raw` for exact bytes.
    """
    desc = tagged_descriptor(layout, tag)
    if all_platforms is None:
        all_platforms = desc["mediaType"] in (MT_OCI_INDEX, MT_DOCKER_LIST)
    with tempfile.TemporaryDirectory(prefix="skopeo-") as td:
        digestfile = Path(td) / "digest"
        cmd = ["skopeo", "--insecure-policy", "copy", "--quiet", f"--digestfile={digestfile}",
               f"--format={fmt}", *skopeo_dest_args(registry)]
        if all_platforms:
            cmd.append("--multi-arch=all")
        cmd += [*extra_args, f"oci:{layout}:{tag}",
                f"docker://{registry.host}/{repo}:{dest_tag or tag}"]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": td,
               "REGISTRY_AUTH_FILE": str(Path(td) / "auth.json")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"skopeo failed ({proc.returncode}): {' '.join(cmd)}\n"
                               f"{proc.stderr}{proc.stdout}")
        return digestfile.read_text().strip()


def push_raw(
    layout: Path,
    tag: str,
    registry: Registry,
    repo: str,
    dest_tag: str | None = None,
) -> str:
    """Push ``oci:LAYOUT:TAG`` byte-exact over the registry API (no skopeo); return digest.

    Uploads every blob and manifest reachable from the tagged descriptor unchanged (so
    uncompressed layers, unusual media types or hand-made manifests survive).
    """
    desc = tagged_descriptor(layout, tag)

    def put(d: Mapping[str, Any], ref: str | None) -> None:
        data = read_blob(layout, d["digest"])
        mt = d["mediaType"]
        if mt in (MT_OCI_INDEX, MT_DOCKER_LIST):
            for child in json.loads(data)["manifests"]:
                put(child, None)
        else:
            manifest = json.loads(data)
            for blob in [manifest["config"], *manifest.get("layers", [])]:
                registry.upload_blob_file(
                    repo, Path(layout) / "blobs" / "sha256" / blob["digest"].split(":", 1)[1],
                    blob["digest"])
        registry.put_manifest(repo, ref or d["digest"], data, mt)

    put(desc, dest_tag or tag)
    return desc["digest"]


@dataclass
class PushedImage:
    """An image built into an OCI layout and pushed to a registry."""

    layout: Path
    tag: str
    repo: str
    registry: Registry
    digest: str
    info: ImageInfo | IndexInfo

    @property
    def ref(self) -> str:
        """``127.0.0.1:PORT/repo:tag``."""
        return f"{self.registry.host}/{self.repo}:{self.tag}"

    @property
    def digest_ref(self) -> str:
        """``127.0.0.1:PORT/repo@sha256:...``."""
        return f"{self.registry.host}/{self.repo}@{self.digest}"


def build_and_push(
    layout: Path,
    registry: Registry,
    repo: str,
    tag: str,
    layers: Sequence[Sequence[Entry] | bytes],
    *,
    raw: bool = False,
    fmt: Literal["oci", "v2s2"] = "oci",
    **build_kw: Any,
) -> PushedImage:
    """:func:`build_layout` + :func:`push` (or :func:`push_raw` if ``raw``) in one go."""
    info = build_layout(layout, tag, layers, **build_kw)
    digest = (push_raw(layout, tag, registry, repo) if raw
              else push(layout, tag, registry, repo, fmt=fmt))
    return PushedImage(Path(layout), tag, repo, registry, digest, info)


# ----------------------------------------------------------------------------------------------
# A tricky image

#: ``security.capability`` v2 blob for ``cap_net_bind_service+ep``.
CAP_NET_BIND_SERVICE_EP = struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0)
#: A long directory component (150 bytes) and file component (200 bytes).
LONG_DIR = "long/" + "d" * 150
LONG_FILE = LONG_DIR + "/" + "f" * 200
UNICODE_NAME = "unicode/ünïcødé-文件-🙂.txt"


def tricky_layers() -> list[list[Entry]]:
    """Three layers exercising the awkward corners of layer application.

    Final state expected after applying all layers (paths relative to the rootfs):

    * ``dev/null`` char 1:3 mode 0666; ``dev/loop0`` block 7:0 mode 0660 gid 6;
      ``run/initctl`` fifo 0600.
    * ``bin/su`` mode 04755; ``usr/bin/wall`` 02755 gid 5; ``tmp`` dir 01777;
      ``srv/shared`` dir 03775 (setgid+sticky).
    * ``usr/bin/httpd`` has ``security.capability`` = :data:`CAP_NET_BIND_SERVICE_EP`;
      ``etc/motd`` has ``user.comment=hello``; ``data`` dir has ``user.dirattr=d``
      and (layer 3) mode 0700, uid/gid 1000.
    * hardlinks: {``usr/bin/python3``, ``usr/bin/python3.11``} (same layer),
      {``etc/passwd``, ``etc/passwd-link``} (link in layer 2 to a layer-1 file),
      {``opt/a``, ``opt/b``} (layer 3, same layer).
    * symlinks: ``bin/sh -> /usr/bin/dash`` (absolute, dangling),
      ``usr/lib/libfoo.so -> libfoo.so.1`` (relative), ``etc/localtime ->
      ../usr/share/zoneinfo/UTC`` (relative, dangling).
    * whiteouts: ``whiteme/gone.txt`` and ``whiteme/subdir/`` removed, ``whiteme/kept.txt``
      kept; ``opaque/`` (opaque in layer 2) contains only ``new``.
    * type changes: ``tc/file2dir`` file -> dir (with ``inside``), ``tc/dir2link`` dir ->
      symlink to ``/etc``, ``tc/link2file`` symlink -> file (content ``now a file\\n``).
    * ``etc/hostname`` replaced in layer 2 (content ``layer2\\n``); ``etc/empty`` is empty.
    * ``home/big`` dir uid/gid 100000; ``home/big/file`` uid 100000 gid 200000;
      ``home/huge`` uid 3000000 gid 3000001 (forces PAX uid/gid records).
    * :data:`LONG_FILE` (path > 255 bytes, component 200 bytes), :data:`UNICODE_NAME`.
    * ``etc/subsec`` mtime ``1600000000.123456789``; other files have distinct mtimes.
    """
    t = DEFAULT_MTIME
    layer1 = [
        directory("bin"),
        directory("dev"),
        directory("etc"),
        directory("usr"),
        directory("usr/bin"),
        directory("usr/lib"),
        directory("run"),
        directory("tmp", mode=0o1777),
        directory("srv"),
        directory("srv/shared", mode=0o3775, gid=50),
        directory("data"),
        directory("opt"),
        file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", mtime=t + 1),
        file("etc/hostname", "layer1\n", mtime=t + 2),
        file("etc/empty", b"", mtime=t + 3),
        file("etc/motd", "hi\n", mtime=t + 4, xattrs={"user.comment": "hello"}),
        file("etc/subsec", "ns\n", mtime="1600000000.123456789"),
        symlink("etc/localtime", "../usr/share/zoneinfo/UTC", mtime=t + 5),
        file("bin/su", b"\x7fELF su", mode=0o4755, mtime=t + 6),
        symlink("bin/sh", "/usr/bin/dash", mtime=t + 7),
        file("usr/bin/wall", b"\x7fELF wall", mode=0o2755, gid=5, mtime=t + 8),
        file("usr/bin/httpd", b"\x7fELF httpd", mode=0o755, mtime=t + 9,
             xattrs={"security.capability": CAP_NET_BIND_SERVICE_EP}),
        file("usr/bin/python3", b"\x7fELF python", mode=0o755, mtime=t + 10),
        hardlink("usr/bin/python3.11", "usr/bin/python3", mode=0o755, mtime=t + 10),
        file("usr/lib/libfoo.so.1", b"\x7fELF lib", mtime=t + 11),
        symlink("usr/lib/libfoo.so", "libfoo.so.1", mtime=t + 12),
        chardev("dev/null", 1, 3, mode=0o666, mtime=t + 13),
        blockdev("dev/loop0", 7, 0, mode=0o660, gid=6, mtime=t + 14),
        fifo("run/initctl", mode=0o600, mtime=t + 15),
        directory("whiteme"),
        file("whiteme/gone.txt", "gone\n"),
        file("whiteme/kept.txt", "kept\n", mtime=t + 16),
        directory("whiteme/subdir"),
        file("whiteme/subdir/deep", "deep\n"),
        directory("opaque"),
        file("opaque/old1", "old\n"),
        directory("opaque/sub"),
        file("opaque/sub/old2", "old\n"),
        directory("tc"),
        file("tc/file2dir", "was a file\n"),
        directory("tc/dir2link"),
        file("tc/dir2link/child", "child\n"),
        symlink("tc/link2file", "../etc/hostname"),
        directory("home"),
        directory("home/big", uid=100000, gid=100000),
        file("home/big/file", "big ids\n", uid=100000, gid=200000, mtime=t + 17),
        file("home/huge", "huge ids\n", uid=3000000, gid=3000001, mtime=t + 18),
    ]
    long_parts = LONG_FILE.split("/")
    layer1 += [directory("/".join(long_parts[:i])) for i in range(1, len(long_parts))]
    layer1 += [
        file(LONG_FILE, "long\n", mtime=t + 19),
        directory("unicode"),
        file(UNICODE_NAME, "ünïcødé\n", mtime=t + 20),
    ]
    layer2 = [
        directory("etc"),
        file("etc/hostname", "layer2\n", mtime=t + 100),
        hardlink("etc/passwd-link", "etc/passwd", mtime=t + 1),
        directory("whiteme"),
        whiteout("whiteme/gone.txt"),
        whiteout("whiteme/subdir"),
        directory("opaque"),
        opaque("opaque"),
        file("opaque/new", "new\n", mtime=t + 101),
        directory("tc"),
        directory("tc/file2dir"),
        file("tc/file2dir/inside", "inside\n", mtime=t + 102),
        symlink("tc/dir2link", "/etc", mtime=t + 103),
        file("tc/link2file", "now a file\n", mtime=t + 104),
    ]
    layer3 = [
        directory("data", mode=0o700, uid=1000, gid=1000, xattrs={"user.dirattr": "d"}),
        file("data/file", "data\n", uid=1000, gid=1000, mtime=t + 200),
        directory("opt"),
        file("opt/a", "shared inode\n", mtime=t + 201),
        hardlink("opt/b", "opt/a", mtime=t + 201),
    ]
    return [layer1, layer2, layer3]


# ----------------------------------------------------------------------------------------------
# Big layers (memory tests)


class _HashingWriter:
    """File-like that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.sink.write(b)


def big_layer_layout(
    layout: Path,
    size_bytes: int,
    tag: str = "big",
    file_size: int = 64 << 20,
    compressible_fraction: float = 0.0,
    compression: Literal["gzip", "zstd"] = "gzip",
    level: int | None = None,
    seed: int = 0,
) -> ImageInfo:
    """Build a one-layer image of ~``size_bytes`` of file data, streamed (constant memory).

    Files ``big/file-NNNN`` of ``file_size`` bytes are pseudo-random (incompressible: windows
    of a 16 MiB random pool, far apart for gzip's 32 KiB window); ``compressible_fraction``
    of every read (1 MiB) is zeros instead. Compressed with ``pigz``/``zstd`` at ``level``
    (default: gzip level 0 -- stored deflate blocks, ~8 s/GiB on 2 cores instead of ~27 s for
    level 1 -- when nothing is compressible, else 1; zstd level 1).
    """
    if level is None:
        level = 0 if compression == "gzip" and compressible_fraction == 0 else 1
    layout = init_layout(Path(layout))
    rng = random.Random(seed)
    pool = rng.randbytes(16 << 20)
    chunk = 1 << 20
    if compression == "gzip":
        tool = [shutil.which("pigz") or "gzip", f"-{level}", "-n", "-c"]
    else:
        tool = ["zstd", f"-{level}", "-q", "-c", "-T0"]
    tmp = layout / "blobs" / "sha256" / f"tmp-{rng.getrandbits(64):x}"
    out_sha = hashlib.sha256()
    out_size = 0

    def drain(src: IO[bytes], dst: IO[bytes]) -> None:  # hash the compressed stream
        nonlocal out_size
        while block := src.read(1 << 20):
            out_sha.update(block)
            out_size += len(block)
            dst.write(block)

    with open(tmp, "wb") as out:
        proc = subprocess.Popen(tool, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        drainer = threading.Thread(target=drain, args=(proc.stdout, out), daemon=True)
        drainer.start()
        hw = _HashingWriter(proc.stdin)
        try:
            with tarfile.open(fileobj=hw, mode="w|",  # type: ignore[call-overload]
                              format=tarfile.PAX_FORMAT, copybufsize=chunk) as tf:
                tf.addfile(directory("big").tarinfo())
                n_files = max(1, -(-size_bytes // file_size))
                for i in range(n_files):
                    this = min(file_size, size_bytes - i * file_size) if size_bytes else 0
                    ti = file(f"big/file-{i:04d}", mtime=DEFAULT_MTIME + i).tarinfo()
                    ti.size = this
                    tf.addfile(ti, _PseudoRandomReader(pool, this, compressible_fraction, rng))
        finally:
            proc.stdin.close()
            rc = proc.wait()
            drainer.join()
        if rc != 0:
            raise RuntimeError(f"{tool[0]} failed with {rc}")
    diff_id = "sha256:" + hw.sha.hexdigest()
    digest, size = "sha256:" + out_sha.hexdigest(), out_size
    tmp.rename(layout / "blobs" / "sha256" / digest.split(":", 1)[1])
    layer_desc = {"mediaType": LAYER_MEDIA_TYPES[compression], "digest": digest, "size": size}
    config: dict[str, Any] = {
        "created": "2020-09-13T12:26:40Z", "architecture": "amd64", "os": "linux",
        "config": {}, "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config_bytes = canonical_json(config)
    config_desc = write_blob(layout, config_bytes, MT_OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "config": config_desc,
                "layers": [layer_desc]}
    manifest_bytes = canonical_json(manifest)
    mdesc = write_blob(layout, manifest_bytes, MT_OCI_MANIFEST)
    tag_descriptor(layout, tag, mdesc)
    return ImageInfo(layout, tag, mdesc["digest"], manifest, manifest_bytes,
                     config_desc["digest"], config, [digest], [diff_id], mdesc)


class _PseudoRandomReader:
    """Reads exactly ``size`` bytes: each read is ``zeros_fraction`` zeros + a pool window."""

    def __init__(self, pool: bytes, size: int, zeros_fraction: float,
                 rng: random.Random) -> None:
        self.pool, self.left, self.zf, self.rng = pool, size, zeros_fraction, rng

    def read(self, n: int = -1) -> bytes:
        want = self.left if n is None or n < 0 else min(n, self.left)
        if want <= 0:
            return b""
        want = min(want, len(self.pool) // 2)
        z = int(want * self.zf)
        off = self.rng.randrange(0, len(self.pool) - want)
        data = bytes(z) + self.pool[off: off + want - z]
        self.left -= want
        return data
