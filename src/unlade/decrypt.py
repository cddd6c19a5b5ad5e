"""Decryption of OCI encrypted layers (the ``+encrypted`` media types of containers/ocicrypt).

How ocicrypt lays a layer out, as read from its source (``encryption.go``,
``blockcipher/blockcipher_aes_ctr.go``, ``keywrap/*``):

* the blob is the (compressed) layer run through AES-256-CTR with a random 32-byte key and
  a 16-byte IV; an HMAC-SHA256 *keyed with that same key* covers the ciphertext;
* the key, the IV (``cipheroptions.nonce``) and the digest of the unencrypted blob form the
  *private* options, a JSON object that is wrapped once per recipient scheme and stored,
  base64, in ``org.opencontainers.image.enc.keys.<scheme>`` (several wrapped copies are
  joined with commas);
* the cipher name and the HMAC are *public* options, base64 JSON in
  ``org.opencontainers.image.enc.pubopts``.

The layer is decrypted as it streams: nothing is buffered, AES and HMAC run in C with the
GIL released, and a wrong HMAC raises at the end of the stream *before* the end is reported,
so a reader that commits only on a clean end never commits tampered content.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, NamedTuple

from .errors import ConfigError, DecryptionError
from .manifest import ENCRYPTED_LAYER_TYPES

# -- format constants (ocicrypt spec/spec.go, encryption.go, keywrap/*) --------------------

ENC_ANNOTATION_PREFIX = "org.opencontainers.image.enc."
KEYS_ANNOTATION_PREFIX = "org.opencontainers.image.enc.keys."
PUBOPTS_ANNOTATION = "org.opencontainers.image.enc.pubopts"
AES256CTR = "AES_256_CTR_HMAC_SHA256"

#: Encrypted layer media type -> the compression of what decrypting it yields.

#: Key-encryption algorithms ocicrypt's JWE unwrapper accepts (keywrapper_jwe.go), and the
#: content encryptions of RFC 7518 section 5.1; anything else (RSA1_5, "dir") is refused.
JWE_KEY_ALGS = ("RSA-OAEP", "RSA-OAEP-256", "ECDH-ES+A128KW", "ECDH-ES+A192KW",
                "ECDH-ES+A256KW")
JWE_CONTENT_ALGS = ("A128CBC-HS256", "A192CBC-HS384", "A256CBC-HS512", "A128GCM", "A192GCM",
                    "A256GCM")


def _b64(value: Any, what: str) -> bytes:
    """Go's encoding/json writes ``[]byte`` as standard padded base64 (null for nil)."""
    if value is None:
        return b""
    if not isinstance(value, str):
        raise DecryptionError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptionError(f"{what} is not valid base64") from None


# -- options ----------------------------------------------------------------------------

class PrivateOptions(NamedTuple):
    """``PrivateLayerBlockCipherOptions``: what a recipient unwraps."""

    symkey: bytes
    nonce: bytes
    digest: str  # of the unencrypted blob, as the encrypter saw it (may be "")


class PublicOptions(NamedTuple):
    """``PublicLayerBlockCipherOptions``: stored in the clear in the pubopts annotation."""

    cipher: str
    hmac: bytes
    nonce: bytes  # ocicrypt looks options up in the public map first; normally absent


@dataclass(frozen=True)
class LayerOptions:
    """Everything needed to decrypt and check one layer."""

    cipher: str
    symkey: bytes
    nonce: bytes
    hmac: bytes
    digest: str = ""


def _json_object(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise DecryptionError(f"{what} are not JSON") from None
    if not isinstance(obj, dict):
        raise DecryptionError(f"{what} are not a JSON object")
    return obj


def parse_private_options(data: bytes | str) -> PrivateOptions:
    """Decode the unwrapped ``{"symkey", "digest", "cipheroptions": {"nonce"}}`` JSON."""
    obj = _json_object(data, "private layer options")
    opts = obj.get("cipheroptions") or {}
    if not isinstance(opts, dict):
        raise DecryptionError("private layer options: cipheroptions is not an object")
    digest = obj.get("digest") or ""
    if not isinstance(digest, str):
        raise DecryptionError("private layer options: digest is not a string")
    return PrivateOptions(_b64(obj.get("symkey"), "private layer options: symkey"),
                          _b64(opts.get("nonce"), "private layer options: nonce"), digest)


def parse_public_options(data: bytes | str) -> PublicOptions:
    """Decode the ``{"cipher", "hmac", "cipheroptions"}`` JSON of the pubopts annotation
    (already base64-decoded)."""
    obj = _json_object(data, "public layer options")
    opts = obj.get("cipheroptions") or {}
    if not isinstance(opts, dict):
        raise DecryptionError("public layer options: cipheroptions is not an object")
    cipher = obj.get("cipher") or ""
    if not isinstance(cipher, str):
        raise DecryptionError("public layer options: cipher is not a string")
    return PublicOptions(cipher, _b64(obj.get("hmac"), "public layer options: hmac"),
                         _b64(opts.get("nonce"), "public layer options: nonce"))


# -- the stream cipher ---------------------------------------------------------------------

class _Mac:
    """HMAC-SHA256 over the ciphertext on a thread of its own.

    The MAC costs as much CPU as AES-CTR ten times over; on the inflate thread it would
    lengthen the critical path of every encrypted layer. Here the ciphertext lands in one
    of a few recycled buffers, the plaintext is decrypted out of it into the caller's
    buffer, and the buffer goes to this thread to be MACed and handed back."""

    BUFFERS = 4

    def __init__(self, key: bytes) -> None:
        import queue
        import threading

        self._mac = hmac.new(key, digestmod=sha256)
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._todo: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        for _ in range(self.BUFFERS):
            self._free.put(bytearray())
        self._thread = threading.Thread(target=self._run, name="unlade-hmac", daemon=True)
        self._thread.start()
        self._done = False

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            buf, n = item
            self._mac.update(memoryview(buf)[:n])
            self._free.put(buf)

    def buffer(self, size: int) -> bytearray:
        """A free buffer of at least ``size`` bytes (waits for the MAC to catch up)."""
        buf = self._free.get()
        if len(buf) < size:
            buf = bytearray(size)
        return buf

    def feed(self, buf: bytearray, n: int) -> None:
        self._todo.put((buf, n))

    def give_back(self, buf: bytearray) -> None:
        self._free.put(buf)

    def digest(self) -> bytes:
        """The HMAC of everything fed (stops the thread)."""
        self.stop()
        return self._mac.digest()

    def stop(self) -> None:
        if not self._done:
            self._done = True
            self._todo.put(None)
            self._thread.join()


class LayerCipher(io.RawIOBase):
    """The plaintext of an encrypted blob, as a raw reader over ``raw_readinto``.

    Decrypts straight into the caller's buffer (no buffering of the layer) and MACs the
    ciphertext, as ocicrypt does, on a thread of its own (see :class:`_Mac`). When
    ``raw_readinto`` reports the end, the HMAC is compared in constant time; a mismatch
    raises instead of returning 0, so truncation and tampering surface before the
    consumer sees an end. :meth:`close` stops the MAC thread of a stream not read to its
    end.
    """

    def __init__(self, raw_readinto: Callable[[memoryview], int], options: LayerOptions,
                 label: str = "layer") -> None:
        super().__init__()
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        if options.cipher != AES256CTR:
            raise DecryptionError(f"{label} uses unsupported cipher {options.cipher!r}")
        if len(options.symkey) != 32:
            raise DecryptionError(f"{label}: AES-256 key is {len(options.symkey)} bytes, "
                                  "not 32")
        if len(options.nonce) != 16:
            raise DecryptionError(f"{label}: AES-CTR nonce is {len(options.nonce)} bytes, "
                                  "not 16")
        if not options.hmac:
            raise DecryptionError(f"{label}: no HMAC given for the encrypted layer")
        self._raw_readinto = raw_readinto
        self._label = label
        self._expected = options.hmac
        self._key = options.symkey
        self._mac: _Mac | None = None
        self._decryptor = Cipher(algorithms.AES(options.symkey),
                                 modes.CTR(options.nonce)).decryptor()
        self._verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._verified:
            return 0
        view = memoryview(buffer).cast("B")
        if self._mac is None:
            self._mac = _Mac(self._key)
        buf = self._mac.buffer(len(view))
        source = memoryview(buf)[:len(view)]
        try:
            n = self._raw_readinto(source)
        except BaseException:
            self._mac.give_back(buf)
            raise
        if not n:
            self._mac.give_back(buf)
            self._check()
            return 0
        try:
            self._decryptor.update_into(source[:n], view[:n])
        except ValueError:  # older cryptography wants block_size - 1 spare bytes
            view[:n] = self._decryptor.update(source[:n])
        self._mac.feed(buf, n)
        return n

    def _check(self) -> None:
        assert self._mac is not None
        if not hmac.compare_digest(self._mac.digest(), self._expected):
            raise DecryptionError(f"integrity check failed for {self._label} (HMAC)")
        self._verified = True

    @property
    def verified(self) -> bool:
        """True once the end was reached and the HMAC matched."""
        return self._verified

    def check_rest(self) -> None:
        """MAC the rest of the ciphertext without decrypting it, and raise the integrity
        error if the HMAC does not match. Called when the plaintext turned out corrupt, so
        that tampering is reported as tampering rather than as bad gzip."""
        if self._verified:
            return
        if self._mac is None:
            self._mac = _Mac(self._key)
        while True:
            buf = self._mac.buffer(256 * 1024)
            n = self._raw_readinto(memoryview(buf))
            if not n:
                self._mac.give_back(buf)
                break
            self._mac.feed(buf, n)
        self._check()

    def close(self) -> None:
        if self._mac is not None:
            self._mac.stop()
        super().close()


def decrypting_reader(raw_readinto: Callable[[memoryview], int], options: LayerOptions,
                      label: str = "layer") -> Callable[[memoryview], int]:
    """A ``readinto`` of the plaintext, for :class:`~unlade.decompress.ReadAhead` or a
    decompressor; see :class:`LayerCipher`."""
    return LayerCipher(raw_readinto, options, label).readinto


# -- key unwrapping --------------------------------------------------------------------------

def unwrap_jwe(wrapped: bytes, private_keys: Iterable[Any]) -> bytes:
    """Open an ocicrypt JWE (go-jose ``FullSerialize``: general JSON with one entry per
    recipient, or flattened JSON for a single one) with the first key that fits.

    ``private_keys`` are jwcrypto JWKs or ``cryptography`` private keys."""
    from jwcrypto import jwe, jwk

    keys = [k if isinstance(k, jwk.JWK) else jwk.JWK.from_pyca(k) for k in private_keys]
    try:
        text = wrapped.decode()
    except UnicodeDecodeError:
        raise DecryptionError("JWE wrapped key is not text") from None
    for key in keys:
        token = jwe.JWE()
        token.allowed_algs = [*JWE_KEY_ALGS, *JWE_CONTENT_ALGS]
        try:
            token.deserialize(text, key=key)
        except Exception:  # jwcrypto raises several unrelated kinds; all mean "not this key"
            continue
        return bytes(token.payload)
    raise DecryptionError("no given key opens the JWE wrapped key")


_GCM_OIDS = {"2.16.840.1.101.3.4.1.6": 16, "2.16.840.1.101.3.4.1.26": 24,
             "2.16.840.1.101.3.4.1.46": 32}


def _tlvs(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(class, method, tag, contents) of each element in ``data``."""
    from asn1crypto import parser

    out = []
    while data:
        cls, method, tag, header, contents, trailer = parser.parse(data, strict=False)
        out.append((cls, method, tag, contents))
        data = data[len(header) + len(contents) + len(trailer):]
    return out


def _encrypted_content(eci_contents: bytes) -> bytes:
    """The ``[0] encryptedContent`` of an EncryptedContentInfo. smallstep/pkcs7 (what
    ocicrypt uses) writes it constructed, as BER chunks of OCTET STRINGs, which
    asn1crypto's strict OctetString refuses; a primitive one is taken as it is."""
    for cls, method, tag, contents in _tlvs(eci_contents):
        if cls == 2 and tag == 0:  # context-specific [0]
            if method == 0:
                return contents
            return b"".join(chunk for _, _, _, chunk in _tlvs(contents))
    return b""


def _gcm_parameters(algorithm_identifier: bytes) -> tuple[str, bytes, int]:
    """OID, nonce and tag length of a GCM AlgorithmIdentifier, read by hand because
    smallstep/pkcs7 (which ocicrypt uses) does not write RFC 5084's form: its parameters are
    ``[UNIVERSAL 16, primitive] { SEQUENCE { [4] IMPLICIT nonce, INTEGER icvLen } }`` where
    the RFC has ``SEQUENCE { OCTET STRING nonce, INTEGER icvLen DEFAULT 12 }``. Both are
    accepted."""
    from asn1crypto import core

    elements = _tlvs(algorithm_identifier)
    if not elements or elements[0][2] != 6:
        raise DecryptionError("PKCS7: malformed content encryption algorithm")
    oid = core.ObjectIdentifier(contents=elements[0][3]).dotted
    if len(elements) < 2:
        raise DecryptionError("PKCS7: GCM parameters are missing")
    params = elements[1][3]
    inner = _tlvs(params)
    if len(inner) == 1 and inner[0][2] == 16:  # smallstep's extra SEQUENCE level
        inner = _tlvs(inner[0][3])
    if not inner or inner[0][2] != 4:
        raise DecryptionError("PKCS7: malformed GCM parameters")
    nonce = inner[0][3]
    icv_len = int.from_bytes(inner[1][3], "big") if len(inner) > 1 else 12
    return oid, nonce, icv_len


def _rsa_unwrap(key: Any, algorithm: Any, encrypted_key: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    name = algorithm["algorithm"].native
    if name == "rsaes_pkcs1v15":
        return bytes(key.decrypt(encrypted_key, padding.PKCS1v15()))
    if name == "rsaes_oaep":
        params = algorithm["parameters"]
        hash_name = params["hash_algorithm"]["algorithm"].native
        mgf_hash = params["mask_gen_algorithm"]["parameters"]["algorithm"].native
        by_name = {"sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
                   "sha384": hashes.SHA384, "sha512": hashes.SHA512}
        return bytes(key.decrypt(encrypted_key, padding.OAEP(
            mgf=padding.MGF1(by_name[mgf_hash]()), algorithm=by_name[hash_name](),
            label=None)))
    raise DecryptionError(f"PKCS7: unsupported key encryption {name}")


def unwrap_pkcs7(wrapped: bytes,
                 cert_key_pairs: Iterable[tuple[Any | None, Any]]) -> bytes:
    """Open an ocicrypt PKCS7 EnvelopedData (AES-GCM content, RSA key transport).

    ``cert_key_pairs`` are ``(x509 certificate or None, RSA private key)``; with a
    certificate only the RecipientInfo naming its issuer and serial is tried, without one
    every RecipientInfo is (a wrong key then fails RSA padding or the GCM tag). Parsed with
    asn1crypto and decrypted with cryptography, whose pkcs7 helpers refuse AES-GCM."""
    from asn1crypto import cms
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        info = cms.ContentInfo.load(wrapped)
        if info["content_type"].native != "enveloped_data":
            raise DecryptionError("PKCS7 wrapped key is not EnvelopedData")
        env = info["content"]
        eci = env["encrypted_content_info"]
        oid, nonce, icv_len = _gcm_parameters(eci["content_encryption_algorithm"].contents)
        ciphertext = _encrypted_content(eci.contents)
        recipients = []
        for ri in env["recipient_infos"]:
            if ri.name != "ktri":
                continue
            ktri = ri.chosen
            rid = ktri["rid"]
            ias = rid.chosen if rid.name == "issuer_and_serial_number" else None
            recipients.append((ias, ktri["key_encryption_algorithm"],
                               ktri["encrypted_key"].native))
    except DecryptionError:
        raise
    except (ValueError, TypeError, KeyError):
        raise DecryptionError("PKCS7 wrapped key is malformed") from None
    if oid not in _GCM_OIDS:
        raise DecryptionError(f"PKCS7: unsupported content encryption {oid}")
    if icv_len != 16 or len(nonce) != 12:
        raise DecryptionError("PKCS7: unsupported GCM parameters")
    for cert, key in cert_key_pairs:
        for ias, algorithm, encrypted_key in recipients:
            if cert is not None and ias is not None and (
                    ias["serial_number"].native != cert.serial_number
                    or ias["issuer"].dump() != cert.issuer.public_bytes()):
                continue
            try:
                cek = _rsa_unwrap(key, algorithm, encrypted_key)
                if len(cek) != _GCM_OIDS[oid]:
                    continue
                return AESGCM(cek).decrypt(nonce, ciphertext or b"", None)
            except DecryptionError:
                raise
            except Exception:  # padding, tag or key-type failure: not this recipient
                continue
    raise DecryptionError("no given key opens the PKCS7 wrapped key")


def unwrap_pgp(wrapped: bytes, secret_keys: Iterable[tuple[Any, str | None]]) -> bytes:
    """Open an ocicrypt OpenPGP message (binary, uncompressed) with pysequoia;
    ``secret_keys`` are ``(pysequoia.Tsk, password or None)``."""
    import pysequoia

    secret_keys = list(secret_keys)
    for tsk, password in secret_keys:
        try:
            return bytes(pysequoia.decrypt(bytes=wrapped,
                                           decryptor=tsk.decryptor(password)).bytes)
        except Exception:  # pysequoia raises bare RuntimeErrors carrying a Rust backtrace
            continue
    opened = _gpg_decrypt(wrapped, secret_keys)
    if opened is not None:
        return opened
    raise DecryptionError("no given key opens the OpenPGP wrapped key")


#: What gpg may print as the private options: they are ~200 bytes.
_GPG_MAX_OUTPUT = 64 * 1024


def _gpg_decrypt(wrapped: bytes, secret_keys: Sequence[tuple[Any, str | None]]
                 ) -> bytes | None:
    """Open the message with gpg, when installed, in a throwaway GNUPGHOME.

    ocicrypt encrypts with Go's x/crypto/openpgp, which writes the RSA session key as an
    MPI with a non-minimal bit count and splits packets into partial lengths shorter than
    RFC 4880 allows; Sequoia refuses such messages as malformed, gpg reads them. So gpg is
    the second try, as it is for ocicrypt's own GPG key lookups."""
    import shutil
    import subprocess
    import tempfile

    gpg = shutil.which("gpg")
    if gpg is None or not secret_keys:
        return None
    with tempfile.TemporaryDirectory(prefix="unlade-gpg-") as home:
        base = [gpg, "--homedir", home, "--batch", "--quiet", "--no-tty",
                "--no-permission-warning"]
        try:
            for tsk, _ in secret_keys:
                subprocess.run([*base, "--import"], input=bytes(tsk), capture_output=True,
                               timeout=30, check=False)
            message = os.path.join(home, "message.gpg")
            with open(message, "wb") as f:
                f.write(wrapped)
            for password in dict.fromkeys(p or "" for _, p in secret_keys):
                proc = subprocess.run(
                    [*base, "--pinentry-mode", "loopback", "--passphrase-fd", "0",
                     "--decrypt", message],
                    input=password.encode() + b"\n", capture_output=True, timeout=30,
                    check=False)
                if proc.returncode == 0 and 0 < len(proc.stdout) <= _GPG_MAX_OUTPUT:
                    return proc.stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        finally:
            gpgconf = shutil.which("gpgconf")
            if gpgconf is not None:  # stop the agent gpg started for the secret key
                subprocess.run([gpgconf, "--homedir", home, "--kill", "all"],
                               capture_output=True, timeout=30, check=False)
    return None


# -- keys ------------------------------------------------------------------------------------

#: A key provider (ocicrypt keyprovider protocol, annotation ``...enc.keys.provider.NAME``):
#: gets the wrapped bytes, returns the private options JSON, or None if it cannot open them.
KeyProvider = Callable[[bytes], "bytes | None"]


def _password(text: str) -> bytes:
    """ocicrypt's processPwdString: ``file=PATH``, ``pass=TEXT``, ``fd=N`` or the text."""
    if text.startswith("file="):
        with open(text[5:], "rb") as f:
            return f.read()
    if text.startswith("pass="):
        return text[5:].encode()
    if text.startswith("fd="):
        try:
            fd = int(text[3:])
        except ValueError:
            raise ConfigError(f"cannot parse file descriptor {text[3:]!r}") from None
        with os.fdopen(fd, "rb") as f:
            return f.read(64)
    return text.encode()


@dataclass
class DecryptConfig:
    """The keys given for decryption (skopeo's ``--decryption-key FILE[:PASSWORD]``),
    sorted by what they can open."""

    private_keys: list[Any] = field(default_factory=list)  # cryptography keys or JWKs
    certificates: list[Any] = field(default_factory=list)  # cryptography x509
    pgp_keys: list[tuple[Any, str | None]] = field(default_factory=list)
    #: The keyprovider protocol: NAME -> unwrap function (a
    #: :class:`~unlade.keyprovider.KeyProvider` or any callable); ``provider:NAME[:PARAMS]``
    #: specs are kept in ``provider_specs``.
    key_providers: dict[str, KeyProvider] = field(default_factory=dict)
    provider_specs: list[str] = field(default_factory=list)
    given: int = 0
    _jwks: list[Any] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def from_specs(cls, specs: Iterable[str], *,
                   keyprovider_config: str | os.PathLike[str] | None = None) -> DecryptConfig:
        """Keys as skopeo's ``--decryption-key`` takes them. ``provider:NAME`` specs are
        looked up in ``keyprovider_config`` (default ``$OCICRYPT_KEYPROVIDER_CONFIG``)."""
        config = cls()
        for spec in specs:
            config.add_spec(spec)
        if config.provider_specs:
            from .keyprovider import make_providers

            config.key_providers.update(make_providers(config.provider_specs,
                                                       keyprovider_config))
        return config

    def add_spec(self, spec: str) -> None:
        """``FILE``, ``FILE:PASSWORD`` (password as ocicrypt reads it) or
        ``provider:NAME[:...]``."""
        if spec.startswith("provider:"):
            from .keyprovider import parse_provider_spec

            name, _ = parse_provider_spec(spec[len("provider:"):])
            if not any(s.partition(":")[0] == name for s in self.provider_specs):
                self.given += 1
            self.provider_specs.append(spec[len("provider:"):])
            return
        parts = spec.split(":")
        password = _password(parts[1]) if len(parts) == 2 else None
        try:
            with open(parts[0], "rb") as f:
                data = f.read()
        except OSError as err:
            raise ConfigError(f"cannot read decryption key {parts[0]}: "
                              f"{err.strerror or err}") from None
        self.add_key(data, password, name=parts[0])

    def add_key(self, data: bytes, password: bytes | None = None, *,
                name: str = "decryption key") -> None:
        """Sort one key file by its content, as ocicrypt's SortDecryptionKeys does:
        private key (DER, PEM, JWK), then x509 certificate, then OpenPGP secret key."""
        key = _load_private_key(data, password, name)
        if key is not None:
            self.private_keys.append(key)
            self.given += 1
            return
        cert = _load_certificate(data)
        if cert is not None:
            self.certificates.append(cert)
            return
        tsk = _load_pgp_secret_key(data)
        if tsk is not None:
            self.pgp_keys.append((tsk, password.decode() if password is not None else None))
            self.given += 1
            return
        raise ConfigError(f"{name} is not a private key, certificate or OpenPGP secret key")

    def _jwe_keys(self) -> list[Any]:
        """The private keys as jwcrypto JWKs, made once: jwcrypto rebuilds (and
        re-validates, ~40 ms for RSA-2048) a pyca key per JWK, so a JWK per layer would
        cost that per layer. The keys were validated when they were loaded."""
        from jwcrypto import jwk

        if len(self._jwks) != len(self.private_keys):
            self._jwks = []
            for key in self.private_keys:
                if isinstance(key, jwk.JWK):  # from a JWK file: validated on first use
                    self._jwks.append(key)
                    continue
                jwk_key = jwk.JWK.from_pyca(key)
                jwk_key.unsafe_skip_rsa_key_validation = True  # cryptography checked it
                self._jwks.append(jwk_key)
        return self._jwks

    def _pkcs7_pairs(self) -> list[tuple[Any | None, Any]]:
        from cryptography.hazmat.primitives.asymmetric import rsa

        keys = [k for k in self.private_keys if isinstance(k, rsa.RSAPrivateKey)]
        pairs: list[tuple[Any | None, Any]] = []
        for key in keys:
            public = key.public_key().public_numbers()
            mine = [c for c in self.certificates
                    if isinstance(c.public_key(), rsa.RSAPublicKey)
                    and c.public_key().public_numbers() == public]
            pairs.extend((c, key) for c in mine)
            if not mine:
                pairs.append((None, key))
        return pairs


def _load_private_key(data: bytes, password: bytes | None, name: str) -> Any | None:
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        pass
    if b"-----BEGIN" in data and b"PRIVATE KEY-----" in data:
        try:
            return serialization.load_pem_private_key(data, password=password)
        except TypeError:
            raise ConfigError(f"{name} is encrypted and no password was given") from None
        except ValueError:
            if password is not None:
                raise ConfigError(f"wrong password for {name}, or not a key") from None
            return None
    if data.lstrip().startswith(b"{"):
        from jwcrypto import jwk

        try:
            key = jwk.JWK.from_json(data.decode())
        except Exception:  # not a JWK
            return None
        if not key.has_private:
            raise ConfigError(f"{name} is a public JWK; decryption needs the private key")
        return key
    return None


def _load_certificate(data: bytes) -> Any | None:
    from cryptography import x509

    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        return None


def _load_pgp_secret_key(data: bytes) -> Any | None:
    import pysequoia

    try:
        tsk = pysequoia.Tsk.from_bytes(data)
        # Tsk also takes a public certificate; only secret material makes it longer
        public_only = bytes(tsk) == bytes(tsk.extract_certificate())
    except Exception:  # pysequoia raises bare RuntimeErrors
        return None
    return None if public_only else tsk


# -- per layer -------------------------------------------------------------------------------

def is_encrypted(media_type: str) -> bool:
    return media_type in ENCRYPTED_LAYER_TYPES


def _scheme_order(scheme: str) -> tuple[int, str]:
    known = ("jwe", "pkcs7", "pgp")
    return (known.index(scheme) if scheme in known else len(known), scheme)


def layer_options(annotations: Mapping[str, str], config: DecryptConfig,
                  label: str = "layer") -> LayerOptions:
    """Unwrap the layer's private options with the first given key that opens any of its
    recipient annotations, and combine them with its public options."""
    wrapped = {k[len(KEYS_ANNOTATION_PREFIX):]: v for k, v in annotations.items()
               if k.startswith(KEYS_ANNOTATION_PREFIX) and v}
    if not wrapped:
        raise DecryptionError(f"{label} is encrypted but carries no wrapped keys")
    schemes = sorted(wrapped, key=_scheme_order)
    private: bytes | None = None
    provider_error: DecryptionError | None = None
    for scheme in schemes:
        unwrap = _unwrapper(scheme, config)
        if unwrap is None:
            continue
        for item in wrapped[scheme].split(","):
            try:
                data = base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError):
                continue
            try:
                private = unwrap(data)
            except DecryptionError as e:
                if scheme.startswith("provider.") and provider_error is None:
                    provider_error = e
                continue
            if private is not None:
                break
        if private is not None:
            break
    if private is None and provider_error is not None:
        raise type(provider_error)(f"{label}: {provider_error}")
    if private is None:
        names = ", ".join(s.removeprefix("provider.") if s.startswith("provider.") else s
                          for s in schemes)
        if not config.given:
            raise DecryptionError(f"{label} is encrypted for {names} recipients; "
                                  "no decryption key was given")
        raise DecryptionError(f"{label} is encrypted for {names} recipients; none of the "
                              f"{config.given} given keys opens it")
    priv = parse_private_options(private)
    pubopts = annotations.get(PUBOPTS_ANNOTATION)
    if not pubopts:
        raise DecryptionError(f"{label} has no {PUBOPTS_ANNOTATION} annotation")
    pub = parse_public_options(_b64(pubopts, f"{label}: {PUBOPTS_ANNOTATION}"))
    return LayerOptions(cipher=pub.cipher, symkey=priv.symkey,
                        nonce=pub.nonce or priv.nonce, hmac=pub.hmac, digest=priv.digest)


def _unwrapper(scheme: str, config: DecryptConfig) -> Callable[[bytes], bytes | None] | None:
    if scheme == "jwe":
        keys = config._jwe_keys()
        return (lambda data: unwrap_jwe(data, keys)) if keys else None
    if scheme == "pkcs7":
        pairs = config._pkcs7_pairs()
        return (lambda data: unwrap_pkcs7(data, pairs)) if pairs else None
    if scheme == "pgp":
        pgp = config.pgp_keys
        return (lambda data: unwrap_pgp(data, pgp)) if pgp else None
    if scheme.startswith("provider."):
        return config.key_providers.get(scheme[len("provider."):])
    return None  # pkcs11 and unknown schemes: not supported


def strip_encryption_annotations(annotations: Mapping[str, str]) -> dict[str, str]:
    """ocicrypt's FilterOutAnnotations: the annotations of the decrypted layer."""
    return {k: v for k, v in annotations.items() if not k.startswith(ENC_ANNOTATION_PREFIX)}


__all__: Sequence[str] = (
    "AES256CTR", "ENCRYPTED_LAYER_TYPES", "DecryptConfig", "DecryptionError", "KeyProvider",
    "LayerCipher", "LayerOptions", "PrivateOptions", "PublicOptions", "decrypting_reader",
    "is_encrypted", "layer_options", "parse_private_options", "parse_public_options",
    "strip_encryption_annotations", "unwrap_jwe", "unwrap_pgp", "unwrap_pkcs7",
)
