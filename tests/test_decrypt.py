"""Encrypted layers (ocicrypt format), tested against an encrypter written here from
ocicrypt's Go source, since there is no Go ocicrypt on this machine:

* blockcipher/blockcipher_aes_ctr.go: AES-256-CTR, HMAC-SHA256 keyed with the layer key,
  over the ciphertext; private options {symkey, digest, cipheroptions{nonce}}, public
  options {cipher, hmac, cipheroptions};
* encryption.go: annotations ``...enc.keys.<scheme>`` = comma-joined base64 wrapped
  copies, ``...enc.pubopts`` = base64 JSON;
* keywrap/jwe: go-jose multi-recipient JWE, A256GCM, RSA-OAEP or ECDH-ES+A256KW per
  recipient, FullSerialize (general JSON, flattened for one recipient);
* keywrap/pkcs7 + smallstep/pkcs7 v0.2.1 encrypt.go: EnvelopedData, AES-128-GCM with its
  non-RFC parameter encoding, RSA PKCS#1 v1.5 key transport per recipient;
* keywrap/pgp: an OpenPGP message for the recipients' keys, binary, uncompressed.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import io
import json
import os
from typing import Any

import pysequoia
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from jwcrypto import jwe, jwk

from unlade.decompress import ReadAhead, open_decompressed
from unlade.decrypt import (
    AES256CTR,
    PUBOPTS_ANNOTATION,
    DecryptConfig,
    LayerCipher,
    LayerOptions,
    decrypting_reader,
    layer_options,
    parse_private_options,
    parse_public_options,
    strip_encryption_annotations,
    unwrap_jwe,
    unwrap_pgp,
    unwrap_pkcs7,
)
from unlade.errors import ConfigError, DecryptionError

B64 = base64.b64encode


# -- the encryption side, after ocicrypt -------------------------------------------------

def encrypt_blob(plain: bytes) -> tuple[bytes, bytes, bytes]:
    """(ciphertext, private options JSON, public options JSON) as ocicrypt makes them."""
    key, nonce = os.urandom(32), os.urandom(16)
    enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    blob = enc.update(plain) + enc.finalize()
    mac = hmac.new(key, blob, hashlib.sha256).digest()
    private = json.dumps({
        "symkey": B64(key).decode(),
        "digest": "sha256:" + hashlib.sha256(plain).hexdigest(),
        "cipheroptions": {"nonce": B64(nonce).decode()},
    }, separators=(",", ":")).encode()
    public = json.dumps({"cipher": AES256CTR, "hmac": B64(mac).decode(), "cipheroptions": {}},
                        separators=(",", ":")).encode()
    return blob, private, public


def wrap_jwe(private: bytes, public_keys: list[Any]) -> bytes:
    token = jwe.JWE(private, protected=json.dumps({"enc": "A256GCM"}))
    for pub in public_keys:
        alg = "ECDH-ES+A256KW" if isinstance(pub, ec.EllipticCurvePublicKey) else "RSA-OAEP"
        token.add_recipient(jwk.JWK.from_pyca(pub), header=json.dumps({"alg": alg}))
    return token.serialize(compact=False).encode()


def tlv(tag: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def der_int(value: int) -> bytes:
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


OID_DATA = bytes.fromhex("06092a864886f70d010701")
OID_ENVELOPED = bytes.fromhex("06092a864886f70d010703")
OID_RSA = bytes.fromhex("06092a864886f70d010101")
OID_AES128GCM = bytes.fromhex("0609608648016503040106")


def wrap_pkcs7(private: bytes, certs: list[x509.Certificate], *, rfc_params: bool = False
               ) -> bytes:
    """smallstep/pkcs7 Encrypt with ContentEncryptionAlgorithm = AES128GCM, byte for byte:
    GCM parameters are a primitive [UNIVERSAL 16] around SEQUENCE{[4] nonce, INTEGER 16}
    (``rfc_params``: RFC 5084's SEQUENCE{OCTET STRING, INTEGER} instead)."""
    cek, nonce = os.urandom(16), os.urandom(12)
    sealed = AESGCM(cek).encrypt(nonce, private, None)
    if rfc_params:
        params = tlv(0x30, tlv(0x04, nonce), der_int(16))
    else:
        params = tlv(0x10, tlv(0x30, tlv(0x84, nonce), der_int(16)))
    infos = []
    for cert in certs:
        encrypted_key = cert.public_key().encrypt(cek, padding.PKCS1v15())
        issuer_and_serial = tlv(0x30, cert.issuer.public_bytes(), der_int(cert.serial_number))
        infos.append(tlv(0x30, der_int(0), issuer_and_serial, tlv(0x30, OID_RSA),
                         tlv(0x04, encrypted_key)))
    eci = tlv(0x30, OID_DATA, tlv(0x30, OID_AES128GCM, params), tlv(0x80, sealed))
    enveloped = tlv(0x30, der_int(0), tlv(0x31, *sorted(infos)), eci)
    return tlv(0x30, OID_ENVELOPED, tlv(0xA0, enveloped))


def wrap_pgp(private: bytes, certs: list[Any]) -> bytes:
    return bytes(pysequoia.encrypt(private, recipients=certs, armor=False))


def annotations_for(public: bytes, **wrapped: list[bytes]) -> dict[str, str]:
    out = {f"org.opencontainers.image.enc.keys.{scheme}": ",".join(B64(w).decode() for w in ws)
           for scheme, ws in wrapped.items()}
    out[PUBOPTS_ANNOTATION] = B64(public).decode()
    out["org.example.other"] = "kept"
    return out


# -- keys ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_cert(key: rsa.RSAPrivateKey, cn: str) -> x509.Certificate:
    import datetime

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))


@pytest.fixture(scope="module")
def certs(rsa_keys: list[rsa.RSAPrivateKey]) -> list[x509.Certificate]:
    return [make_cert(k, f"recipient {i}") for i, k in enumerate(rsa_keys)]


@pytest.fixture(scope="module")
def pgp_keys() -> list[Any]:
    return [pysequoia.Tsk.generate(f"r{i} <r{i}@example.org>") for i in range(2)]


def pem(key: Any, password: bytes | None = None) -> bytes:
    enc = (serialization.BestAvailableEncryption(password) if password
           else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


# -- the stream cipher ---------------------------------------------------------------------

def chunked_readinto(data: bytes, step: int = 1000):
    src = io.BytesIO(data)

    def readinto(buf: memoryview) -> int:
        return src.readinto(buf[:step])
    return readinto


def options_of(private: bytes, public: bytes) -> LayerOptions:
    priv, pub = parse_private_options(private), parse_public_options(public)
    return LayerOptions(pub.cipher, priv.symkey, priv.nonce, pub.hmac, priv.digest)


def read_all(readinto, size: int = 4096) -> bytes:
    out = bytearray()
    buf = bytearray(size)
    while n := readinto(memoryview(buf)):
        out += buf[:n]
    return bytes(out)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 300_001])
def test_cipher_round_trip(size: int) -> None:
    plain = os.urandom(size)
    blob, private, public = encrypt_blob(plain)
    opts = options_of(private, public)
    assert opts.digest == "sha256:" + hashlib.sha256(plain).hexdigest()
    cipher = LayerCipher(chunked_readinto(blob, 777), opts, "layer 1")
    assert read_all(cipher.readinto, 1000) == plain
    assert cipher.verified
    assert cipher.readinto(bytearray(10)) == 0  # the end stays the end


def test_cipher_as_file_feeds_the_decompressor_and_readahead() -> None:
    plain = os.urandom(50_000) + b"a" * 200_000
    blob, private, public = encrypt_blob(gzip.compress(plain))
    raw = LayerCipher(io.BytesIO(blob).readinto, options_of(private, public), "layer 1")
    source = open_decompressed(raw, "gzip")
    stream = ReadAhead(source.readinto, hasher=hashlib.sha256(), chunk=8192)
    try:
        assert stream.read(-1) == plain
        assert stream.hexdigest() == hashlib.sha256(plain).hexdigest()
    finally:
        stream.close()


def test_tampered_ciphertext_fails_at_eof_not_before() -> None:
    plain = os.urandom(10_000)
    blob, private, public = encrypt_blob(plain)
    bad = bytearray(blob)
    bad[5000] ^= 1
    readinto = decrypting_reader(chunked_readinto(bytes(bad), 4096), options_of(private, public),
                                 "layer 3")
    buf = bytearray(4096)
    got = bytearray()
    with pytest.raises(DecryptionError, match=r"^integrity check failed for layer 3 \(HMAC\)$"):
        while True:
            n = readinto(memoryview(buf))
            got += buf[:n]
            assert n, "the end was reported before the HMAC verdict"
    assert len(got) == len(plain)  # every byte came through; only the end was refused


@pytest.mark.parametrize("cut", [1, 16, 5000])
def test_truncated_ciphertext_fails_the_hmac(cut: int) -> None:
    blob, private, public = encrypt_blob(os.urandom(10_000))
    readinto = decrypting_reader(chunked_readinto(blob[:-cut]), options_of(private, public))
    with pytest.raises(DecryptionError, match="integrity check failed for layer"):
        read_all(readinto)


def test_wrong_symmetric_key_fails_the_hmac() -> None:
    blob, private, public = encrypt_blob(os.urandom(1000))
    opts = options_of(private, public)
    wrong = LayerOptions(opts.cipher, os.urandom(32), opts.nonce, opts.hmac)
    with pytest.raises(DecryptionError, match="HMAC"):
        read_all(decrypting_reader(chunked_readinto(blob), wrong))


@pytest.mark.parametrize(("change", "message"), [
    ({"cipher": "AES_128_GCM"}, "unsupported cipher"),
    ({"symkey": b"x" * 16}, "key is 16 bytes"),
    ({"nonce": b"x" * 12}, "nonce is 12 bytes"),
    ({"hmac": b""}, "no HMAC"),
])
def test_cipher_refuses_bad_options(change: dict[str, Any], message: str) -> None:
    fields = {"cipher": AES256CTR, "symkey": b"k" * 32, "nonce": b"n" * 16, "hmac": b"h" * 32}
    fields.update(change)
    with pytest.raises(DecryptionError, match=message):
        LayerCipher(chunked_readinto(b""), LayerOptions(**fields))


def test_options_parsing_rejects_malformed_json() -> None:
    with pytest.raises(DecryptionError, match="not JSON"):
        parse_private_options(b"{nope")
    with pytest.raises(DecryptionError, match="symkey is not valid base64"):
        parse_private_options(b'{"symkey": "***"}')
    with pytest.raises(DecryptionError, match="not a JSON object"):
        parse_public_options(b"[]")
    # Go writes nil []byte and nil maps as null
    assert parse_private_options(b'{"symkey":null,"digest":"","cipheroptions":null}') == (
        b"", b"", "")


# -- unwrapping ------------------------------------------------------------------------------

def test_jwe_rsa_and_ec_recipients(rsa_keys: list[Any], ec_key: Any) -> None:
    _, private, _ = encrypt_blob(b"x")
    wrapped = wrap_jwe(private, [rsa_keys[0].public_key(), ec_key.public_key()])
    assert "recipients" in json.loads(wrapped)  # general JSON, as go-jose writes for 2+
    assert unwrap_jwe(wrapped, [rsa_keys[0]]) == private
    assert unwrap_jwe(wrapped, [ec_key]) == private
    assert unwrap_jwe(wrapped, [rsa_keys[1], ec_key]) == private
    with pytest.raises(DecryptionError, match="no given key opens the JWE"):
        unwrap_jwe(wrapped, [rsa_keys[1]])


def test_jwe_single_recipient_flattened(rsa_keys: list[Any]) -> None:
    _, private, _ = encrypt_blob(b"x")
    wrapped = wrap_jwe(private, [rsa_keys[0].public_key()])
    assert "encrypted_key" in json.loads(wrapped)
    assert unwrap_jwe(wrapped, [jwk.JWK.from_pyca(rsa_keys[0])]) == private


def test_jwe_refuses_rsa1_5(rsa_keys: list[Any]) -> None:
    _, private, _ = encrypt_blob(b"x")
    token = jwe.JWE(private, protected=json.dumps({"enc": "A256GCM"}),
                    algs=["RSA1_5", "A256GCM"])
    token.add_recipient(jwk.JWK.from_pyca(rsa_keys[0].public_key()),
                        header=json.dumps({"alg": "RSA1_5"}))
    with pytest.raises(DecryptionError):
        unwrap_jwe(token.serialize(compact=False).encode(), [rsa_keys[0]])


@pytest.mark.parametrize("rfc_params", [False, True])
def test_pkcs7_several_recipients(rsa_keys: list[Any], certs: list[Any],
                                  rfc_params: bool) -> None:
    _, private, _ = encrypt_blob(b"x")
    wrapped = wrap_pkcs7(private, certs[:2], rfc_params=rfc_params)
    assert unwrap_pkcs7(wrapped, [(certs[1], rsa_keys[1])]) == private
    assert unwrap_pkcs7(wrapped, [(None, rsa_keys[0])]) == private
    with pytest.raises(DecryptionError, match="no given key opens the PKCS7"):
        unwrap_pkcs7(wrapped, [(certs[2], rsa_keys[2]), (None, rsa_keys[2])])


def test_pkcs7_garbage_is_malformed(rsa_keys: list[Any]) -> None:
    with pytest.raises(DecryptionError, match="PKCS7"):
        unwrap_pkcs7(b"\x30\x03\x02\x01\x00", [(None, rsa_keys[0])])


def test_pgp_several_recipients(pgp_keys: list[Any]) -> None:
    _, private, _ = encrypt_blob(b"x")
    wrapped = wrap_pgp(private, [k.extract_certificate() for k in pgp_keys])
    assert unwrap_pgp(wrapped, [(pgp_keys[1], None)]) == private
    other = pysequoia.Tsk.generate("o <o@example.org>")
    with pytest.raises(DecryptionError, match="no given key opens the OpenPGP"):
        unwrap_pgp(wrapped, [(other, None)])


# -- keys from files and whole layers ---------------------------------------------------------

def test_keys_are_sorted_by_content(tmp_path: Any, rsa_keys: list[Any], ec_key: Any,
                                    certs: list[Any], pgp_keys: list[Any],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "ocicrypt.conf"
    conf.write_text('{"key-providers": {"kbs": {"grpc": "127.0.0.1:9"}}}')
    monkeypatch.setenv("OCICRYPT_KEYPROVIDER_CONFIG", str(conf))
    files = {
        "rsa.pem": pem(rsa_keys[0]),
        "rsa.der": rsa_keys[1].private_bytes(serialization.Encoding.DER,
                                             serialization.PrivateFormat.TraditionalOpenSSL,
                                             serialization.NoEncryption()),
        "enc.pem": pem(rsa_keys[2], b"s3cret"),
        "ec.jwk": jwk.JWK.from_pyca(ec_key).export_private().encode(),
        "cert.pem": certs[0].public_bytes(serialization.Encoding.PEM),
        "pgp.asc": str(pgp_keys[0]).encode(),
        "pw": b"s3cret",
        "pgp-public.asc": str(pgp_keys[0].extract_certificate()).encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    config = DecryptConfig.from_specs([
        str(tmp_path / "rsa.pem"), str(tmp_path / "rsa.der"),
        f"{tmp_path / 'enc.pem'}:file={tmp_path / 'pw'}", str(tmp_path / "ec.jwk"),
        str(tmp_path / "cert.pem"), str(tmp_path / "pgp.asc"), "provider:kbs",
    ])
    assert len(config.private_keys) == 4
    assert len(config.certificates) == 1
    assert len(config.pgp_keys) == 1
    assert config.provider_specs == ["kbs"]
    assert config.given == 6  # a certificate is not a key
    assert list(config.key_providers) == ["kbs"]

    with pytest.raises(ConfigError, match="no password"):
        DecryptConfig.from_specs([str(tmp_path / "enc.pem")])
    with pytest.raises(ConfigError, match="wrong password"):
        DecryptConfig.from_specs([f"{tmp_path / 'enc.pem'}:pass=nope"])
    for name in ("pw", "pgp-public.asc"):
        with pytest.raises(ConfigError, match="not a private key, certificate or OpenPGP"):
            DecryptConfig.from_specs([str(tmp_path / name)])
    with pytest.raises(ConfigError, match="cannot read decryption key"):
        DecryptConfig.from_specs([str(tmp_path / "missing")])


def test_layer_with_every_scheme_opens_with_any_one_key(
        rsa_keys: list[Any], ec_key: Any, certs: list[Any], pgp_keys: list[Any]) -> None:
    plain = os.urandom(20_000)
    blob, private, public = encrypt_blob(plain)
    annotations = annotations_for(
        public,
        jwe=[wrap_jwe(private, [ec_key.public_key()])],
        pkcs7=[wrap_pkcs7(private, [certs[0]]), wrap_pkcs7(private, [certs[1]])],
        pgp=[wrap_pgp(private, [pgp_keys[0].extract_certificate()])],
    )
    configs = [
        DecryptConfig(private_keys=[ec_key], given=1),
        DecryptConfig(private_keys=[rsa_keys[1]], certificates=[certs[1]], given=1),
        DecryptConfig(private_keys=[rsa_keys[0]], given=1),  # no certificate: try all
        DecryptConfig(pgp_keys=[(pgp_keys[0], None)], given=1),
    ]
    for config in configs:
        opts = layer_options(annotations, config, "layer 2")
        assert read_all(decrypting_reader(chunked_readinto(blob), opts, "layer 2")) == plain
    assert strip_encryption_annotations(annotations) == {"org.example.other": "kept"}


def test_layer_nobody_can_open(rsa_keys: list[Any], certs: list[Any], ec_key: Any) -> None:
    _, private, public = encrypt_blob(b"x")
    annotations = annotations_for(public, jwe=[wrap_jwe(private, [ec_key.public_key()])],
                                  pkcs7=[wrap_pkcs7(private, [certs[0]])])
    with pytest.raises(DecryptionError, match=r"^layer 2 is encrypted for jwe, pkcs7 "
                       r"recipients; none of the 1 given keys opens it$"):
        layer_options(annotations, DecryptConfig(private_keys=[rsa_keys[2]], given=1),
                      "layer 2")
    with pytest.raises(DecryptionError, match="no decryption key was given"):
        layer_options(annotations, DecryptConfig(), "layer 2")


def test_layer_key_provider_hook() -> None:
    _, private, public = encrypt_blob(b"x")
    annotations = annotations_for(public, **{"provider.kbs": [b"opaque-token"]})
    config = DecryptConfig(given=1, key_providers={
        "kbs": lambda data: private if data == b"opaque-token" else None})
    assert layer_options(annotations, config).symkey == parse_private_options(private).symkey
    with pytest.raises(DecryptionError, match="encrypted for kbs recipients"):
        layer_options(annotations, DecryptConfig(given=1))


def test_layer_annotation_problems(ec_key: Any) -> None:
    _, private, public = encrypt_blob(b"x")
    config = DecryptConfig(private_keys=[ec_key], given=1)
    with pytest.raises(DecryptionError, match="carries no wrapped keys"):
        layer_options({PUBOPTS_ANNOTATION: B64(public).decode()}, config, "layer 1")
    annotations = annotations_for(public, jwe=[wrap_jwe(private, [ec_key.public_key()])])
    del annotations[PUBOPTS_ANNOTATION]
    with pytest.raises(DecryptionError, match="no org.opencontainers.image.enc.pubopts"):
        layer_options(annotations, config, "layer 1")
    # a malformed wrapped copy is skipped, the next one still opens the layer
    annotations = annotations_for(public, jwe=[b"junk", wrap_jwe(private, [ec_key.public_key()])])
    annotations["org.opencontainers.image.enc.keys.jwe"] = (
        "!!!," + annotations["org.opencontainers.image.enc.keys.jwe"])
    assert layer_options(annotations, config).hmac == parse_public_options(public).hmac
