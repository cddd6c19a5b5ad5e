"""The ocicrypt key-provider protocol: layer keys unwrapped by a ``cmd`` provider (JSON on
stdin/stdout) and by a ``grpc`` provider (``keyprovider.KeyProviderService/UnWrapKey``),
end to end against a real registry.

Debian's skopeo 1.9.3 bundles ocicrypt 1.0.3, which predates key providers, so the images
are encrypted by skopeo for a JWE key and their wrapped keys then re-wrapped by the test's
provider into ``enc.keys.provider.NAME`` annotations, as ocicrypt's WrapKeys writes them
(:func:`harness.encryption.rewrap_for_provider`). The blobs are skopeo's, unchanged.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import encryption as en
from harness.protocols import RunUnlade
from harness.registry import Registry
from harness.tools import require_tool
from harness.tree import assert_same_tree

from unlade.errors import ConfigError, DecryptionError
from unlade.keyprovider import KeyProvider, ProviderAttrs, load_providers, make_providers

TOOLS = ("docker-registry", "skopeo")
PROVIDER = "unladetest"


# -- configuration and protocol, no registry ------------------------------------------------


def write(path: Path, doc: Any) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_config_file(tmp_path: Path) -> None:
    conf = write(tmp_path / "ocicrypt.conf", {"key-providers": {
        "aa": {"grpc": "127.0.0.1:50000"},
        "kms": {"cmd": {"path": "/usr/bin/kms", "args": ["-u"]}},
        "tls": {"grpc": "unix:///run/kp.sock", "grpc-tls": {"root-ca-file": "/ca.pem",
                                                             "server-name": "kp"}}}})
    providers = load_providers(conf)
    assert providers["aa"] == ProviderAttrs(grpc="127.0.0.1:50000")
    assert providers["kms"] == ProviderAttrs(command=("/usr/bin/kms", "-u"))
    assert providers["tls"].grpc_tls is not None
    assert providers["tls"].grpc_tls.server_name == "kp"
    assert load_providers(None, env={}) == {}
    assert load_providers(None, env={"OCICRYPT_KEYPROVIDER_CONFIG": str(conf)}) == providers
    assert load_providers(tmp_path / "absent.conf") == {}  # as ocicrypt: not an error


@pytest.mark.parametrize(("doc", "message"), [
    ("{", "is not JSON"),
    ([], "expected"),
    ({"key-providers": {"x": {}}}, "has neither cmd nor grpc"),
    ({"key-providers": {"x": {"cmd": {"args": []}}}}, "cmd.path must be a non-empty string"),
    ({"key-providers": {"x": {"cmd": {"path": "/p", "args": [1]}}}}, "cmd.args must be"),
    ({"key-providers": {"x": {"grpc": "h:1", "grpc-tls": {"insecure-skip-verify": True}}}},
     "insecure-skip-verify is not supported"),
    ({"key-providers": {"x": {"grpc": "h:1", "gprc-tls": {}}}}, "unknown key 'gprc-tls'"),
])
def test_config_errors_name_the_problem(tmp_path: Path, doc: Any, message: str) -> None:
    conf = write(tmp_path / "c.conf", doc)
    with pytest.raises(ConfigError, match=message) as info:
        load_providers(conf)
    assert str(conf) in str(info.value)


def test_unconfigured_provider_is_refused_up_front(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OCICRYPT_KEYPROVIDER_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="key provider aa is not configured: set "
                                          "OCICRYPT_KEYPROVIDER_CONFIG"):
        make_providers(["aa:cc_kbc::null"])
    conf = write(tmp_path / "c.conf", {"key-providers": {"other": {"grpc": "h:1"}}})
    with pytest.raises(ConfigError, match=f"key provider aa is not configured in {conf}"):
        make_providers(["aa"], conf)


def test_request_is_ocicrypts_json(tmp_path: Path) -> None:
    """The request carries the provider parameters (ocicrypt's DecryptConfig.Parameters,
    base64) and the wrapped key; nothing else from the decryption keys."""
    conf = write(tmp_path / "c.conf", {"key-providers": {
        "aa": {"grpc": "h:1"}, "kms": {"cmd": {"path": "/bin/true"}}}})
    providers = make_providers(["aa:cc_kbc::null", "kms", "aa:second"], conf)
    request = json.loads(providers["kms"].request(b"\x00wrapped"))
    assert request["op"] == "keyunwrap"
    assert base64.b64decode(request["keyunwrapparams"]["annotation"]) == b"\x00wrapped"
    params = {k: [base64.b64decode(v) for v in vs]
              for k, vs in request["keyunwrapparams"]["dc"]["Parameters"].items()}
    assert params == {"aa": [b"cc_kbc::null", b"second"], "kms": [b"Enabled"]}


@pytest.mark.parametrize(("script", "message"), [
    ("import sys; print('no such key', file=sys.stderr); sys.exit(3)",
     "key provider p failed: exit status 3: no such key"),
    ("print('not json')", "answer is not"),
    ("print('{\"keyunwrapresults\": {}}')", "answer is not"),
    ("import time; time.sleep(5)", "no answer within 0.5 s"),
])
def test_failing_command_provider(tmp_path: Path, script: str, message: str) -> None:
    import sys

    path = write(tmp_path / "p.py", script)
    provider = KeyProvider("p", ProviderAttrs(command=(sys.executable, str(path))),
                           {"p": [b"Enabled"]}, timeout=0.5)
    with pytest.raises(DecryptionError, match=message):
        provider(b"wrapped")
    missing = KeyProvider("p", ProviderAttrs(command=(str(tmp_path / "nope"),)), {})
    with pytest.raises(DecryptionError, match="command .*nope not found"):
        missing(b"wrapped")


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, registry: Registry
          ) -> Iterator[dict[str, Any]]:
    require_tool(*TOOLS)
    pytest.importorskip("grpc")
    d = tmp_path_factory.mktemp("kp")
    jwe = en.make_jwe_rsa(d)
    provider = en.make_keyprovider(d / "cmd", PROVIDER)
    img = en.encrypt_and_push(d / "img", registry, "kp/img", recipients=[jwe])
    grpc_server = en.GrpcKeyProvider(provider, "grpcprov")
    grpc_provider = en.EncKey("provider", "provider:grpcprov", ("provider:grpcprov",),
                              en.KEYS_ANNOTATION_PREFIX + "provider.grpcprov",
                              paths=provider.paths)
    try:
        yield {
            "img": img,
            "cmd": provider,
            "cmd_ref": en.rewrap_for_provider(img, jwe, provider, "cmd"),
            "grpc": grpc_server,
            "grpc_conf": grpc_server.config(d),
            # the gRPC server bridges to the same command, so it wraps the same way
            "grpc_ref": en.rewrap_for_provider(img, jwe, grpc_provider, "grpc"),
        }
    finally:
        grpc_server.stop()


def plain_rootfs(setup: dict[str, Any], run_unlade: RunUnlade, tmp_path: Path) -> Path:
    run_unlade("pull", "--plain-http", "-q", setup["img"].plain_ref, "--rootfs",
               tmp_path / "plain", check=True)
    return tmp_path / "plain"


def test_cmd_provider(setup: dict[str, Any], run_unlade: RunUnlade, tmp_path: Path) -> None:
    manifest = json.loads(setup["img"].registry.get_manifest("kp/img", "cmd")[0])
    keys = {k for layer in manifest["layers"] for k in layer["annotations"]}
    assert f"org.opencontainers.image.enc.keys.provider.{PROVIDER}" in keys
    assert "org.opencontainers.image.enc.keys.jwe" not in keys
    log: Path = setup["cmd"].paths["log"]
    before = len(log.read_text().splitlines()) if log.exists() else 0
    env = dict(setup["cmd"].env)
    run_unlade("pull", "--plain-http", "-q", "--decryption-key",
               f"provider:{PROVIDER}:some-params", setup["cmd_ref"], "--rootfs",
               tmp_path / "rootfs", env=env, check=True)
    assert_same_tree(plain_rootfs(setup, run_unlade, tmp_path), tmp_path / "rootfs")
    calls = [json.loads(line) for line in log.read_text().splitlines()[before:]]
    assert [c["op"] for c in calls] == ["keyunwrap"] * 3  # one per layer
    params = calls[0]["keyunwrapparams"]["dc"]["Parameters"]
    assert {k: [base64.b64decode(v) for v in vs] for k, vs in params.items()} == {
        PROVIDER: [b"some-params"]}


def test_grpc_provider(setup: dict[str, Any], run_unlade: RunUnlade, tmp_path: Path) -> None:
    server: en.GrpcKeyProvider = setup["grpc"]
    server.requests.clear()
    env = {"OCICRYPT_KEYPROVIDER_CONFIG": str(setup["grpc_conf"])}
    run_unlade("pull", "--plain-http", "-q", "--decryption-key", "provider:grpcprov",
               setup["grpc_ref"], "--rootfs", tmp_path / "rootfs", env=env, check=True)
    assert_same_tree(plain_rootfs(setup, run_unlade, tmp_path), tmp_path / "rootfs")
    assert [r["op"] for r in server.requests] == ["keyunwrap"] * 3


def test_grpc_provider_refusing(setup: dict[str, Any], run_unlade: RunUnlade,
                                tmp_path: Path, unlade_root: Path) -> None:
    server: en.GrpcKeyProvider = setup["grpc"]
    server.fail = "attestation failed"
    try:
        proc = run_unlade("pull", "--plain-http", "--decryption-key", "provider:grpcprov",
                          setup["grpc_ref"], "--rootfs", tmp_path / "rootfs",
                          env={"OCICRYPT_KEYPROVIDER_CONFIG": str(setup["grpc_conf"])})
    finally:
        server.fail = None
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "unlade: error: layer 1: key provider grpcprov failed: PERMISSION_DENIED: "
        f"attestation failed (at {server.address})")
    assert not (tmp_path / "rootfs").exists()


def test_cmd_provider_with_the_wrong_secret(setup: dict[str, Any], run_unlade: RunUnlade,
                                            tmp_path: Path) -> None:
    """Another instance of the provider (another secret) cannot unwrap: its message is
    the error, and nothing is unpacked."""
    other = en.make_keyprovider(tmp_path / "other", PROVIDER)
    proc = run_unlade("pull", "--plain-http", "--decryption-key", f"provider:{PROVIDER}",
                      setup["cmd_ref"], "--rootfs", tmp_path / "rootfs", env=dict(other.env))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"unlade: error: layer 1: key provider {PROVIDER} failed: "
                                   "exit status 1: unwrap failed: wrong secret")
    assert not (tmp_path / "rootfs").exists()


def test_provider_not_named_is_not_asked(setup: dict[str, Any], run_unlade: RunUnlade,
                                         tmp_path: Path) -> None:
    """Unlike ocicrypt, a configured provider is not run unless a key names it."""
    log: Path = setup["cmd"].paths["log"]
    before = log.read_text() if log.exists() else ""
    proc = run_unlade("pull", "--plain-http", setup["cmd_ref"], "--rootfs",
                      tmp_path / "rootfs", env=dict(setup["cmd"].env))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"unlade: error: layer 1 is encrypted for {PROVIDER} "
                                   "recipients; no decryption key was given")
    assert (log.read_text() if log.exists() else "") == before


def test_library_api_takes_keys_per_pull(setup: dict[str, Any], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """As image-rs's pull_image: the decrypt configuration is a parameter of the pull."""
    from unlade import Client

    monkeypatch.setenv("OCICRYPT_KEYPROVIDER_CONFIG", str(setup["cmd"].paths["config"]))
    client = Client(tmp_path / "store", plain_http=True)
    with pytest.raises(DecryptionError, match="no decryption key was given"):
        client.pull(setup["cmd_ref"], rootfs=tmp_path / "a")
    result = client.pull(setup["cmd_ref"], rootfs=tmp_path / "b",
                         decryption_keys=[f"provider:{PROVIDER}"])
    assert len(result.layers) == 3
    assert (tmp_path / "b" / "layer0" / "file").exists()
