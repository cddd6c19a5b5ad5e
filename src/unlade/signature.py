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
import bz2
import json
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidDigest
from .reference import validate_digest

SIMPLE_SIGNING_TYPE = "atomic container signature"
COSIGN_TYPE = "cosign container image signature"
MAX_PAYLOAD = 4 << 20
# What the compressed packets of one OpenPGP signature may expand to: the payload and the
# signature packets, with room to spare. A few MiB of deflate expand to gigabytes.
MAX_INFLATED = MAX_PAYLOAD + (1 << 20)


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
        raise SignatureInvalid(f"{what} has unknown field(s) "
                               f"{', '.join(repr(k[:100]) for k in sorted(unknown))}")
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise SignatureInvalid(f"{what} is not a string")
    return value


def strict_json(data: bytes | str) -> Any:
    """JSON as Go's strict readers in containers/image take it: a key given twice or a
    NaN/Infinity is an error (Python would keep the last key silently). Raises
    ValueError (RecursionError for absurd nesting is turned into one too)."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key[:100]!r}")
            out[key] = value
        return out

    def not_a_number(text: str) -> Any:
        raise ValueError(f"{text} is not a JSON value")

    try:
        return json.loads(data, object_pairs_hook=no_duplicates, parse_constant=not_a_number)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _optional(value: Any, expected_type: str) -> None:
    """``optional`` as containers/image takes it: an object (or, in a sigstore payload,
    null, which cosign writes) whose ``creator`` is a string and ``timestamp`` an integer;
    other fields are free-form."""
    if value is None and expected_type == COSIGN_TYPE:
        return
    if not isinstance(value, dict):
        raise SignatureInvalid("optional is not a JSON object")
    if "creator" in value:
        _string(value["creator"], "optional.creator")
    if "timestamp" in value:
        ts = value["timestamp"]
        if isinstance(ts, bool) or not isinstance(ts, int | float) or (
                isinstance(ts, float) and not (math.isfinite(ts) and ts.is_integer())) \
                or not -(1 << 63) <= ts < (1 << 63):
            raise SignatureInvalid("optional.timestamp is not an integer")


def parse_payload(data: bytes, expected_type: str) -> Payload:
    """The payload of a signature, checked field by field (containers/image's
    ``untrustedSignature`` rules: duplicate and unknown keys refused, ``optional`` present;
    its content is free-form but for ``creator`` and ``timestamp``)."""
    if len(data) > MAX_PAYLOAD:
        raise SignatureInvalid("signature payload is too large")
    try:
        doc = strict_json(data)
    except ValueError as err:  # UnicodeDecodeError is one too
        if str(err).startswith("duplicate key"):
            raise SignatureInvalid(f"signature payload has a {err}") from None
        raise SignatureInvalid("signature payload is not JSON") from None
    top = _object(doc, "signature payload", {"critical"}, {"optional"})
    critical = _object(top["critical"], "critical", {"type", "image", "identity"})
    kind = _string(critical["type"], "critical.type")
    if kind != expected_type:
        raise SignatureInvalid(f"signature type is {kind!r}, not {expected_type!r}")
    image = _object(critical["image"], "critical.image", {"docker-manifest-digest"})
    identity = _object(critical["identity"], "critical.identity", {"docker-reference"})
    digest = _string(image["docker-manifest-digest"], "critical.image.docker-manifest-digest")
    try:
        validate_digest(digest)
    except InvalidDigest:
        raise SignatureInvalid(f"invalid docker-manifest-digest {digest[:200]!r}") from None
    if "optional" not in top:  # required, checked last: critical's problems come first
        raise SignatureInvalid("signature payload lacks optional")
    _optional(top["optional"], expected_type)
    return Payload(
        docker_reference=_string(identity["docker-reference"],
                                 "critical.identity.docker-reference"),
        manifest_digest=digest,
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
    blob = _dearmor(blob)
    if blob[:1] and blob[0] & 0x80:  # binary: what Sequoia would decompress is bounded first
        _check_inflation(blob, MAX_INFLATED)
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


# Every armor header line, however mangled its dashes or case (a superset of what Sequoia
# recognises, so that no armored block can hide from the checks below).
_ARMOR_BEGIN = re.compile(rb"BEGIN PGP ([^\r\n-]*)", re.IGNORECASE)
_ARMOR_KINDS_CLEARTEXT = {b"SIGNED MESSAGE", b"SIGNATURE"}


def _dearmor(blob: bytes) -> bytes:
    """``blob`` as binary OpenPGP, so that what :func:`_check_inflation` reads is what
    Sequoia verifies: an armored message is decoded here. A cleartext-signed message is
    kept as it is (Sequoia refuses compressed packets in its signature block), provided no
    other armored block hides in it."""
    if not blob or blob[0] & 0x80:
        return blob
    found = list(_ARMOR_BEGIN.finditer(blob))
    kinds = [m.group(1).strip().upper() for m in found]
    if not kinds:
        raise SignatureInvalid("not a valid OpenPGP signature (neither binary nor armored)")
    if kinds[0] == b"SIGNED MESSAGE" and set(kinds) <= _ARMOR_KINDS_CLEARTEXT:
        return blob
    if kinds[0] != b"MESSAGE":
        raise SignatureInvalid("not a valid OpenPGP signature (armored "
                               f"{kinds[0][:40].decode('ascii', 'replace')!r}, not a message)")
    end = blob.find(b"END PGP MESSAGE", found[0].end())
    if end < 0:
        raise SignatureInvalid("not a valid OpenPGP signature (unterminated armor)")
    lines = [line.strip() for line in blob[found[0].end():end].split(b"\n")[1:-1]]
    if any(b":" in line for line in lines):  # armor headers, up to a blank line
        while lines and lines[0]:
            lines.pop(0)
    try:
        data = base64.b64decode(b"".join(x for x in lines if not x.startswith(b"=")),
                                validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid("not a valid OpenPGP signature (bad armor)") from None
    if not data or not data[0] & 0x80:
        raise SignatureInvalid("not a valid OpenPGP signature (bad armor)")
    return data


def _packets(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, body) of each OpenPGP packet in ``data``, old and new formats, partial
    body lengths joined; a malformed stream is refused rather than guessed at."""
    bad = SignatureInvalid("not a valid OpenPGP signature (malformed packet)")
    out, i, n = [], 0, len(data)
    while i < n:
        head = data[i]
        i += 1
        if not head & 0x80:
            raise bad
        if head & 0x40:  # new format
            tag, body = head & 0x3F, bytearray()
            while True:
                if i >= n:
                    raise bad
                first, partial = data[i], False
                if first < 192:
                    length, i = first, i + 1
                elif first < 224:
                    if i + 2 > n:
                        raise bad
                    length, i = ((first - 192) << 8) + data[i + 1] + 192, i + 2
                elif first == 255:
                    if i + 5 > n:
                        raise bad
                    length, i = int.from_bytes(data[i + 1:i + 5], "big"), i + 5
                else:
                    length, i, partial = 1 << (first & 0x1F), i + 1, True
                if i + length > n:
                    raise bad
                body += data[i:i + length]
                i += length
                if not partial:
                    break
            out.append((tag, bytes(body)))
        else:
            tag, kind = (head >> 2) & 0x0F, head & 3
            if kind == 3:  # indeterminate: to the end
                length = n - i
            else:
                size = (1, 2, 4)[kind]
                if i + size > n:
                    raise bad
                length, i = int.from_bytes(data[i:i + size], "big"), i + size
            if i + length > n:
                raise bad
            out.append((tag, data[i:i + length]))
            i += length
    return out


def _check_inflation(data: bytes, budget: int, depth: int = 0) -> int:
    """Refuse an OpenPGP message whose compressed packets expand to more than ``budget``
    bytes (a compression bomb needs no key: Sequoia would inflate it all in memory before
    finding the signature bogus). Returns the budget left."""
    for tag, body in _packets(data):
        if tag != 8 or not body:  # not a compressed data packet
            continue
        if depth >= 4:
            raise SignatureInvalid("not a valid OpenPGP signature (compression nested too "
                                   "deeply)")
        algorithm, packed = body[0], body[1:]
        try:
            if algorithm == 0:
                inner = packed
            elif algorithm in (1, 2):  # ZIP (raw deflate), ZLIB
                inner = zlib.decompressobj(-15 if algorithm == 1 else 15).decompress(
                    packed, budget + 1)
            elif algorithm == 3:
                inner = bz2.BZ2Decompressor().decompress(packed, budget + 1)
            else:
                continue  # unknown: Sequoia refuses it
        except (zlib.error, OSError, EOFError, ValueError):
            raise SignatureInvalid("not a valid OpenPGP signature (bad compressed data)") \
                from None
        if len(inner) > budget:
            raise SignatureInvalid(f"signature expands to more than {MAX_INFLATED} bytes "
                                   "once decompressed")
        budget = _check_inflation(inner, budget - len(inner), depth + 1)
    return budget


# -- sigstore ----------------------------------------------------------------------------


def load_public_keys(data: bytes, what: str) -> list[Any]:
    """Public keys (PEM; several may follow each other) for sigstore signatures."""
    from cryptography.exceptions import UnsupportedAlgorithm
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
        except (ValueError, UnsupportedAlgorithm) as err:
            raise ValueError(f"{what}: invalid public key ({_first_line(err)})") from None
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
        # Go's base64 decoder, which containers/image uses, skips CR and LF
        signature = base64.b64decode(signature_b64.replace("\r", "").replace("\n", ""),
                                     validate=True)
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
