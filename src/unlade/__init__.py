"""unlade: pull, verify and unpack OCI and Docker container images without a daemon."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "LayerResult", "PullResult", "UnladeError", "__version__"]

if TYPE_CHECKING:
    from .client import Client, LayerResult, PullResult
    from .errors import UnladeError


def __getattr__(name: str) -> Any:
    # Lazy, so that `unlade --help` does not pay for urllib3 and the decompressors.
    if name in ("Client", "LayerResult", "PullResult"):
        from . import client

        return getattr(client, name)
    if name == "UnladeError":
        from .errors import UnladeError

        return UnladeError
    raise AttributeError(name)
