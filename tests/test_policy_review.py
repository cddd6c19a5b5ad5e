"""Regression tests from an adversarial review of the signature policy: identity rules,
scopes, payload parsing, OpenPGP and sigstore edge cases, resource caps, and malformed
policies (each fixed bug has a test that failed before its fix)."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_policy import (
    DIGEST,
    MANIFEST,
    GpgSigner,
    KeySigner,
    Sig,
    Source,
    judge,
    payload,
    policy,
    signed_by,
)

from unlade.errors import ConfigError, PolicyError
from unlade.policy import Policy
from unlade.signature import (
    COSIGN_TYPE,
    SIMPLE_SIGNING_TYPE,
    SignatureInvalid,
    load_gpg_keys,
    parse_payload,
    verify_gpg,
)

pysequoia = pytest.importorskip("pysequoia")


@pytest.fixture(scope="module")
def alice() -> GpgSigner:
    return GpgSigner("alice")


@pytest.fixture(scope="module")
def mallory() -> GpgSigner:
    return GpgSigner("mallory")


def raw_payload(critical: Any = None, **top: Any) -> bytes:
    if critical is None:
        critical = {"type": SIMPLE_SIGNING_TYPE, "image": {"docker-manifest-digest": DIGEST},
                    "identity": {"docker-reference": "r.io/app:1"}}
    return json.dumps({"critical": critical, **top}).encode()


# -- identity rules --------------------------------------------------------------------------

REMAP = {"type": "remapIdentity", "prefix": "m.io", "signedPrefix": "r.io"}


@pytest.mark.parametrize(("rule", "image"), [
    (None, "r.io/app:latest"),
    (None, f"r.io/app@{DIGEST}"),
    ({"type": "matchExact"}, "r.io/app:latest"),
    ({"type": "exactReference", "dockerReference": "r.io/app:latest"}, "r.io/other:1"),
    (REMAP, "m.io/app:latest"),
    (REMAP, f"m.io/app@{DIGEST}"),
])
def test_a_signature_without_tag_or_digest_is_no_exact_match(
        tmp_path: Path, alice: GpgSigner, rule: dict[str, Any] | None, image: str) -> None:
    # containers/image refuses a name-only docker-reference (IsNameOnly) for these rules;
    # parsing it added ":latest", so a signature for "r.io/app" passed as "r.io/app:latest"
    pol = policy(tmp_path, {"default": [signed_by(tmp_path, alice, rule)]})
    verdict = judge(pol, image, Source([alice.sign(payload("r.io/app"))]))
    assert not verdict.accepted
    assert "identity mismatch (signed for r.io/app, without a tag or digest" in verdict.error()


@pytest.mark.parametrize("rule", [
    {"type": "matchRepository"},
    {"type": "exactRepository", "dockerRepository": "r.io/app"},
])
def test_repository_rules_still_take_a_name_only_signature(
        tmp_path: Path, alice: GpgSigner, rule: dict[str, Any]) -> None:
    pol = policy(tmp_path, {"default": [signed_by(tmp_path, alice, rule)]})
    verdict = judge(pol, "r.io/app:1", Source([alice.sign(payload("r.io/app"))]))
    assert verdict.accepted, verdict.error()


def test_remap_keeps_the_tag_of_a_tagged_and_pinned_image(tmp_path: Path,
                                                          alice: GpgSigner) -> None:
    # containers/image remaps ref.String() (tag and digest); dropping the tag made the rule
    # accept any tag's signature, where the same image without remapping needs an exact one
    pol = policy(tmp_path, {"default": [signed_by(tmp_path, alice, REMAP)]})
    image = f"m.io/app:1@{DIGEST}"
    other_tag = judge(pol, image, Source([alice.sign(payload("r.io/app:2"))]))
    assert not other_tag.accepted
    assert "identity mismatch (signed for r.io/app:2" in other_tag.error()
    exact = judge(pol, image, Source([alice.sign(payload(f"r.io/app:1@{DIGEST}"))]))
    assert exact.accepted, exact.error()
    plain = policy(tmp_path, {"default": [signed_by(tmp_path, alice)]})
    assert not judge(plain, f"r.io/app:1@{DIGEST}",
                     Source([alice.sign(payload("r.io/app:2"))])).accepted


def test_remap_to_an_invalid_name_refuses_the_signature(tmp_path: Path,
                                                        alice: GpgSigner) -> None:
    # the remapped name is longer than 255 characters: a refusal, not a PolicyError raised
    # in the middle of the evaluation
    rule = {"type": "remapIdentity", "prefix": "m.io", "signedPrefix": "a-much-longer.example"}
    pol = policy(tmp_path, {"default": [signed_by(tmp_path, alice, rule)]})
    image = "m.io/" + "a" * 240 + ":1"
    verdict = judge(pol, image, Source([alice.sign(payload("r.io/app:1"))]))
    assert not verdict.accepted
    assert "remapIdentity of 'm.io/aaaa" in verdict.error()
    assert "gives an invalid reference" in verdict.error()


@pytest.mark.parametrize("prefix", ["r.io/app:1", f"r.io/app@{DIGEST}", "r.io/app:1/"])
def test_remap_prefixes_with_a_tag_or_digest_are_refused(tmp_path: Path, alice: GpgSigner,
                                                         prefix: str) -> None:
    for rule in ({"type": "remapIdentity", "prefix": prefix, "signedPrefix": "s.io"},
                 {"type": "remapIdentity", "prefix": "s.io", "signedPrefix": prefix}):
        with pytest.raises(PolicyError, match="is not a registry, namespace or repository"):
            policy(tmp_path, {"default": [signed_by(tmp_path, alice, rule)]})


@pytest.mark.parametrize(("rule", "image", "signed", "accepted"), [
    # prefix boundaries: whole components only, the port is part of the host
    (REMAP, "m.io/app:1", "r.io/app:1", True),
    (REMAP, "m.iox/app:1", "r.iox/app:1", False),
    (REMAP, "m.io:5000/app:1", "r.io:5000/app:1", False),
    ({"type": "remapIdentity", "prefix": "m.io:5000", "signedPrefix": "r.io"},
     "m.io:5000/app:1", "r.io/app:1", True),
    ({"type": "remapIdentity", "prefix": "m.io/ns/app/longer", "signedPrefix": "r.io"},
     "m.io/ns/app:1", "r.io:1", False),
    ({"type": "remapIdentity", "prefix": "m.io/ns/app", "signedPrefix": "r.io/x"},
     "m.io/ns/app:1", "r.io/x:1", True),
    ({"type": "remapIdentity", "prefix": "docker.io/library", "signedPrefix": "r.io/lib"},
     "busybox", "r.io/lib/busybox:latest", True),
    # docker.io short names and normalisation
    ({"type": "exactReference", "dockerReference": "busybox:1"}, "r.io/x:1",
     "index.docker.io/library/busybox:1", True),
    ({"type": "exactRepository", "dockerRepository": "busybox"}, "r.io/x:1",
     "docker.io/library/busybox:9", True),
    (None, "busybox:1", "docker.io/busybox:1", True),
    (None, "localhost:5000/app:1", "localhost/app:1", False),
    (None, "r.io/app:1", "R.IO/app:1", False),
    (None, "r.io:443/app:1", "r.io/app:1", False),
])
def test_identity_rule_edges(tmp_path: Path, alice: GpgSigner, rule: dict[str, Any] | None,
                             image: str, signed: str, accepted: bool) -> None:
    pol = policy(tmp_path, {"default": [signed_by(tmp_path, alice, rule)]})
    verdict = judge(pol, image, Source([alice.sign(payload(signed))]))
    assert verdict.accepted is accepted, verdict.error()


# -- scopes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", [
    "*.example.com:5000",  # wildcards are matched on the host without its port
    "*.example.com/ns",
    "*.[::1]",
    "busybox",  # short names: every image name starts with its registry
    "library/busybox",
    "myhost",
    "index.docker.io/library/busybox",  # normalised to docker.io
    f"r.io/app:1@{DIGEST}",  # looked up by digest only
])
def test_scopes_that_can_never_match_are_refused(tmp_path: Path, scope: str) -> None:
    with pytest.raises(PolicyError, match="not a valid docker scope"):
        policy(tmp_path, {"default": [{"type": "insecureAcceptAnything"}],
                          "transports": {"docker": {scope: [{"type": "reject"}]}}})


def test_valid_scopes_still_match(tmp_path: Path) -> None:
    reject = [{"type": "reject"}]
    scopes = ["*.example.com", "*.1", "10.0.0.1:5000", "localhost", "[::1]:5000/app",
              "docker.io/bitnami", "docker.io", f"r.io/app@{DIGEST}", "r.io/app:1"]
    pol = policy(tmp_path, {"default": [{"type": "insecureAcceptAnything"}],
                            "transports": {"docker": {s: reject for s in scopes}}})
    for image, scope in [
        ("a.example.com:5000/x", "*.example.com"),
        ("10.0.0.1:5000/x", "10.0.0.1:5000"),
        ("10.0.0.1/x", "*.1"),
        ("localhost/x", "localhost"),
        ("[::1]:5000/app:3", "[::1]:5000/app"),
        ("docker.io/bitnami/redis", "docker.io/bitnami"),
        ("busybox", "docker.io"),
        (f"r.io/app:9@{DIGEST}", f"r.io/app@{DIGEST}"),  # tag and digest: the digest
        ("r.io/app:1", "r.io/app:1"),
    ]:
        verdict = judge(pol, image, Source())
        assert (verdict.scope, verdict.accepted) == (scope, False), image
    assert judge(pol, "r.io/app:2", Source()).accepted


def test_a_tag_scope_does_not_apply_to_a_tagged_and_pinned_reference(tmp_path: Path) -> None:
    # "r.io/app:1@sha256:<anything>" fetches the digest; a lax tag scope must not let it by
    pol = policy(tmp_path, {"default": [{"type": "reject"}], "transports": {"docker": {
        "r.io/app:1": [{"type": "insecureAcceptAnything"}]}}})
    evil = "sha256:" + "e" * 64
    assert not judge(pol, f"r.io/app:1@{evil}", Source()).accepted


def test_reject_names_the_scope(tmp_path: Path) -> None:
    pol = policy(tmp_path, {"default": [{"type": "insecureAcceptAnything"}],
                            "transports": {"docker": {"r.io/ns": [{"type": "reject"}]}}})
    assert judge(pol, "r.io/ns/app:1", Source()).error() == \
        "policy scope 'r.io/ns' rejects r.io/ns/app:1"


# -- malformed policies ----------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    b'{"default": [{"type": "reject"}], "default": [{"type": "insecureAcceptAnything"}]}',
    b'{"default": [{"type": "reject"}], "transports": {"docker": {'
    b'"r.io/app": [{"type": "reject"}], "r.io/app": [{"type": "insecureAcceptAnything"}]}}}',
    b'{"default": [{"type": "reject", "type": "insecureAcceptAnything"}]}',
    b'{"default": [{"type": "reject"}], "transports": {"docker": {}, "docker": {}}}',
])
def test_duplicate_keys_in_a_policy_are_refused(text: bytes) -> None:
    # containers/image's paranoid JSON parsing refuses them; Python kept the last one
    with pytest.raises(PolicyError, match="duplicate key"):
        Policy.from_bytes(text, "p.json")


def test_a_key_path_with_a_nul_or_newline_is_a_policy_error(tmp_path: Path) -> None:
    for path in ("a\x00b", "a\nb"):
        for req in ({"type": "signedBy", "keyType": "GPGKeys", "keyPath": path},
                    {"type": "sigstoreSigned", "keyPaths": [path]}):
            with pytest.raises(PolicyError, match="cannot read key") as info:
                policy(tmp_path, {"default": [req]})
            assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", [
    b'{"default": ' + b"[" * 50000 + b"]" * 50000 + b"}",
    b'{"default": [{"type": "reject"}], "transports": NaN}',
])
def test_hostile_json_is_a_policy_error(text: bytes) -> None:
    with pytest.raises(PolicyError, match="not valid JSON") as info:
        Policy.from_bytes(text, "p.json")
    assert "\n" not in str(info.value)


def test_a_key_on_an_unsupported_curve_is_a_policy_error(tmp_path: Path) -> None:
    der = ec.generate_private_key(ec.SECP256K1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    # secp256k1's OID with its last arc changed: a curve cryptography does not know
    der = der.replace(bytes.fromhex("06052b8104000a"), bytes.fromhex("06052b8104000b"))
    pem = (b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(der)
           + b"-----END PUBLIC KEY-----\n")
    with pytest.raises(PolicyError, match="invalid public key") as info:
        policy(tmp_path, {"default": [{"type": "sigstoreSigned",
                                       "keyData": base64.b64encode(pem).decode()}]})
    assert "\n" not in str(info.value)


def _random_policy(rng: random.Random, keys: dict[str, str]) -> Any:
    words = ["", "type", "default", "transports", "docker", "atomic", "signedBy", "GPGKeys",
             "sigstoreSigned", "reject", "insecureAcceptAnything", "signedBaseLayer",
             "keyPath", "keyPaths", "keyData", "keyDatas", "keyType", "signedIdentity",
             "matchExact", "matchRepoDigestOrExact", "matchRepository", "exactReference",
             "exactRepository", "remapIdentity", "prefix", "signedPrefix", "dockerReference",
             "dockerRepository", "fulcio", "rekorPublicKeyPath", "pki", "baseLayerIdentity",
             "r.io/a", "r.io/a:1", f"r.io/a@{DIGEST}", "*.io", "*.", "r.io:5000", "[::1]/x",
             "busybox", "UPPER/x", "/nonexistent", "kbs:///a/b/c", "eA==", "%%", "a" * 300,
             "\n", "\x00", "a\nb", "é", *keys.values()]

    def value(depth: int) -> Any:
        r = rng.random()
        if depth > 4 or r < 0.35:
            return rng.choice([None, True, False, 0, -1, 1.5, 10**30, rng.choice(words)])
        if r < 0.7:
            return {rng.choice(words): value(depth + 1) for _ in range(rng.randint(0, 4))}
        return [value(depth + 1) for _ in range(rng.randint(0, 3))]

    def requirement() -> Any:
        if rng.random() < 0.15:
            return value(2)
        req: dict[str, Any] = {"type": rng.choice(words[6:12])}
        if req["type"] == "signedBy" and rng.random() < 0.7:
            req["keyType"] = "GPGKeys"
        for _ in range(rng.randint(0, 3)):
            key = rng.choice(words[12:32])
            req[key] = rng.choice([value(2), rng.choice(list(keys.values())),
                                   {"type": rng.choice(words[18:24]),
                                    rng.choice(words[24:28]): rng.choice(words[32:])}])
        return req

    doc: dict[str, Any] = {}
    if rng.random() < 0.9:
        doc["default"] = [requirement() for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.7:
        doc["transports"] = {rng.choice(["docker", "atomic", "x"]): {
            rng.choice(words[32:]): [requirement() for _ in range(rng.randint(0, 2))]
            for _ in range(rng.randint(0, 3))} for _ in range(rng.randint(0, 2))}
    if rng.random() < 0.1:
        doc[rng.choice(words)] = value(0)
    return doc if rng.random() < 0.95 else value(0)


def test_fuzzed_policies_fail_with_one_line_policy_errors(tmp_path: Path,
                                                          alice: GpgSigner) -> None:
    cosign = KeySigner("ec")
    keys = {"gpg": base64.b64encode(alice.public).decode(),
            "pem": base64.b64encode(cosign.public).decode(),
            "gpg_path": str(tmp_path / "k.gpg")}
    (tmp_path / "k.gpg").write_bytes(alice.public)
    rng = random.Random(20240611)
    loaded = 0
    for _ in range(1500):
        text = json.dumps(_random_policy(rng, keys)).encode()
        if rng.random() < 0.05:
            text = text[:rng.randint(0, len(text))]
        try:
            Policy.from_bytes(text, "p.json", tmp_path)
            loaded += 1
        except (PolicyError, ConfigError) as err:
            assert "\n" not in str(err), str(err)
    assert loaded > 10  # the generator does reach valid policies


# -- payloads --------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "reason"), [
    # duplicate keys: containers/image refuses them; Python kept the last
    (b'{"critical": {"type": "atomic container signature", "image": {"docker-manifest-digest": '
     b'"' + DIGEST.encode() + b'"}, "identity": {"docker-reference": "r.io/evil:1", '
     b'"docker-reference": "r.io/app:1"}}, "optional": {}}', "duplicate key"),
    (raw_payload()[:-1] + b', "critical": {}}', "duplicate key"),
    # optional: required, an object, creator a string, timestamp an integer
    (raw_payload(), "lacks optional"),
    (raw_payload(optional=None), "optional is not a JSON object"),
    (raw_payload(optional=[]), "optional is not a JSON object"),
    (raw_payload(optional="x"), "optional is not a JSON object"),
    (raw_payload(optional={"creator": 5}), "optional.creator is not a string"),
    (raw_payload(optional={"timestamp": 1.5}), "optional.timestamp is not an integer"),
    (raw_payload(optional={"timestamp": "1"}), "optional.timestamp is not an integer"),
    (raw_payload(optional={"timestamp": True}), "optional.timestamp is not an integer"),
    (raw_payload(optional={"timestamp": 10**30}), "optional.timestamp is not an integer"),
    (raw_payload()[:-1] + b', "optional": {"timestamp": 1e400}}',
     "optional.timestamp is not an integer"),
    (raw_payload()[:-1] + b', "optional": {"timestamp": NaN}}', "not JSON"),
    (b'{"optional": {}, "critical": ' + b"[" * 50000 + b"]" * 50000 + b"}", "not JSON"),
    # the digest must be one
    (raw_payload({"type": SIMPLE_SIGNING_TYPE,
                  "image": {"docker-manifest-digest": DIGEST.upper().replace("SHA", "sha")},
                  "identity": {"docker-reference": "r.io/app:1"}}, optional={}),
     "invalid docker-manifest-digest"),
    (raw_payload({"type": SIMPLE_SIGNING_TYPE,
                  "image": {"docker-manifest-digest": "sha256:x\nforged: line"},
                  "identity": {"docker-reference": "r.io/app:1"}}, optional={}),
     "invalid docker-manifest-digest"),
])
def test_payloads_are_parsed_as_paranoidly_as_containers_image(data: bytes,
                                                                reason: str) -> None:
    with pytest.raises(SignatureInvalid, match=reason) as info:
        parse_payload(data, SIMPLE_SIGNING_TYPE)
    assert "\n" not in str(info.value)


def test_acceptable_optional_values() -> None:
    for optional in ({}, {"creator": "x", "timestamp": 1700000000, "other": [1, {"a": None}]},
                     {"timestamp": 1.0}, {"timestamp": -5}):
        assert parse_payload(raw_payload(optional=optional), SIMPLE_SIGNING_TYPE)
    cosign = {"type": COSIGN_TYPE, "image": {"docker-manifest-digest": DIGEST},
              "identity": {"docker-reference": "r.io/app:1"}}
    # cosign writes "optional": null
    assert parse_payload(raw_payload(cosign, optional=None), COSIGN_TYPE)


def test_a_sha512_payload_digest_is_checked_against_the_manifest(tmp_path: Path,
                                                                  alice: GpgSigner) -> None:
    pol = policy(tmp_path, {"default": [signed_by(tmp_path, alice)]})
    sha512 = "sha512:" + hashlib.sha512(MANIFEST).hexdigest()
    assert judge(pol, "r.io/app:1", Source([alice.sign(payload("r.io/app:1", sha512))])
                 ).accepted
    other = "sha512:" + hashlib.sha512(MANIFEST + b" ").hexdigest()
    assert "signed for another manifest" in judge(
        pol, "r.io/app:1", Source([alice.sign(payload("r.io/app:1", other))])).error()


def test_a_signature_on_an_index_vouches_for_the_index(tmp_path: Path,
                                                       alice: GpgSigner) -> None:
    index = json.dumps({"schemaVersion": 2, "mediaType":
                        "application/vnd.oci.image.index.v1+json", "manifests": [
                            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                             "digest": DIGEST, "size": len(MANIFEST)}]}).encode()
    index_digest = "sha256:" + hashlib.sha256(index).hexdigest()
    pol = policy(tmp_path, {"default": [signed_by(tmp_path, alice)]})
    on_index = Source([alice.sign(payload("r.io/app:1", index_digest))])
    assert judge(pol, "r.io/app:1", on_index, manifest=index).accepted
    on_instance = Source([alice.sign(payload("r.io/app:1", DIGEST))])
    assert not judge(pol, "r.io/app:1", on_instance, manifest=index).accepted
    # pinned by digest: any tag of the repository, the digest checked against the index
    assert judge(pol, f"r.io/app@{index_digest}", on_index, manifest=index).accepted


# -- OpenPGP ---------------------------------------------------------------------------------


def _packets(data: bytes) -> list[bytes]:
    """The packets of a Sequoia-made (new format, definite lengths) message."""
    out, i = [], 0
    while i < len(data):
        first = data[i + 1]
        if first < 192:
            length, header = first, 2
        elif first < 224:
            length, header = ((first - 192) << 8) + data[i + 2] + 192, 3
        else:
            length, header = int.from_bytes(data[i + 2:i + 6], "big"), 6
        out.append(data[i:i + header + length])
        i += header + length
    return out


def _compressed(inner: bytes, algorithm: int = 2) -> bytes:
    if algorithm == 1:
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        packed = packer.compress(inner) + packer.flush()
    else:
        packed = zlib.compress(inner, 9)
    body = bytes([algorithm]) + packed
    return bytes([0xC8, 0xFF]) + len(body).to_bytes(4, "big") + body


def _bomb(size: int) -> bytes:
    """A compressed data packet holding a literal packet of ``size`` zero bytes: about
    ``size / 1000`` bytes of input, and no key needed to make it."""
    header = b"b\x00\x00\x00\x00\x00"
    literal = bytes([0xCB, 0xFF]) + (len(header) + size).to_bytes(4, "big") + header
    packer = zlib.compressobj(9)
    packed = bytearray(packer.compress(literal))
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        packed += packer.compress(chunk)
    packed += packer.flush()
    body = b"\x02" + bytes(packed)
    return bytes([0xC8, 0xFF]) + len(body).to_bytes(4, "big") + body


def test_a_compression_bomb_is_refused_before_it_is_inflated(alice: GpgSigner) -> None:
    keys = load_gpg_keys(alice.public, "alice")
    bomb = _bomb(64 << 20)
    assert len(bomb) < 100_000
    armored = pysequoia.armor(bomb, pysequoia.ArmorKind.Message).encode()
    nested = _compressed(bomb)
    for blob in (bomb, armored, nested, _compressed(nested, 1)):
        start = time.monotonic()
        with pytest.raises(SignatureInvalid, match="bytes once decompressed"):
            verify_gpg(blob, keys)
        assert time.monotonic() - start < 5


def test_compressed_armored_and_cleartext_messages_still_verify(alice: GpgSigner) -> None:
    keys = load_gpg_keys(alice.public, "alice")
    data = payload("r.io/app:1")
    binary = alice.sign(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cleartext = bytes(pysequoia.sign(alice.tsk.signer(), data,
                                         mode=pysequoia.SignatureMode.CLEAR))
        armored = bytes(pysequoia.sign(alice.tsk.signer(), data))
    # gpg compresses what it signs (ZIP or ZLIB), old-format packets of indeterminate length
    old_format = bytes([0xA3, 2]) + zlib.compress(binary)
    commented = armored.replace(b"-----\n", b"-----\nComment: hello\n", 1)
    for blob in (binary, armored, commented, cleartext, _compressed(binary, 1),
                 _compressed(binary, 2), old_format):
        signed, signer = verify_gpg(blob, keys)
        assert (signed, signer) == (data, alice.fingerprint)
    # junk around a cleartext message is not part of what was signed
    signed, _ = verify_gpg(b'{"evil": 1}\n' + cleartext + b"\n{}", keys)
    assert signed == data


@pytest.mark.parametrize("make", [
    # an armored message hidden after a cleartext one
    lambda c, b: c + b"\n" + pysequoia.armor(b, pysequoia.ArmorKind.Message).encode(),
    # an armored message inside an armored message
    lambda c, b: pysequoia.armor(pysequoia.armor(b, pysequoia.ArmorKind.Message).encode(),
                                 pysequoia.ArmorKind.Message).encode(),
    # armor of another kind
    lambda c, b: pysequoia.armor(b, pysequoia.ArmorKind.Signature).encode(),
    lambda c, b: b"\n\n" + b,
])
def test_odd_armor_is_refused(alice: GpgSigner, make: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cleartext = bytes(pysequoia.sign(alice.tsk.signer(), b"{}",
                                         mode=pysequoia.SignatureMode.CLEAR))
    with pytest.raises(SignatureInvalid):
        verify_gpg(make(cleartext, _bomb(8 << 20)), load_gpg_keys(alice.public, "alice"))


def test_openpgp_message_shapes(alice: GpgSigner, mallory: GpgSigner) -> None:
    """Checked and fine: what Sequoia accepts is what was signed, by whom it was signed."""
    data, other = payload("r.io/app:1"), payload("r.io/evil:1")
    alice_keys = load_gpg_keys(alice.public, "alice")
    ops_a, literal, sig_a = _packets(alice.sign(data))
    ops_m, _, sig_m = _packets(mallory.sign(data))
    # two signatures over one literal (mallory's one-pass packet first, not "last")
    both = ops_m[:-1] + b"\x00" + ops_a + literal + sig_a + sig_m
    assert verify_gpg(both, alice_keys) == (data, alice.fingerprint)
    with pytest.raises(SignatureInvalid, match="not signed by a trusted key"):
        verify_gpg(both, load_gpg_keys(GpgSigner("eve").public, "eve"))
    # a literal packet the signature does not cover, before or after the message
    _, other_literal, _ = _packets(alice.sign(other))
    for blob in (alice.sign(data) + other_literal, other_literal + alice.sign(data),
                 alice.sign(data) + alice.sign(other), ops_a + other_literal + sig_a):
        with pytest.raises(SignatureInvalid):
            verify_gpg(blob, alice_keys)
    # a detached signature is no signed message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        detached = bytes(pysequoia.sign(alice.tsk.signer(), data,
                                        mode=pysequoia.SignatureMode.DETACHED, armor=False))
    with pytest.raises(SignatureInvalid, match="not a valid OpenPGP signature"):
        verify_gpg(detached, alice_keys)


def test_openpgp_keys(alice: GpgSigner, mallory: GpgSigner) -> None:
    data = payload("r.io/app:1")
    # the signing subkey signs; the primary key's fingerprint is reported
    signed = alice.sign(data)
    assert verify_gpg(signed, load_gpg_keys(alice.public, "a")) == (data, alice.fingerprint)
    # armored, binary, and keyrings of several certificates
    armored = str(alice.cert).encode()
    ring = load_gpg_keys(str(mallory.cert).encode() + b"\n" + armored, "ring")
    assert ring.fingerprints == [mallory.fingerprint, alice.fingerprint]
    for keys in (load_gpg_keys(armored, "a"), ring,
                 load_gpg_keys(mallory.public + alice.public, "ring")):
        assert verify_gpg(signed, keys) == (data, alice.fingerprint)
    # a revoked key signs nothing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        revocation = alice.cert.revoke(alice.tsk.certifier())
    revoked = load_gpg_keys(alice.public + bytes(revocation), "revoked")
    with pytest.raises(SignatureInvalid, match="not signed by a trusted key"):
        verify_gpg(signed, revoked)


# -- sigstore --------------------------------------------------------------------------------


def test_sigstore_signature_base64_with_line_breaks(tmp_path: Path) -> None:
    # Go's base64 decoder skips CR and LF (containers/image accepts such an annotation)
    signer = KeySigner("ec")
    (tmp_path / "k.pub").write_bytes(signer.public)
    pol = policy(tmp_path, {"default": [{"type": "sigstoreSigned", "keyPath": "k.pub"}]})
    good = payload("r.io/app:1", kind=COSIGN_TYPE)
    sig = signer.sign(good)
    wrapped = "\r\n".join(sig[i:i + 20] for i in range(0, len(sig), 20)) + "\n"
    assert judge(pol, "r.io/app:1", Source(sigstore=[Sig(good, wrapped)])).accepted
    spaced = " ".join(sig[i:i + 20] for i in range(0, len(sig), 20))
    assert "not base64" in judge(pol, "r.io/app:1",
                                 Source(sigstore=[Sig(good, spaced)])).error()


def test_sigstore_key_bundles_and_other_payloads(tmp_path: Path) -> None:
    one, two = KeySigner("ec"), KeySigner("ed25519")
    cert_block = (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    (tmp_path / "bundle.pem").write_bytes(cert_block + one.public + b"junk\n" + two.public)
    pol = policy(tmp_path, {"default": [{"type": "sigstoreSigned", "keyPath": "bundle.pem"}]})
    good = payload("r.io/app:1", kind=COSIGN_TYPE)
    for signer in (one, two):
        assert judge(pol, "r.io/app:1", Source(sigstore=[Sig(good, signer.sign(good))])
                     ).accepted
    # a valid signature over another payload, presented with this one
    other = payload("r.io/app:1", "sha256:" + "0" * 64, kind=COSIGN_TYPE)
    verdict = judge(pol, "r.io/app:1", Source(sigstore=[Sig(good, one.sign(other))]))
    assert verdict.error().endswith("not signed by a trusted key")
    # an ECDSA key on another curve verifies with SHA-256, as containers/image does
    p384 = ec.generate_private_key(ec.SECP384R1())
    pem = p384.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "p384.pem").write_bytes(pem)
    pol = policy(tmp_path, {"default": [{"type": "sigstoreSigned", "keyPath": "p384.pem"}]})
    sig = base64.b64encode(p384.sign(good, ec.ECDSA(hashes.SHA256()))).decode()
    assert judge(pol, "r.io/app:1", Source(sigstore=[Sig(good, sig)])).accepted
    sig384 = base64.b64encode(p384.sign(good, ec.ECDSA(hashes.SHA384()))).decode()
    assert not judge(pol, "r.io/app:1", Source(sigstore=[Sig(good, sig384)])).accepted
