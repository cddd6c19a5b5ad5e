"""The policy engine on its own: scopes, requirements and identity rules, with signatures
made in-process by real OpenPGP (Sequoia) and sigstore-style (cryptography) signers.
End-to-end checks with skopeo-signed images are in test_signatures.py."""

from __future__ import annotations

import base64
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from unlade.errors import PolicyError, PolicyRejected
from unlade.policy import Policy, find_policy
from unlade.reference import parse_reference
from unlade.signature import COSIGN_TYPE, SIMPLE_SIGNING_TYPE, SignatureInvalid, parse_payload

pysequoia = pytest.importorskip("pysequoia")

MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def payload(ref: str, digest: str = DIGEST, kind: str = SIMPLE_SIGNING_TYPE,
            **extra: Any) -> bytes:
    critical = {"type": kind, "image": {"docker-manifest-digest": digest},
                "identity": {"docker-reference": ref}, **extra}
    return json.dumps({"critical": critical, "optional": {"creator": "test"}}).encode()


class GpgSigner:
    def __init__(self, name: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.tsk = pysequoia.Tsk.generate(f"{name} <{name}@example.com>")
            self.cert = self.tsk.extract_certificate()
        self.public = bytes(self.cert)
        self.fingerprint = self.cert.fingerprint.upper()

    def sign(self, data: bytes) -> bytes:
        return bytes(pysequoia.sign(self.tsk.signer(), data, armor=False))


class KeySigner:
    def __init__(self, kind: str = "ec") -> None:
        if kind == "ec":
            self.key: Any = ec.generate_private_key(ec.SECP256R1())
        elif kind == "ed25519":
            self.key = ed25519.Ed25519PrivateKey.generate()
        else:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kind = kind
        self.public = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, data: bytes) -> str:
        if self.kind == "ec":
            raw = self.key.sign(data, ec.ECDSA(hashes.SHA256()))
        elif self.kind == "ed25519":
            raw = self.key.sign(data)
        else:
            raw = self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(raw).decode()


@dataclass
class Sig:
    payload: bytes
    signature: str


@dataclass
class Source:
    simple: list[bytes] = field(default_factory=list)
    sigstore: list[Sig] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)

    def simple_signatures(self) -> list[bytes]:
        self.asked.append("simple")
        return self.simple

    def sigstore_signatures(self) -> list[Sig]:
        self.asked.append("sigstore")
        return self.sigstore


@pytest.fixture(scope="module")
def alice() -> GpgSigner:
    return GpgSigner("alice")


@pytest.fixture(scope="module")
def mallory() -> GpgSigner:
    return GpgSigner("mallory")


def policy(tmp_path: Path, doc: dict[str, Any]) -> Policy:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    return Policy.load(path)


def signed_by(tmp_path: Path, signer: GpgSigner, identity: dict[str, Any] | None = None,
              ) -> dict[str, Any]:
    key = tmp_path / f"{signer.fingerprint}.gpg"
    key.write_bytes(signer.public)
    req: dict[str, Any] = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(key)}
    if identity is not None:
        req["signedIdentity"] = identity
    return req


def judge(pol: Policy, ref: str, source: Source, manifest: bytes = MANIFEST) -> Any:
    return pol.evaluate(parse_reference(ref), manifest, source)


# -- scopes --------------------------------------------------------------------------------


def test_the_most_specific_scope_wins(tmp_path: Path) -> None:
    accept, reject = [{"type": "insecureAcceptAnything"}], [{"type": "reject"}]
    pol = policy(tmp_path, {"default": reject, "transports": {"docker": {
        "reg.example.com/ns/app:1.0": accept,
        "reg.example.com/ns/app": reject,
        "reg.example.com/ns": accept,
        "reg.example.com": reject,
        "*.example.com": accept,
        "": reject,
    }}})
    cases = {
        "reg.example.com/ns/app:1.0": ("reg.example.com/ns/app:1.0", True),
        "reg.example.com/ns/app:2.0": ("reg.example.com/ns/app", False),
        "reg.example.com/ns/other": ("reg.example.com/ns", True),
        "reg.example.com/top": ("reg.example.com", False),
        "other.example.com/x": ("*.example.com", True),
        "quay.io/x/y": ("docker (transport default)", False),
    }
    for ref, (scope, accepted) in cases.items():
        verdict = judge(pol, ref, Source())
        assert (verdict.scope, verdict.accepted) == (scope, accepted), ref
    assert judge(policy(tmp_path, {"default": accept}), "alpine", Source()).accepted


def test_docker_hub_names_are_normalised_for_scopes(tmp_path: Path) -> None:
    pol = policy(tmp_path, {"default": [{"type": "reject"}], "transports": {"docker": {
        "docker.io/library/busybox": [{"type": "insecureAcceptAnything"}]}}})
    assert judge(pol, "busybox", Source()).accepted
    assert judge(pol, "docker.io/library/busybox:1.36", Source()).accepted
    assert not judge(pol, "docker.io/other/busybox", Source()).accepted


def test_reject_and_empty_lists_refuse(tmp_path: Path) -> None:
    pol = policy(tmp_path, {"default": [{"type": "reject"}],
                            "transports": {"docker": {"r.io/empty": []}}})
    verdict = judge(pol, "r.io/x", Source())
    assert not verdict.accepted and "rejects" in verdict.error()
    with pytest.raises(PolicyRejected, match="no requirements"):
        judge(pol, "r.io/empty", Source()).raise_if_rejected()


def test_accept_anything_fetches_no_signatures(tmp_path: Path) -> None:
    source = Source()
    assert judge(policy(tmp_path, {"default": [{"type": "insecureAcceptAnything"}]}),
                 "r.io/x:1", source).accepted
    assert source.asked == []


# -- signedBy ------------------------------------------------------------------------------


def test_signed_by_accepts_a_valid_signature(tmp_path: Path, alice: GpgSigner) -> None:
    pol = policy(tmp_path, {"default": [signed_by(tmp_path, alice)]})
    verdict = judge(pol, "r.io/app:1", Source([alice.sign(payload("r.io/app:1"))]))
    assert verdict.accepted, verdict.error()
    assert verdict.outcomes[0].reason == f"signed by {alice.fingerprint}"


def test_signed_by_refusals_name_the_problem(tmp_path: Path, alice: GpgSigner,
                                             mallory: GpgSigner) -> None:
    pol = policy(tmp_path, {"default": [signed_by(tmp_path, alice)]})
    none = judge(pol, "r.io/app:1", Source())
    assert none.error() == (f"policy requires a signature by key {alice.fingerprint} for "
                            "r.io/app:1; found none")
    wrong_key = judge(pol, "r.io/app:1", Source([mallory.sign(payload("r.io/app:1"))]))
    assert wrong_key.error().endswith("found 1 signature, none valid: not signed by a "
                                      "trusted key")
    other = alice.sign(payload("r.io/bar:1"))
    tampered = alice.sign(payload("r.io/app:1", "sha256:" + "0" * 64))
    two = judge(pol, "r.io/app:1", Source([other, tampered]))
    assert "found 2 signatures, none valid: identity mismatch (signed for r.io/bar:1, " \
           "rule matchRepoDigestOrExact); signed for another manifest" in two.error()
    # the manifest pulled is not the one signed
    evil = judge(pol, "r.io/app:1", Source([alice.sign(payload("r.io/app:1"))]),
                 manifest=MANIFEST + b" ")
    assert "signed for another manifest" in evil.error()
    garbage = judge(pol, "r.io/app:1", Source([b"not openpgp"]))
    assert "not a valid OpenPGP signature" in garbage.error()


def test_one_valid_signature_among_bad_ones_is_enough(tmp_path: Path, alice: GpgSigner,
                                                      mallory: GpgSigner) -> None:
    pol = policy(tmp_path, {"default": [signed_by(tmp_path, alice)]})
    sigs = [mallory.sign(payload("r.io/app:1")), b"junk", alice.sign(payload("r.io/app:1"))]
    assert judge(pol, "r.io/app:1", Source(sigs)).accepted


def test_every_requirement_must_hold(tmp_path: Path, alice: GpgSigner,
                                     mallory: GpgSigner) -> None:
    pol = policy(tmp_path, {"default": [signed_by(tmp_path, alice),
                                        signed_by(tmp_path, mallory)]})
    verdict = judge(pol, "r.io/app:1", Source([alice.sign(payload("r.io/app:1"))]))
    assert [o.ok for o in verdict.outcomes] == [True, False]
    assert not verdict.accepted and mallory.fingerprint in verdict.error()


IDENTITY_CASES = [
    # rule, image pulled, reference signed, accepted
    (None, "r.io/app:1", "r.io/app:1", True),
    (None, "r.io/app:1", "r.io/app:2", False),
    (None, f"r.io/app@{DIGEST}", "r.io/app:2", True),
    (None, f"r.io/app@{DIGEST}", "r.io/other:2", False),
    ({"type": "matchExact"}, "r.io/app:1", "r.io/app:1", True),
    ({"type": "matchExact"}, f"r.io/app@{DIGEST}", "r.io/app:1", False),
    ({"type": "matchRepository"}, "r.io/app:1", "r.io/app:9", True),
    ({"type": "matchRepository"}, "r.io/app:1", "r.io/app2:1", False),
    ({"type": "exactReference", "dockerReference": "r.io/golden:v1"}, "r.io/app:1",
     "r.io/golden:v1", True),
    ({"type": "exactReference", "dockerReference": "r.io/golden:v1"}, "r.io/app:1",
     "r.io/app:1", False),
    ({"type": "exactRepository", "dockerRepository": "r.io/golden"}, "r.io/app:1",
     "r.io/golden:anything", True),
    ({"type": "exactRepository", "dockerRepository": "r.io/golden"}, "r.io/app:1",
     "r.io/app:1", False),
    ({"type": "remapIdentity", "prefix": "mirror.io/ns", "signedPrefix": "r.io/team"},
     "mirror.io/ns/app:1", "r.io/team/app:1", True),
    ({"type": "remapIdentity", "prefix": "mirror.io/ns", "signedPrefix": "r.io/team"},
     "mirror.io/ns/app:1", "mirror.io/ns/app:1", False),
    ({"type": "remapIdentity", "prefix": "mirror.io/ns", "signedPrefix": "r.io/team"},
     "mirror.io/nsx/app:1", "mirror.io/nsx/app:1", True),  # not under the prefix
    ({"type": "matchRepoDigestOrExact"}, "busybox", "docker.io/library/busybox:latest", True),
]


@pytest.mark.parametrize(("rule", "image", "signed", "accepted"), IDENTITY_CASES)
def test_signed_identity_rules(tmp_path: Path, alice: GpgSigner, rule: dict[str, Any] | None,
                               image: str, signed: str, accepted: bool) -> None:
    pol = policy(tmp_path, {"default": [signed_by(tmp_path, alice, rule)]})
    verdict = judge(pol, image, Source([alice.sign(payload(signed))]))
    assert verdict.accepted is accepted, verdict.error()
    if not accepted:
        assert f"identity mismatch (signed for {signed}" in verdict.error()


def test_key_data_and_key_paths(tmp_path: Path, alice: GpgSigner, mallory: GpgSigner) -> None:
    sig = alice.sign(payload("r.io/app:1"))
    data = {"type": "signedBy", "keyType": "GPGKeys",
            "keyData": base64.b64encode(alice.public).decode()}
    assert judge(policy(tmp_path, {"default": [data]}), "r.io/app:1", Source([sig])).accepted
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "a.gpg").write_bytes(alice.public)
    (tmp_path / "keys" / "m.gpg").write_bytes(mallory.public)
    paths = {"type": "signedBy", "keyType": "GPGKeys", "keyPaths": ["keys/m.gpg",
                                                                    "keys/a.gpg"]}
    # relative key paths are read from the policy file's directory
    assert judge(policy(tmp_path, {"default": [paths]}), "r.io/app:1", Source([sig])).accepted


# -- sigstoreSigned ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ec", "ed25519", "rsa"])
def test_sigstore_signed_with_a_key(tmp_path: Path, kind: str) -> None:
    signer, other = KeySigner(kind), KeySigner("ec")
    (tmp_path / "cosign.pub").write_bytes(signer.public)
    pol = policy(tmp_path, {"default": [{"type": "sigstoreSigned", "keyPath": "cosign.pub"}]})
    good = payload("r.io/app:1", kind=COSIGN_TYPE)
    assert judge(pol, "r.io/app:1", Source(sigstore=[Sig(good, signer.sign(good))])).accepted
    wrong = judge(pol, "r.io/app:1", Source(sigstore=[Sig(good, other.sign(good))]))
    assert wrong.error().endswith("not signed by a trusted key")
    tampered = payload("r.io/app:2", kind=COSIGN_TYPE)
    forged = judge(pol, "r.io/app:1", Source(sigstore=[Sig(tampered, signer.sign(good))]))
    assert "not signed by a trusted key" in forged.error()
    simple_kind = payload("r.io/app:1")
    mixed = judge(pol, "r.io/app:1", Source(sigstore=[Sig(simple_kind,
                                                          signer.sign(simple_kind))]))
    assert "signature type is 'atomic container signature'" in mixed.error()


def test_sigstore_keyless_is_reported_unsupported(tmp_path: Path) -> None:
    pol = policy(tmp_path, {"default": [{"type": "sigstoreSigned", "fulcio": {
        "caPath": "/x", "oidcIssuer": "https://issuer", "subjectEmail": "a@b"},
        "rekorPublicKeyPath": "/y"}]})
    verdict = judge(pol, "r.io/app:1", Source())
    assert not verdict.accepted
    assert verdict.error() == ("sigstoreSigned with fulcio, rekorPublicKeyPath is not "
                               "supported by unlade (only a public key)")


# -- payloads and bad policies -------------------------------------------------------------


def test_payloads_are_parsed_strictly() -> None:
    ok = parse_payload(payload("r.io/a:1"), SIMPLE_SIGNING_TYPE)
    assert (ok.docker_reference, ok.manifest_digest) == ("r.io/a:1", DIGEST)
    for bad, reason in [
        (payload("r.io/a:1", extra_restriction="x"), "unknown field"),
        (b'{"critical": {}}', "lacks"),
        (b"[]", "not a JSON object"),
        (b"\xff", "not JSON"),
        (payload("r.io/a:1", kind=COSIGN_TYPE), "signature type"),
        (json.dumps({"critical": {"type": SIMPLE_SIGNING_TYPE, "image": {
            "docker-manifest-digest": 5}, "identity": {"docker-reference": "a"}}}).encode(),
         "not a string"),
    ]:
        with pytest.raises(SignatureInvalid, match=reason):
            parse_payload(bad, SIMPLE_SIGNING_TYPE)


@pytest.mark.parametrize(("doc", "message"), [
    ({}, '"default" must be a list'),
    ({"default": [], "extra": 1}, "unknown field"),
    ({"default": [{"type": "nope"}]}, "unknown requirement type 'nope'"),
    ({"default": [{"type": "reject", "x": 1}]}, "unknown field"),
    ({"default": [{"type": "signedBy", "keyType": "X509Certificates", "keyPath": "/k"}]},
     "keyType 'X509Certificates' is not supported"),
    ({"default": [{"type": "signedBy", "keyType": "GPGKeys"}]}, "exactly one of"),
    ({"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/nonexistent"}]},
     "cannot read key /nonexistent"),
    ({"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyData": "%%%"}]},
     "not valid base64"),
    ({"default": [{"type": "insecureAcceptAnything"}],
      "transports": {"docker": {"UPPER/x": []}}}, "not a valid docker scope"),
    ({"default": [{"type": "sigstoreSigned"}]}, "needs keyPath"),
    ({"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyData": "eA==",
                   "signedIdentity": {"type": "exactReference", "dockerReference": "r.io/a"}}]},
     "holds no OpenPGP key"),
])
def test_bad_policies_get_one_line_errors(tmp_path: Path, doc: dict[str, Any],
                                          message: str) -> None:
    with pytest.raises(PolicyError, match=message) as info:
        policy(tmp_path, doc)
    assert "\n" not in str(info.value)


def test_bad_identity_rules(tmp_path: Path, alice: GpgSigner) -> None:
    for identity, message in [
        ({"type": "exactReference", "dockerReference": "r.io/a"}, "needs a tag or digest"),
        ({"type": "exactRepository", "dockerRepository": "r.io/a:1"}, "without a tag"),
        ({"type": "remapIdentity", "prefix": "*.io", "signedPrefix": "r.io"}, "not a registry"),
        ({"type": "matchEverything"}, "unknown signedIdentity type"),
        ({"type": "matchExact", "extra": 1}, "unknown field"),
    ]:
        with pytest.raises(PolicyError, match=message):
            policy(tmp_path, {"default": [signed_by(tmp_path, alice, identity)]})


def test_not_json_and_unreadable(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text("{")
    with pytest.raises(PolicyError, match="not valid JSON"):
        Policy.load(tmp_path / "p.json")
    with pytest.raises(PolicyError, match="cannot read policy"):
        Policy.load(tmp_path / "missing.json")


def test_find_policy_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("UNLADE_POLICY", raising=False)
    import unlade.policy as pol

    monkeypatch.setattr(pol, "SYSTEM_POLICY", tmp_path / "etc-policy.json")
    assert find_policy() is None
    (tmp_path / "etc-policy.json").write_text("{}")
    assert find_policy() == tmp_path / "etc-policy.json"
    user = tmp_path / ".config" / "containers" / "policy.json"
    user.parent.mkdir(parents=True)
    user.write_text("{}")
    assert find_policy() == user
    monkeypatch.setenv("UNLADE_POLICY", "/from/env.json")
    assert find_policy() == Path("/from/env.json")
    assert find_policy("/explicit.json") == Path("/explicit.json")
