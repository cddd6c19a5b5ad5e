"""The signing harness makes what skopeo itself accepts and rejects.

These verdicts are the ground truth later tests compare unlade's policy verdicts with, so
each fixture here is checked against skopeo (containers/image 5.23) or, where Debian's skopeo
cannot judge (sigstore is disabled in its build), against the cryptography itself.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from harness import images as im
from harness import signing as sg
from harness.registry import Registry
from harness.tools import require_tool

SIGN_TOOLS = ("docker-registry", "skopeo", "gpg", "gpgconf", "gpg-agent")


@pytest.fixture(scope="module")
def gpg_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sg.GpgKey, sg.GpgKey]]:
    """Two keys, alice and bob, each in its own GNUPGHOME (agents killed at teardown)."""
    require_tool("gpg", "gpgconf", "gpg-agent")
    with sg.gpg_keys(tmp_path_factory.mktemp("gpg"), "alice", "bob") as (alice, bob):
        yield alice, bob


@pytest.fixture(scope="module")
def cosign_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[sg.CosignKey, sg.CosignKey]:
    d = tmp_path_factory.mktemp("cosign")
    return sg.make_cosign_key(d, name="one"), sg.make_cosign_key(d, name="two")


@pytest.fixture(scope="module")
def gpg_signed(tmp_path_factory: pytest.TempPathFactory, registry: Registry,
               gpg_keys: tuple[sg.GpgKey, sg.GpgKey]) -> sg.SignedImage:
    """An image signed by alice (simple signing, file:// lookaside)."""
    require_tool(*SIGN_TOOLS)
    return sg.sign_and_push(tmp_path_factory.mktemp("gpg-signed"), registry, "sig/gpg",
                            gpg=gpg_keys[0])


@pytest.fixture(scope="module")
def cosign_signed(tmp_path_factory: pytest.TempPathFactory, registry: Registry,
                  cosign_keys: tuple[sg.CosignKey, sg.CosignKey]) -> sg.SignedImage:
    """An image with a sigstore signature by cosign key one (registry attachment)."""
    require_tool(*SIGN_TOOLS)
    return sg.sign_and_push(tmp_path_factory.mktemp("cosign-signed"), registry, "sig/cosign",
                            cosign=cosign_keys[0])


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> im.PushedImage:
    require_tool(*SIGN_TOOLS)
    return im.build_and_push(tmp_path_factory.mktemp("unsigned") / "layout", registry,
                             "sig/unsigned", "v1", sg.default_layers("unsigned"))


@pytest.fixture(scope="module")
def empty_registries_d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lookaside with nothing in it (keeps skopeo away from /var/lib/containers/sigstore)."""
    d = tmp_path_factory.mktemp("empty")
    return sg.registries_d(d / "registries.d", lookaside=sg.file_url(d),
                           use_sigstore_attachments=True)


# ----------------------------------------------------------------------------------------------
# Keys and configuration (no tools needed beyond gpg)


def test_cosign_key_pem_format(tmp_path: Path):
    key = sg.make_cosign_key(tmp_path, b"pw")
    pem_type, body = sg._unpem(key.private_pem)
    assert pem_type == "ENCRYPTED COSIGN PRIVATE KEY"
    assert key.private_key_path.read_bytes() == key.private_pem
    assert stat.S_IMODE(key.private_key_path.stat().st_mode) == 0o600
    doc = json.loads(body)
    assert set(doc) == {"kdf", "cipher", "ciphertext"}
    assert doc["kdf"]["name"] == "scrypt"
    assert doc["kdf"]["params"] == {"N": 32768, "r": 8, "p": 1}
    assert len(base64.b64decode(doc["kdf"]["salt"])) == 32
    assert doc["cipher"]["name"] == "nacl/secretbox"
    assert len(base64.b64decode(doc["cipher"]["nonce"])) == 24
    der = sg.decrypt_cosign_private_key(key.private_pem, b"pw")
    assert len(base64.b64decode(doc["ciphertext"])) == len(der) + 16  # Poly1305 tag
    priv = serialization.load_der_private_key(der, None)
    pub = serialization.load_pem_public_key(key.public_key_path.read_bytes())
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert (priv.public_key().public_bytes(serialization.Encoding.DER, spki)
            == pub.public_bytes(serialization.Encoding.DER, spki))
    assert key.public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert key.password_path.read_bytes() == b"pw"
    from nacl.exceptions import CryptoError

    with pytest.raises(CryptoError):
        sg.decrypt_cosign_private_key(key.private_pem, b"wrong")


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_other_cosign_key_kinds(tmp_path: Path, kind: sg.CosignKind):
    key = sg.make_cosign_key(tmp_path, kind=kind, pem_type=sg.SIGSTORE_PEM_TYPE)
    assert key.private_pem.startswith(b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    der = sg.decrypt_cosign_private_key(key.private_pem, key.password)
    assert serialization.load_der_private_key(der, None).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_pem
    payload = sg.cosign_payload("sha256:" + "0" * 64, "example.com/a:b")
    sig = key.sign(payload)
    assert key.verify(payload, sig)
    assert not key.verify(payload + b" ", sig)


def test_registries_d_files(tmp_path: Path):
    d = sg.registries_d(tmp_path / "a", lookaside="http://127.0.0.1:1/la",
                        lookaside_staging="file:///tmp/st", use_sigstore_attachments=True)
    assert (d / "unlade-test.yaml").read_text() == (
        'default-docker:\n'
        '    lookaside: "http://127.0.0.1:1/la"\n'
        '    lookaside-staging: "file:///tmp/st"\n'
        '    use-sigstore-attachments: true\n')
    d = sg.registries_d(tmp_path / "b", lookaside="file:///x", scope="127.0.0.1:5000/ns",
                        legacy_keys=True)
    assert (d / "unlade-test.yaml").read_text() == (
        'docker:\n'
        '  "127.0.0.1:5000/ns":\n'
        '    sigstore: "file:///x"\n'
        '    use-sigstore-attachments: false\n')
    assert sg.lookaside_signature_path(Path("/la"), "a/b", "sha256:abc", 2) == Path(
        "/la/a/b@sha256=abc/signature-2")
    assert sg.attachment_tag("sha256:abc") == "sha256-abc.sig"


def test_gpg_key(gpg_keys: tuple[sg.GpgKey, sg.GpgKey], tmp_path: Path):
    alice, bob = gpg_keys
    assert alice.home != bob.home and alice.fingerprint != bob.fingerprint
    for key in gpg_keys:
        assert len(key.fingerprint) == 40 and int(key.fingerprint, 16) >= 0
        assert stat.S_IMODE(key.home.stat().st_mode) == 0o700
        assert key.public_armored.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
        assert key.public_key_path.read_bytes() == key.public_armored
        assert key.public_binary[0] & 0x80  # an OpenPGP packet, not armor
    assert alice.uid == "Alice <alice@example.invalid>"

    # close() kills the agent that key generation started for the home
    key = sg.make_gpg_key(tmp_path / "g", "Carol", "carol@example.invalid")
    socket = key.home / "S.gpg-agent"
    if not socket.exists():
        pytest.skip("gpg-agent sockets are not in GNUPGHOME here (/run/user/<uid> exists)")
    key.close()
    assert not socket.exists()
    proc = subprocess.run(["gpgconf", "--homedir", str(key.home), "--list-dirs", "agent-socket"],
                          capture_output=True, text=True, check=True)
    assert not os.path.exists(proc.stdout.strip())


# ----------------------------------------------------------------------------------------------
# Simple signing (GPG) -- skopeo's verdicts


Policy = Callable[[str, tuple[sg.GpgKey, sg.GpgKey]], dict[str, Any]]


@pytest.mark.parametrize(("policy", "accepted", "why"), [
    (lambda host, keys: sg.policy_signed_by(host, keys[0]), True, ""),
    (lambda host, keys: sg.policy_signed_by(host, keys[1]), False, "Invalid GPG signature"),
    (lambda host, keys: sg.policy_signed_by(host, *keys), True, ""),  # keyData, two keys
    (lambda host, keys: {"default": [{"type": "reject"}]}, False, "is rejected by policy"),
    (lambda host, keys: {"default": [{"type": "insecureAcceptAnything"}]}, True, ""),
], ids=["own-key", "other-key", "either-key", "reject-default", "accept-anything"])
def test_gpg_signed_verdicts(gpg_signed: sg.SignedImage, gpg_keys: tuple[sg.GpgKey, sg.GpgKey],
                             policy: Policy, accepted: bool, why: str):
    verdict = sg.skopeo_verdict(gpg_signed.reference, policy(gpg_signed.registry.host, gpg_keys),
                                gpg_signed.registries_d)
    assert verdict[0] is accepted, verdict
    assert why in verdict[1]


def test_unsigned_image_rejected(unsigned: im.PushedImage, gpg_keys: tuple[sg.GpgKey, sg.GpgKey],
                                 empty_registries_d: Path):
    accepted, why = sg.skopeo_verdict(
        unsigned.ref, sg.policy_signed_by(unsigned.registry.host, gpg_keys[0]),
        empty_registries_d)
    assert not accepted
    assert "A signature was required, but no signature exists" in why


def test_gpg_signature_needs_its_lookaside(gpg_signed: sg.SignedImage,
                                          gpg_keys: tuple[sg.GpgKey, sg.GpgKey],
                                          empty_registries_d: Path):
    """Signatures live beside the registry: without the lookaside the image is unsigned."""
    accepted, why = sg.skopeo_verdict(
        gpg_signed.reference, sg.policy_signed_by(gpg_signed.registry.host, gpg_keys[0]),
        empty_registries_d)
    assert not accepted and "no signature exists" in why


def test_lookaside_layout(gpg_signed: sg.SignedImage):
    hexd = gpg_signed.manifest_digest.removeprefix("sha256:")
    assert gpg_signed.manifest_digest == gpg_signed.image.digest
    expected = gpg_signed.lookaside_dir / f"sig/gpg@sha256={hexd}" / "signature-1"
    assert gpg_signed.signature_paths == [expected]
    # one signature, nothing else (no host in the path, no index file)
    files = sorted(p.relative_to(gpg_signed.lookaside_dir)
                   for p in gpg_signed.lookaside_dir.rglob("*") if p.is_file())
    assert files == [Path(f"sig/gpg@sha256={hexd}/signature-1")]
    blob = expected.read_bytes()
    assert blob[0] in (0xA3, 0x90, 0xC4, 0x88)  # binary OpenPGP (compressed or signed data)
    payload = json.loads(sg.simple_signing_payload(expected))
    assert payload["critical"] == {
        "type": "atomic container signature",
        "image": {"docker-manifest-digest": gpg_signed.manifest_digest},
        "identity": {"docker-reference": gpg_signed.reference},
    }
    assert payload["optional"]["creator"].startswith("atomic ")
    assert isinstance(payload["optional"]["timestamp"], int)


def test_two_gpg_signatures_and_http_lookaside(
        tmp_path: Path, registry: Registry, gpg_keys: tuple[sg.GpgKey, sg.GpgKey]):
    """Signatures accumulate as signature-1, -2; an http:// lookaside (also spelt with the
    deprecated ``sigstore`` key) is read until the first 404."""
    require_tool(*SIGN_TOOLS)
    alice, bob = gpg_keys
    signed = sg.sign_and_push(tmp_path / "w", registry, "sig/two", gpg=[alice, bob])
    assert [p.name for p in signed.signature_paths] == ["signature-1", "signature-2"]
    assert all(p.is_file() for p in signed.signature_paths)
    with sg.LookasideServer(signed.lookaside_dir) as server:
        for legacy in (False, True):
            rd = sg.registries_d(tmp_path / f"rd-{legacy}", lookaside=server.url,
                                 scope=registry.host, legacy_keys=legacy)
            server.reset()
            accepted, why = sg.skopeo_verdict(signed.reference,
                                              sg.policy_signed_by(registry.host, bob), rd)
            assert accepted, why
            hexd = signed.manifest_digest.removeprefix("sha256:")
            assert [(r.method, r.path, r.status) for r in server.requests] == [
                ("GET", f"/sig/two@sha256={hexd}/signature-{i}", s)
                for i, s in ((1, 200), (2, 200), (3, 404))]
        server.fail_status = 500
        rd = sg.registries_d(tmp_path / "rd-500", lookaside=server.url, scope=registry.host)
        accepted, why = sg.skopeo_verdict(signed.reference,
                                          sg.policy_signed_by(registry.host, bob), rd)
        assert not accepted and "500" in why


def test_signed_identity_checked(tmp_path: Path, registry: Registry,
                                 gpg_keys: tuple[sg.GpgKey, sg.GpgKey]):
    """``--sign-identity`` puts another name in the signature: matchRepoDigestOrExact (the
    default) rejects it, matchRepository does not accept it either, remapIdentity can."""
    require_tool(*SIGN_TOOLS)
    other = f"{registry.host}/sig/elsewhere:signed"
    signed = sg.sign_and_push(tmp_path / "w", registry, "sig/ident", gpg=gpg_keys[0],
                              identity=other)
    payload = json.loads(sg.simple_signing_payload(signed.signature_paths[0]))
    assert payload["critical"]["identity"]["docker-reference"] == other
    host = registry.host
    accepted, why = sg.skopeo_verdict(signed.reference, sg.policy_signed_by(host, gpg_keys[0]),
                                      signed.registries_d)
    assert not accepted and f"Signature for identity {other} is not accepted" in why
    exact = sg.policy_signed_by(host, gpg_keys[0], signedIdentity={
        "type": "exactReference", "dockerReference": other})
    assert sg.skopeo_verdict(signed.reference, exact, signed.registries_d)[0]


# ----------------------------------------------------------------------------------------------
# sigstore (cosign key, registry attachments)


def test_attachment_layout(cosign_signed: sg.SignedImage,
                           cosign_keys: tuple[sg.CosignKey, sg.CosignKey]):
    reg, repo, digest = cosign_signed.registry, cosign_signed.repo, cosign_signed.manifest_digest
    tag = "sha256-" + digest.removeprefix("sha256:") + ".sig"
    assert cosign_signed.attachment_tag == tag
    r = reg.request("GET", f"/v2/{repo}/manifests/{tag}", repo,
                    headers={"Accept": im.MT_OCI_MANIFEST})
    assert r.status == 200, r.data
    assert r.headers["Content-Type"] == im.MT_OCI_MANIFEST
    manifest = json.loads(r.data)
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == im.MT_OCI_MANIFEST
    assert manifest["config"]["mediaType"] == im.MT_OCI_CONFIG
    config = json.loads(reg.request("GET", f"/v2/{repo}/blobs/{manifest['config']['digest']}",
                                    repo).data)
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer["digest"]]}
    assert set(layer["annotations"]) == {"dev.cosignproject.cosign/signature"}
    [sig] = sg.read_attachment_signatures(reg, repo, digest)
    assert base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"]) \
        == sig.signature
    assert json.loads(sig.payload)["critical"] == {
        "type": "cosign container image signature",
        "image": {"docker-manifest-digest": digest},
        "identity": {"docker-reference": cosign_signed.reference},
    }
    one, two = cosign_keys
    assert sig.verify_with(one) and not sig.verify_with(two)
    # the signed image itself is untouched, and no lookaside signature was written
    assert reg.get_manifest(repo, "signed")[2] == digest
    assert not any(p.is_file() for p in cosign_signed.lookaside_dir.rglob("*"))


def test_sigstore_signed_verdicts(cosign_signed: sg.SignedImage,
                                  cosign_keys: tuple[sg.CosignKey, sg.CosignKey]):
    if not sg.skopeo_supports_sigstore():
        pytest.skip(f"{sg.SKOPEO} is built without sigstore (Debian's 1.9.3); set "
                    "UNLADE_TEST_SKOPEO to a sigstore-capable skopeo")
    host, ref, rd = cosign_signed.registry.host, cosign_signed.reference, \
        cosign_signed.registries_d
    one, two = cosign_keys
    assert sg.skopeo_verdict(ref, sg.policy_sigstore_signed(host, one), rd)[0]
    accepted, _ = sg.skopeo_verdict(ref, sg.policy_sigstore_signed(host, two), rd)
    assert not accepted


def test_skopeo_without_sigstore_gives_no_verdict(cosign_signed: sg.SignedImage,
                                                  cosign_keys: tuple[sg.CosignKey, sg.CosignKey]):
    """Debian's skopeo refuses sigstoreSigned outright; the harness says so, not "rejected"."""
    if sg.skopeo_supports_sigstore():
        pytest.skip(f"{sg.SKOPEO} supports sigstore")
    assert cosign_signed.sigstore_signer == "harness"
    with pytest.raises(sg.SkopeoLacksSigstore, match="sigstore disabled"):
        sg.skopeo_verdict(cosign_signed.reference,
                          sg.policy_sigstore_signed(cosign_signed.registry.host, cosign_keys[0]),
                          cosign_signed.registries_d)


def test_sigstore_attachment_needs_configuration(
        cosign_signed: sg.SignedImage, cosign_keys: tuple[sg.CosignKey, sg.CosignKey],
        gpg_keys: tuple[sg.GpgKey, sg.GpgKey], tmp_path: Path):
    """Attachments are only read with ``use-sigstore-attachments: true``; a ``signedBy``
    requirement ignores sigstore signatures (says "no signature exists" like for none).

    These are real skopeo verdicts even where sigstore is disabled: that build only refuses
    once it holds a sigstore signature in hand.
    """
    host, ref = cosign_signed.registry.host, cosign_signed.reference
    one = cosign_keys[0]
    off = sg.registries_d(tmp_path / "off", lookaside=sg.file_url(tmp_path))
    accepted, why = sg.skopeo_verdict(ref, sg.policy_sigstore_signed(host, one), off)
    assert not accepted and "A signature was required, but no signature exists" in why
    accepted, why = sg.skopeo_verdict(ref, sg.policy_signed_by(host, gpg_keys[0]),
                                      cosign_signed.registries_d)
    assert not accepted and "A signature was required, but no signature exists" in why
    if sg.skopeo_supports_sigstore():
        assert sg.skopeo_verdict(ref, sg.policy_sigstore_signed(host, one),
                                 cosign_signed.registries_d)[0]
    else:  # it found the attachment, and then refused to look at it
        with pytest.raises(sg.SkopeoLacksSigstore):
            sg.skopeo_verdict(ref, sg.policy_sigstore_signed(host, one),
                              cosign_signed.registries_d)
