"""``Client``: the one door to unlade as a library; the CLI is a thin shell over it.

    from unlade import Client
    client = Client(root="/var/lib/unlade", plain_http=True)
    result = client.pull("127.0.0.1:5000/app:1", rootfs="/srv/app-rootfs")
    print(result.manifest_digest, [layer.diff_id for layer in result.layers])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import images as _images
from .auth import Credentials, parse_creds
from .content import ContentStore
from .errors import StoreError
from .images import CheckResult, ImageSummary, PruneResult, store_lock
from .manifest import Platform
from .metastore import MetaStore
from .pull import LayerResult, Progress, Puller, PullResult, VerifyingStream
from .reference import Reference, parse_reference
from .registry import RegistryClient, RegistryOptions, RetryPolicy

if TYPE_CHECKING:
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


class Client:
    """Pulls images into a content store at ``root`` (and unpacks them on request).

    Connection options apply to every registry this client talks to: ``plain_http`` to
    speak HTTP instead of HTTPS, ``cert_dir`` with extra CA certificates (``*.crt``) and
    client certificates (``*.cert``/``*.key``), ``creds`` ("user:password" or
    :class:`Credentials`) overriding the auth files, ``authfile`` to read only that file.
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
    ) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.store = ContentStore(self.root)
        self._meta: MetaStore | None = None
        self._snapshotters: dict[str, Snapshotter] = {}
        if isinstance(creds, str):
            creds = parse_creds(creds)
        self.registry = RegistryClient(
            RegistryOptions(
                plain_http=plain_http,
                cert_dir=os.fspath(cert_dir) if cert_dir else None,
                credentials=creds,
                authfile=os.fspath(authfile) if authfile else None,
                retry=retry or RetryPolicy(),
            )
        )

    def pull(
        self,
        ref: str | Reference,
        *,
        rootfs: str | os.PathLike[str] | None = None,
        platform: str | Platform | None = None,
        progress: Progress | None = None,
    ) -> PullResult:
        """Fetch and verify ``ref`` into the store; with ``rootfs``, also unpack it there.

        ``rootfs`` must be absent or an empty directory; it appears only complete.
        ``platform`` is ``os/arch[/variant]`` (the host's by default) for multi-platform
        images. Raises :class:`~unlade.errors.UnladeError` subclasses on failure.
        """
        reference = parse_reference(ref) if isinstance(ref, str) else ref
        plat = Platform.parse(platform) if isinstance(platform, str) else platform
        with store_lock(self.root, exclusive=False):
            puller = Puller(self.store, self.registry, progress)
            result = puller.pull(reference,
                                 rootfs=Path(rootfs).absolute() if rootfs is not None else None,
                                 platform=plat)
            _images.record_pull(self.meta, self.store, str(reference), result.manifest_digest,
                                puller.extra_blobs)
        return result

    @property
    def meta(self) -> MetaStore:
        """The store's records (``ROOT/meta.db``), opened on first use."""
        if self._meta is None:
            self._meta = MetaStore(self.root / "meta.db")
        return self._meta

    def snapshotter(self, kind: str = "overlayfs") -> Snapshotter:
        """The store's snapshotter of ``kind`` ("overlayfs" or "native"); each kind keeps
        its snapshots and their records under ``ROOT/snapshots-KIND``."""
        from .snapshot import NativeSnapshotter, OverlaySnapshotter

        classes = {"overlayfs": OverlaySnapshotter, "native": NativeSnapshotter}
        if kind not in classes:
            raise StoreError(f"unknown snapshotter {kind!r}; choose overlayfs or native")
        if kind not in self._snapshotters:
            base = self.root / f"snapshots-{kind}"
            if kind == "overlayfs" and not classes[kind].supported(base):
                raise StoreError(f"overlayfs cannot be mounted under {base}; "
                                 "use --snapshotter native")
            self._snapshotters[kind] = classes[kind](base, MetaStore(base / "meta.db"))
        return self._snapshotters[kind]

    def unpack(self, ref: str, *, snapshotter: str = "overlayfs") -> list[bool]:
        """Unpack a stored image into snapshots, one per layer (layers already unpacked by
        any image are reused); returns, per layer, whether it had to be unpacked."""
        return self._unpack(ref, snapshotter)[1]

    def _unpack(self, ref: str, snapshotter: str) -> tuple[list[str], list[bool]]:
        """The image's chain IDs (bottom first) and, per layer, whether it was unpacked."""
        doc = self.inspect(ref)
        snap = self.snapshotter(snapshotter)
        unpacked = []
        parent = None
        for i, layer in enumerate(doc["layers"]):  # type: ignore[union-attr]
            opened = []
            manifest_layer = doc["manifest"]["layers"][i]  # type: ignore[index]

            def opener(layer: dict[str, str] = layer, media: str = manifest_layer["mediaType"],
                       opened: list[bool] = opened) -> VerifyingStream:
                opened.append(True)
                return VerifyingStream(self.store, layer["digest"], media, layer["diff_id"])

            snap.unpack(layer["chain_id"], parent, opener, layer=f"layer {i + 1}")
            unpacked.append(bool(opened))
            parent = layer["chain_id"]
        return [lay["chain_id"] for lay in doc["layers"]], unpacked  # type: ignore[union-attr]

    def mount(self, ref: str, target: str | os.PathLike[str], *, writable: bool = True,
              snapshotter: str = "overlayfs") -> None:
        """Mount the image at ``target`` (read-write by default: changes go to a private
        upper directory), unpacking what is missing first."""
        chain = self._unpack(ref, snapshotter)[0]
        self.snapshotter(snapshotter).mounts(chain[::-1], target, writable=writable)

    def unmount(self, target: str | os.PathLike[str], *, snapshotter: str = "overlayfs") -> None:
        self.snapshotter(snapshotter).unmount(target)

    def bundle(self, ref: str, bundle_dir: str | os.PathLike[str], *,
               snapshotter: str = "overlayfs") -> Path:
        """An OCI runtime bundle: ``DIR/rootfs`` (the image mounted read-write) and
        ``DIR/config.json`` generated from the image config."""
        from .bundle import write_bundle

        bundle = Path(bundle_dir)
        (bundle / "rootfs").mkdir(parents=True, exist_ok=True)
        self.mount(ref, bundle / "rootfs", writable=True, snapshotter=snapshotter)
        try:
            return write_bundle(bundle, self.inspect(ref)["config"])  # type: ignore[arg-type]
        except BaseException:
            self.unmount(bundle / "rootfs", snapshotter=snapshotter)
            raise

    def images(self) -> list[ImageSummary]:
        """Every ref in the store with its image's digest, size and platform."""
        return _images.list_images(self.meta)

    def inspect(self, ref: str) -> dict[str, object]:
        """Manifest, config, and layers with diffIDs and chainIDs of a stored image."""
        return _images.inspect_image(self.meta, self.store, ref)

    def remove(self, ref: str) -> str:
        """Drop ``ref``; its content is removed by :meth:`prune` once nothing uses it."""
        return _images.remove_image(self.meta, ref)

    def prune(self) -> PruneResult:
        """Remove images without refs and blobs no image uses (waits for running pulls)."""
        return _images.prune(self.root, self.meta, self.store)

    def check(self) -> CheckResult:
        """Re-hash every blob and check every record against the content."""
        return _images.check(self.meta, self.store)
