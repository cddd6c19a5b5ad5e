"""Make images signed by real tools, and ask skopeo for the reference verdict on them.

unlade verifies signatures by containers-policy.json(5). The only trustworthy yardstick for
its verdicts is the implementation everyone else uses, containers/image (here skopeo 1.9.3,
containers/image 5.23.1), so this module builds the inputs with the same tools a publisher
would use and lets skopeo judge them:

* :func:`make_gpg_key` -- a passphrase-less OpenPGP signing key in a private ``GNUPGHOME``.
* :func:`make_cosign_key` -- a cosign key pair in cosign's encrypted private-key PEM format
  (skopeo can sign with such a key but cannot make one).
* :func:`registries_d` -- a registries.d directory (lookaside URLs, sigstore attachments).
* :func:`sign_and_push` -- push a small image with ``skopeo copy --sign-by`` (simple signing,
  signature files in a ``file://`` lookaside) and/or a sigstore signature (an attachment
  manifest tagged ``sha256-<hex>.sig`` in the registry).
* :class:`LookasideServer` -- serve a lookaside directory over HTTP on 127.0.0.1.
* :func:`skopeo_verdict` -- ``(accepted, message)`` of ``skopeo copy --policy``.

Debian's skopeo 1.9.3 is built with sigstore *disabled* (a Debian patch: both
``--sign-by-sigstore-private-key`` and ``sigstoreSigned`` policy checks fail with
"Debian-local change: sigstore disabled"). So on Debian :func:`sign_and_push` makes the
sigstore signature itself, byte-for-byte what containers/image would sign (same payload
JSON, ECDSA/Ed25519/RSA-PKCS#1 v1.5 over SHA-256, base64 annotation), and still lets skopeo
write it to the registry (``dir:`` copy holding the signature -> ``docker://`` with
``use-sigstore-attachments``), so the attachment layout is skopeo's own. :func:`skopeo_verdict`
raises :class:`SkopeoLacksSigstore` instead of giving a verdict it cannot give;
:func:`skopeo_supports_sigstore` tells in advance. Set ``UNLADE_TEST_SKOPEO`` to a
sigstore-capable skopeo binary to get real verdicts for ``sigstoreSigned`` too.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from . import images
from .images import Entry, PushedImage
from .registry import Registry

#: The skopeo binary the harness runs (override with a sigstore-capable build).
SKOPEO = os.environ.get("UNLADE_TEST_SKOPEO", "skopeo")

#: PEM type that containers/image 5.23 (skopeo 1.9) insists on for sigstore private keys.
COSIGN_PEM_TYPE = "ENCRYPTED COSIGN PRIVATE KEY"
#: PEM type newer cosign writes; containers/image only accepts it from v5.25 on.
SIGSTORE_PEM_TYPE = "ENCRYPTED SIGSTORE PRIVATE KEY"

#: MIME type of a sigstore signature layer, and the annotation holding the signature.
SIGSTORE_SIGNATURE_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGSTORE_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
#: ``critical.type`` of the payloads.
SIMPLE_SIGNING_TYPE = "atomic container signature"
COSIGN_PAYLOAD_TYPE = "cosign container image signature"

#: The scrypt parameters cosign (via go-securesystemslib / go-tuf ``encrypted``) used when
#: skopeo 1.9 was current: N=2^15, r=8, p=1 ("legacy"; still accepted by every reader).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 32768, 8, 1

_SIGSTORE_DISABLED = "sigstore disabled"  # Debian's patch: "Debian-local change: sigstore ..."


class SkopeoError(RuntimeError):
    """skopeo failed for a reason that is not a policy decision (network, bad reference...)."""


class SkopeoLacksSigstore(SkopeoError):
    """This skopeo cannot sign or verify sigstore signatures (Debian builds it without)."""


def _tool_env(home: Path, **extra: str) -> dict[str, str]:
    """A minimal environment: no user config (~/.config/containers) and no stray auth."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
           "REGISTRY_AUTH_FILE": str(home / "auth.json")}
    env.update(extra)
    return env


def _run(cmd: Sequence[str], env: Mapping[str, str], timeout: float = 120
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, env=dict(env),
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# ----------------------------------------------------------------------------------------------
# GPG keys

#: GNUPGHOMEs whose gpg-agent must be killed at exit (safety net behind GpgKey.close()).
_GPG_HOMES: set[Path] = set()


def kill_gpg_agent(home: Path) -> None:
    """``gpgconf --homedir HOME --kill all``: gpg leaves an agent running per home."""
    if shutil.which("gpgconf") is None:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    _GPG_HOMES.discard(Path(home))


@atexit.register
def _kill_leftover_agents() -> None:  # e.g. after KeyboardInterrupt skipped a teardown
    for home in list(_GPG_HOMES):
        kill_gpg_agent(home)


@dataclass(frozen=True)
class GpgKey:
    """An OpenPGP signing key (no passphrase) living in its own ``GNUPGHOME``.

    ``public_key_path`` is the armored export, ready for a policy's ``keyPath``;
    ``public_binary`` suits ``keyData`` (base64 of either form works for skopeo).
    """

    home: Path
    fingerprint: str
    uid: str
    public_armored: bytes
    public_binary: bytes
    public_key_path: Path

    def env(self) -> dict[str, str]:
        """``{"GNUPGHOME": home}`` for tools that sign with this key (skopeo --sign-by)."""
        return {"GNUPGHOME": str(self.home)}

    @property
    def key_data(self) -> str:
        """base64 of the binary public key, for a policy's ``keyData``."""
        return base64.b64encode(self.public_binary).decode()

    def close(self) -> None:
        """Kill the gpg-agent (and other daemons) started for :attr:`home`."""
        kill_gpg_agent(self.home)


def _gpg(home: Path, *args: str, input: bytes | None = None) -> bytes:
    proc = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", *args],
                          capture_output=True, input=input, timeout=120,
                          env=_tool_env(home, GNUPGHOME=str(home)))
    if proc.returncode != 0:
        raise RuntimeError(f"gpg {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stderr.decode(errors='replace')}")
    return proc.stdout


def make_gpg_key(home: Path, name: str, email: str,
                 algo: Literal["ed25519", "rsa2048", "rsa3072"] = "ed25519") -> GpgKey:
    """Generate a signing-only key ``"NAME <EMAIL>"`` (never expires) in GNUPGHOME ``home``.

    ``home`` is created with mode 0700 (gpg warns about anything looser). Ed25519 keys work
    with skopeo 1.9's gpgme (1.18) for both signing and verifying; RSA is there for
    verifiers that want to exercise another algorithm. Call :meth:`GpgKey.close` when done
    (an atexit hook kills forgotten agents too). Without ``/run/user/<uid>`` the agent's
    sockets live in ``home``, so its path must stay short (sun_path is 108 bytes).
    """
    home = Path(home)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.chmod(0o700)
    if (not Path(f"/run/user/{os.geteuid()}").is_dir()
            and len(os.fsencode(home / "S.gpg-agent.browser")) > 100):
        raise ValueError(f"GNUPGHOME {home} is too long for gpg-agent's socket paths")
    uid = f"{name} <{email}>"
    _GPG_HOMES.add(home)
    _gpg(home, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key", uid,
         algo, "sign", "never")
    colons = _gpg(home, "--with-colons", "--list-keys", f"={uid}").decode()
    fprs = [ln.split(":")[9] for ln in colons.splitlines() if ln.startswith("fpr:")]
    if not fprs:
        raise RuntimeError(f"no fingerprint for {uid!r} in:\n{colons}")
    fingerprint = fprs[0]  # the primary key's (subkeys follow it)
    armored = _gpg(home, "--export", "--armor", fingerprint)
    binary = _gpg(home, "--export", fingerprint)
    pub_path = home / f"{fingerprint}.pub.asc"
    pub_path.write_bytes(armored)
    return GpgKey(home, fingerprint, uid, armored, binary, pub_path)


# ----------------------------------------------------------------------------------------------
# cosign keys

CosignKind = Literal["ecdsa-p256", "ed25519", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


def _pem(pem_type: str, body: bytes) -> bytes:
    b64 = base64.b64encode(body).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return (f"-----BEGIN {pem_type}-----\n" + "\n".join(lines)
            + f"\n-----END {pem_type}-----\n").encode()


def _unpem(pem: bytes) -> tuple[str, bytes]:
    text = pem.decode()
    begin = text.index("-----BEGIN ")
    head_end = text.index("-----\n", begin + 11)
    pem_type = text[begin + 11:head_end]
    end = text.index(f"-----END {pem_type}-----", head_end)
    return pem_type, base64.b64decode("".join(text[head_end + 6:end].split()))


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=32,
                          maxmem=256 * r * n + (1 << 20))


def encrypt_cosign_private_key(
    der: bytes, password: bytes, *, pem_type: str = COSIGN_PEM_TYPE,
    n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P,
) -> bytes:
    """PEM of cosign's encrypted private key, as go-securesystemslib ``encrypted.Encrypt``.

    The PEM body is the JSON (Go ``[]byte`` fields are standard base64 with padding)::

        {"kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": B64(32)},
         "cipher": {"name": "nacl/secretbox", "nonce": B64(24)},
         "ciphertext": B64(secretbox(PKCS#8 DER, key=scrypt(password, salt, N, r, p, 32)))}

    Checked against the Go code: the real ``encrypted.Decrypt`` + ``x509.ParsePKCS8PrivateKey``
    read these keys back.
    """
    import nacl.secret

    salt, nonce = os.urandom(32), os.urandom(24)
    box = nacl.secret.SecretBox(_scrypt(password, salt, n, r, p))
    ciphertext = box.encrypt(der, nonce).ciphertext
    doc = {
        "kdf": {"name": "scrypt", "params": {"N": n, "r": r, "p": p},
                "salt": base64.b64encode(salt).decode()},
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    return _pem(pem_type, json.dumps(doc, separators=(",", ":")).encode())


def decrypt_cosign_private_key(pem: bytes, password: bytes) -> bytes:
    """The PKCS#8 DER inside an encrypted cosign/sigstore private-key PEM (either type)."""
    import nacl.secret

    pem_type, body = _unpem(pem)
    if pem_type not in (COSIGN_PEM_TYPE, SIGSTORE_PEM_TYPE):
        raise ValueError(f"not an encrypted cosign key: {pem_type}")
    doc = json.loads(body)
    if doc["kdf"]["name"] != "scrypt" or doc["cipher"]["name"] != "nacl/secretbox":
        raise ValueError("unsupported kdf/cipher")
    prm = doc["kdf"]["params"]
    key = _scrypt(password, base64.b64decode(doc["kdf"]["salt"]), prm["N"], prm["r"], prm["p"])
    return nacl.secret.SecretBox(key).decrypt(base64.b64decode(doc["ciphertext"]),
                                              base64.b64decode(doc["cipher"]["nonce"]))


@dataclass(frozen=True)
class CosignKey:
    """A cosign key pair on disk.

    ``private_key_path`` (encrypted PEM, for ``--sign-by-sigstore-private-key``),
    ``password_path`` (for ``--sign-passphrase-file``), ``public_key_path`` (PKIX
    ``PUBLIC KEY`` PEM, for a ``sigstoreSigned`` policy's ``keyPath``).
    """

    kind: CosignKind
    private_key_path: Path
    public_key_path: Path
    password_path: Path
    password: bytes
    private_pem: bytes
    public_pem: bytes
    private_key: PrivateKey = field(repr=False)

    @property
    def key_data(self) -> str:
        """base64 of the public key PEM, for a policy's ``keyData``."""
        return base64.b64encode(self.public_pem).decode()

    def sign(self, payload: bytes) -> bytes:
        """Sign like sigstore's SignerVerifiers do for containers/image: SHA-256 ECDSA (ASN.1
        DER), RSA PKCS#1 v1.5 with SHA-256, or pure Ed25519 over the payload."""
        key = self.private_key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(payload, ec.ECDSA(hashes.SHA256()))
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
        return key.sign(payload)

    def verify(self, payload: bytes, signature: bytes) -> bool:
        """Whether ``signature`` over ``payload`` is valid for this key (harness-side check)."""
        from cryptography.exceptions import InvalidSignature

        pub = self.private_key.public_key()
        try:
            if isinstance(pub, ec.EllipticCurvePublicKey):
                pub.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            elif isinstance(pub, rsa.RSAPublicKey):
                pub.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
            else:
                pub.verify(signature, payload)
        except InvalidSignature:
            return False
        return True


def make_cosign_key(
    dir: Path, password: bytes = b"unlade-test-pw", *, kind: CosignKind = "ecdsa-p256",
    name: str = "cosign", pem_type: str = COSIGN_PEM_TYPE,
) -> CosignKey:
    """Write ``DIR/NAME.key`` (encrypted), ``NAME.pub`` and ``NAME.password``.

    ``kind="ecdsa-p256"`` is what ``cosign generate-key-pair`` makes. skopeo 1.9
    (containers/image 5.23) would load Ed25519 and RSA keys too, but only under the PEM type
    ``ENCRYPTED COSIGN PRIVATE KEY`` (the default here); ``ENCRYPTED SIGSTORE PRIVATE KEY``,
    what current cosign writes, is accepted from containers/image 5.25 on. Debian's skopeo
    1.9.3 signs with none of them (sigstore disabled), see the module docstring.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    key: PrivateKey
    if kind == "ecdsa-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"unknown key kind {kind!r}")
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    private_pem = encrypt_cosign_private_key(der, password, pem_type=pem_type)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    priv_path, pub_path, pw_path = (dir / f"{name}.key", dir / f"{name}.pub",
                                    dir / f"{name}.password")
    priv_path.write_bytes(private_pem)
    priv_path.chmod(0o600)
    pub_path.write_bytes(public_pem)
    pw_path.write_bytes(password)
    return CosignKey(kind, priv_path, pub_path, pw_path, password, private_pem, public_pem, key)


def cosign_payload(manifest_digest: str, docker_reference: str,
                   creator: str = "unlade test harness",
                   timestamp: int | None = None) -> bytes:
    """The payload containers/image signs for sigstore (``NewUntrustedSigstorePayload``),
    serialised as Go's ``json.Marshal`` of maps does (sorted keys, no spaces)."""
    doc = {
        "critical": {"identity": {"docker-reference": docker_reference},
                     "image": {"docker-manifest-digest": manifest_digest},
                     "type": COSIGN_PAYLOAD_TYPE},
        "optional": {"creator": creator,
                     "timestamp": int(time.time()) if timestamp is None else timestamp},
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sigstore_signature_blob(payload: bytes, signature: bytes) -> bytes:
    """A sigstore signature in containers/image's storage format (``signature.Blob``): a NUL,
    ``sigstore-json``, newline, then ``{"mimeType", "payload" (base64), "annotations"}``.
    This is what ``dir:`` images keep in ``signature-N``."""
    chunk = {"mimeType": SIGSTORE_SIGNATURE_MEDIA_TYPE,
             "payload": base64.b64encode(payload).decode(),
             "annotations": {SIGSTORE_SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()}}
    return b"\x00sigstore-json\n" + json.dumps(chunk, separators=(",", ":")).encode()


# ----------------------------------------------------------------------------------------------
# registries.d


def registries_d(
    dir: Path,
    *,
    lookaside: str | None = None,
    lookaside_staging: str | None = None,
    use_sigstore_attachments: bool = False,
    scope: str | None = None,
    legacy_keys: bool = False,
    filename: str = "unlade-test.yaml",
) -> Path:
    """Write a registries.d directory ``dir`` with one YAML file; return ``dir``.

    Without ``scope`` the section is ``default-docker``; with it ``docker: {SCOPE: ...}``
    (``host:port``, ``host:port/ns``, ``host:port/repo`` or ``host:port/repo:tag``).
    skopeo 1.9 reads ``lookaside``/``lookaside-staging`` and still the deprecated
    ``sigstore``/``sigstore-staging`` (``legacy_keys=True`` writes those); a ``*-staging``
    URL is only used for writing. Only ``file://`` lookasides can be written; ``http(s)://``
    ones only read. Scalars are JSON-quoted, which YAML reads the same.

    Always give skopeo a registries.d with a lookaside: with none, containers/image falls
    back to ``/var/lib/containers/sigstore`` (root) and would read or write there.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    read_key, write_key = (("sigstore", "sigstore-staging") if legacy_keys
                           else ("lookaside", "lookaside-staging"))
    section: dict[str, Any] = {}
    if lookaside is not None:
        section[read_key] = lookaside
    if lookaside_staging is not None:
        section[write_key] = lookaside_staging
    section["use-sigstore-attachments"] = use_sigstore_attachments
    body = "".join(f"{k}: {json.dumps(v)}\n" for k, v in section.items())
    indented = "".join(f"    {ln}\n" for ln in body.splitlines())
    if scope is None:
        text = "default-docker:\n" + indented
    else:
        text = f"docker:\n  {json.dumps(scope)}:\n" + indented
    (dir / filename).write_text(text)
    return dir


def file_url(path: Path) -> str:
    """``file:///abs/path`` of a directory (for lookaside URLs)."""
    return Path(path).resolve().as_uri()


def lookaside_signature_path(base: Path, repo: str, manifest_digest: str, index: int = 1
                             ) -> Path:
    """``BASE/REPO@sha256=HEX/signature-INDEX`` (containers/image's ``lookasideStorageURL``;
    the registry host is *not* part of the path)."""
    algo, _, hexd = manifest_digest.partition(":")
    return Path(base) / f"{repo}@{algo}={hexd}" / f"signature-{index}"


def attachment_tag(manifest_digest: str) -> str:
    """``sha256-<hex>.sig``: the tag of the sigstore attachment manifest of a digest."""
    return manifest_digest.replace(":", "-", 1) + ".sig"


# ----------------------------------------------------------------------------------------------
# Signing and pushing


def _skopeo_src_args(registry: Registry) -> list[str]:
    """skopeo ``--src-*`` options to reach ``registry`` (mirror of images.skopeo_dest_args)."""
    return [a.replace("--dest-", "--src-", 1) for a in images.skopeo_dest_args(registry)]


def _skopeo(args: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    proc = _run([SKOPEO, *args], env)
    if proc.returncode != 0:
        msg = f"skopeo failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr}"
        if _SIGSTORE_DISABLED in proc.stderr:
            raise SkopeoLacksSigstore(msg)
        raise SkopeoError(msg)
    return proc


@dataclass
class SignedImage:
    """An image pushed by :func:`sign_and_push`, and where its signatures went.

    ``reference`` is ``host:port/repo:tag`` (also the ``docker-reference`` the signatures
    claim, unless ``identity`` was given). ``lookaside_dir`` is the ``file://`` lookaside
    root (:attr:`lookaside_url`), ``signature_paths`` the ``signature-N`` files skopeo wrote
    there (one per GPG key, in order). ``attachment_tag`` is set when sigstore signatures
    were pushed (``sigstore_signer`` says whether skopeo or the harness made them).
    ``registries_d`` is the configuration used for pushing; it reads the same lookaside
    and attachments, so it also serves for pulling.
    """

    image: PushedImage
    manifest_digest: str
    reference: str
    identity: str
    registries_d: Path
    lookaside_dir: Path
    gpg_keys: list[GpgKey] = field(default_factory=list)
    cosign_keys: list[CosignKey] = field(default_factory=list)
    signature_paths: list[Path] = field(default_factory=list)
    attachment_tag: str | None = None
    sigstore_signer: Literal["skopeo", "harness"] | None = None

    @property
    def repo(self) -> str:
        return self.image.repo

    @property
    def registry(self) -> Registry:
        return self.image.registry

    @property
    def digest_ref(self) -> str:
        """``host:port/repo@sha256:...``."""
        return f"{self.image.registry.host}/{self.image.repo}@{self.manifest_digest}"

    @property
    def lookaside_url(self) -> str:
        return file_url(self.lookaside_dir)


def default_layers(label: str) -> list[list[Entry]]:
    """One small layer whose ``etc/label`` makes the manifest digest unique to ``label``."""
    return [[images.directory("etc"), images.file("etc/label", f"{label}\n")]]


#: Per skopeo binary: can it sign with sigstore keys? (learnt on first use)
_SIGN_CAPABILITY: dict[str, bool] = {}


def sign_and_push(
    workdir: Path,
    registry: Registry,
    repo: str,
    tag: str = "signed",
    *,
    gpg: GpgKey | Sequence[GpgKey] = (),
    cosign: CosignKey | Sequence[CosignKey] = (),
    layers: Sequence[Sequence[Entry] | bytes] | None = None,
    identity: str | None = None,
    lookaside_dir: Path | None = None,
) -> SignedImage:
    """Build a small image, push it to ``registry/REPO:TAG`` and sign it with every key.

    GPG: ``skopeo copy --sign-by FPR`` with ``GNUPGHOME`` of the key and a registries.d
    whose lookaside(-staging) is ``file://LOOKASIDE_DIR`` (default ``WORKDIR/lookaside``),
    so skopeo writes ``LOOKASIDE_DIR/REPO@sha256=HEX/signature-N``. Further keys are added
    by ``docker://REF -> docker://REF`` copies, which read the earlier signatures back.

    cosign: ``skopeo copy --sign-by-sigstore-private-key KEY --sign-passphrase-file F`` with
    ``use-sigstore-attachments: true``; the attachment is tagged ``sha256-HEX.sig``. If this
    skopeo has sigstore disabled (Debian), the harness signs the containers/image payload
    itself and has skopeo push it (``dir:`` copy with the signature -> ``docker://``).

    ``identity`` (a full ``host/repo:tag`` reference) is the signed ``docker-reference``
    (``--sign-identity``); default the pushed reference. ``layers`` default to
    :func:`default_layers` of ``REPO:TAG``, so every pushed image has its own digest.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    gpg_keys = [gpg] if isinstance(gpg, GpgKey) else list(gpg)
    cosign_keys = [cosign] if isinstance(cosign, CosignKey) else list(cosign)
    lookaside = Path(lookaside_dir) if lookaside_dir is not None else workdir / "lookaside"
    lookaside.mkdir(parents=True, exist_ok=True)
    rd = registries_d(workdir / "registries.d", lookaside=file_url(lookaside),
                      lookaside_staging=file_url(lookaside),
                      use_sigstore_attachments=bool(cosign_keys), scope=registry.host)
    layout = workdir / "layout"
    info = images.build_layout(layout, tag, list(layers) if layers is not None
                               else default_layers(f"{repo}:{tag}"))
    ref = f"{registry.host}/{repo}:{tag}"
    sign_identity = identity or ref
    tmp = Path(tempfile.mkdtemp(prefix="sign-", dir=workdir))
    base = ["--registries.d", str(rd), "--insecure-policy", "copy", "--quiet"]
    ident_args = ["--sign-identity", identity] if identity else []
    dest, src = images.skopeo_dest_args(registry), _skopeo_src_args(registry)
    digestfile = tmp / "digest"
    try:
        first = [*base, f"--digestfile={digestfile}", *dest]
        if gpg_keys:
            first += ["--sign-by", gpg_keys[0].fingerprint, *ident_args]
        _skopeo([*first, f"oci:{layout}:{tag}", f"docker://{ref}"],
                _tool_env(tmp, **(gpg_keys[0].env() if gpg_keys else {})))
        digest = digestfile.read_text().strip()
        for key in gpg_keys[1:]:
            _skopeo([*base, *src, *dest, "--sign-by", key.fingerprint, *ident_args,
                     f"docker://{ref}", f"docker://{ref}"], _tool_env(tmp, **key.env()))
        signer: Literal["skopeo", "harness"] | None = None
        for ck in cosign_keys:
            signer = _sigstore_sign(ck, ref, digest, sign_identity, base, src, dest,
                                    ident_args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pushed = PushedImage(layout, tag, repo, registry, digest, info)
    paths = [lookaside_signature_path(lookaside, repo, digest, i + 1)
             for i in range(len(gpg_keys))]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise RuntimeError(f"skopeo did not write the lookaside signatures {missing}")
    return SignedImage(pushed, digest, ref, sign_identity, rd, lookaside, gpg_keys,
                       cosign_keys, paths, attachment_tag(digest) if cosign_keys else None,
                       signer)


def _sigstore_sign(key: CosignKey, ref: str, digest: str, identity: str, base: list[str],
                   src: list[str], dest: list[str], ident_args: list[str], tmp: Path
                   ) -> Literal["skopeo", "harness"]:
    """Add one sigstore signature by ``key`` to ``ref``'s attachments (see sign_and_push)."""
    env = _tool_env(tmp)
    if _SIGN_CAPABILITY.get(SKOPEO, True):
        try:
            _skopeo([*base, *src, *dest, "--sign-by-sigstore-private-key",
                     str(key.private_key_path), "--sign-passphrase-file", str(key.password_path),
                     *ident_args, f"docker://{ref}", f"docker://{ref}"], env)
            _SIGN_CAPABILITY[SKOPEO] = True
            return "skopeo"
        except SkopeoLacksSigstore:
            _SIGN_CAPABILITY[SKOPEO] = False
    staged = Path(tempfile.mkdtemp(prefix="dir-", dir=tmp))
    # Fetch manifest, blobs and all existing signatures (lookaside and attachments).
    _skopeo([*base, *src, f"docker://{ref}", f"dir:{staged}"], env)
    existing = sorted(staged.glob("signature-*"), key=lambda p: int(p.name.split("-")[1]))
    payload = cosign_payload(digest, identity)
    (staged / f"signature-{len(existing) + 1}").write_bytes(
        sigstore_signature_blob(payload, key.sign(payload)))
    _skopeo([*base, *dest, f"dir:{staged}", f"docker://{ref}"], env)
    return "harness"


def attachment_manifest(registry: Registry, repo: str, manifest_digest: str
                        ) -> tuple[dict[str, Any], str]:
    """``(manifest, Content-Type)`` of the sigstore attachment of ``manifest_digest``."""
    data, media_type, _ = registry.get_manifest(repo, attachment_tag(manifest_digest),
                                                [images.MT_OCI_MANIFEST])
    return json.loads(data), media_type


@dataclass(frozen=True)
class SigstoreSignature:
    """One signature layer of an attachment: payload bytes and the decoded signature."""

    payload: bytes
    signature: bytes
    annotation: str
    media_type: str

    def verify_with(self, key: CosignKey) -> bool:
        return key.verify(self.payload, self.signature)


def read_attachment_signatures(registry: Registry, repo: str, manifest_digest: str
                               ) -> list[SigstoreSignature]:
    """The signatures in the attachment manifest (payload blobs fetched from the registry)."""
    manifest, _ = attachment_manifest(registry, repo, manifest_digest)
    out = []
    for layer in manifest.get("layers", []):
        r = registry.request("GET", f"/v2/{repo}/blobs/{layer['digest']}", repo)
        if r.status != 200:
            raise RuntimeError(f"GET blob {layer['digest']}: {r.status}")
        ann = layer.get("annotations", {}).get(SIGSTORE_SIGNATURE_ANNOTATION, "")
        out.append(SigstoreSignature(r.data, base64.b64decode(ann), ann, layer["mediaType"]))
    return out


def simple_signing_payload(signature_file: Path) -> bytes:
    """The signed JSON inside a simple-signing signature, *not* verified.

    ``gpg --decrypt`` in a throw-away home: it prints the literal data and exits 2 ("No
    public key"), which is all we want to see here.
    """
    with tempfile.TemporaryDirectory(prefix="gpg-peek-") as td:
        home = Path(td)
        home.chmod(0o700)
        try:
            proc = subprocess.run(
                ["gpg", "--homedir", td, "--batch", "--no-tty", "--decrypt"],
                input=Path(signature_file).read_bytes(), capture_output=True, timeout=60,
                env=_tool_env(home, GNUPGHOME=td))
        finally:
            kill_gpg_agent(home)
    if proc.returncode not in (0, 2) or not proc.stdout:
        raise RuntimeError(f"gpg --decrypt {signature_file} failed ({proc.returncode}):\n"
                           f"{proc.stderr.decode(errors='replace')}")
    return proc.stdout


# ----------------------------------------------------------------------------------------------
# HTTP lookaside


@dataclass
class LookasideRequest:
    method: str
    path: str
    status: int


class LookasideServer:
    """Serve ``directory`` over plain HTTP on 127.0.0.1 (a ``ThreadingHTTPServer`` thread).

    Use as a context manager; :attr:`url` is ``http://127.0.0.1:PORT``, so a lookaside
    ``f"{server.url}/"`` maps ``signature-N`` URLs onto files below ``directory``.
    :attr:`requests` records every request (``count``, ``reset()``); ``fail_status`` makes
    every answer that status (containers/image treats 404 as "no more signatures", anything
    else as an error).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.fail_status: int | None = None
        self.requests: list[LookasideRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "lookaside server not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def start(self) -> LookasideServer:
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, directory=str(outer.directory), **kw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def send_response(self, code: int, message: str | None = None) -> None:
                with outer._lock:
                    outer.requests.append(LookasideRequest(self.command, self.path, int(code)))
                super().send_response(code, message)

            def _maybe_fail(self) -> bool:
                if outer.fail_status is None:
                    return False
                self.send_error(outer.fail_status)
                return True

            def do_GET(self) -> None:
                if not self._maybe_fail():
                    super().do_GET()

            def do_HEAD(self) -> None:
                if not self._maybe_fail():
                    super().do_HEAD()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="lookaside-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> LookasideServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------
# The reference verdict


def policy_signed_by(scope: str, *keys: GpgKey, default_reject: bool = True,
                     **requirement: Any) -> dict[str, Any]:
    """A policy requiring a ``signedBy`` GPGKeys signature by one of ``keys`` for ``scope``.

    One key uses ``keyPath`` (its armored export), several ``keyData`` (base64 of their
    concatenated binary exports). Extra ``requirement`` fields (``signedIdentity``) are
    merged in. The ``default`` is ``reject`` (or ``insecureAcceptAnything``).
    """
    req: dict[str, Any] = {"type": "signedBy", "keyType": "GPGKeys"}
    if len(keys) == 1:
        req["keyPath"] = str(keys[0].public_key_path)
    else:
        req["keyData"] = base64.b64encode(b"".join(k.public_binary for k in keys)).decode()
    req.update(requirement)
    return _policy(scope, req, default_reject)


def policy_sigstore_signed(scope: str, key: CosignKey, default_reject: bool = True,
                           **requirement: Any) -> dict[str, Any]:
    """A policy requiring a ``sigstoreSigned`` signature by ``key`` (``keyPath``) for scope."""
    req: dict[str, Any] = {"type": "sigstoreSigned", "keyPath": str(key.public_key_path),
                           "signedIdentity": {"type": "matchRepoDigestOrExact"}}
    req.update(requirement)
    return _policy(scope, req, default_reject)


def _policy(scope: str, req: dict[str, Any], default_reject: bool) -> dict[str, Any]:
    default = [{"type": "reject" if default_reject else "insecureAcceptAnything"}]
    return {"default": default, "transports": {"docker": {scope: [req]}}}


def _mentions_sigstore(policy: Mapping[str, Any]) -> bool:
    return "sigstoreSigned" in json.dumps(policy)


def skopeo_verdict(
    ref: str,
    policy: Mapping[str, Any],
    registries_d: Path,
    *,
    tls_verify: bool = False,
    gnupghome: Path | None = None,
    cert_dir: Path | None = None,
    creds: tuple[str, str] | None = None,
    timeout: float = 120,
) -> tuple[bool, str]:
    """Would skopeo pull ``docker://REF`` under ``policy``? ``(accepted, last stderr line)``.

    Runs ``skopeo --policy P --registries.d DIR copy docker://REF dir:TMP`` (``dir:`` keeps
    both signature kinds, ``oci:`` cannot store signatures and would fail the copy). The
    message is skopeo's own, e.g. ``... msg="Source image rejected: A signature was
    required, but no signature exists"``. Failures that are no policy decision (unreachable
    registry, unknown manifest) raise :class:`SkopeoError`; a skopeo that cannot evaluate
    ``sigstoreSigned`` raises :class:`SkopeoLacksSigstore`. ``gnupghome`` is passed as
    ``GNUPGHOME`` (signedBy itself uses a throw-away keyring of the policy's keys).
    """
    with tempfile.TemporaryDirectory(prefix="skopeo-verdict-") as td:
        tdp = Path(td)
        policy_path = tdp / "policy.json"
        policy_path.write_text(json.dumps(policy, indent=1))
        extra = {"GNUPGHOME": str(gnupghome)} if gnupghome is not None else {}
        cmd = [SKOPEO, "--policy", str(policy_path), "--registries.d", str(registries_d),
               "copy", "--quiet"]
        if cert_dir is not None:
            cmd.append(f"--src-cert-dir={cert_dir}")
        cmd.append(f"--src-tls-verify={'true' if tls_verify else 'false'}")
        cmd += [f"--src-creds={creds[0]}:{creds[1]}"] if creds else ["--src-no-creds"]
        cmd += [f"docker://{ref}", f"dir:{tdp / 'out'}"]
        proc = _run(cmd, _tool_env(tdp, **extra), timeout)
    message = _last_line(proc.stderr)
    if proc.returncode == 0:
        return True, message
    if _SIGSTORE_DISABLED in proc.stderr:
        raise SkopeoLacksSigstore(f"{SKOPEO} cannot evaluate sigstoreSigned: {message}")
    if "Source image rejected" in proc.stderr or "trust policy" in proc.stderr:
        return False, message
    raise SkopeoError(f"skopeo gave no policy verdict for {ref}: {proc.stderr}")


@functools.cache
def skopeo_supports_sigstore(skopeo: str = SKOPEO) -> bool:
    """Whether ``skopeo`` verifies sigstore signatures (Debian's 1.9.3 does not).

    Asked locally, without a registry: a ``dir:`` image carrying a harness-made sigstore
    signature is judged under a ``sigstoreSigned`` policy for its key.
    """
    with tempfile.TemporaryDirectory(prefix="skopeo-probe-") as td:
        tdp = Path(td)
        key = make_cosign_key(tdp / "key")
        info = images.build_layout(tdp / "layout", "probe", default_layers("probe"))
        src = tdp / "src"
        env = _tool_env(tdp)
        _skopeo(["--insecure-policy", "copy", "--quiet", f"oci:{info.layout}:probe",
                 f"dir:{src}"], env)
        manifest = (src / "manifest.json").read_bytes()
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        payload = cosign_payload(digest, "example.invalid/probe:probe")
        (src / "signature-1").write_bytes(sigstore_signature_blob(payload, key.sign(payload)))
        policy = {"default": [{"type": "sigstoreSigned", "keyPath": str(key.public_key_path),
                               "signedIdentity": {"type": "matchRepository"}}]}
        (tdp / "policy.json").write_text(json.dumps(policy))
        proc = _run([skopeo, "--policy", str(tdp / "policy.json"), "copy", "--quiet",
                     f"dir:{src}", f"dir:{tdp / 'out'}"], env)
        return _SIGSTORE_DISABLED not in proc.stderr


@contextlib.contextmanager
def gpg_keys(base: Path, *names: str) -> Iterator[list[GpgKey]]:
    """One fresh key per name, each in ``BASE/NAME`` (short paths!); agents killed after."""
    keys: list[GpgKey] = []
    try:
        for n in names:
            keys.append(make_gpg_key(Path(base) / n, n.capitalize(), f"{n}@example.invalid"))
        yield keys
    finally:
        for k in keys:
            k.close()
