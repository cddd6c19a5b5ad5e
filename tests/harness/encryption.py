"""Make ocicrypt-encrypted images with skopeo, and let skopeo decrypt them for reference.

unlade's ocicrypt support is judged against containers/ocicrypt as vendored by skopeo 1.9.3
(``skopeo copy --encryption-key/--encrypt-layer/--decryption-key``). This module makes the
key material those options take, pushes encrypted images and asks skopeo to decrypt them:

* :func:`make_jwe_rsa`, :func:`make_jwe_ec` -- PEM key pairs for the ``jwe`` key wrapper
  (RSA -> ``RSA-OAEP``, EC P-256 -> ``ECDH-ES+A256KW``; content ``A256GCM``).
* :func:`make_pkcs7` -- an RSA key + self-signed certificate (``pkcs7``; decryption needs
  both the key and the certificate).
* :func:`make_pgp` -- an RSA key with an encryption subkey in its own ``GNUPGHOME``.
* :func:`make_keyprovider` / :func:`keyprovider_config` -- a ``cmd`` key provider (a small
  Python script speaking ocicrypt's keyprovider JSON on stdin/stdout) and the
  ``OCICRYPT_KEYPROVIDER_CONFIG`` file naming it.
* :func:`encrypt_and_push` -- push a small multi-layer image plain (``REPO:plain``) and
  encrypted (``REPO:TAG``); :class:`EncryptedImage` describes both.
* :func:`skopeo_decrypt` -- ``(ok, message)`` of ``skopeo copy --decryption-key``.

ocicrypt formats (checked against containers/ocicrypt sources and skopeo's output):

* Layer cipher ``AES_256_CTR_HMAC_SHA256``: 32-byte random key, 16-byte random nonce used as
  the initial CTR counter block (AES-256-CTR, big-endian 128-bit counter); HMAC-SHA256 keyed
  with the *same* 32-byte key over the *ciphertext*, not stored in the blob but in
  ``pubopts.hmac``. The encrypted blob is exactly as long as the plain (compressed) blob.
* ``org.opencontainers.image.enc.pubopts`` = base64(JSON
  ``{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":B64(32),"cipheroptions":{}}``).
* The wrapped secret ("PrivateLayerBlockCipherOptions") is JSON
  ``{"symkey":B64(32),"digest":"sha256:<plain blob digest>","cipheroptions":{"nonce":B64(16)}}``
  (Go ``[]byte`` = standard base64 with padding).
* ``org.opencontainers.image.enc.keys.<scheme>`` = comma-separated standard base64 of one
  wrapped blob per key wrapper call: ``jwe`` a go-jose ``FullSerialize`` JWE (``A256GCM``;
  one recipient: *flattened* JSON, ``alg`` in ``protected``; several: general JSON with
  ``recipients[].header.alg``; see :func:`unwrap_jwe`); ``pkcs7`` DER PKCS#7 EnvelopedData;
  ``pgp`` an OpenPGP message; ``provider.NAME`` whatever the provider returned as ``annotation``.
* Media types gain ``+encrypted`` (``...tar+gzip`` -> ``...tar+gzip+encrypted``).

skopeo 1.9.3 quirks: without any ``--decryption-key`` skopeo copies encrypted layers
verbatim and succeeds (so :func:`skopeo_decrypt` checks the result is really decrypted);
``pgp:`` recipients are looked up with ``gpg --export`` (no ``gpg2`` on Debian, so ocicrypt
uses its GPGv1 client) in ``$GNUPGHOME`` and matched by e-mail or name, and decryption
needs a binary secret-key export passed as a file; a private key PEM must be PKCS#8 or PKCS#1
(``EC PRIVATE KEY``/SEC1 is accepted only as DER). Debian builds skopeo 1.9.3 against
ocicrypt 1.0.3: no ``provider:`` protocol ("Provided protocol not recognized"; the key
provider here is for unlade's own tests and newer skopeo via ``UNLADE_TEST_SKOPEO``), no
pkcs11, no ``PATH:PASSWORD`` decryption keys (see :func:`make_jwe_rsa`).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from . import images
from .images import Entry
from .registry import Registry
from .signing import _GPG_HOMES, SKOPEO, _gpg, _last_line, _run, _tool_env, kill_gpg_agent

Protocol = Literal["jwe", "pkcs7", "pgp", "provider"]

ENC_SUFFIX = "+encrypted"
PUBOPTS_ANNOTATION = "org.opencontainers.image.enc.pubopts"
KEYS_ANNOTATION_PREFIX = "org.opencontainers.image.enc.keys."
LAYER_CIPHER = "AES_256_CTR_HMAC_SHA256"
KEYPROVIDER_ENV = "OCICRYPT_KEYPROVIDER_CONFIG"


@dataclass(frozen=True)
class EncKey:
    """One recipient's key material.

    ``recipient`` is the value for ``skopeo copy --encryption-key``; ``decryption_keys`` the
    values for ``--decryption-key`` (PEM/keyring paths, ``PATH:PASSWORD``, ``provider:NAME``);
    ``env`` what skopeo needs in its environment (``GNUPGHOME``, ``OCICRYPT_KEYPROVIDER_CONFIG``).
    ``annotation`` is the ``org.opencontainers.image.enc.keys.*`` key the wrapped secret lands
    in. ``paths`` names the files (``private``, ``public``, ``cert``, ``secring``, ``config``...).
    """

    protocol: Protocol
    recipient: str
    decryption_keys: tuple[str, ...]
    annotation: str
    env: Mapping[str, str] = field(default_factory=dict)
    paths: Mapping[str, Path] = field(default_factory=dict)
    password: bytes | None = None

    def close(self) -> None:
        """Kill a gpg-agent started for a pgp key (no-op otherwise)."""
        if "GNUPGHOME" in self.env:
            kill_gpg_agent(Path(self.env["GNUPGHOME"]))


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _pem_pair(dir: Path, name: str, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
              password: bytes | None) -> tuple[Path, Path]:
    if password:
        # Go's x509.DecryptPEMBlock only reads the legacy "Proc-Type: 4,ENCRYPTED" PEM.
        priv = key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.BestAvailableEncryption(password))
    else:
        priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return (_write(dir / f"{name}.key.pem", priv, 0o600), _write(dir / f"{name}.pub.pem", pub))


def _jwe(dir: Path, name: str, key: Any, password: bytes | None) -> EncKey:
    priv, pub = _pem_pair(Path(dir), name, key, password)
    dec = f"{priv}:{password.decode()}" if password else str(priv)
    return EncKey("jwe", f"jwe:{pub}", (dec,), KEYS_ANNOTATION_PREFIX + "jwe",
                  paths={"private": priv, "public": pub}, password=password)


def make_jwe_rsa(dir: Path, name: str = "jwe-rsa", *, bits: int = 2048,
                 password: bytes | None = None) -> EncKey:
    """RSA key pair (PKCS#8 private PEM, or legacy encrypted PEM with ``password``; SPKI
    public PEM). ocicrypt wraps with ``RSA-OAEP`` (SHA-1) for RSA keys given as PEM.

    With ``password`` the decryption key is ``PATH:PASSWORD`` (current ocicrypt syntax);
    skopeo 1.9.3 on Debian (ocicrypt 1.0.3) cannot take it: it reads ``PATH:PASSWORD`` as a
    file name ("Unable to read file"), and without it fails "Missing password"."""
    return _jwe(dir, name, rsa.generate_private_key(public_exponent=65537, key_size=bits),
                password)


def make_jwe_ec(dir: Path, name: str = "jwe-ec", *, curve: ec.EllipticCurve | None = None,
                password: bytes | None = None) -> EncKey:
    """EC key pair (default P-256). ocicrypt wraps with ``ECDH-ES+A256KW``."""
    return _jwe(dir, name, ec.generate_private_key(curve or ec.SECP256R1()), password)


def make_pkcs7(dir: Path, name: str = "pkcs7", cn: str = "unlade test recipient") -> EncKey:
    """RSA-2048 key + self-signed certificate. Encrypt to the certificate; decrypt with both
    the key and the certificate (ocicrypt's pkcs7 unwrapper needs the cert too)."""
    dir = Path(dir)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .sign(key, hashes.SHA256()))
    priv = _write(dir / f"{name}.key.pem",
                  key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()), 0o600)
    crt = _write(dir / f"{name}.crt.pem", cert.public_bytes(serialization.Encoding.PEM))
    return EncKey("pkcs7", f"pkcs7:{crt}", (str(priv), str(crt)),
                  KEYS_ANNOTATION_PREFIX + "pkcs7", paths={"private": priv, "cert": crt})


def make_pgp(home: Path, name: str = "Pgp Recipient", email: str = "pgp@example.invalid"
             ) -> EncKey:
    """An RSA-2048 key with an encryption subkey (no passphrase) in GNUPGHOME ``home``.

    skopeo encrypts to ``pgp:EMAIL`` reading ``gpg --export`` of ``$GNUPGHOME`` (so ``env``
    carries it) and decrypts with ``secring`` (``gpg --export-secret-keys``, binary). Keep
    ``home`` short (gpg-agent socket path); call :meth:`EncKey.close` when done.
    """
    home = Path(home)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.chmod(0o700)
    uid = f"{name} <{email}>"
    _GPG_HOMES.add(home)
    nopw = ("--pinentry-mode", "loopback", "--passphrase", "")
    _gpg(home, *nopw, "--quick-gen-key", uid, "rsa2048", "sign", "never")
    colons = _gpg(home, "--with-colons", "--list-keys", f"={uid}").decode()
    fpr = next(ln.split(":")[9] for ln in colons.splitlines() if ln.startswith("fpr:"))
    _gpg(home, *nopw, "--quick-add-key", fpr, "rsa2048", "encr", "never")
    pub = _write(home / "pubring.export", _gpg(home, "--export", fpr))
    sec = _write(home / "secring.export", _gpg(home, *nopw, "--export-secret-keys", fpr), 0o600)
    return EncKey("pgp", f"pgp:{email}", (str(sec),), KEYS_ANNOTATION_PREFIX + "pgp",
                  env={"GNUPGHOME": str(home)},
                  paths={"home": home, "public": pub, "secring": sec})


# ----------------------------------------------------------------------------------------------
# Key provider (ocicrypt keyprovider protocol, "cmd" flavour)

#: The provider script. Request on stdin (Go json of KeyProviderKeyWrapProtocolInput):
#:   {"op":"keywrap","keywrapparams":{"ec":{"Parameters":{NAME:[B64..]},"DecryptConfig":{..}},
#:    "optsdata":B64}}  -> {"keywrapresults":{"annotation":B64}}
#:   {"op":"keyunwrap","keyunwrapparams":{"dc":{"Parameters":{NAME:[B64..]}},
#:    "annotation":B64}} -> {"keyunwrapresults":{"optsdata":B64}}
#: Wrapping is SHA-256-counter keystream XOR + HMAC-SHA256 under a fixed secret (stdlib only).
_PROVIDER_SCRIPT = r'''
import base64, hashlib, hmac, json, os, sys

SECRET = bytes.fromhex(sys.argv[1])
LOG = sys.argv[2] if len(sys.argv) > 2 else ""


def stream(nonce, n):
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(SECRET + nonce + i.to_bytes(8, "big")).digest()
        i += 1
    return out[:n]


def main():
    req = json.loads(sys.stdin.buffer.read())
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps(req) + "\n")
    if req["op"] == "keywrap":
        opts = base64.b64decode(req["keywrapparams"]["optsdata"])
        nonce = os.urandom(16)
        ct = bytes(a ^ b for a, b in zip(opts, stream(nonce, len(opts))))
        tag = hmac.new(SECRET, nonce + ct, "sha256").digest()
        ann = json.dumps({"kid": SECRET_ID, "nonce": base64.b64encode(nonce).decode(),
                          "ct": base64.b64encode(ct).decode(),
                          "tag": base64.b64encode(tag).decode()}).encode()
        out = {"keywrapresults": {"annotation": base64.b64encode(ann).decode()}}
    elif req["op"] == "keyunwrap":
        ann = json.loads(base64.b64decode(req["keyunwrapparams"]["annotation"]))
        nonce, ct = base64.b64decode(ann["nonce"]), base64.b64decode(ann["ct"])
        tag = hmac.new(SECRET, nonce + ct, "sha256").digest()
        if not hmac.compare_digest(tag, base64.b64decode(ann["tag"])):
            print("unwrap failed: wrong secret", file=sys.stderr)
            return 1
        opts = bytes(a ^ b for a, b in zip(ct, stream(nonce, len(ct))))
        out = {"keyunwrapresults": {"optsdata": base64.b64encode(opts).decode()}}
    else:
        print(f"unknown op {req['op']!r}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(out))
    return 0


SECRET_ID = hashlib.sha256(SECRET).hexdigest()[:16]
sys.exit(main())
'''


def keyprovider_config(dir: Path, name: str, cmd: Sequence[str | os.PathLike[str]],
                       filename: str = "ocicrypt_keyprovider.conf") -> Path:
    """Write an ``OCICRYPT_KEYPROVIDER_CONFIG`` file (JSON, despite the docs' ``.yaml``)::

        {"key-providers": {NAME: {"cmd": {"path": CMD[0], "args": CMD[1:]}}}}
    """
    cmd = [os.fspath(c) for c in cmd]
    doc = {"key-providers": {name: {"cmd": {"path": cmd[0], "args": cmd[1:]}}}}
    return _write(Path(dir) / filename, json.dumps(doc, indent=2).encode())


def make_keyprovider(dir: Path, name: str = "unladetest", secret: bytes | None = None
                     ) -> EncKey:
    """A ``cmd`` key provider NAME wrapping with ``secret`` (random by default).

    Writes ``provider.py`` (run by ``sys.executable``), the config file and a request log
    ``requests.jsonl`` (one JSON request per line). Encrypt with ``provider:NAME``, decrypt
    with ``provider:NAME`` (ocicrypt passes the whole DecryptConfig to the provider).
    Annotation: ``org.opencontainers.image.enc.keys.provider.NAME``.
    """
    dir = Path(dir)
    secret = secret if secret is not None else os.urandom(32)
    script = _write(dir / "provider.py", _PROVIDER_SCRIPT.encode(), 0o755)
    log = dir / "requests.jsonl"
    conf = keyprovider_config(dir, name, [sys.executable, script, secret.hex(), log])
    return EncKey("provider", f"provider:{name}", (f"provider:{name}",),
                  f"{KEYS_ANNOTATION_PREFIX}provider.{name}", env={KEYPROVIDER_ENV: str(conf)},
                  paths={"config": conf, "script": script, "log": log})


# ----------------------------------------------------------------------------------------------
# Encrypting and decrypting with skopeo


def default_layers(label: str, n: int = 3) -> list[list[Entry]]:
    """``n`` small layers, ``layerI/file`` each; ``label`` makes the digests unique."""
    return [[images.directory(f"layer{i}"),
             images.file(f"layer{i}/file", f"{label} layer {i}\n" * (i + 1))]
            for i in range(n)]


@dataclass(frozen=True)
class EncryptedImage:
    """A plain image (``REPO:plain``) and its encrypted copy (``REPO:TAG``)."""

    registry: Registry
    repo: str
    tag: str
    plain_digest: str
    digest: str
    plain_manifest: dict[str, Any]
    manifest: dict[str, Any]
    manifest_bytes: bytes
    keys: tuple[EncKey, ...]
    layers_to_encrypt: tuple[int, ...] | None
    layout: Path

    @property
    def ref(self) -> str:
        return f"{self.registry.host}/{self.repo}:{self.tag}"

    @property
    def digest_ref(self) -> str:
        return f"{self.registry.host}/{self.repo}@{self.digest}"

    @property
    def plain_ref(self) -> str:
        return f"{self.registry.host}/{self.repo}:plain"

    @property
    def layers(self) -> list[dict[str, Any]]:
        return list(self.manifest["layers"])

    def encrypted_indices(self) -> list[int]:
        return [i for i, d in enumerate(self.layers) if d["mediaType"].endswith(ENC_SUFFIX)]

    def pubopts(self, i: int) -> dict[str, Any]:
        """Decoded ``pubopts`` of layer ``i``."""
        return json.loads(base64.b64decode(self.layers[i]["annotations"][PUBOPTS_ANNOTATION]))

    def wrapped(self, i: int, annotation: str) -> list[bytes]:
        """The base64-decoded wrapped-key blobs of ``annotation`` on layer ``i``."""
        value = self.layers[i].get("annotations", {}).get(annotation, "")
        return [base64.b64decode(v) for v in value.split(",") if v]


def _merged_env(keys: Sequence[EncKey], home: Path) -> dict[str, str]:
    extra: dict[str, str] = {}
    for k in keys:
        for name, value in k.env.items():
            if extra.get(name, value) != value:
                raise ValueError(f"keys need conflicting {name}: {extra[name]} vs {value}")
            extra[name] = value
    return _tool_env(home, **extra)


def _src_args(registry: Registry | None) -> list[str]:
    if registry is not None and registry.tls:
        args = [f"--src-cert-dir={registry.cert_dir}"]
    else:
        args = ["--src-tls-verify=false"]
    if registry is not None and registry.username is not None:
        return [*args, f"--src-creds={registry.username}:{registry.password}"]
    return [*args, "--src-no-creds"]


def encrypt_and_push(
    workdir: Path,
    registry: Registry,
    repo: str,
    tag: str = "encrypted",
    *,
    recipients: Sequence[EncKey | str],
    layers_to_encrypt: Sequence[int] | None = None,
    layers: Sequence[Sequence[Entry] | bytes] | None = None,
    compression: images.Compression = "gzip",
) -> EncryptedImage:
    """Build an image (default: 3 small gzip layers), push it as ``REPO:plain`` and encrypted
    for ``recipients`` as ``REPO:TAG`` (``skopeo copy --encryption-key ... [--encrypt-layer
    I ...]``; indices as skopeo takes them, negative counts from the end; ``None`` = all).

    A recipient is an :class:`EncKey` or a raw ``--encryption-key`` string. Raises
    RuntimeError when skopeo fails.
    """
    workdir = Path(workdir)
    layout = workdir / "layout"
    images.build_layout(layout, "plain", layers if layers is not None else
                        default_layers(f"{repo}:{tag}"), compression=compression)
    plain_digest = images.push(layout, "plain", registry, repo)
    keys = tuple(r for r in recipients if isinstance(r, EncKey))
    with tempfile.TemporaryDirectory(prefix="skopeo-enc-") as td:
        digestfile = Path(td) / "digest"
        cmd = [SKOPEO, "--insecure-policy", "copy", "--quiet", f"--digestfile={digestfile}",
               *images.skopeo_dest_args(registry)]
        for r in recipients:
            cmd.append(f"--encryption-key={r.recipient if isinstance(r, EncKey) else r}")
        for i in layers_to_encrypt or ():
            cmd.append(f"--encrypt-layer={i}")
        cmd += [f"oci:{layout}:plain", f"docker://{registry.host}/{repo}:{tag}"]
        proc = _run(cmd, _merged_env(keys, Path(td)), timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"skopeo failed ({proc.returncode}): {' '.join(cmd)}\n"
                               f"{proc.stderr}{proc.stdout}")
        digest = digestfile.read_text().strip()
    data, _, _ = registry.get_manifest(repo, digest)
    plain, _, _ = registry.get_manifest(repo, plain_digest)
    return EncryptedImage(registry, repo, tag, plain_digest, digest, json.loads(plain),
                          json.loads(data), data, keys,
                          tuple(layers_to_encrypt) if layers_to_encrypt is not None else None,
                          layout)


def _oci_manifest(layout: Path, tag: str) -> dict[str, Any]:
    desc = images.tagged_descriptor(layout, tag)
    return json.loads(images.read_blob(layout, desc["digest"]))


def skopeo_decrypt(
    ref: str,
    keys: Sequence[EncKey | str] | EncKey,
    dest: Path,
    *,
    registry: Registry | None = None,
    env: Mapping[str, str] | None = None,
    tag: str = "x",
) -> tuple[bool, str]:
    """``skopeo copy --decryption-key K ... docker://REF oci:DEST:TAG`` -> ``(ok, message)``.

    ``keys`` are :class:`EncKey` (all their ``decryption_keys`` and ``env``) or raw
    ``--decryption-key`` values. ``ok`` means skopeo succeeded *and* no layer of the copy is
    still ``+encrypted`` (skopeo copies encrypted layers verbatim when given no key).
    ``message`` is skopeo's last stderr line, or a summary. ``registry`` supplies TLS and
    credentials options (default: plain HTTP, anonymous).
    """
    keys = [keys] if isinstance(keys, EncKey) else list(keys)
    enc_keys = [k for k in keys if isinstance(k, EncKey)]
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skopeo-dec-") as td:
        full_env = _merged_env(enc_keys, Path(td))
        full_env.update(env or {})
        cmd = [SKOPEO, "--insecure-policy", "copy", "--quiet", *_src_args(registry)]
        for k in keys:
            for v in (k.decryption_keys if isinstance(k, EncKey) else (k,)):
                cmd.append(f"--decryption-key={v}")
        cmd += [f"docker://{ref}", f"oci:{dest}:{tag}"]
        proc = _run(cmd, full_env, timeout=300)
    if proc.returncode != 0:
        return False, _last_line(proc.stderr) or _last_line(proc.stdout)
    still = [d["mediaType"] for d in _oci_manifest(Path(dest), tag)["layers"]
             if d["mediaType"].endswith(ENC_SUFFIX)]
    if still:
        return False, f"copied but {len(still)} layer(s) still encrypted"
    return True, "decrypted"


def unwrap_jwe(key: EncKey, value: str) -> dict[str, Any]:
    """Decode an ``enc.keys.jwe`` annotation with ``key`` (an unencrypted jwe key) in pure
    Python -> the PrivateLayerBlockCipherOptions JSON. An independent check of the format."""
    from cryptography.hazmat.primitives import keywrap
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash

    def b64u(s: str) -> bytes:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    priv = serialization.load_pem_private_key(key.paths["private"].read_bytes(), None)
    for part in value.split(","):
        jwe = json.loads(base64.b64decode(part))
        prot = json.loads(b64u(jwe["protected"]))
        for r in jwe.get("recipients", [jwe]):
            hdr = {**prot, **r.get("header", {})}
            try:
                if hdr["alg"] == "RSA-OAEP" and isinstance(priv, rsa.RSAPrivateKey):
                    cek = priv.decrypt(b64u(r["encrypted_key"]), padding.OAEP(
                        padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
                elif hdr["alg"] == "ECDH-ES+A256KW" and isinstance(priv,
                                                                 ec.EllipticCurvePrivateKey):
                    epk = hdr["epk"]
                    peer = ec.EllipticCurvePublicNumbers(
                        int.from_bytes(b64u(epk["x"])), int.from_bytes(b64u(epk["y"])),
                        priv.curve).public_key()
                    z = priv.exchange(ec.ECDH(), peer)
                    other = b"".join(len(b).to_bytes(4, "big") + b for b in (
                        b"ECDH-ES+A256KW", b64u(hdr.get("apu", "")), b64u(hdr.get("apv", ""))))
                    kek = ConcatKDFHash(hashes.SHA256(), 32,
                                        other + (256).to_bytes(4, "big")).derive(z)
                    cek = keywrap.aes_key_unwrap(kek, b64u(r["encrypted_key"]))
                else:
                    continue
                return json.loads(AESGCM(cek).decrypt(
                    b64u(jwe["iv"]), b64u(jwe["ciphertext"]) + b64u(jwe["tag"]),
                    jwe["protected"].encode()))
            except Exception:  # wrong key for this recipient: try the next
                continue
    raise ValueError("no recipient of the JWE matches the key")


def decrypt_layer(blob: bytes, privopts: Mapping[str, Any], pubopts: Mapping[str, Any]
                  ) -> bytes:
    """AES_256_CTR_HMAC_SHA256 in pure Python: check HMAC-SHA256(symkey, ciphertext) against
    ``pubopts.hmac``, then AES-256-CTR with the 16-byte nonce as the initial counter block."""
    import hmac

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if pubopts["cipher"] != LAYER_CIPHER:
        raise ValueError(f"unsupported cipher {pubopts['cipher']}")
    key = base64.b64decode(privopts["symkey"])
    nonce = base64.b64decode(privopts["cipheroptions"]["nonce"])
    if not hmac.compare_digest(hmac.new(key, blob, "sha256").digest(),
                               base64.b64decode(pubopts["hmac"])):
        raise ValueError("HMAC mismatch")
    dec = Cipher(algorithms.AES(key), modes.CTR(nonce)).decryptor()
    return dec.update(blob) + dec.finalize()


def fetch_blob(registry: Registry, repo: str, digest: str) -> bytes:
    """GET a blob from ``registry`` (following the registry's redirects)."""
    r = registry.request("GET", f"/v2/{repo}/blobs/{digest}", repo)
    while r.status in (301, 302, 303, 307, 308):
        r = registry.request("GET", r.headers["Location"], repo)
    if r.status != 200:
        raise RuntimeError(f"GET blob {repo}@{digest}: {r.status}")
    return bytes(r.data)


def keyprovider_call(key: EncKey, request: Mapping[str, Any]
                     ) -> tuple[int, dict[str, Any] | str]:
    """Run ``key``'s provider command on ``request`` (the Go-marshalled protocol input) as
    ocicrypt does -> ``(returncode, parsed stdout | stderr)``."""
    conf = json.loads(key.paths["config"].read_text())
    (attrs,) = conf["key-providers"].values()
    proc = subprocess.run([attrs["cmd"]["path"], *attrs["cmd"]["args"]],
                          input=json.dumps(request).encode(), capture_output=True, timeout=60)
    if proc.returncode != 0:
        return proc.returncode, proc.stderr.decode(errors="replace")
    return 0, json.loads(proc.stdout)


def decrypted_layer_digests(dest: Path, tag: str = "x") -> list[str]:
    """Layer digests of what :func:`skopeo_decrypt` wrote (compare with the plain image)."""
    return [d["digest"] for d in _oci_manifest(Path(dest), tag)["layers"]]


# ----------------------------------------------------------------------------------------------
# Images for key providers (skopeo 1.9.3 cannot encrypt with one)


def provider_wrap(provider: EncKey, privopts: bytes, params: bytes = b"Enabled") -> str:
    """Wrap ``privopts`` with ``provider``'s command as ocicrypt's WrapKeys does ->
    the annotation value (standard base64 of the provider's answer)."""
    name = provider.recipient.split(":", 2)[1]
    request = {"op": "keywrap",
               "keywrapparams": {"ec": {"Parameters": {name: [base64.b64encode(params).decode()]},
                                        "DecryptConfig": {"Parameters": {}}},
                                 "optsdata": base64.b64encode(privopts).decode()},
               "keyunwrapparams": {"dc": None, "annotation": None}}
    code, out = keyprovider_call(provider, request)
    if code != 0 or not isinstance(out, dict):
        raise RuntimeError(f"key provider failed to wrap: {out}")
    return str(out["keywrapresults"]["annotation"])


def rewrap_for_provider(img: EncryptedImage, jwe_key: EncKey, provider: EncKey,
                        tag: str) -> str:
    """Re-push ``img`` (encrypted by skopeo for ``jwe_key``) as ``REPO:TAG`` with each
    layer's key wrapped by ``provider`` instead: the ``enc.keys.jwe`` annotation is opened
    with :func:`unwrap_jwe` and replaced by ``enc.keys.provider.NAME``, exactly what a
    provider-capable skopeo writes (ocicrypt's WrapKeys). Blobs are unchanged. -> REF."""
    manifest = json.loads(img.manifest_bytes)
    jwe_ann = KEYS_ANNOTATION_PREFIX + "jwe"
    for layer in manifest["layers"]:
        annotations = layer.get("annotations", {})
        if jwe_ann not in annotations:
            continue
        privopts = json.dumps(unwrap_jwe(jwe_key, annotations.pop(jwe_ann))).encode()
        annotations[provider.annotation] = provider_wrap(provider, privopts)
    img.registry.put_manifest(img.repo, tag, json.dumps(manifest).encode(),
                              manifest["mediaType"])
    return f"{img.registry.host}/{img.repo}:{tag}"


def _pb_field1(payload: bytes) -> bytes:
    n, out = len(payload), bytearray([0x0A])
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out) + payload


def _pb_read_field1(data: bytes) -> bytes:
    assert data[:1] == b"\x0a", data[:8]
    length = shift = 0
    pos = 1
    while True:
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    assert len(data) == pos + length, "trailing bytes after the protocol input"
    return data[pos:]


class GrpcKeyProvider:
    """ocicrypt's ``keyprovider.KeyProviderService`` (WrapKey, UnWrapKey) on loopback, a
    bridge to ``provider``'s command (the protocol JSON is the same on both transports).
    ``requests`` records each decoded input; ``fail`` makes UnWrapKey abort."""

    def __init__(self, provider: EncKey, name: str = "grpcprov") -> None:
        from concurrent.futures import ThreadPoolExecutor

        import grpc

        self.provider, self.name, self.grpc = provider, name, grpc
        self.requests: list[dict[str, Any]] = []
        self.fail: str | None = None
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4))
        handlers = {m: grpc.unary_unary_rpc_method_handler(
                        getattr(self, "_" + m.lower()), request_deserializer=_pb_read_field1,
                        response_serializer=_pb_field1)
                    for m in ("WrapKey", "UnWrapKey")}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "keyprovider.KeyProviderService", handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def config(self, dir: Path) -> Path:
        """An ``OCICRYPT_KEYPROVIDER_CONFIG`` naming this server as provider ``name``."""
        doc = {"key-providers": {self.name: {"grpc": self.address}}}
        return _write(Path(dir) / f"{self.name}.conf", json.dumps(doc).encode())

    def _bridge(self, data: bytes, context: Any) -> bytes:
        request = json.loads(data)
        self.requests.append(request)
        if self.fail and request["op"] == "keyunwrap":
            context.abort(self.grpc.StatusCode.PERMISSION_DENIED, self.fail)
        code, out = keyprovider_call(self.provider, request)
        if code != 0:
            context.abort(self.grpc.StatusCode.INTERNAL, str(out))
        return json.dumps(out).encode()

    _wrapkey = _unwrapkey = _bridge

    def stop(self) -> None:
        self.server.stop(grace=None).wait()
