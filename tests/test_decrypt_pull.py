"""Pulling ocicrypt-encrypted images: encrypted by skopeo, decrypted by unlade in the one
streamed pass (socket -> digest -> decrypt -> inflate -> diffID -> apply); the rootfs equals
the plain image's, and a missing or wrong key leaves nothing behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import encryption as en
from harness.protocols import RunUnlade
from harness.registry import Registry
from harness.tools import require_tool
from harness.tree import assert_same_tree

TOOLS = ("docker-registry", "skopeo")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, en.EncKey]]:
    require_tool(*TOOLS)
    d = tmp_path_factory.mktemp("deckeys")
    yield {"rsa": en.make_jwe_rsa(d), "ec": en.make_jwe_ec(d), "pkcs7": en.make_pkcs7(d),
           "other": en.make_jwe_rsa(d, "other"), "pgp": en.make_pgp(d / "gpg")}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, registry: Registry,
           keys: dict[str, en.EncKey]) -> dict[str, en.EncryptedImage]:
    base = tmp_path_factory.mktemp("decimg")
    return {
        "rsa": en.encrypt_and_push(base / "rsa", registry, "dec/rsa", recipients=[keys["rsa"]]),
        "two": en.encrypt_and_push(base / "two", registry, "dec/two",
                                   recipients=[keys["ec"], keys["pkcs7"]]),
        "some": en.encrypt_and_push(base / "some", registry, "dec/some",
                                    recipients=[keys["rsa"]], layers_to_encrypt=[0, -1]),
        "pgp": en.encrypt_and_push(base / "pgp", registry, "dec/pgp",
                                   recipients=[keys["pgp"]]),
    }


def _keys(*keys: en.EncKey) -> list[str]:
    return [arg for k in keys for path in k.decryption_keys for arg in ("--decryption-key", path)]


@pytest.mark.parametrize(("image", "key"), [("rsa", "rsa"), ("two", "ec"), ("two", "pkcs7"),
                                            ("some", "rsa"), ("pgp", "pgp")])
def test_decrypted_rootfs_equals_the_plain_image(
        images: dict[str, en.EncryptedImage], keys: dict[str, en.EncKey], tmp_path: Path,
        run_unlade: RunUnlade, image: str, key: str) -> None:
    img = images[image]
    run_unlade("pull", "--plain-http", "-q", img.plain_ref, "--rootfs", tmp_path / "plain",
               check=True)
    run_unlade("pull", "--plain-http", "-q", *_keys(keys[key]), img.ref,
               "--rootfs", tmp_path / "decrypted", check=True)
    assert_same_tree(tmp_path / "plain", tmp_path / "decrypted")


def test_snapshots_of_an_encrypted_image(images: dict[str, en.EncryptedImage],
                                         keys: dict[str, en.EncKey], tmp_path: Path,
                                         run_unlade: RunUnlade) -> None:
    img = images["rsa"]
    run_unlade("pull", "--plain-http", "-q", "--snapshotter", "native", *_keys(keys["rsa"]),
               img.ref, check=True)
    run_unlade("bundle", img.ref, tmp_path / "bundle", check=True)
    run_unlade("pull", "--plain-http", "-q", img.plain_ref, "--rootfs", tmp_path / "plain",
               check=True)
    assert_same_tree(tmp_path / "plain", tmp_path / "bundle" / "rootfs")
    run_unlade("unmount", tmp_path / "bundle")


@pytest.mark.parametrize(("key", "message"), [
    (None, "layer 1 is encrypted for jwe recipients; no decryption key was given"),
    ("other", "layer 1 is encrypted for jwe recipients; none of the 1 given keys opens it"),
])
def test_missing_or_wrong_key(images: dict[str, en.EncryptedImage], keys: dict[str, en.EncKey],
                              tmp_path: Path, run_unlade: RunUnlade, unlade_root: Path,
                              key: str | None, message: str) -> None:
    args = _keys(keys[key]) if key else []
    proc = run_unlade("pull", "--plain-http", *args, images["rsa"].ref,
                      "--rootfs", tmp_path / "rootfs")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"unlade: error: {message}"]
    assert not (tmp_path / "rootfs").exists()
    layers = {layer["digest"] for layer in images["rsa"].layers}
    stored = {p.name for p in (unlade_root / "blobs" / "sha256").glob("*")} \
        if (unlade_root / "blobs").exists() else set()
    assert not layers & {"sha256:" + name for name in stored}, "no layer was downloaded"


def test_require_encrypted(images: dict[str, en.EncryptedImage], keys: dict[str, en.EncKey],
                           tmp_path: Path, run_unlade: RunUnlade) -> None:
    partly = run_unlade("pull", "--plain-http", "--require-encrypted", *_keys(keys["rsa"]),
                        images["some"].ref, "--rootfs", tmp_path / "a")
    assert partly.returncode == 1
    assert partly.stderr.strip() == ("unlade: error: encryption is required, but layer 2 of 3 "
                                     "is not encrypted")
    plain = run_unlade("pull", "--plain-http", "--require-encrypted", images["rsa"].plain_ref,
                       "--rootfs", tmp_path / "b")
    assert "layers 1, 2, 3 of 3 are not encrypted" in plain.stderr
    run_unlade("pull", "--plain-http", "-q", "--require-encrypted", *_keys(keys["rsa"]),
               images["rsa"].ref, "--rootfs", tmp_path / "c", check=True)


def test_tampered_annotations_fail_the_integrity_check(
        images: dict[str, en.EncryptedImage], keys: dict[str, en.EncKey], registry: Registry,
        tmp_path: Path, run_unlade: RunUnlade) -> None:
    """An attacker who cannot touch the blobs (digests) edits the manifest's public
    options instead: the layer decrypts, but its HMAC no longer matches, so the pull fails
    at the end of that layer and no rootfs appears."""
    import base64
    import json

    img = images["rsa"]
    manifest = json.loads(img.manifest_bytes)
    layer = manifest["layers"][0]
    pub = json.loads(base64.b64decode(layer["annotations"]["org.opencontainers.image.enc.pubopts"]))
    mac = bytearray(base64.b64decode(pub["hmac"]))
    mac[0] ^= 1
    pub["hmac"] = base64.b64encode(bytes(mac)).decode()
    layer["annotations"]["org.opencontainers.image.enc.pubopts"] = base64.b64encode(
        json.dumps(pub).encode()).decode()
    registry.put_manifest("dec/rsa", "tampered", json.dumps(manifest).encode(),
                          manifest["mediaType"])
    ref = img.ref.rsplit(":", 1)[0] + ":tampered"
    proc = run_unlade("pull", "--plain-http", *_keys(keys["rsa"]), ref,
                      "--rootfs", tmp_path / "rootfs")
    assert proc.returncode == 1
    digest = img.layers[0]["digest"]
    assert proc.stderr.strip() == (f"unlade: error: integrity check failed for layer 1 "
                                   f"({digest[:19]}) (HMAC)")
    assert not (tmp_path / "rootfs").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rootfs.unlade-")]


def test_tampered_ciphertext_fails_the_integrity_check(
        images: dict[str, en.EncryptedImage], keys: dict[str, en.EncKey], registry: Registry,
        tmp_path: Path, run_unlade: RunUnlade, unlade_root: Path) -> None:
    """A registry that serves other ciphertext under a manifest it controls: the blob
    digest holds (the manifest names the new blob), the bytes decrypt to corrupt gzip, and
    the error says what happened -- the HMAC does not match -- rather than "bad gzip"."""
    import json

    img = images["rsa"]
    manifest = json.loads(img.manifest_bytes)
    layer = manifest["layers"][1]
    blob = bytearray(en.fetch_blob(registry, "dec/rsa", layer["digest"]))
    blob[len(blob) // 2] ^= 0x40
    layer["digest"] = registry.upload_blob("dec/rsa", bytes(blob))
    registry.put_manifest("dec/rsa", "tampered-blob", json.dumps(manifest).encode(),
                          manifest["mediaType"])
    ref = img.ref.rsplit(":", 1)[0] + ":tampered-blob"
    for snapshot_args in ([], ["--snapshotter", "native"]):
        rootfs = ["--rootfs", str(tmp_path / "rootfs")] if not snapshot_args else []
        proc = run_unlade("pull", "--plain-http", *snapshot_args, *_keys(keys["rsa"]), ref,
                          *rootfs)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip() == (f"unlade: error: integrity check failed for layer 2 "
                                       f"({layer['digest'][:19]}) (HMAC)")
        assert not (tmp_path / "rootfs").exists()
    listing = run_unlade("images", "--json", check=True)
    assert "tampered-blob" not in listing.stdout
    check = run_unlade("check", check=True)
    assert check.returncode == 0


def test_require_encrypted_per_scope_in_the_config_file(
        images: dict[str, en.EncryptedImage], keys: dict[str, en.EncKey], registry: Registry,
        tmp_path: Path, run_unlade: RunUnlade) -> None:
    """``require_encrypted`` in unlade.toml lists the scopes that must be encrypted:
    a plain image there is refused, the same plain image elsewhere is not."""
    conf = tmp_path / "unlade.toml"
    conf.write_text(f'require_encrypted = ["{registry.host}/dec/some"]\n')
    refused = run_unlade("--config", conf, "pull", "--plain-http", *_keys(keys["rsa"]),
                         images["some"].ref, "--rootfs", tmp_path / "a")
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("unlade: error: encryption is required, but layer 2 "
                                      "of 3 is not encrypted")
    run_unlade("--config", conf, "pull", "--plain-http", "-q", images["rsa"].plain_ref,
               "--rootfs", tmp_path / "b", check=True)  # another repository: not covered
    conf.write_text(f'require_encrypted = ["{registry.host}"]\n')
    refused = run_unlade("--config", conf, "pull", "--plain-http", images["rsa"].plain_ref,
                         "--rootfs", tmp_path / "c")
    assert "layers 1, 2, 3 of 3 are not encrypted" in refused.stderr
    conf.write_text("require_encrypted = true\n")
    run_unlade("--config", conf, "pull", "--plain-http", "-q", *_keys(keys["rsa"]),
               images["rsa"].ref, "--rootfs", tmp_path / "d", check=True)
    conf.write_text('require_encrypted = ["not a scope"]\n')
    bad = run_unlade("--config", conf, "pull", "--plain-http", images["rsa"].ref)
    assert bad.returncode == 2 or bad.returncode == 1
    assert "require_encrypted[0]: 'not a scope' is not a scope" in bad.stderr
