"""The encryption harness makes ocicrypt images skopeo itself can (and cannot) decrypt.

These are the reference inputs for unlade's ocicrypt decryption: skopeo 1.9.3 encrypts, and
skopeo (plus a pure-Python reading of the format) decrypts.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import encryption as en
from harness import images as im
from harness.registry import Registry
from harness.tools import require_tool

ENC_TOOLS = ("docker-registry", "skopeo")
GPG_TOOLS = ("gpg", "gpgconf", "gpg-agent")
KINDS = ("jwe-rsa", "jwe-ec", "pkcs7", "pgp")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, en.EncKey]]:
    require_tool(*ENC_TOOLS, *GPG_TOOLS)
    d = tmp_path_factory.mktemp("enckeys")
    ks = {"jwe-rsa": en.make_jwe_rsa(d), "jwe-ec": en.make_jwe_ec(d),
          "pkcs7": en.make_pkcs7(d), "pgp": en.make_pgp(d / "g"),
          "other-rsa": en.make_jwe_rsa(d, "other-rsa")}
    yield ks
    ks["pgp"].close()


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory, registry: Registry,
              keys: dict[str, en.EncKey]) -> dict[str, en.EncryptedImage]:
    """One image per key kind, all layers encrypted for that key alone."""
    return {k: en.encrypt_and_push(tmp_path_factory.mktemp(f"enc-{k}"), registry, f"enc/{k}",
                                   recipients=[keys[k]]) for k in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_layers_are_encrypted_with_annotations(kind: str, encrypted: dict[str, en.EncryptedImage],
                                               keys: dict[str, en.EncKey]) -> None:
    img = encrypted[kind]
    key = keys[kind]
    assert len(img.layers) == 3
    assert img.encrypted_indices() == [0, 1, 2]
    for i, (layer, plain) in enumerate(zip(img.layers, img.plain_manifest["layers"],
                                           strict=True)):
        assert layer["mediaType"] == plain["mediaType"] + en.ENC_SUFFIX
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
        assert layer["size"] == plain["size"]  # CTR: same length, HMAC lives in pubopts
        assert layer["digest"] != plain["digest"]
        ann = layer["annotations"]
        assert set(ann) == {key.annotation, en.PUBOPTS_ANNOTATION}
        pub = img.pubopts(i)
        assert pub["cipher"] == en.LAYER_CIPHER
        assert len(base64.b64decode(pub["hmac"])) == 32
        assert len(img.wrapped(i, key.annotation)) == 1
    assert img.manifest["config"] == img.plain_manifest["config"]


@pytest.mark.parametrize("kind", KINDS)
def test_skopeo_decrypts_with_right_key_only(kind: str, tmp_path: Path,
                                             encrypted: dict[str, en.EncryptedImage],
                                             keys: dict[str, en.EncKey]) -> None:
    img = encrypted[kind]
    ok, msg = en.skopeo_decrypt(img.ref, keys[kind], tmp_path / "right")
    assert ok, msg
    assert en.decrypted_layer_digests(tmp_path / "right") == [
        d["digest"] for d in img.plain_manifest["layers"]]

    wrong = keys["other-rsa"] if kind != "pgp" else keys["jwe-rsa"]
    ok, msg = en.skopeo_decrypt(img.ref, wrong, tmp_path / "wrong")
    assert not ok
    # a key of the same scheme that does not fit / no key of the layer's scheme at all
    assert ("none of the private keys could be used" if kind != "pgp"
            else "missing private key needed for decryption") in msg

    ok, msg = en.skopeo_decrypt(img.ref, [], tmp_path / "none")
    assert not ok
    assert "still encrypted" in msg


def test_encrypt_layer_selects_layers(tmp_path: Path, registry: Registry,
                                      keys: dict[str, en.EncKey]) -> None:
    img = en.encrypt_and_push(tmp_path / "w", registry, "enc/some", recipients=[keys["jwe-ec"]],
                              layers_to_encrypt=[0, -1])
    assert img.encrypted_indices() == [0, 2]
    assert img.layers[1] == img.plain_manifest["layers"][1]
    ok, msg = en.skopeo_decrypt(img.ref, keys["jwe-ec"], tmp_path / "dec")
    assert ok, msg
    assert en.decrypted_layer_digests(tmp_path / "dec") == [
        d["digest"] for d in img.plain_manifest["layers"]]


@pytest.mark.parametrize("pair", [("jwe-rsa", "jwe-ec"), ("jwe-rsa", "pkcs7"), ("pgp", "jwe-ec")])
def test_two_recipients_each_key_decrypts(pair: tuple[str, str], tmp_path: Path,
                                          registry: Registry,
                                          keys: dict[str, en.EncKey]) -> None:
    a, b = keys[pair[0]], keys[pair[1]]
    img = en.encrypt_and_push(tmp_path / "w", registry, f"enc/two-{'-'.join(pair)}",
                              recipients=[a, b], layers=en.default_layers("two", 2))
    for i, layer in enumerate(img.layers):
        assert set(layer["annotations"]) == {a.annotation, b.annotation, en.PUBOPTS_ANNOTATION}
        if a.annotation == b.annotation:  # one JWE, general serialization, 2 recipients
            (jwe,) = img.wrapped(i, a.annotation)
            assert len(json.loads(jwe)["recipients"]) == 2
    for n, k in enumerate((a, b)):
        ok, msg = en.skopeo_decrypt(img.ref, k, tmp_path / f"dec{n}")
        assert ok, msg
    ok, msg = en.skopeo_decrypt(img.ref, keys["other-rsa"], tmp_path / "wrong")
    assert not ok, msg


@pytest.mark.parametrize("kind", ["jwe-rsa", "jwe-ec"])
def test_python_reading_of_the_format(kind: str, encrypted: dict[str, en.EncryptedImage],
                                      keys: dict[str, en.EncKey]) -> None:
    """Unwrap the JWE and decrypt AES-256-CTR/HMAC-SHA256 without Go: the format is as
    documented in :mod:`harness.encryption`."""
    img = encrypted[kind]
    jwe = json.loads(img.wrapped(0, keys[kind].annotation)[0])
    header = json.loads(base64.urlsafe_b64decode(jwe["protected"] + "=="))
    assert header["enc"] == "A256GCM"
    assert header["alg"] == {"jwe-rsa": "RSA-OAEP", "jwe-ec": "ECDH-ES+A256KW"}[kind]
    for i, layer in enumerate(img.layers):
        priv = en.unwrap_jwe(keys[kind], layer["annotations"][keys[kind].annotation])
        assert set(priv) == {"symkey", "digest", "cipheroptions"}
        assert len(base64.b64decode(priv["symkey"])) == 32
        assert len(base64.b64decode(priv["cipheroptions"]["nonce"])) == 16
        plain_desc = img.plain_manifest["layers"][i]
        assert priv["digest"] == plain_desc["digest"]
        blob = en.fetch_blob(img.registry, img.repo, layer["digest"])
        assert im.sha256_digest(en.decrypt_layer(blob, priv, img.pubopts(i))) == priv["digest"]
        with pytest.raises(ValueError, match="HMAC"):
            en.decrypt_layer(blob[:-1] + bytes([blob[-1] ^ 1]), priv, img.pubopts(i))
    with pytest.raises(ValueError):
        en.unwrap_jwe(keys["other-rsa"], img.layers[0]["annotations"][keys[kind].annotation])


def test_keyprovider_protocol(tmp_path: Path) -> None:
    kp = en.make_keyprovider(tmp_path / "kp", "unladetest", secret=b"k" * 32)
    conf = json.loads(kp.paths["config"].read_text())
    assert list(conf["key-providers"]) == ["unladetest"]
    assert conf["key-providers"]["unladetest"]["cmd"]["path"]
    assert kp.annotation == "org.opencontainers.image.enc.keys.provider.unladetest"
    opts = b'{"symkey":"AAAA","digest":"sha256:00","cipheroptions":{"nonce":"AAAA"}}'
    b64 = base64.b64encode
    rc, out = en.keyprovider_call(kp, {
        "op": "keywrap",
        "keywrapparams": {"ec": {"Parameters": {"unladetest": [b64(b"Enabled").decode()]},
                                 "DecryptConfig": {"Parameters": {}}},
                          "optsdata": b64(opts).decode()}})
    assert rc == 0, out
    assert isinstance(out, dict)
    annotation = out["keywrapresults"]["annotation"]
    assert opts not in base64.b64decode(annotation)
    unwrap = {"op": "keyunwrap",
              "keyunwrapparams": {"dc": {"Parameters": {"unladetest": [b64(b"Enabled").decode()]}},
                                  "annotation": annotation}}
    rc, out = en.keyprovider_call(kp, unwrap)
    assert rc == 0, out
    assert isinstance(out, dict)
    assert base64.b64decode(out["keyunwrapresults"]["optsdata"]) == opts
    other = en.make_keyprovider(tmp_path / "other", "unladetest", secret=b"x" * 32)
    rc, out = en.keyprovider_call(other, unwrap)
    assert rc != 0 and "wrong secret" in str(out)
    assert len(kp.paths["log"].read_text().splitlines()) == 2


def test_keyprovider_with_skopeo(tmp_path: Path, registry: Registry) -> None:
    """Debian's skopeo 1.9.3 (ocicrypt 1.0.3) has no key providers; a newer one must work."""
    require_tool(*ENC_TOOLS)
    kp = en.make_keyprovider(tmp_path / "kp")
    try:
        img = en.encrypt_and_push(tmp_path / "w", registry, "enc/provider", recipients=[kp],
                                  layers=en.default_layers("kp", 1))
    except RuntimeError as e:
        assert "Provided protocol not recognized" in str(e)
        pytest.skip("this skopeo has no ocicrypt key provider support")
    assert set(img.layers[0]["annotations"]) == {kp.annotation, en.PUBOPTS_ANNOTATION}
    ok, msg = en.skopeo_decrypt(img.ref, kp, tmp_path / "dec")
    assert ok, msg


@pytest.mark.parametrize("kind", KINDS[:4])
def test_unlade_decrypt_opens_what_skopeo_encrypted(
        kind: str, encrypted: dict[str, en.EncryptedImage], keys: dict[str, en.EncKey],
        registry: Registry) -> None:
    """unlade.decrypt, written from the ocicrypt sources, against layers the real tool
    encrypted: every layer opens with the recipient's key files (as given to skopeo's
    --decryption-key) to exactly the plain layer, and with another key it does not."""
    import hashlib
    import io

    from unlade.decrypt import DecryptConfig, LayerCipher, layer_options
    from unlade.errors import DecryptionError

    img = encrypted[kind]
    config = DecryptConfig.from_specs(keys[kind].decryption_keys)
    other = DecryptConfig.from_specs(keys["other-rsa"].decryption_keys)
    plain = img.plain_manifest["layers"]
    for i, layer in enumerate(img.layers):
        blob = en.fetch_blob(registry, f"enc/{kind}", layer["digest"])
        options = layer_options(layer["annotations"], config, f"layer {i + 1}")
        out = bytearray(len(blob))
        cipher = LayerCipher(io.BytesIO(blob).readinto, options, f"layer {i + 1}")
        got = 0
        view = memoryview(out)
        while n := cipher.readinto(view[got:]):
            got += n
        assert "sha256:" + hashlib.sha256(out[:got]).hexdigest() == plain[i]["digest"]
        with pytest.raises(DecryptionError, match="none of the 1 given keys opens it"):
            layer_options(layer["annotations"], other, f"layer {i + 1}")
