"""``Client``: the one door to unlade as a library; the CLI is a thin shell over it.

    from unlade import Client
    client = Client(root="/var/lib/unlade", plain_http=True)
    result = client.pull("127.0.0.1:5000/app:1", rootfs="/srv/app-rootfs")
    print(result.manifest_digest, [layer.diff_id for layer in result.layers])
"""

from __future__ import annotations

import os
from pathlib import Path

from .auth import Credentials, parse_creds
from .content import ContentStore
from .manifest import Platform
from .pull import LayerResult, Progress, PullResult, pull_image
from .reference import Reference, parse_reference
from .registry import RegistryClient, RegistryOptions, RetryPolicy

__all__ = ["Client", "LayerResult", "PullResult", "default_root"]


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
        return pull_image(
            reference,
            store=self.store,
            registry=self.registry,
            rootfs=Path(rootfs).absolute() if rootfs is not None else None,
            platform=plat,
            progress=progress,
        )
