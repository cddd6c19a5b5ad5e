"""Signature policy: which images may be pulled, in the format the container ecosystem
already uses (containers-policy.json(5), as podman, skopeo, CRI-O and image-rs read it).

A policy maps scopes of the ``docker`` transport (``registry``, ``registry/namespace``,
``registry/repo``, ``registry/repo:tag``, ``*.domain`` wildcards) to a list of
requirements; the most specific scope wins, then the transport's ``""`` scope, then
``default``. Every requirement of the list must hold. ``signedBy`` (OpenPGP simple
signing) and ``sigstoreSigned`` (a sigstore signature made with a key) also check what the
signature vouches for: the digest of the manifest being pulled, and the image's name under
the requirement's ``signedIdentity`` rule.

Evaluation asks its :class:`SignatureSource` for signatures only when a requirement needs
them, so an ``insecureAcceptAnything`` scope costs no request. The result is a
:class:`Verdict` that names, per requirement, why it holds or fails.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import InvalidReference, PolicyError, PolicyRejected
from .reference import Reference, parse_reference
from .signature import (
    COSIGN_TYPE,
    SIMPLE_SIGNING_TYPE,
    GpgKeys,
    Payload,
    SignatureInvalid,
    load_gpg_keys,
    load_public_keys,
    parse_payload,
    strict_json,
    verify_cosign,
    verify_gpg,
)

MAX_POLICY = 4 << 20
USER_POLICY = Path("~/.config/containers/policy.json")
SYSTEM_POLICY = Path("/etc/containers/policy.json")


class SigstoreSignatureLike(Protocol):
    """A sigstore signature as the registry holds it: the signed payload and the base64
    signature annotation."""

    payload: bytes
    signature: str


class SignatureSource(Protocol):
    """Where an image's signatures come from (lookaside, API extension, attachments)."""

    def simple_signatures(self) -> Sequence[bytes]: ...

    def sigstore_signatures(self) -> Sequence[SigstoreSignatureLike]: ...


# -- identity rules ----------------------------------------------------------------------


def _parse_ref(text: str, what: str) -> Reference:
    try:
        return parse_reference(text)
    except InvalidReference as err:
        raise PolicyError(f"{what}: {err}") from None


def _name(ref: Reference) -> str:
    return f"{ref.registry}/{ref.repository}"


def _same_image(a: Reference, b: Reference) -> bool:
    return _name(a) == _name(b) and a.tag == b.tag and a.digest == b.digest


@dataclass(frozen=True)
class Identity:
    """A ``signedIdentity``: how the name a signature vouches for must relate to the
    image's."""

    type: str = "matchRepoDigestOrExact"
    docker_reference: Reference | None = None  # exactReference
    docker_repository: str | None = None  # exactRepository
    prefix: str | None = None  # remapIdentity
    signed_prefix: str | None = None

    def matches(self, image: Reference, signed: Reference) -> bool:
        kind = self.type
        if kind == "matchExact":
            return _same_image(image, signed)
        if kind == "matchRepoDigestOrExact":
            if image.digest is not None and image.tag is None:
                return _name(image) == _name(signed)
            return _same_image(image, signed)
        if kind == "matchRepository":
            return _name(image) == _name(signed)
        if kind == "exactReference":
            assert self.docker_reference is not None
            return _same_image(self.docker_reference, signed)
        if kind == "exactRepository":
            return _name(signed) == self.docker_repository
        assert self.prefix is not None and self.signed_prefix is not None
        return Identity().matches(self._remap(image), signed)

    def _remap(self, image: Reference) -> Reference:
        """remapIdentity: the image's name with ``prefix`` replaced (whole components
        only), as containers/image does, then read again as a reference."""
        assert self.prefix is not None and self.signed_prefix is not None
        name = _name(image)
        if not (name == self.prefix or name.startswith(self.prefix + "/")
                or (self.prefix.endswith("/") and name.startswith(self.prefix))):
            return image
        text = self.signed_prefix + name[len(self.prefix):]
        if image.tag is not None:
            text += ":" + image.tag
        if image.digest is not None:
            text += "@" + image.digest
        try:
            return parse_reference(text)
        except InvalidReference:
            raise SignatureInvalid(f"remapIdentity of {name!r} gives an invalid reference "
                                   f"{text[:300]!r}") from None

    def describe(self) -> str:
        if self.type == "exactReference":
            return f"exactReference {self.docker_reference}"
        if self.type == "exactRepository":
            return f"exactRepository {self.docker_repository}"
        if self.type == "remapIdentity":
            return f"remapIdentity {self.prefix} -> {self.signed_prefix}"
        return self.type


_IDENTITY_FIELDS = {
    "matchExact": set(), "matchRepoDigestOrExact": set(), "matchRepository": set(),
    "exactReference": {"dockerReference"}, "exactRepository": {"dockerRepository"},
    "remapIdentity": {"prefix", "signedPrefix"},
}


def _identity(raw: Any, where: str) -> Identity:
    if raw is None:
        return Identity()
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise PolicyError(f"{where}: signedIdentity must be an object with a type")
    kind = raw["type"]
    if kind not in _IDENTITY_FIELDS:
        raise PolicyError(f"{where}: unknown signedIdentity type {kind!r}")
    _fields(raw, {"type"} | _IDENTITY_FIELDS[kind], f"{where} signedIdentity")
    if kind == "exactReference":
        text = _str(raw, "dockerReference", where)
        ref = _parse_ref(text, f"{where} exactReference")
        if not _tagged(text):
            raise PolicyError(f"{where}: exactReference needs a tag or digest")
        return Identity(kind, docker_reference=ref)
    if kind == "exactRepository":
        text = _str(raw, "dockerRepository", where)
        ref = _parse_ref(text, f"{where} exactRepository")
        if _tagged(text):
            raise PolicyError(f"{where}: exactRepository must be a repository, without a "
                              "tag or digest")
        return Identity(kind, docker_repository=_name(ref))
    if kind == "remapIdentity":
        prefix, signed = _str(raw, "prefix", where), _str(raw, "signedPrefix", where)
        for value in (prefix, signed):
            if not _valid_prefix(value):
                raise PolicyError(f"{where}: remapIdentity prefix {value!r} is not a "
                                  "registry, namespace or repository")
        return Identity(kind, prefix=prefix, signed_prefix=signed)
    return Identity(kind)


def _tagged(text: str) -> bool:
    """Whether a reference as written names a tag or digest (parsing adds ``latest``)."""
    return "@" in text or ":" in text.rsplit("/", 1)[-1]


def _valid_prefix(value: str) -> bool:
    if value.startswith("*.") or ("/" in value and _tagged(value)):
        return False  # (without a "/", a ":" is a port)
    try:
        parse_reference(value.rstrip("/") + "/x" if "/" not in value else value)
    except InvalidReference:
        return False
    return True


# -- requirements ------------------------------------------------------------------------


def _fields(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")


def _str(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise PolicyError(f"{where}: {key} must be a non-empty string")
    return value


@dataclass
class Outcome:
    """How one requirement fared."""

    requirement: str  # its description, e.g. "signedBy GPGKeys (key 0123…)"
    ok: bool
    reason: str


@dataclass
class Requirement:
    type: str
    describe: str = ""

    def evaluate(self, ctx: _Context) -> Outcome:
        if self.type == "insecureAcceptAnything":
            return Outcome(self.describe, True, "accepted without a signature")
        return Outcome(self.describe, False,
                       f"policy scope {ctx.scope!r} rejects {ctx.image}")


@dataclass
class _Context:
    image: Reference
    manifest: bytes
    source: SignatureSource
    scope: str


def _manifest_matches(manifest: bytes, digest: str) -> bool:
    algo, _, hexpart = digest.partition(":")
    if algo not in ("sha256", "sha512"):
        return False
    return hashlib.new(algo, manifest).hexdigest() == hexpart


def _vouches(ctx: _Context, payload: Payload, identity: Identity) -> None:
    """Does a valid signature's payload fit the image? Raises the reason it does not."""
    if not _manifest_matches(ctx.manifest, payload.manifest_digest):
        raise SignatureInvalid(f"signed for another manifest ({payload.manifest_digest})")
    try:
        signed = parse_reference(payload.docker_reference)
    except InvalidReference:
        raise SignatureInvalid(
            f"signed for an invalid reference {payload.docker_reference!r}") from None
    if not _tagged(payload.docker_reference) and identity.type not in (
            "matchRepository", "exactRepository"):
        # containers/image: IsNameOnly(signature) -> no match (parsing would add "latest")
        raise SignatureInvalid(f"identity mismatch (signed for {payload.docker_reference}, "
                               f"without a tag or digest, rule {identity.describe()})")
    if not identity.matches(ctx.image, signed):
        raise SignatureInvalid(f"identity mismatch (signed for {payload.docker_reference}, "
                               f"rule {identity.describe()})")


def _summary(what: str, ctx: _Context, reasons: list[str]) -> str:
    if not reasons:
        return f"policy requires a signature by {what} for {ctx.image}; found none"
    uniq = list(dict.fromkeys(reasons))
    return (f"policy requires a signature by {what} for {ctx.image}; found "
            f"{len(reasons)} signature{'s' if len(reasons) != 1 else ''}, none valid: "
            f"{'; '.join(uniq)}")


@dataclass
class SignedBy(Requirement):
    keys: GpgKeys = field(default_factory=lambda: GpgKeys(()))
    identity: Identity = field(default_factory=Identity)

    def evaluate(self, ctx: _Context) -> Outcome:
        what = "key " + ", ".join(self.keys.fingerprints)
        reasons = []
        for blob in ctx.source.simple_signatures():
            try:
                data, signer = verify_gpg(blob, self.keys)
                _vouches(ctx, parse_payload(data, SIMPLE_SIGNING_TYPE), self.identity)
            except SignatureInvalid as err:
                reasons.append(str(err))
                continue
            return Outcome(self.describe, True, f"signed by {signer}")
        return Outcome(self.describe, False, _summary(what, ctx, reasons))


@dataclass
class SigstoreSigned(Requirement):
    keys: list[Any] = field(default_factory=list)
    key_names: list[str] = field(default_factory=list)
    identity: Identity = field(default_factory=Identity)
    unsupported: str | None = None

    def evaluate(self, ctx: _Context) -> Outcome:
        if self.unsupported:
            return Outcome(self.describe, False, self.unsupported)
        what = "sigstore key " + ", ".join(self.key_names)
        reasons = []
        for sig in ctx.source.sigstore_signatures():
            try:
                verify_cosign(sig.payload, sig.signature, self.keys)
                _vouches(ctx, parse_payload(sig.payload, COSIGN_TYPE), self.identity)
            except SignatureInvalid as err:
                reasons.append(str(err))
                continue
            return Outcome(self.describe, True, f"sigstore signature by {self.key_names[0]}"
                           if len(self.key_names) == 1 else "valid sigstore signature")
        return Outcome(self.describe, False, _summary(what, ctx, reasons))


class _Loader:
    """Reads requirements, resolving key paths against the policy file's directory."""

    def __init__(self, base: Path, read: Callable[[str], bytes]) -> None:
        self.base = base
        self.read = read

    def path(self, value: str) -> str:
        if "://" in value:
            return value  # a resource URI, read by ``read``
        return str(self.base / value) if not os.path.isabs(value) else value

    def key_material(self, raw: dict[str, Any], where: str, *, many: str, one: str,
                     data: str, datas: str | None = None) -> list[tuple[str, bytes]]:
        given = [k for k in (one, many, data, datas) if k and k in raw]
        if len(given) != 1:
            raise PolicyError(f"{where}: exactly one of {one}, {many}, {data} is needed")
        out: list[tuple[str, bytes]] = []
        if one in raw:
            paths = [_str(raw, one, where)]
        elif many in raw:
            value = raw[many]
            if not isinstance(value, list) or not value or not all(
                    isinstance(p, str) and p for p in value):
                raise PolicyError(f"{where}: {many} must be a list of paths")
            paths = value
        else:
            paths = []
        for p in paths:
            full = self.path(p)
            try:
                out.append((p, self.read(full)))
            except (OSError, ValueError) as err:  # ValueError: a NUL in the path
                shown = full if full.isprintable() else repr(full)
                raise PolicyError(f"{where}: cannot read key {shown}: "
                                  f"{getattr(err, 'strerror', None) or err}") from None
        if data in raw:
            label, items = data, [raw[data]]
        elif datas and datas in raw:
            label, items = datas, raw[datas]
            if not isinstance(items, list) or not items:
                raise PolicyError(f"{where}: {datas} must be a list of base64 keys")
        else:
            label, items = data, []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise PolicyError(f"{where}: {label} must be base64 text")
            try:
                out.append((f"{label}[{i}]" if label == datas else label,
                            base64.b64decode(item, validate=True)))
            except (binascii.Error, ValueError):
                raise PolicyError(f"{where}: {label} is not valid base64") from None
        return out

    def requirement(self, raw: Any, where: str) -> Requirement:
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise PolicyError(f"{where}: a requirement must be an object with a type")
        kind = raw["type"]
        if kind in ("insecureAcceptAnything", "reject"):
            _fields(raw, {"type"}, where)
            return Requirement(kind, kind)
        if kind == "signedBy":
            _fields(raw, {"type", "keyType", "keyPath", "keyPaths", "keyData",
                          "signedIdentity"}, where)
            if raw.get("keyType") != "GPGKeys":
                raise PolicyError(f"{where}: signedBy keyType {raw.get('keyType')!r} is not "
                                  "supported (only GPGKeys)")
            material = self.key_material(raw, where, one="keyPath", many="keyPaths",
                                         data="keyData")
            certs: list[Any] = []
            for name, blob in material:
                try:
                    certs += load_gpg_keys(blob, name).certs
                except ValueError as err:
                    raise PolicyError(f"{where}: {err}") from None
            keys = GpgKeys(tuple(certs))
            identity = _identity(raw.get("signedIdentity"), where)
            return SignedBy(kind, f"signedBy GPGKeys {', '.join(keys.fingerprints)}"
                            f" ({identity.describe()})", keys=keys, identity=identity)
        if kind == "sigstoreSigned":
            _fields(raw, {"type", "keyPath", "keyPaths", "keyData", "keyDatas", "fulcio",
                          "rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData",
                          "rekorPublicKeyDatas", "signedIdentity", "pki"}, where)
            identity = _identity(raw.get("signedIdentity"), where)
            keyless = [k for k in ("fulcio", "pki") if k in raw]
            rekor = [k for k in raw if k.startswith("rekorPublicKey")]
            has_key = any(k in raw for k in ("keyPath", "keyPaths", "keyData", "keyDatas"))
            if keyless or rekor:
                names = ", ".join(keyless + rekor)
                return SigstoreSigned(kind, f"sigstoreSigned ({names})", identity=identity,
                                      unsupported=f"sigstoreSigned with {names} is not "
                                      "supported by unlade (only a public key)")
            if not has_key:
                raise PolicyError(f"{where}: sigstoreSigned needs keyPath, keyPaths, "
                                  "keyData or keyDatas")
            material = self.key_material(raw, where, one="keyPath", many="keyPaths",
                                         data="keyData", datas="keyDatas")
            keys: list[Any] = []
            for name, blob in material:
                try:
                    keys += load_public_keys(blob, name)
                except ValueError as err:
                    raise PolicyError(f"{where}: {err}") from None
            names = [n for n, _ in material]
            return SigstoreSigned(kind, f"sigstoreSigned key {', '.join(names)} "
                                  f"({identity.describe()})", keys=keys, key_names=names,
                                  identity=identity)
        if kind == "signedBaseLayer":
            _fields(raw, {"type", "baseLayerIdentity"}, where)
            return _Unsupported(kind, "signedBaseLayer")
        raise PolicyError(f"{where}: unknown requirement type {kind!r}")


@dataclass
class _Unsupported(Requirement):
    def evaluate(self, ctx: _Context) -> Outcome:
        return Outcome(self.describe, False, f"{self.type} is not supported by unlade")


# -- the policy --------------------------------------------------------------------------


@dataclass
class Verdict:
    """The policy's answer for one image: which scope applied and how each requirement
    fared. ``accepted`` only if every requirement holds."""

    image: str
    scope: str
    outcomes: list[Outcome]

    @property
    def accepted(self) -> bool:
        return bool(self.outcomes) and all(o.ok for o in self.outcomes)

    def error(self) -> str:
        """The one-line reason the image is refused."""
        failed = [o.reason for o in self.outcomes if not o.ok]
        if not self.outcomes:
            return f"policy scope {self.scope!r} has no requirements"
        return "; ".join(failed)

    def raise_if_rejected(self) -> None:
        if not self.accepted:
            raise PolicyRejected(self.error())

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "scope": self.scope, "accepted": self.accepted,
                "requirements": [{"requirement": o.requirement, "ok": o.ok,
                                  "reason": o.reason} for o in self.outcomes]}


def _scopes(ref: Reference) -> list[str]:
    """The docker transport's scopes for ``ref``, most specific first (containers/image's
    ``PolicyConfigurationIdentity`` then ``PolicyConfigurationNamespaces``)."""
    name = _name(ref)
    out = [f"{name}@{ref.digest}" if ref.digest else f"{name}:{ref.tag or 'latest'}"]
    parts = name.split("/")
    out += ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]
    host = ref.registry.split(":")[0] if not ref.registry.startswith("[") else ""
    labels = host.split(".")
    out += ["*." + ".".join(labels[i:]) for i in range(1, len(labels))]
    return out


def _valid_scope(scope: str) -> bool:
    """Whether ``scope`` is one that :func:`_scopes` can produce: anything else would be
    silently ignored (a wildcard with a port or path, a short name that is not a registry,
    a tag with a digest)."""
    if scope == "" or scope.startswith("*."):
        return scope == "" or all(re.fullmatch(r"[A-Za-z0-9-]+", label)
                                  for label in scope[2:].split("."))
    host = scope.split("/", 1)[0]
    if not ("." in host or ":" in host or host == "localhost") \
            or host == "index.docker.io":
        return False
    try:
        ref = parse_reference(scope if "/" in scope else scope + "/x")
    except InvalidReference:
        return False
    return not (ref.digest and _tagged(scope.split("@", 1)[0]))


def valid_scope(scope: str) -> bool:
    """Whether ``scope`` is a docker-transport scope that can match an image (``""``
    matches every image)."""
    return _valid_scope(scope)


def scope_matches(scopes: Sequence[str] | frozenset[str], ref: Reference) -> bool:
    """Whether any of ``scopes`` covers ``ref`` (``""`` covers every image)."""
    if not scopes:
        return False
    wanted = set(scopes)
    return "" in wanted or any(s in wanted for s in _scopes(ref))


@dataclass
class Policy:
    """A loaded policy.json."""

    default: list[Requirement]
    docker: dict[str, list[Requirement]]
    source: str = "policy"

    @classmethod
    def from_bytes(cls, data: bytes, source: str, base: Path | None = None,
                   read: Callable[[str], bytes] | None = None) -> Policy:
        """Parse ``data`` (named ``source`` in errors); relative key paths are taken from
        ``base`` (the policy file's directory); ``read`` reads key files (default: the
        local filesystem)."""
        if len(data) > MAX_POLICY:
            raise PolicyError(f"{source}: larger than {MAX_POLICY} bytes")
        try:
            doc = strict_json(data)
        except ValueError as err:
            raise PolicyError(f"{source}: not valid JSON ({str(err)[:200]})") from None
        if not isinstance(doc, dict):
            raise PolicyError(f"{source}: must be a JSON object")
        _fields(doc, {"default", "transports"}, source)
        loader = _Loader(base or Path.cwd(), read or (lambda p: Path(p).read_bytes()))
        if not isinstance(doc.get("default"), list):
            raise PolicyError(f"{source}: \"default\" must be a list of requirements")
        default = [loader.requirement(r, f"{source} default[{i}]")
                   for i, r in enumerate(doc["default"])]
        docker: dict[str, list[Requirement]] = {}
        transports = doc.get("transports", {})
        if not isinstance(transports, dict):
            raise PolicyError(f"{source}: \"transports\" must be an object")
        for transport, scopes in transports.items():
            if not isinstance(scopes, dict):
                raise PolicyError(f"{source}: transport {transport!r} must map scopes to "
                                  "requirement lists")
            for scope, reqs in scopes.items():
                where = f"{source} {transport} scope {scope!r}"
                if not isinstance(reqs, list):
                    raise PolicyError(f"{where}: must be a list of requirements")
                parsed = [loader.requirement(r, f"{where}[{i}]") for i, r in enumerate(reqs)]
                if transport != "docker":
                    continue  # other transports' scopes are checked, then not used
                if not _valid_scope(scope):
                    raise PolicyError(f"{where}: not a valid docker scope")
                docker[scope] = parsed
        return cls(default, docker, source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as err:
            raise PolicyError(f"cannot read policy {p}: {err.strerror or err}") from None
        return cls.from_bytes(data, str(p), p.parent)

    def requirements_for(self, ref: Reference) -> tuple[str, list[Requirement]]:
        """The scope that applies to ``ref`` and its requirements."""
        for scope in _scopes(ref):
            if scope in self.docker:
                return scope, self.docker[scope]
        if "" in self.docker:
            return "docker (transport default)", self.docker[""]
        return "default", self.default

    def evaluate(self, ref: Reference, manifest: bytes, source: SignatureSource) -> Verdict:
        """Judge the image ``ref`` names, whose manifest (the one the reference points at,
        an index for a multi-platform tag) is ``manifest``."""
        scope, reqs = self.requirements_for(ref)
        ctx = _Context(ref, manifest, source, scope)
        return Verdict(str(ref), scope, [r.evaluate(ctx) for r in reqs])


def find_policy(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The policy file in force: ``explicit``, ``$UNLADE_POLICY``, then the user's and
    the system's containers policy. None: no policy (accept anything)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("UNLADE_POLICY")
    if env:
        return Path(env)
    for candidate in (USER_POLICY.expanduser(), SYSTEM_POLICY):
        if candidate.is_file():
            return candidate
    return None
