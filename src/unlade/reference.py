"""Image references (``alpine``, ``ghcr.io/o/r:tag@sha256:…``), parsed the way docker does.

The grammar is that of github.com/distribution/reference, so that anything ``docker pull``
accepts names the same image here, and anything it refuses is refused here too, with a
message naming the offending part rather than docker's bare "invalid reference format".
Deliberate differences: a first component is taken as a registry only if it contains
``.`` or ``:`` or is ``localhost`` (docker also takes an uppercase one, so ``Foo/bar`` is
refused as not lowercase rather than pulled from a host called ``Foo``); only sha256 and
sha512 digests are accepted, because those are the only ones we can verify; ports above
65535 and malformed bracketed IPv6 addresses are refused early; and the 255-character
limit applies to the whole canonical name ``registry/repository``, as docker's once did.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, replace

from unlade.errors import InvalidDigest, InvalidReference

__all__ = ["DEFAULT_REGISTRY", "Reference", "parse_reference", "validate_digest"]

DEFAULT_REGISTRY = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
_LEGACY_DEFAULT_REGISTRY = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
_DEFAULT_TAG = "latest"
_NAME_MAX = 255

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
)
_IPV6 = re.compile(r"\[([a-fA-F0-9:]+)\]")
_PORT = re.compile(r"[0-9]+")
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_LOWER_HEX = re.compile(r"[a-f0-9]+")


def _q(text: str) -> str:
    # JSON quoting keeps hostile input (newlines, quotes) on one readable line.
    return json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True)
class Reference:
    """A fully qualified image reference: every field is explicit, nothing is implied."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    def __post_init__(self) -> None:
        # Hand-built references reach the same URLs and paths as parsed ones.
        if self.tag is None and self.digest is None:
            name = f"{self.registry}/{self.repository}"
            raise InvalidReference(f"invalid reference {_q(name)}: no tag and no digest")
        if self.digest is not None:
            validate_digest(self.digest)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def api_host(self) -> str:
        """The host to talk to: Docker Hub's name in references is not its API endpoint."""
        return DOCKER_HUB_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def object(self) -> str:
        """The manifest to ask for: a digest pins content, so it beats a (movable) tag."""
        return self.digest or self.tag or _DEFAULT_TAG

    def with_digest(self, digest: str) -> Reference:
        """Pin this reference to resolved content, keeping the tag for display."""
        return replace(self, digest=validate_digest(digest))


def _digest_problem(digest: str) -> str | None:
    """Why ``digest`` is unacceptable, or None; shared so both error kinds say the same."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep:
        return "missing algorithm prefix"
    if algorithm not in _DIGEST_HEX_LENGTH:
        return f"unsupported algorithm {_q(algorithm)}"
    want = _DIGEST_HEX_LENGTH[algorithm]
    if not _LOWER_HEX.fullmatch(encoded):
        return f"{algorithm} value must be lowercase hex"
    if len(encoded) != want:
        return f"{algorithm} value must be {want} hex digits, not {len(encoded)}"
    return None


def validate_digest(d: str) -> str:
    """Return ``d`` unchanged if it is safe to trust as content identity and as a file name.

    Digests arrive from servers and users and end up in URLs and store paths, so anything
    but exactly ``sha256:<64 hex>`` or ``sha512:<128 hex>`` is refused before use.
    """
    problem = _digest_problem(d)
    if problem is not None:
        raise InvalidDigest(f"invalid digest {_q(d)}: {problem}")
    return d


def _registry_problem(host: str) -> str | None:
    """Why ``host[:port]`` cannot be a registry address, or None."""
    name, port = host, None
    if host.startswith("["):
        end = host.find("]")
        if end != -1 and host[end + 1 : end + 2] == ":":
            name, port = host[: end + 1], host[end + 2 :]
        m = _IPV6.fullmatch(name)
        if m is None:
            return "IPv6 address must be in brackets"
        try:
            ipaddress.IPv6Address(m.group(1))
        except ValueError:
            return f"bad IPv6 address {_q(m.group(1))}"
    elif host.count(":") > 1:
        return "IPv6 address must be in brackets"
    else:
        if ":" in host:
            name, port = host.split(":", 1)
        if not _DOMAIN.fullmatch(name):
            return f"bad host name {_q(name)}"
    if port is not None and (not _PORT.fullmatch(port) or int(port) > 65535):
        return f"bad port {_q(port)}"
    return None


def _split_registry(name: str) -> tuple[str, str]:
    """Apply docker's rule for where the registry ends and the repository begins."""
    first, slash, rest = name.partition("/")
    if slash and (first == "localhost" or "." in first or ":" in first):
        registry, path = first, rest
    else:
        registry, path = DEFAULT_REGISTRY, name
    if registry == _LEGACY_DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = _OFFICIAL_PREFIX + path
    return registry, path


def parse_reference(text: str) -> Reference:
    """Turn what a user typed into a fully qualified reference, as ``docker pull`` would.

    ``alpine`` becomes ``docker.io/library/alpine:latest``; the ``latest`` default is only
    added when there is neither a tag nor a digest, and a tag given with a digest is kept.
    """
    if not text:
        raise InvalidReference("empty reference")

    def bad(problem: str) -> InvalidReference:
        return InvalidReference(f"invalid reference {_q(text)}: {problem}")

    if any(c.isspace() or not c.isprintable() for c in text):
        raise bad("whitespace and control characters are not allowed")
    if "://" in text:
        raise bad(f"scheme {_q(text.split('://', 1)[0] + '://')} is not allowed")
    if _IDENTIFIER.fullmatch(text):
        raise bad("a bare 64-hex identifier is not a repository name")

    name, at, digest = text.partition("@")
    if at:
        if not digest:
            raise bad('missing digest after "@"')
        problem = _digest_problem(digest)
        if problem is not None:
            raise bad(f"invalid digest {_q(digest)}: {problem}")

    tag = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise bad(f"invalid tag {_q(tag)}")
    if not name:
        raise bad("missing repository name")

    registry, repository = _split_registry(name)
    if registry != DEFAULT_REGISTRY:
        problem = _registry_problem(registry)
        if problem is not None:
            raise bad(f"invalid registry host {_q(registry)}: {problem}")
    for component in repository.split("/"):
        if not component:
            raise bad(f"empty path component in {_q(repository)}")
        if component != component.lower():
            raise bad(f"repository name must be lowercase: {_q(component)}")
        if not _PATH_COMPONENT.fullmatch(component):
            raise bad(f"invalid path component {_q(component)}")
    full_name = f"{registry}/{repository}"
    if len(full_name) > _NAME_MAX:
        raise bad(f"name is {len(full_name)} characters long, more than {_NAME_MAX}")

    if tag is None and not at:
        tag = _DEFAULT_TAG
    return Reference(registry, repository, tag, digest if at else None)
