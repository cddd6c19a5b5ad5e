"""``Client``: the one door to unlade as a library; the CLI is a thin shell over it.

    from unlade import Client
    client = Client(root="/var/lib/unlade", plain_http=True)
    result = client.pull("127.0.0.1:5000/app:1", rootfs="/srv/app-rootfs")
    print(result.manifest_digest, [layer.diff_id for layer in result.layers])
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import images as _images
from .auth import AuthDocument, Credentials, parse_creds
from .content import ContentStore
from .errors import StoreError
from .images import CheckResult, ImageSummary, PruneResult, store_lock
from .limits import DEFAULT_LIMITS, Limits
from .manifest import Platform
from .metastore import MetaStore
from .pull import LayerResult, Progress, Puller, PullResult, Source, VerifyingStream
from .reference import Reference, parse_reference
from .registry import RegistryClient, RegistryOptions, RetryPolicy
from .resources import ResourceProvider, local_path, read_resource
from .trust import Trust

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .decrypt import DecryptConfig
    from .policy import Policy, Verdict
    from .registries_conf import RegistriesConf
    from .snapshot import Snapshotter

__all__ = ["CheckResult", "Client", "ImageSummary", "LayerResult", "PruneResult",
           "PullResult", "default_root"]


def default_root(env: os._Environ[str] | dict[str, str] | None = None) -> Path:
    """``$UNLADE_ROOT``, else /var/lib/unlade for root, else ``$XDG_DATA_HOME/unlade``."""
    env = os.environ if env is None else env
    if env.get("UNLADE_ROOT"):
        return Path(env["UNLADE_ROOT"])
    if os.geteuid() == 0:
        return Path("/var/lib/unlade")
    data = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "unlade"


SNAPSHOTTERS = ("overlayfs", "native")


class Client:
    """Pulls images into a store at ``root``, unpacks them into snapshots, mounts them.

    Connection options apply to every registry this client talks to: ``plain_http`` to
    speak HTTP instead of HTTPS, ``cert_dir`` with extra CA certificates (``*.crt``) and
    client certificates (``*.cert``/``*.key``), ``creds`` ("user:password" or
    :class:`Credentials`) overriding the auth files, ``authfile`` to read only that file.
    ``snapshotter`` is the default kind of snapshots: "overlayfs", "native", or "auto"
    (overlayfs where the kernel and filesystem allow it, else native); ``unpack_workers``
    how many layers of one image are unpacked at once (default: the CPU count).

    Every pull is judged by a signature policy before any config or layer is fetched:
    ``policy`` (a policy.json path or a loaded :class:`~unlade.policy.Policy`; default:
    ``$UNLADE_POLICY``, then the user's and the system's containers policy, and without
    any, every image is accepted and :attr:`trust`'s ``note`` says so), with signatures
    found as ``registries_d`` says; ``insecure_policy`` accepts every image. The policy,
    ``registries_d`` and ``authfile`` (and keys the policy names) may be resource URIs:
    a path, ``file:///...``, or ``kbs:///repo/type/tag`` served by ``resources`` (a
    :class:`~unlade.resources.CdhResourceProvider`, the Confidential Data Hub), as in
    image-rs.

    Every operation that creates or uses snapshots holds the store lock shared, and
    :meth:`prune` holds it exclusively, so prune never removes what a running pull, unpack
    or mount uses; mounts are recorded, so it also keeps what a mounted bundle shows.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        plain_http: bool = False,
        cert_dir: str | os.PathLike[str] | None = None,
        creds: str | Credentials | None = None,
        authfile: str | os.PathLike[str] | None = None,
        retry: RetryPolicy | None = None,
        snapshotter: str = "auto",
        unpack_workers: int | None = None,
        max_concurrent_downloads: int = 3,
        policy: str | os.PathLike[str] | Policy | None = None,
        registries_d: str | os.PathLike[str] | None = None,
        insecure_policy: bool = False,
        resources: ResourceProvider | None = None,
        decryption_keys: Sequence[str] | DecryptConfig | None = None,
        require_encrypted: bool | Sequence[str] = False,
        limits: Limits | None = None,
        registries_conf: str | os.PathLike[str] | RegistriesConf | Literal[False] | None = None,
        connection: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.store = ContentStore(self.root)
        self._meta: MetaStore | None = None
        self._snapshotters: dict[str, Snapshotter] = {}
        if snapshotter not in (*SNAPSHOTTERS, "auto"):
            raise StoreError(f"unknown snapshotter {snapshotter!r}; choose overlayfs, "
                             "native or auto")
        self.default_snapshotter = snapshotter
        self.unpack_workers = unpack_workers
        if max_concurrent_downloads < 1:
            raise StoreError("max_concurrent_downloads must be at least 1")
        self.max_concurrent_downloads = max_concurrent_downloads
        self.trust = Trust(policy, registries_d, insecure_policy, resources)
        self.require_encrypted = require_encrypted
        self.decrypt = _decrypt_config(decryption_keys)
        #: What one image may contain (see :mod:`unlade.limits`).
        self.limits = limits or DEFAULT_LIMITS
        #: Mirrors, rewritten locations and blocked registries (containers-registries.conf):
        #: the file given, else the first of $CONTAINERS_REGISTRIES_CONF,
        #: ~/.config/containers/registries.conf, /etc/containers/registries.conf; False:
        #: none. Read at the first pull.
        self._registries_conf_arg = registries_conf
        self._registries_conf: RegistriesConf | None = None
        if isinstance(creds, str):
            creds = parse_creds(creds)
        auth: str | AuthDocument | None = os.fspath(authfile) if authfile else None
        if auth is not None and local_path(auth) is None:  # kbs:///: fetched once, now
            auth = AuthDocument(read_resource(auth, kbs=resources), auth)
        elif auth is not None:
            auth = os.fspath(local_path(auth) or auth)
        # ``connection``: more RegistryOptions (timeouts, proxy, insecure_hosts, retry),
        # as unlade.toml's [network] and [proxy] give them.
        extra = dict(connection or {})
        configured = extra.pop("retry", None)
        retry = retry or configured or RetryPolicy()
        self.registry = RegistryClient(
            RegistryOptions(
                plain_http=plain_http,
                cert_dir=os.fspath(cert_dir) if cert_dir else None,
                credentials=creds,
                authfile=auth,
                retry=retry,
                **extra,
            )
        )

    def pull(
        self,
        ref: str | Reference,
        *,
        rootfs: str | os.PathLike[str] | None = None,
        platform: str | Platform | None = None,
        progress: Progress | None = None,
        unpack: bool = True,
        snapshotter: str | None = None,
        decryption_keys: Sequence[str] | DecryptConfig | None = None,
        require_encrypted: bool | Sequence[str] | None = None,
    ) -> PullResult:
        """Fetch and verify ``ref`` into the store and unpack it: into snapshots (one per
        layer, shared with every image that has the same layers below) or, with
        ``rootfs``, into that directory as a flat copy instead.

        ``rootfs`` must be absent or an empty directory; it appears only complete.
        ``unpack=False`` only downloads. ``platform`` is ``os/arch[/variant]`` (the host's
        by default) for multi-platform images. Raises
        :class:`~unlade.errors.UnladeError` subclasses on failure; a failed pull leaves
        only verified blobs and committed snapshots behind.

        ``decryption_keys`` (skopeo's ``--decryption-key`` values, ``provider:NAME[:PARAMS]``
        included, or a :class:`~unlade.decrypt.DecryptConfig`) and ``require_encrypted``
        (True, or the scopes it applies to) replace the client's for this pull, as image-rs
        takes its decrypt config per ``pull_image`` call.
        """
        reference = parse_reference(ref) if isinstance(ref, str) else ref
        decrypt = self.decrypt if decryption_keys is None else _decrypt_config(
            decryption_keys)
        required = self.requires_encryption(reference, require_encrypted)
        plat = Platform.parse(platform) if isinstance(platform, str) else platform
        snap = self.snapshotter(snapshotter) if unpack and rootfs is None else None
        with store_lock(self.root, exclusive=False):
            puller = Puller(self.store, self.registry, progress)
            puller.unpack_workers = self.unpack_workers
            puller.download_workers = self.max_concurrent_downloads
            puller.admit = lambda r, data, digest: self.trust.check(self.registry, r, data,
                                                                    digest)
            puller.decrypt = decrypt
            puller.require_encrypted = required
            puller.limits = self.limits
            conf = self.registries_conf
            if conf is not None:
                puller.sources = lambda r: [Source(ep.reference, ep.mirror, ep.insecure)
                                            for ep in conf.pull_sources(r)]
            result = puller.pull(reference,
                                 rootfs=Path(rootfs).absolute() if rootfs is not None else None,
                                 platform=plat, snapshotter=snap)
            _images.record_pull(self.meta, self.store, str(reference), result.manifest_digest,
                                puller.extra_blobs, snap.name if snap is not None else "")
        return result

    @property
    def registries_conf(self) -> RegistriesConf | None:
        """The registries.conf in use (None when disabled)."""
        arg = self._registries_conf_arg
        if arg is False:
            return None
        if self._registries_conf is None:
            from .registries_conf import RegistriesConf

            self._registries_conf = arg if isinstance(arg, RegistriesConf) \
                else RegistriesConf.load(arg)
        return self._registries_conf

    def requires_encryption(self, ref: str | Reference,
                            setting: bool | Sequence[str] | None = None) -> bool:
        """Whether ``ref`` must be fully encrypted under ``setting`` (default: the
        client's ``require_encrypted``): True, False, or policy.json scopes."""
        setting = self.require_encrypted if setting is None else setting
        if isinstance(setting, bool):
            return setting
        from .policy import scope_matches

        reference = parse_reference(ref) if isinstance(ref, str) else ref
        return scope_matches(tuple(setting), reference)

    def _layer_options(self, descriptor: dict[str, Any], label: str) -> Any:
        """An encrypted stored layer's cipher options (its key unwrapped with this
        client's decryption keys), or None for a plain layer."""
        from .manifest import ENCRYPTED_LAYER_TYPES

        if descriptor.get("mediaType") not in ENCRYPTED_LAYER_TYPES:
            return None
        from .decrypt import DecryptConfig, layer_options

        return layer_options(descriptor.get("annotations") or {},
                             self.decrypt or DecryptConfig(), label)

    def verify(self, ref: str | Reference) -> Verdict | None:
        """Run the signature policy alone on ``ref`` (its manifest is fetched; nothing is
        stored): the verdict per requirement, or None when no policy applies (see
        :attr:`trust`'s ``note``)."""
        reference = parse_reference(ref) if isinstance(ref, str) else ref
        data, _ = self.registry.get_manifest(reference)
        if reference.digest:
            from .pull import _verify

            _verify(data, reference.digest, "manifest")
        digest = reference.digest or "sha256:" + hashlib.sha256(data).hexdigest()
        return self.trust.verdict(self.registry, reference, data, digest)

    @property
    def meta(self) -> MetaStore:
        """The store's records (``ROOT/meta.db``), opened on first use."""
        if self._meta is None:
            self._meta = MetaStore(self.root / "meta.db")
        return self._meta

    def _kind(self, kind: str | None) -> str:
        kind = kind or self.default_snapshotter
        if kind == "auto":
            from .snapshot import OverlaySnapshotter

            kind = "overlayfs" if OverlaySnapshotter.supported(self.root / "snapshots-overlayfs") \
                else "native"
        return kind

    def snapshotter(self, kind: str | None = None) -> Snapshotter:
        """The store's snapshotter of ``kind`` ("overlayfs", "native", or "auto"; default:
        this client's). Each kind keeps its snapshots under ``ROOT/snapshots-KIND``, and
        their records in the store's meta store."""
        from .snapshot import NativeSnapshotter, OverlaySnapshotter

        kind = self._kind(kind)
        classes = {"overlayfs": OverlaySnapshotter, "native": NativeSnapshotter}
        if kind not in classes:
            raise StoreError(f"unknown snapshotter {kind!r}; choose overlayfs or native")
        if kind not in self._snapshotters:
            base = self.root / f"snapshots-{kind}"
            if kind == "overlayfs" and not classes[kind].supported(base):
                raise StoreError(f"overlayfs cannot be mounted under {base} (no overlay "
                                 "support here); use --snapshotter native")
            self._snapshotters[kind] = classes[kind](base, self.meta)
        return self._snapshotters[kind]

    def unpack(self, ref: str, *, snapshotter: str | None = None) -> list[bool]:
        """Unpack a stored image into snapshots, one per layer (layers already unpacked by
        any image are reused); returns, per layer, whether it had to be unpacked."""
        with store_lock(self.root, exclusive=False):
            return self._unpack(ref, snapshotter)[1]

    def _unpack(self, ref: str, snapshotter: str | None) -> tuple[list[str], list[bool]]:
        """The image's chain IDs (bottom first) and, per layer, whether it was unpacked
        (the caller holds the store lock)."""
        from .snapshot import ChainLayer

        doc = self.inspect(ref)
        snap = self.snapshotter(snapshotter)
        items = []
        for i, layer in enumerate(doc["layers"]):
            media = doc["manifest"]["layers"][i]["mediaType"]

            descriptor = doc["manifest"]["layers"][i]

            def opener(layer: dict[str, str] = layer, media: str = media,
                       label: str = f"layer {i + 1}", descriptor: Any = descriptor
                       ) -> VerifyingStream:
                # only a layer that must really be unpacked needs its key
                return VerifyingStream(self.store, layer["digest"], media, layer["diff_id"],
                                       label, self._layer_options(descriptor, label),
                                       self.limits)

            items.append(ChainLayer(layer["chain_id"], opener, f"layer {i + 1}"))
        unpacked = snap.unpack_chain(items, workers=self.unpack_workers)
        return [item.chain_id for item in items], unpacked

    def mount(self, ref: str, target: str | os.PathLike[str], *, writable: bool = True,
              snapshotter: str | None = None) -> None:
        """Mount the image at the empty directory ``target`` (read-write by default:
        changes go to a private upper directory), unpacking what is missing first. The
        snapshotter is the one the image was pulled with unless one is given."""
        digest = _images.resolve(self.meta, ref)
        path = Path(target)
        if not path.is_dir():
            raise StoreError(f"mount target {path} is not a directory")
        if any(path.iterdir()):
            raise StoreError(f"mount target {path} is not empty")
        kind = snapshotter or self._image_snapshotter(digest)
        with store_lock(self.root, exclusive=False):
            chain = self._unpack(digest, kind)[0]
            self.snapshotter(kind).mounts(chain[::-1], path, writable=writable, image=digest)

    def _image_snapshotter(self, ref: str) -> str | None:
        image = self.meta.image(_images.resolve(self.meta, ref))
        return image.snapshotter if image is not None and image.snapshotter else None

    def unmount(self, target: str | os.PathLike[str], *, snapshotter: str | None = None) -> None:
        """Unmount what :meth:`mount` mounted at ``target`` and drop its private upper."""
        real = os.path.realpath(target)
        kind = snapshotter
        if kind is None:
            kind = next((m.snapshotter for m in self.meta.mounts() if m.target == real), None)
        if kind is None:
            raise StoreError(f"nothing of this store is mounted at {target}")
        self.snapshotter(kind).unmount(real)

    def bundle(self, ref: str, bundle_dir: str | os.PathLike[str], *,
               snapshotter: str | None = None) -> Path:
        """An OCI runtime bundle: ``DIR/rootfs`` (the image mounted read-write) and
        ``DIR/config.json`` generated from the image config. ``DIR`` must be absent or
        empty."""
        from .bundle import write_bundle

        bundle = Path(bundle_dir)
        if bundle.exists() and (not bundle.is_dir() or any(bundle.iterdir())):
            raise StoreError(f"bundle directory {bundle} is not empty")
        config = self.inspect(ref)["config"]
        (bundle / "rootfs").mkdir(parents=True, exist_ok=True)
        self.mount(ref, bundle / "rootfs", writable=True, snapshotter=snapshotter)
        try:
            return write_bundle(bundle, config)
        except BaseException:
            self.unmount(bundle / "rootfs")
            raise

    def images(self) -> list[ImageSummary]:
        """Every ref in the store with its image's digest, size and platform."""
        return _images.list_images(self.meta)

    def inspect(self, ref: str) -> dict[str, Any]:
        """Manifest, config, and layers with diffIDs and chainIDs of a stored image."""
        return _images.inspect_image(self.meta, self.store, ref)

    def remove(self, ref: str) -> str:
        """Drop ``ref``; its content is removed by :meth:`prune` once nothing uses it.
        Refused while it is the image's last ref and the image is mounted."""
        return _images.remove_image(self.meta, ref)

    def prune(self) -> PruneResult:
        """Remove images without refs, then blobs and snapshots nothing uses (waits for
        running pulls and mounts; keeps what mounted bundles show)."""
        return _images.prune(self.root, self.meta, self.store)

    def check(self) -> CheckResult:
        """Re-hash every blob and check every record against the content."""
        return _images.check(self.root, self.meta, self.store)


def _decrypt_config(keys: Sequence[str] | DecryptConfig | None) -> DecryptConfig | None:
    if isinstance(keys, str):
        raise TypeError("decryption_keys must be a list of key specs, not one string")
    if keys is None:
        return None
    from .decrypt import DecryptConfig

    if isinstance(keys, DecryptConfig):
        return keys
    return DecryptConfig.from_specs(keys) if keys else None
