"""Checking one image signature: an OpenPGP "simple signing" signature (containers/image's
``signedBy``) or a sigstore signature made with a key (``sigstoreSigned``, as cosign and
skopeo write them).

Both sign the same kind of JSON payload: ``critical.identity.docker-reference``,
``critical.image.docker-manifest-digest`` and ``critical.type``. A valid signature only
says that the key's owner signed *that payload*; whether the payload fits the image being
pulled (its manifest digest, its name under the policy's identity rule) is decided by
:mod:`unlade.policy`. The payload is parsed as strictly as containers/image parses it:
unknown fields in ``critical`` are refused, because a verifier that ignores a field a
signer meant as a restriction would accept what the signer did not sign.

OpenPGP goes through pysequoia (Sequoia, a maintained OpenPGP implementation in Rust; no
``gpg`` binary or keyring needed); sigstore signatures through ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SIMPLE_SIGNING_TYPE = "atomic container signature"
COSIGN_TYPE = "cosign container image signature"
MAX_PAYLOAD = 4 << 20


class SignatureInvalid(Exception):
    """This one signature does not count; ``str()`` is the reason, for the policy's
    message ("signed for bar", "not by a trusted key", ...)."""


@dataclass(frozen=True)
class Payload:
    """What a signature vouches for."""

    docker_reference: str
    manifest_digest: str
    type: str


def _object(value: Any, what: str, required: set[str], optional: set[str] = frozenset()
            ) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SignatureInvalid(f"{what} is not a JSON object")
    missing = required - value.keys()
    if missing:
        raise SignatureInvalid(f"{what} lacks {', '.join(sorted(missing))}")
    unknown = value.keys() - required - optional
    if unknown:
        raise SignatureInvalid(f"{what} has unknown field(s) {', '.join(sorted(unknown))}")
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise SignatureInvalid(f"{what} is not a string")
    return value


def parse_payload(data: bytes, expected_type: str) -> Payload:
    """The payload of a signature, checked field by field (containers/image's
    ``untrustedSignature`` rules; ``optional`` is free-form and ignored)."""
    if len(data) > MAX_PAYLOAD:
        raise SignatureInvalid("signature payload is too large")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise SignatureInvalid("signature payload is not JSON") from None
    top = _object(doc, "signature payload", {"critical"}, {"optional"})
    critical = _object(top["critical"], "critical", {"type", "image", "identity"})
    kind = _string(critical["type"], "critical.type")
    if kind != expected_type:
        raise SignatureInvalid(f"signature type is {kind!r}, not {expected_type!r}")
    image = _object(critical["image"], "critical.image", {"docker-manifest-digest"})
    identity = _object(critical["identity"], "critical.identity", {"docker-reference"})
    return Payload(
        docker_reference=_string(identity["docker-reference"],
                                 "critical.identity.docker-reference"),
        manifest_digest=_string(image["docker-manifest-digest"],
                                "critical.image.docker-manifest-digest"),
        type=kind,
    )


# -- OpenPGP -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GpgKeys:
    """Trusted OpenPGP certificates (a policy's keyPath/keyPaths/keyData)."""

    certs: tuple[Any, ...]

    @property
    def fingerprints(self) -> list[str]:
        return [c.fingerprint.upper() for c in self.certs]


def load_gpg_keys(data: bytes, what: str) -> GpgKeys:
    """Certificates from armored or binary key material (a keyring may hold several)."""
    import pysequoia

    try:
        certs = pysequoia.Cert.split_bytes(data)
    except Exception as err:  # pysequoia raises bare exceptions with a Rust backtrace
        raise ValueError(f"{what} holds no OpenPGP key ({_first_line(err)})") from None
    if not certs:
        raise ValueError(f"{what} holds no OpenPGP key")
    return GpgKeys(tuple(certs))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0].rstrip(".") if text else type(err).__name__


def verify_gpg(blob: bytes, keys: GpgKeys) -> tuple[bytes, str]:
    """The signed payload and the signer's fingerprint, if ``blob`` is an OpenPGP signed
    message by one of ``keys``; else :class:`SignatureInvalid`."""
    import pysequoia

    if len(blob) > MAX_PAYLOAD:
        raise SignatureInvalid("signature is too large")
    try:
        result = pysequoia.verify(bytes=blob, store=lambda _ids: list(keys.certs))
    except Exception as err:
        reason = _first_line(err)
        if "no valid signatures" in reason.lower():
            raise SignatureInvalid("not signed by a trusted key") from None
        raise SignatureInvalid(f"not a valid OpenPGP signature ({reason})") from None
    if not result.valid_sigs or result.bytes is None:
        raise SignatureInvalid("not signed by a trusted key")
    return bytes(result.bytes), result.valid_sigs[0].certificate.upper()


# -- sigstore ----------------------------------------------------------------------------


def load_public_keys(data: bytes, what: str) -> list[Any]:
    """Public keys (PEM; several may follow each other) for sigstore signatures."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys = []
    text = data.decode("ascii", "replace")
    end = "-----END PUBLIC KEY-----"
    for block in text.split(end)[:-1]:
        start = block.find("-----BEGIN PUBLIC KEY-----")
        if start < 0:
            continue
        try:
            keys.append(load_pem_public_key((block[start:] + end).encode()))
        except ValueError as err:
            raise ValueError(f"{what}: invalid public key ({err})") from None
    if not keys:
        raise ValueError(f"{what} holds no PEM public key")
    return keys


def verify_cosign(payload: bytes, signature_b64: str, keys: Sequence[Any]) -> None:
    """Check a sigstore signature (base64, over the payload bytes) with any of ``keys``:
    ECDSA with SHA-256 (what cosign makes), Ed25519, or RSA PKCS#1 v1.5 with SHA-256."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    if not signature_b64:
        raise SignatureInvalid("the signature annotation is missing")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid("the signature annotation is not base64") from None
    for key in keys:
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            elif isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, payload)
            elif isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
            else:
                continue
            return
        except InvalidSignature:
            continue
    raise SignatureInvalid("not signed by a trusted key")
