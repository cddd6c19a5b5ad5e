"""Where image signatures come from, found exactly as containers/image finds them.

containers/image (``docker/registries_d.go``, ``docker/docker_image_src.go``,
``docker/docker_client.go``) reads the signatures of one manifest digest from:

* the registry's ``X-Registry-Supports-Signatures`` API extension (OpenShift's), whenever the
  registry announces it on ``GET /v2/`` -- whatever registries.d says;
* otherwise a *lookaside* store: the URL registries.d gives for the image, or the built-in
  default directory, holding ``signature-1``, ``signature-2``, … under the manifest digest;
* and in addition, if registries.d says ``use-sigstore-attachments: true``, the cosign
  attachments tagged ``sha256-<hex>.sig`` in the image's own repository.

This module only fetches: every byte returned is untrusted until the policy engine has
verified it. Counts and sizes are capped because a lookaside or registry may be hostile, and
registry traffic goes through :class:`~unlade.registry.RegistryClient` so that credentials,
TLS trust, retries and timeouts are those of the pull itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import yaml
from urllib3.exceptions import HTTPError, ProtocolError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from .errors import (
    ConfigError,
    DigestMismatch,
    ManifestError,
    NotFound,
    RegistryError,
    RegistryUnreachable,
    SignatureSourceError,
)
from .manifest import MAX_MANIFEST, OCI_MANIFEST
from .reference import Reference, validate_digest
from .registry import RegistryClient, _discard

__all__ = [
    "BUNDLE_ANNOTATION",
    "CERTIFICATE_ANNOTATION",
    "CHAIN_ANNOTATION",
    "MAX_SIGNATURES",
    "MAX_SIGNATURE_SIZE",
    "SIGNATURE_ANNOTATION",
    "SIMPLE_SIGNING_MEDIA_TYPE",
    "RegistriesD",
    "ScopeConfig",
    "SignatureConfig",
    "Signatures",
    "SigstoreSignature",
    "default_lookaside",
    "docker_scopes",
    "fetch_signatures",
    "fetch_sigstore_signatures",
    "fetch_simple_signatures",
    "lookaside_url",
    "sigstore_attachment_tag",
]

# containers/image's docker_image_src.go treats a 128th lookaside signature as a server
# error; accepting at most 127 and refusing when a 128th exists is the same behaviour.
MAX_SIGNATURES = 127
MAX_SIGNATURE_SIZE = 4 << 20  # iolimits.MaxSignatureBodySize
MAX_SIGNATURE_LIST_SIZE = 4 << 20  # iolimits.MaxSignatureListBodySize
_MAX_TAG = 128  # the distribution reference grammar's tag length

SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"

SYSTEM_REGISTRIES_D = Path("/etc/containers/registries.d")
USER_REGISTRIES_D = Path(".config/containers/registries.d")  # under $HOME
_ROOT_LOOKASIDE = "/var/lib/containers/sigstore"
_USER_LOOKASIDE = Path(".local/share/containers/sigstore")  # under $HOME

# What Go's url.URL.EscapedPath leaves unescaped besides letters, digits and "-_.~".
_PATH_SAFE = "/$&+,:;=@"


# -- registries.d -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScopeConfig:
    """One configuration section of registries.d: a ``docker`` scope or ``default-docker``.

    Empty strings and ``None`` mean "not set here", so that a more general scope can still
    supply the value (containers/image falls through key by key, see :meth:`config_for`).
    ``sigstore``/``sigstore-staging`` are the older names of the lookaside keys.
    """

    lookaside: str = ""
    lookaside_staging: str = ""
    sigstore: str = ""
    sigstore_staging: str = ""
    use_sigstore_attachments: bool | None = None
    source: str = ""  # the file this section was read from, for messages

    def read_url(self) -> str:
        """The lookaside to read from: ``lookaside``, else the older ``sigstore``."""
        return self.lookaside or self.sigstore

    def write_url(self) -> str:
        """The lookaside to write to (staging first), as ``signatureTopLevel(write=true)``."""
        return self.lookaside_staging or self.sigstore_staging or self.read_url()


@dataclass(frozen=True)
class SignatureConfig:
    """What registries.d says about one image: its lookaside URL (``None`` when no scope sets
    one, in which case containers/image reads the built-in default directory) and whether
    sigstore attachments are to be read."""

    lookaside: str | None = None
    use_sigstore_attachments: bool = False

    def lookaside_base(self) -> str:
        """The lookaside actually read: the configured one, or :func:`default_lookaside`."""
        return self.lookaside if self.lookaside is not None else default_lookaside()


def default_lookaside() -> str:
    """containers/image's built-in lookaside: ``/var/lib/containers/sigstore`` for root,
    ``~/.local/share/containers/sigstore`` otherwise (``_CONTAINERS_ROOTLESS_UID``, set by
    rootless podman inside its user namespace, counts as the real uid)."""
    env = os.environ.get("_CONTAINERS_ROOTLESS_UID", "")
    if env:
        try:
            euid = int(env)
        except ValueError:
            euid = 0  # Go's strconv.Atoi failure gives 0 too
    else:
        euid = os.geteuid()
    path = _ROOT_LOOKASIDE if euid == 0 else str(Path.home() / _USER_LOOKASIDE)
    return "file://" + quote(path, safe=_PATH_SAFE)


def docker_scopes(ref: Reference) -> list[str]:
    """The scopes that may configure ``ref``, most specific first, as containers/image's
    ``PolicyConfigurationIdentity`` then ``PolicyConfigurationNamespaces`` (the same keys
    policy.json's ``docker`` transport uses): ``host/ns/repo:tag`` (and ``@digest``; a tagged
    and pinned reference is looked up by both, tag first), ``host/ns/repo``, ``host/ns``,
    ``host``, then ``*.domain`` wildcards of the host without its port."""
    name = f"{ref.registry}/{ref.repository}"
    scopes = []
    if ref.tag is not None:
        scopes.append(f"{name}:{ref.tag}")
    if ref.digest is not None:
        scopes.append(f"{name}@{ref.digest}")
    while True:
        scopes.append(name)
        if "/" not in name:
            break
        name = name.rsplit("/", 1)[0]
    host = name.split(":", 1)[0]  # Go cuts at the first colon
    while "." in host:
        host = host.split(".", 1)[1]
        scopes.append("*." + host)
    return scopes


class RegistriesD:
    """The merged contents of a registries.d directory (containers-registries.d(5)).

    Every ``*.yaml`` file is read; a ``docker`` scope or ``default-docker`` defined in two
    files is an error naming both, because containers/image refuses to guess which wins.
    """

    def __init__(
        self,
        docker: Mapping[str, ScopeConfig] | None = None,
        default_docker: ScopeConfig | None = None,
        directory: Path | None = None,
    ) -> None:
        self.docker: dict[str, ScopeConfig] = dict(docker or {})
        self.default_docker = default_docker
        self.directory = directory

    @staticmethod
    def default_directory(home: Path | None = None) -> Path:
        """``~/.config/containers/registries.d`` if it exists (it then replaces, not extends,
        the system one), else ``/etc/containers/registries.d``. containers/image honours no
        environment variable here; applications pass a directory explicitly instead."""
        try:
            user = (home or Path.home()) / USER_REGISTRIES_D
        except RuntimeError:  # no $HOME and no passwd entry
            return SYSTEM_REGISTRIES_D
        return user if user.exists() else SYSTEM_REGISTRIES_D

    @classmethod
    def from_yaml(cls, data: bytes, source: str) -> RegistriesD:
        """One registries.d file given as bytes (a ``kbs:///`` resource, as image-rs's
        ``sigstore_config_uri`` names one file rather than a directory)."""
        default, docker = _parse_file(data, source)
        return cls(docker, default)

    @classmethod
    def load(cls, directory: str | os.PathLike[str] | None = None) -> RegistriesD:
        """Read ``directory`` (default: :meth:`default_directory`); a missing directory is
        an empty configuration, an unreadable one or a malformed file is a ConfigError."""
        path = Path(directory) if directory is not None else cls.default_directory()
        try:
            names = sorted(os.listdir(path))
        except FileNotFoundError:
            return cls(directory=path)
        except OSError as err:
            raise ConfigError(f"cannot read registries.d directory {path}: "
                              f"{err.strerror or err}") from None
        docker: dict[str, ScopeConfig] = {}
        default: ScopeConfig | None = None
        for name in names:
            if not name.endswith(".yaml"):
                continue
            file = path / name
            try:
                data = file.read_bytes()
            except FileNotFoundError:
                continue  # removed since the listing: an expected race, as in containers/image
            except OSError as err:
                raise ConfigError(f"cannot read {file}: {err.strerror or err}") from None
            file_default, file_docker = _parse_file(data, str(file))
            if file_default is not None:
                if default is not None:
                    raise ConfigError(f'registries.d: "default-docker" is defined both in '
                                      f"{default.source} and {file}")
                default = file_default
            for scope, section in file_docker.items():
                if scope in docker:
                    raise ConfigError(f'registries.d: "docker" scope {scope!r} is defined both '
                                      f"in {docker[scope].source} and {file}")
                docker[scope] = section
        return cls(docker, default, path)

    def sections_for(self, ref: Reference) -> list[ScopeConfig]:
        """The sections that apply to ``ref``, most specific first, ``default-docker`` last."""
        found = [self.docker[s] for s in docker_scopes(ref) if s in self.docker]
        return found + ([self.default_docker] if self.default_docker is not None else [])

    def config_for(self, ref: Reference) -> SignatureConfig:
        """Where ``ref``'s signatures are to be read from.

        As containers/image's code does (registries_d.go ``signatureTopLevel`` and
        ``useSigstoreAttachments``), each setting comes from the most specific section that
        sets it: a scope matching the image without a ``lookaside`` lets a parent scope's
        lookaside apply. (containers-registries.d(5) says the most specific section is used
        whole; the code, which is what podman and skopeo run, does not.)
        """
        sections = self.sections_for(ref)
        lookaside = next((s.read_url() for s in sections if s.read_url()), None)
        use = next((s.use_sigstore_attachments for s in sections
                    if s.use_sigstore_attachments is not None), False)
        return SignatureConfig(lookaside, use)


_NULL = "tag:yaml.org,2002:null"
_MAX_PAIRS = 100_000  # mapping pairs read from one file, merges included
_MERGE = "tag:yaml.org,2002:merge"
# YAML 1.2 booleans (yaml.v3), and the YAML 1.1 words yaml.v3 still takes for a bool field.
_PLAIN_TRUE, _PLAIN_FALSE = {"true", "True", "TRUE"}, {"false", "False", "FALSE"}
_COMPAT_TRUE = {"y", "Y", "yes", "Yes", "YES", "on", "On", "ON"}
_COMPAT_FALSE = {"n", "N", "no", "No", "NO", "off", "Off", "OFF"}
_SECTION_KEYS = {
    "lookaside": "lookaside",
    "lookaside-staging": "lookaside_staging",
    "sigstore": "sigstore",
    "sigstore-staging": "sigstore_staging",
}


def _parse_file(data: bytes, path: str) -> tuple[ScopeConfig | None, dict[str, ScopeConfig]]:
    """One registries.d file, decoded as Go's yaml.v3 decodes it into containers/image's
    structs: the node tree is walked (not PyYAML's YAML 1.1 objects) so that strings keep
    their text, booleans follow yaml.v3, duplicate keys are errors and unknown keys ignored."""
    try:
        loader = yaml.SafeLoader(data)
        try:
            root = loader.get_node() if loader.check_node() else None  # first document only
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ConfigError(f"parsing {path}: {' '.join(str(err).split())}") from None
    docker: dict[str, ScopeConfig] = {}
    default: ScopeConfig | None = None
    budget = [_MAX_PAIRS]  # shared by the whole file
    for key, value in _mapping(root, "the file", path, budget) or []:
        if key == "default-docker":
            default = _section(value, "default-docker", path, budget)
        elif key == "docker":
            for scope, node in _mapping(value, '"docker"', path, budget) or []:
                docker[scope] = _section(node, f'"docker" scope {scope!r}', path, budget) \
                    or ScopeConfig(source=path)
    return default, docker


def _section(node: yaml.Node, what: str, path: str, budget: list[int]) -> ScopeConfig | None:
    pairs = _mapping(node, what, path, budget)
    if pairs is None:
        return None
    fields: dict[str, Any] = {"source": path}
    for key, value in pairs:
        if key in _SECTION_KEYS:
            fields[_SECTION_KEYS[key]] = _string(value, f"{what} {key}", path)
        elif key == "use-sigstore-attachments":
            fields["use_sigstore_attachments"] = _bool(value, f"{what} {key}", path)
    return ScopeConfig(**fields)


def _mapping(
    node: yaml.Node | None, what: str, path: str, budget: list[int], depth: int = 0
) -> list[tuple[str, yaml.Node]] | None:
    """A mapping node's pairs (None for null), with merge keys applied and duplicate keys
    refused, as yaml.v3 does. ``budget`` counts down the pairs read: merge keys that name
    aliases of merges multiply (a 500-byte file could take hours), which yaml.v3 refuses
    as "excessive aliasing"."""
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
        return None
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"parsing {path}: {what} must be a mapping, not {_kind(node)}")
    if depth > 8:
        raise ConfigError(f"parsing {path}: merge keys nested too deeply in {what}")
    own: dict[str, yaml.Node] = {}
    merged: dict[str, yaml.Node] = {}
    budget[0] -= 1 + len(node.value)
    if budget[0] < 0:
        raise ConfigError(f"parsing {path}: merge keys expand to more than {_MAX_PAIRS} "
                          "keys (excessive aliasing)")
    for key_node, value in node.value:
        if key_node.tag == _MERGE:
            sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for source in sources:
                for key, sub in _mapping(source, "a merged value", path, budget,
                                         depth + 1) or []:
                    merged.setdefault(key, sub)  # earlier mappings win, as YAML specifies
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            raise ConfigError(f"parsing {path}: line {key_node.start_mark.line + 1}: "
                              f"{what} has a {_kind(key_node)} as a key")
        if key_node.value in own:
            raise ConfigError(f"parsing {path}: line {key_node.start_mark.line + 1}: "
                              f"key {key_node.value!r} already defined in {what}")
        own[key_node.value] = value
    return list({**merged, **own}.items())


def _string(node: yaml.Node, what: str, path: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"parsing {path}: {what} must be a string, not {_kind(node)}")
    return "" if node.tag == _NULL else str(node.value)


def _bool(node: yaml.Node, what: str, path: str) -> bool | None:
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"parsing {path}: {what} must be true or false, not {_kind(node)}")
    if node.tag == _NULL:
        return None
    text = str(node.value)
    if node.style is None and text in _PLAIN_TRUE | _PLAIN_FALSE:
        return text in _PLAIN_TRUE
    if text in _COMPAT_TRUE | _COMPAT_FALSE:
        return text in _COMPAT_TRUE
    raise ConfigError(f"parsing {path}: {what} must be true or false, not {text[:100]!r}")


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"the scalar {str(node.value)[:100]!r}"


# -- lookaside --------------------------------------------------------------------------------


def _repository_path(ref: Reference) -> str:
    """The repository as a path; references are validated, but a hand-built one must not
    walk out of a file lookaside either (containers/image checks path.Clean too)."""
    repo = ref.repository
    if any(part in ("", ".", "..") for part in repo.split("/")):
        raise SignatureSourceError(f"unexpected path elements in repository {repo[:200]!r}")
    return repo


def lookaside_url(base: str, ref: Reference, manifest_digest: str, index: int) -> str:
    """The URL of signature number ``index`` (from 1) of ``manifest_digest`` in the lookaside
    ``base``: ``{base}/{repository}@{algorithm}={hex}/signature-{index}``, the layout of
    containers/image (``lookasideStorageBaseURL`` + ``lookasideStorageURL``) and
    docs/signature-protocols.md. The repository carries no tag or digest; Docker Hub
    images keep their ``library/`` prefix; the base path is joined with a plain ``/`` (a
    trailing slash in ``base`` gives ``//``, as there) and the path is re-escaped as Go's
    net/url escapes it."""
    if index < 1:
        raise ValueError(f"signature index {index} < 1")
    algorithm, _, encoded = validate_digest(manifest_digest).partition(":")
    try:
        parts = urlsplit(base)
    except ValueError as err:
        raise SignatureSourceError(f"invalid lookaside URL {_redact(base)}: {err}") from None
    path = f"{unquote(parts.path)}/{_repository_path(ref)}@{algorithm}={encoded}" \
        f"/signature-{index}"
    return urlunsplit((parts.scheme, parts.netloc, quote(path, safe=_PATH_SAFE),
                       parts.query, parts.fragment))


@dataclass(frozen=True)
class Signatures:
    """All the signatures of one image, by format: OpenPGP simple-signing blobs for
    ``signedBy`` requirements, sigstore signatures for ``sigstoreSigned`` ones."""

    simple: list[bytes]
    sigstore: list[SigstoreSignature]


def fetch_signatures(
    client: RegistryClient,
    ref: Reference,
    manifest_digest: str,
    config: SignatureConfig,
    *,
    limit: int = MAX_SIGNATURES,
    max_size: int = MAX_SIGNATURE_SIZE,
) -> Signatures:
    """Every signature containers/image's ``GetSignaturesWithFormat`` would return, each
    source read once: the API extension or the lookaside (see
    :func:`fetch_simple_signatures`), then the sigstore attachments if enabled. A lookaside
    may hold sigstore signatures too (``\\x00sigstore-json`` blobs, which skopeo writes
    there); they come first in ``sigstore``, as they come first in containers/image's list.
    Sigstore signatures whose media type is not simple signing are left out, since the
    policy ignores them."""
    primary = _primary_signatures(client, ref, manifest_digest, config, limit, max_size)
    attached = fetch_sigstore_signatures(client, ref, manifest_digest, config, limit=limit,
                                         max_size=max_size)
    return Signatures(
        [s for s in primary if isinstance(s, bytes)],
        [s for s in primary if isinstance(s, SigstoreSignature)
         and s.media_type == SIMPLE_SIGNING_MEDIA_TYPE] + attached,
    )


def fetch_simple_signatures(
    client: RegistryClient,
    ref: Reference,
    manifest_digest: str,
    config: SignatureConfig,
    *,
    limit: int = MAX_SIGNATURES,
    max_size: int = MAX_SIGNATURE_SIZE,
) -> list[bytes]:
    """The "simple signing" signatures (untrusted OpenPGP blobs) of ``manifest_digest`` in
    ``ref``'s repository, from where containers/image's ``GetSignaturesWithFormat`` reads
    them.

    The registry is pinged first: if it answers ``X-Registry-Supports-Signatures: 1``, its
    API extension is the source and the lookaside is not consulted, as in containers/image.
    Otherwise ``signature-1``, ``-2``, … are read from ``config.lookaside_base()`` (http,
    https or file) until the first one missing (404, ENOENT); more than ``limit`` of them or
    one larger than ``max_size`` bytes is an error, since only a broken or hostile store
    serves that much. Each blob is decoded as ``signature.FromBlob`` does (bare OpenPGP, or
    ``\\x00simple-signing\\n`` + OpenPGP); an empty or unrecognised one is an error, and
    sigstore-format blobs are left to :func:`fetch_signatures`.
    """
    primary = _primary_signatures(client, ref, manifest_digest, config, limit, max_size)
    return [s for s in primary if isinstance(s, bytes)]


def _primary_signatures(
    client: RegistryClient, ref: Reference, manifest_digest: str, config: SignatureConfig,
    limit: int, max_size: int,
) -> list[bytes | SigstoreSignature]:
    validate_digest(manifest_digest)
    headers = client.ping(ref)
    signatures: list[bytes | SigstoreSignature] = []
    if headers.get("X-Registry-Supports-Signatures") == "1":
        signatures.extend(_from_api_extension(client, ref, manifest_digest, limit))
        return signatures
    base = config.lookaside_base()
    for index in range(1, limit + 2):
        url = lookaside_url(base, ref, manifest_digest, index)
        blob = _read_lookaside(client, url, max_size)
        if blob is None:
            return signatures
        if index > limit:
            raise SignatureSourceError(
                f"lookaside {_redact(base)} holds more than {limit} signatures for "
                f"{manifest_digest}; assuming a broken server"
            )
        signatures.append(_from_blob(blob, _redact(url)))
    raise AssertionError("unreachable")  # pragma: no cover


# First bytes of an OpenPGP message as containers/image recognises a bare simple signature:
# compressed data, one-pass signature or signature packets, old and new packet formats.
_OPENPGP_FIRST = frozenset(
    (0xA0, 0xA1, 0xA2, 0xA3, 0xC8, 0x90, 0x91, 0x92, 0x3D, 0xC4, 0x88, 0x89, 0x8A, 0x8B, 0xC2)
)


def _from_blob(blob: bytes, where: str) -> bytes | SigstoreSignature:
    """A stored signature decoded as containers/image's ``signature.FromBlob``: bare OpenPGP
    (the historical format), or ``\\x00`` + format name + newline + data."""

    def bad(problem: str) -> SignatureSourceError:
        return SignatureSourceError(f"parsing signature {where}: {problem}")

    if not blob:
        raise bad("empty signature blob")
    if blob[0] in _OPENPGP_FIRST:
        return blob
    if blob[0] != 0:
        raise bad(f"unrecognized signature format, starting with binary {blob[0]:#x}")
    name, newline, chunk = blob[1:].partition(b"\n")
    if not newline:
        raise bad("invalid signature format, missing newline")
    if any(b < 32 or b >= 0x7F for b in name):
        raise bad("invalid signature format, non-ASCII byte in its name")
    if name == b"simple-signing":
        return chunk
    if name != b"sigstore-json":
        raise bad(f"unrecognized signature format {name.decode()[:100]!r}")
    try:
        doc = json.loads(chunk)
    except (ValueError, RecursionError) as err:
        raise bad(f"sigstore-json is not JSON ({str(err)[:100]})") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise bad("sigstore-json is not a JSON object")
    media_type, payload = doc.get("mimeType") or "", doc.get("payload") or ""
    annotations = doc.get("annotations") or {}
    if not isinstance(media_type, str) or not isinstance(payload, str):
        raise bad("sigstore-json mimeType and payload must be strings")
    if not isinstance(annotations, dict) or not all(
        isinstance(v, str) for v in annotations.values()
    ):
        raise bad("sigstore-json annotations are not a map of strings")
    try:
        data = base64.b64decode(payload.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        raise bad("sigstore-json payload is not valid base64") from None
    return SigstoreSignature(data, annotations.get(SIGNATURE_ANNOTATION, ""),
                             dict(annotations), where, media_type)


def _read_lookaside(client: RegistryClient, url: str, max_size: int) -> bytes | None:
    """One lookaside signature, or None if it does not exist (the end of the list)."""
    scheme = urlsplit(url).scheme
    if scheme == "file":
        return _read_file(url, max_size)
    if scheme in ("http", "https"):
        return _read_http(client, url, max_size)
    raise SignatureSourceError(
        f"unsupported scheme {scheme!r} in lookaside URL {_redact(url)} (use http, https or file)"
    )


def _read_file(url: str, max_size: int) -> bytes | None:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        # Go would silently read the path without the host ("file://var/x" -> "/x")
        raise SignatureSourceError(f"lookaside URL {_redact(url)} names a host; "
                                   "a file URL needs three slashes (file:///path)")
    path = unquote(parts.path)
    try:
        # O_NONBLOCK: a FIFO planted in the store must not hang the pull
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise SignatureSourceError(f"reading signature {path}: {err.strerror or err}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SignatureSourceError(f"signature {path} is not a regular file")
        if st.st_size > max_size:
            raise SignatureSourceError(f"signature {path} is larger than {max_size} bytes")
        try:
            data = f.read(max_size + 1)
        except OSError as err:
            raise SignatureSourceError(f"reading signature {path}: {err.strerror or err}") \
                from None
    if len(data) > max_size:
        raise SignatureSourceError(f"signature {path} is larger than {max_size} bytes")
    return data


def _read_http(client: RegistryClient, url: str, max_size: int) -> bytes | None:
    shown = _redact(url)
    parts = urlsplit(url)
    headers = {}
    if parts.username is not None:  # Go's client sends URL userinfo as basic auth
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(user_pass.encode()).decode()
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    try:
        resp = client.get_url(url, headers=headers)
    except RegistryError as err:
        raise SignatureSourceError(f"reading signature from {shown}: {err}") from None
    try:
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise SignatureSourceError(f"reading signature from {shown}: HTTP {resp.status}")
        length = resp.headers.get("Content-Length", "")
        if length.isascii() and length.isdigit() and int(length) > max_size:
            raise SignatureSourceError(f"signature at {shown} is larger than {max_size} bytes")
        data = resp.read(max_size + 1)
        if len(data) > max_size:
            raise SignatureSourceError(f"signature at {shown} is larger than {max_size} bytes")
        return data
    except (ProtocolError, Urllib3Timeout, HTTPError, OSError) as err:
        raise SignatureSourceError(f"reading signature from {shown} failed: {err}") from None
    finally:
        _discard(resp)


def _redact(url: str) -> str:
    """``url`` with any password replaced, as Go's URL.Redacted does."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:xxxxx@{hostport}{slash}{tail}"


# -- X-Registry-Supports-Signatures -----------------------------------------------------------


def _from_api_extension(
    client: RegistryClient, ref: Reference, manifest_digest: str, limit: int
) -> list[bytes]:
    """``GET /extensions/v2/<repo>/signatures/<digest>`` with the pull's credentials: JSON
    ``{"signatures": [{"schemaVersion": 2, "type": "atomic", "name": …, "content": base64}]}``;
    entries of other versions or types are skipped, as containers/image does."""
    what = f"signatures of {manifest_digest}"
    path = f"/extensions/v2/{ref.repository}/signatures/{manifest_digest}"
    resp = client.request_path(ref, path, stream=True)
    try:
        if resp.status != 200:
            client._check(resp, ref, what)  # raises Unauthorized, NotFound, RegistryError
            raise RegistryError(f"{ref.registry} answered HTTP {resp.status} for {what}")
        length = resp.headers.get("Content-Length", "")
        if length.isascii() and length.isdigit() and int(length) > MAX_SIGNATURE_LIST_SIZE:
            raise SignatureSourceError(f"{what} from {ref.registry}: the list is larger than "
                                       f"{MAX_SIGNATURE_LIST_SIZE} bytes")
        body = resp.read(MAX_SIGNATURE_LIST_SIZE + 1)
    except (ProtocolError, Urllib3Timeout, HTTPError, OSError) as err:
        raise RegistryUnreachable(f"reading {what} from {ref.registry} failed: {err}") from None
    finally:
        _discard(resp)
    if len(body) > MAX_SIGNATURE_LIST_SIZE:
        raise SignatureSourceError(f"{what} from {ref.registry}: the list is larger than "
                                   f"{MAX_SIGNATURE_LIST_SIZE} bytes")
    return _parse_signature_list(body, f"{what} from {ref.registry}", limit)


def _parse_signature_list(body: bytes, what: str, limit: int) -> list[bytes]:
    """Decode as Go's encoding/json decodes containers/image's extensionSignatureList."""

    def bad(problem: str) -> SignatureSourceError:
        return SignatureSourceError(f"decoding {what}: {problem}")

    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise bad(f"not JSON ({str(err)[:100]})") from None
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    entries = doc.get("signatures")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise bad('"signatures" is not a list')
    out: list[bytes] = []
    for i, entry in enumerate(entries, 1):
        if entry is None:
            continue  # a zero entry: version 0, skipped
        if not isinstance(entry, dict):
            raise bad(f"signature {i} is not a JSON object")
        version, kind = entry.get("schemaVersion", 0), entry.get("type", "")
        content, name = entry.get("content"), entry.get("name", "")
        if version is None:
            version = 0
        if not isinstance(version, int) or isinstance(version, bool):
            raise bad(f"signature {i} has a non-integer schemaVersion")
        if not isinstance(kind, str | None) or not isinstance(name, str | None):
            raise bad(f"signature {i} has a non-string type or name")
        if not isinstance(content, str | None):
            raise bad(f"signature {i} content is not a base64 string")
        if version != 2 or kind != "atomic":
            continue
        try:
            blob = base64.b64decode((content or "").replace("\r", "").replace("\n", ""),
                                    validate=True)
        except (binascii.Error, ValueError):
            raise bad(f"signature {i} content is not valid base64") from None
        if len(out) >= limit:
            raise bad(f"more than {limit} signatures; assuming a broken server")
        out.append(blob)
    return out


# -- sigstore attachments ---------------------------------------------------------------------


@dataclass(frozen=True)
class SigstoreSignature:
    """One cosign signature attachment, untrusted: the simple-signing ``payload`` (the
    layer's bytes, digest-verified), its base64 ``signature`` from the
    ``dev.cosignproject.cosign/signature`` annotation (``""`` if the annotation is absent:
    it then verifies against no key, and containers/image rejects such a signature too),
    and all of the layer's ``annotations`` (certificate, chain, bundle and any other) as
    they came. ``source`` says where it was found, for messages."""

    payload: bytes
    signature: str
    annotations: dict[str, str] = field(default_factory=dict)
    source: str = ""  # the attachment layer's digest, or the lookaside URL
    media_type: str = SIMPLE_SIGNING_MEDIA_TYPE

    @property
    def certificate(self) -> str | None:
        return self.annotations.get(CERTIFICATE_ANNOTATION)

    @property
    def chain(self) -> str | None:
        return self.annotations.get(CHAIN_ANNOTATION)

    @property
    def bundle(self) -> str | None:
        return self.annotations.get(BUNDLE_ANNOTATION)


def sigstore_attachment_tag(manifest_digest: str) -> str:
    """``sha256:abc…`` -> ``sha256-abc….sig``, cosign's tag convention."""
    return validate_digest(manifest_digest).replace(":", "-", 1) + ".sig"


def fetch_sigstore_signatures(
    client: RegistryClient,
    ref: Reference,
    manifest_digest: str,
    config: SignatureConfig,
    *,
    limit: int = MAX_SIGNATURES,
    max_size: int = MAX_SIGNATURE_SIZE,
) -> list[SigstoreSignature]:
    """The cosign signatures attached to ``manifest_digest``, if ``config`` enables sigstore
    attachments (else none are looked for).

    As containers/image (``getSigstoreAttachmentManifest``): the tag ``sha256-<hex>.sig`` of
    the same repository must hold an OCI image manifest (another media type is an error);
    an unknown tag means no attachments. Layers of media type
    ``application/vnd.dev.cosign.simplesigning.v1+json`` are signatures: each blob is read
    up to ``max_size`` bytes and must hash to its digest. Other layers (attestations…) are
    not downloaded: containers/image's policy ignores them. More than ``limit`` signature
    layers is an error. Registry errors propagate as the client raises them.
    """
    if not config.use_sigstore_attachments:
        return []
    tag = sigstore_attachment_tag(manifest_digest)
    if len(tag) > _MAX_TAG:
        raise SignatureSourceError(f"cannot look for sigstore attachments of {manifest_digest}: "
                                   f"the tag {tag[:20]}… would be longer than {_MAX_TAG}")
    sig_ref = Reference(ref.registry, ref.repository, tag, None)
    try:
        data, content_type = client.get_manifest(sig_ref, tag)
    except NotFound:
        return []
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime != OCI_MANIFEST:
        raise SignatureSourceError(f"unexpected MIME type for sigstore attachment manifest "
                                   f"{sig_ref}: {content_type[:100]!r}")
    out: list[SigstoreSignature] = []
    for digest, notes in _signature_layers(data, str(sig_ref)):
        if len(out) >= limit:
            raise SignatureSourceError(f"sigstore attachment manifest {sig_ref} lists more "
                                       f"than {limit} signatures")
        payload = _read_attachment(client, sig_ref, digest, max_size)
        out.append(SigstoreSignature(payload, notes.get(SIGNATURE_ANNOTATION, ""), notes, digest))
    return out


def _signature_layers(data: bytes, what: str) -> list[tuple[str, dict[str, str]]]:
    """(digest, annotations) of the simple-signing layers of an attachment manifest, parsed
    as strictly as containers/image's ``OCI1FromManifest`` (types checked, a manifest that
    also looks like another format refused)."""
    if len(data) > MAX_MANIFEST:
        raise ManifestError(f"sigstore attachment manifest {what} is larger than "
                            f"{MAX_MANIFEST} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise ManifestError(f"sigstore attachment manifest {what} is not valid JSON "
                            f"({str(err)[:100]})") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"sigstore attachment manifest {what} is not a JSON object")
    ambiguous = [k for k in ("fsLayers", "history", "manifests") if doc.get(k) is not None]
    if ambiguous:
        raise ManifestError(f"sigstore attachment manifest {what} is ambiguous: unexpected "
                            f"fields {', '.join(ambiguous)} in an OCI image manifest")
    layers = doc.get("layers")
    if layers is None:
        return []
    if not isinstance(layers, list):
        raise ManifestError(f"sigstore attachment manifest {what}: layers is not a list")
    out = []
    for i, layer in enumerate(layers, 1):
        if not isinstance(layer, dict):
            raise ManifestError(f"sigstore attachment manifest {what}: layer {i} is not an "
                                "object")
        media_type, digest = layer.get("mediaType", ""), layer.get("digest")
        annotations = layer.get("annotations") or {}
        if not isinstance(media_type, str | None) or not isinstance(digest, str):
            raise ManifestError(f"sigstore attachment manifest {what}: layer {i} lacks a "
                                "valid mediaType and digest")
        if not isinstance(annotations, dict) or not all(
            isinstance(v, str) for v in annotations.values()
        ):
            raise ManifestError(f"sigstore attachment manifest {what}: layer {i} annotations "
                                "are not a map of strings")
        validate_digest(digest)
        if media_type == SIMPLE_SIGNING_MEDIA_TYPE:
            out.append((digest, dict(annotations)))
    return out


def _read_attachment(
    client: RegistryClient, sig_ref: Reference, digest: str, max_size: int
) -> bytes:
    """A signature payload blob, read whole but at most ``max_size`` bytes, and verified."""
    algorithm = digest.split(":", 1)[0]
    hasher = hashlib.new(algorithm)
    chunks: list[bytes] = []
    total = 0
    stream = client.blob_chunks(sig_ref, digest, 0)
    try:
        for chunk in stream:
            total += len(chunk)
            if total > max_size:
                raise SignatureSourceError(f"sigstore attachment {digest} in {sig_ref.registry}/"
                                           f"{sig_ref.repository} is larger than {max_size} "
                                           "bytes")
            hasher.update(chunk)
            chunks.append(chunk)
    except (ProtocolError, Urllib3Timeout, HTTPError, OSError) as err:
        raise RegistryUnreachable(f"reading sigstore attachment {digest} failed: {err}") \
            from None
    finally:
        if isinstance(stream, Generator):  # release the connection now, not when collected
            stream.close()
    actual = f"{algorithm}:{hasher.hexdigest()}"
    if actual != digest:
        raise DigestMismatch(f"sigstore attachment {digest} in {sig_ref.registry}/"
                             f"{sig_ref.repository}: the content hashes to {actual}")
    return b"".join(chunks)
