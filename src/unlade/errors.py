"""One exception hierarchy for everything unlade refuses or fails at.

Every error's ``str()`` is a single line that names the problem, so the CLI can print
``unlade: <error>`` and exit 1 without a traceback, and library users can catch by kind.
"""

from __future__ import annotations


class UnladeError(Exception):
    """Base of all unlade errors; ``str(err)`` is a one-line, user-facing message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))


class InvalidReference(UnladeError, ValueError):
    """An image reference does not follow the distribution reference grammar."""


class InvalidDigest(UnladeError, ValueError):
    """A digest string is malformed or uses an unsupported algorithm."""


class ConfigError(UnladeError):
    """A configuration or credentials file is unreadable or malformed."""


class RegistryError(UnladeError):
    """The registry could not be reached or answered with an error."""


class RegistryUnreachable(RegistryError):
    """Name resolution, connection or TLS failed before any HTTP answer."""


class RegistryTimeout(RegistryUnreachable):
    """A registry, token service or redirect target stopped answering, or answered too
    slowly, within the configured timeouts (after the configured retries)."""


class Unauthorized(RegistryError):
    """The registry refused our credentials (or the lack of them)."""


class NotFound(RegistryError):
    """The registry does not know the repository, manifest or blob."""


class ManifestError(UnladeError):
    """A manifest or config is malformed, too large, or of an unsupported kind."""


class UnsupportedMediaType(ManifestError):
    """A manifest or layer has a media type unlade does not handle."""


class PlatformNotFound(ManifestError):
    """An index offers no manifest for the requested platform."""


class DigestMismatch(UnladeError):
    """Content does not hash to the digest (or size) it was announced with."""


class LayerError(UnladeError):
    """A layer's tar stream cannot be applied."""


class LayerEscape(LayerError):
    """A layer entry tries to reach outside the root it is applied to."""


class TruncatedLayer(LayerError):
    """A layer stream ends inside an entry or header."""


class MalformedLayer(LayerError):
    """A layer stream holds an invalid tar header or an invalid whiteout."""


class LimitExceeded(UnladeError):
    """An image goes over one of the configured limits (:mod:`unlade.limits`): too many
    layers, a manifest or config too large."""


class ManifestTooLarge(LimitExceeded, ManifestError):
    """A manifest (or index) is larger than the manifest_size limit."""


class LayerLimitExceeded(LimitExceeded, LayerError):
    """A layer goes over a limit: too large uncompressed, too many entries, a path or an
    xattr too long."""


class StoreError(UnladeError):
    """The content store or a target directory cannot be used."""


class NoSpace(StoreError):
    """A write failed because the filesystem is full."""


class Interrupted(UnladeError):
    """The operation was cancelled (Ctrl-C); nothing half-written was left behind."""


class PolicyError(ConfigError):
    """A signature policy (policy.json) or a key it names cannot be read or is invalid."""


class PolicyRejected(UnladeError):
    """The signature policy refuses the image: no requirement may be left unmet."""


class SignatureSourceError(UnladeError):
    """Signatures could not be fetched: a lookaside, the registry's signature extension or
    a sigstore attachment failed, misbehaved, or sent more than we are willing to read."""


class DecryptionError(LayerError):
    """An encrypted layer cannot be decrypted: no given key opens it, its encryption
    options are malformed, or its content fails the integrity (HMAC) check."""


class RegistryBlocked(UnladeError):
    """Every place an image could be pulled from is blocked by registries.conf."""
