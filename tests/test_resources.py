"""Resource URIs: local paths and ``file://`` read with a cap, ``kbs:///`` fetched from a real
gRPC server in this process that speaks the Confidential Data Hub's
``api.GetResourceService/GetResource`` (its own hand encoding, written independently of
unlade's so that a mistake in one does not hide in the other)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from unlade.config import UnladeConfig
from unlade.errors import ConfigError, PolicyError
from unlade.resources import (
    DEFAULT_CDH_ADDRESS,
    GET_RESOURCE_METHOD,
    GRPC_MISSING,
    CdhResourceProvider,
    ResourceProvider,
    check_resource_uri,
    grpc_target,
    kbs_resource_uri,
    local_path,
    read_resource,
)

SRC = Path(__file__).resolve().parent.parent / "src"


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text and text.strip() == text and text
    return text


# -- a fake CDH --------------------------------------------------------------------------


def pb_varint(n: int) -> bytes:
    """Base-128 varint, written out the other way round from unlade's (collect 7-bit
    groups, then set the continuation bit on all but the last)."""
    groups = [(n >> shift) & 0x7F for shift in range(0, max(n.bit_length(), 1), 7)]
    return bytes([g | 0x80 for g in groups[:-1]] + [groups[-1]])


def pb_field1(payload: bytes) -> bytes:
    """A length-delimited field 1: key (1 << 3) | 2 = 0x0a, then the length."""
    return bytes([(1 << 3) | 2]) + pb_varint(len(payload)) + payload


def pb_parse_request(data: bytes) -> str:
    """``GetResourceRequest``: exactly one field 1 (string), nothing after it."""
    assert data[0] == 0x0A, data[:8]
    length, shift, pos = 0, 0, 1
    while True:
        byte = data[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        shift += 7
        if byte < 0x80:
            break
    assert len(data) == pos + length, "trailing bytes after ResourcePath"
    return data[pos:].decode("utf-8")


class FakeCdh:
    """``api.GetResourceService/GetResource`` serving ``resources`` (keyed by the full
    ``kbs:///`` URI, which is what the CDH receives), recording every request."""

    def __init__(self, grpc: Any, target: str, resources: dict[str, bytes]) -> None:
        self.grpc = grpc
        self.resources = resources
        self.calls: list[str] = []
        self.prefix = b""  # unknown fields sent before Resource, as a newer CDH might
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler("api.GetResourceService", {
            "GetResource": grpc.unary_unary_rpc_method_handler(
                self._get,
                request_deserializer=pb_parse_request,
                response_serializer=lambda data: self.prefix + pb_field1(data),
            ),
        })
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port(target)
        assert self.port, f"cannot listen on {target}"
        self.server.start()

    def _get(self, path: str, context: Any) -> bytes:
        self.calls.append(path)
        if path not in self.resources:
            context.abort(self.grpc.StatusCode.NOT_FOUND, f"no resource {path} in the KBS")
        return self.resources[path]

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


RESOURCES = {
    "kbs:///default/security-policy/test": b'{"default":[{"type":"reject"}]}',
    "kbs:///default/credential/test": b'{"auths":{}}',
    "kbs:///default/cosign-key/1": bytes(range(256)) * 4,  # binary, with a 2-byte varint
    "kbs:///default/empty/0": b"",
    "kbs:///big/blob/" + "t" * 200: b"x" * (1024 * 1024),  # 2-byte varint in the request
}


@pytest.fixture
def grpc() -> Any:
    return pytest.importorskip("grpc")


def short_socket_dir(tmp_path: Path) -> Path:
    """tmp_path, unless a socket path there would exceed sun_path's 108 bytes."""
    if len(str(tmp_path / "cdh.sock")) < 100:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="cdh", dir="/tmp"))


@pytest.fixture(params=["unix", "tcp"])
def cdh(request: pytest.FixtureRequest, grpc: Any,
        tmp_path: Path) -> Iterator[tuple[FakeCdh, str]]:
    """A fake CDH and the address to reach it at: ``unix:///.../cdh.sock`` or
    ``127.0.0.1:PORT``."""
    if request.param == "unix":
        sock = short_socket_dir(tmp_path) / "cdh.sock"
        server = FakeCdh(grpc, f"unix://{sock}", dict(RESOURCES))
        address = f"unix://{sock}"
    else:
        server = FakeCdh(grpc, "127.0.0.1:0", dict(RESOURCES))
        address = f"127.0.0.1:{server.port}"
    try:
        yield server, address
    finally:
        server.stop()


@pytest.fixture
def provider(cdh: tuple[FakeCdh, str]) -> Iterator[CdhResourceProvider]:
    with CdhResourceProvider(cdh[1], timeout=10) as p:
        yield p


# -- local files -------------------------------------------------------------------------


def test_plain_path_and_file_uris_read_the_same_file(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "with space é.json"
    f.write_bytes(b"{}\n")
    assert read_resource(str(f)) == b"{}\n"
    assert read_resource(f.as_uri()) == b"{}\n"  # percent-encoded, as RFC 8089 says
    assert read_resource("file://" + str(f)) == b"{}\n"
    assert read_resource("FILE://localhost" + str(f)) == b"{}\n"
    monkeypatch.chdir(tmp_path)
    assert read_resource(f.name) == b"{}\n"  # relative plain path: from the cwd
    assert local_path(f.as_uri()) == f
    assert local_path("kbs:///a/b/c") is None


def test_size_cap(tmp_path: Path) -> None:
    f = tmp_path / "policy.json"
    f.write_bytes(b"x" * 1024)
    assert len(read_resource(str(f), max_size=1024)) == 1024
    with pytest.raises(ConfigError) as err:
        read_resource(str(f), max_size=1023)
    assert "larger than 1023 bytes" in one_line(err)
    big = tmp_path / "big"
    with big.open("wb") as out:
        out.truncate(5 * 1024 * 1024)  # sparse: costs nothing, still too big
    with pytest.raises(ConfigError) as err:
        read_resource(big.as_uri())
    assert "larger than 4 MiB" in one_line(err)


def test_unbounded_special_file_is_cut_off() -> None:
    """/dev/zero has no size to check up front; the read itself stops at the cap."""
    with pytest.raises(ConfigError) as err:
        read_resource("/dev/zero", max_size=4096)
    assert "larger than 4 KiB" in one_line(err)


def test_local_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        read_resource(str(tmp_path / "missing.json"))
    assert "missing.json" in one_line(err) and "No such file or directory" in str(err.value)
    with pytest.raises(ConfigError) as err:
        read_resource(tmp_path.as_uri())
    assert "Is a directory" in one_line(err)
    with pytest.raises(PolicyError):  # the caller's kind of error
        read_resource(str(tmp_path / "missing.json"), error=PolicyError)


@pytest.mark.parametrize(("uri", "expected"), [
    ("https://example.com/policy.json", "unsupported resource URI scheme 'https'"),
    ("kbs+pkcs11:///a/b/c", "unsupported resource URI scheme 'kbs+pkcs11'"),
    ("s3://bucket/key", "unsupported resource URI scheme 's3'"),
    ("file://otherhost/etc/passwd", "names host 'otherhost'"),
    ("file:etc/policy.json", "write file:///absolute/path"),
    ("file://", "write file:///absolute/path"),
    ("file:///etc/a?b", "percent-encode"),
    ("", "empty resource URI"),
])
def test_bad_local_uris(uri: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        read_resource(uri)
    assert expected in one_line(err)
    with pytest.raises(ConfigError):
        check_resource_uri(uri)


# -- kbs URIs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("uri", "expected"), [
    ("kbs://kbs.example:8080/default/key/1", "must not name a host ('kbs.example:8080')"),
    ("kbs:///default/key", "exactly three non-empty parts"),
    ("kbs:///default/key/1/2", "exactly three non-empty parts"),
    ("kbs:///default//1", "exactly three non-empty parts"),
    ("kbs:///default/key/", "exactly three non-empty parts"),
    ("kbs://", "exactly three non-empty parts"),
    ("kbs:///default/../1", "'..' is not allowed"),
    ("kbs:///../key/1", "'..' is not allowed"),
    ("kbs:///default/./1", "'.' is not allowed"),
    ("kbs:///default/%2e%2e/1", "holds '%'"),
    ("kbs:///default/key/a b", "whitespace"),
    ("kbs:///default/key/1?version=2", "no query or fragment"),
    ("kbs:/default/key/1", "write kbs:///repository/type/tag"),
])
def test_bad_kbs_uris_never_reach_the_provider(uri: str, expected: str) -> None:
    calls: list[str] = []

    class Recorder:
        def get(self, path: str) -> bytes:
            calls.append(path)
            return b""

    with pytest.raises(ConfigError) as err:
        read_resource(uri, kbs=Recorder())
    assert expected in one_line(err)
    assert calls == []


def test_kbs_uri_is_normalised() -> None:
    assert kbs_resource_uri("KBS:///default/key/1") == "kbs:///default/key/1"


def test_kbs_without_provider() -> None:
    with pytest.raises(ConfigError) as err:
        read_resource("kbs:///default/key/1")
    assert "need a resource provider" in one_line(err)


def test_any_provider_object_works_and_is_capped() -> None:
    class Dict:
        def get(self, path: str) -> bytes:
            return {"kbs:///a/b/c": b"abc"}[path]

    assert isinstance(Dict(), ResourceProvider)
    assert read_resource("kbs:///a/b/c", kbs=Dict()) == b"abc"
    with pytest.raises(ConfigError) as err:
        read_resource("kbs:///a/b/c", kbs=Dict(), max_size=2)
    assert "kbs:///a/b/c is larger than 2 bytes" in one_line(err)


# -- the CDH over gRPC -------------------------------------------------------------------


def test_fetches_from_the_cdh(cdh: tuple[FakeCdh, str], provider: CdhResourceProvider) -> None:
    server, _ = cdh
    for uri, data in RESOURCES.items():
        assert read_resource(uri, kbs=provider, max_size=2 * 1024 * 1024) == data
    assert server.calls == list(RESOURCES)  # the whole URI is the ResourcePath
    read_resource("kbs:///default/credential/test", kbs=provider)
    assert server.calls.count("kbs:///default/credential/test") == 2  # no caching


def test_unknown_response_fields_are_skipped(cdh: tuple[FakeCdh, str],
                                             provider: CdhResourceProvider) -> None:
    server, _ = cdh
    # field 2 varint 150, field 3 bytes "hi", field 4 fixed64, field 5 fixed32
    server.prefix = b"\x10\x96\x01" + b"\x1a\x02hi" + b"\x21" + bytes(8) + b"\x2d" + bytes(4)
    assert read_resource("kbs:///default/credential/test", kbs=provider) == b'{"auths":{}}'


def test_not_found_is_one_line_naming_address_and_status(
        cdh: tuple[FakeCdh, str], provider: CdhResourceProvider) -> None:
    _, address = cdh
    with pytest.raises(ConfigError) as err:
        read_resource("kbs:///default/key/missing", kbs=provider)
    text = one_line(err)
    assert text.startswith(f"resource provider at {address} failed: NOT_FOUND: ")
    assert "no resource kbs:///default/key/missing in the KBS" in text
    with pytest.raises(PolicyError):
        read_resource("kbs:///default/key/missing", kbs=provider, error=PolicyError)


def test_response_over_the_cap(cdh: tuple[FakeCdh, str], provider: CdhResourceProvider) -> None:
    with pytest.raises(ConfigError) as err:  # the read_resource cap
        read_resource("kbs:///default/cosign-key/1", kbs=provider, max_size=100)
    assert "larger than 100 bytes" in one_line(err)
    small = CdhResourceProvider(cdh[1], max_size=1024)  # the channel's own limit
    with pytest.raises(ConfigError) as err:
        small.get("kbs:///big/blob/" + "t" * 200)
    assert "RESOURCE_EXHAUSTED" in one_line(err)
    small.close()


def test_unavailable_when_nobody_listens(grpc: Any, tmp_path: Path) -> None:
    server = FakeCdh(grpc, "127.0.0.1:0", {})
    address = f"127.0.0.1:{server.port}"
    server.stop()
    for addr in (address, f"unix://{tmp_path}/nobody.sock"):
        with pytest.raises(ConfigError) as err:
            read_resource("kbs:///default/key/1", kbs=CdhResourceProvider(addr, timeout=5))
        assert one_line(err).startswith(f"resource provider at {addr} failed: UNAVAILABLE: ")


def test_channel_survives_a_cdh_restart(grpc: Any, tmp_path: Path) -> None:
    sock = short_socket_dir(tmp_path) / "cdh.sock"
    first = FakeCdh(grpc, f"unix://{sock}", dict(RESOURCES))
    provider = CdhResourceProvider(f"unix://{sock}")
    assert provider.get("kbs:///default/empty/0") == b""
    first.stop()
    with pytest.raises(ConfigError, match="UNAVAILABLE"):
        provider.get("kbs:///default/empty/0")
    second = FakeCdh(grpc, f"unix://{sock}", {"kbs:///a/b/c": b"again"})
    try:
        deadline = time.monotonic() + 10
        while True:  # reconnecting after a failure waits for gRPC's backoff
            try:
                assert provider.get("kbs:///a/b/c") == b"again"
                break
            except ConfigError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        provider.close()
        second.stop()


def test_config_kbs_address_reaches_the_cdh(cdh: tuple[FakeCdh, str], tmp_path: Path) -> None:
    server, address = cdh
    conf = tmp_path / "unlade.toml"
    conf.write_text(f'kbs_address = "{address}"\npolicy = "kbs:///default/security-policy/test"\n')
    config = UnladeConfig.from_file(conf)
    assert config.policy is not None
    with config.resource_provider() as kbs:
        assert read_resource(config.policy, kbs=kbs) == RESOURCES[config.policy]
    assert server.calls == [config.policy]


def test_wire_format_of_the_request(grpc: Any, tmp_path: Path) -> None:
    """Bytes exactly as protoc's code would send them: 0x0a, varint length, UTF-8."""
    seen: list[bytes] = []
    server = grpc.server(ThreadPoolExecutor(max_workers=1))

    def raw(request: bytes, context: Any) -> bytes:
        seen.append(request)
        return b"\x0a\x03abc"

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "api.GetResourceService", {"GetResource": grpc.unary_unary_rpc_method_handler(raw)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        provider = CdhResourceProvider(f"http://127.0.0.1:{port}")  # image-rs's spelling
        assert provider.get("kbs:///a/b/c") == b"abc"
        assert seen == [b"\x0a\x0ckbs:///a/b/c"]
        provider.close()
    finally:
        server.stop(grace=None).wait()
    assert GET_RESOURCE_METHOD == "/api.GetResourceService/GetResource"


@pytest.mark.parametrize(("address", "target"), [
    ("127.0.0.1:50000", "127.0.0.1:50000"),
    ("http://127.0.0.1:50000", "127.0.0.1:50000"),
    ("unix:///run/confidential-containers/cdh.sock",
     "unix:///run/confidential-containers/cdh.sock"),
    ("unix:cdh.sock", "unix:cdh.sock"),
    ("[::1]:50000", "[::1]:50000"),
])
def test_addresses(address: str, target: str) -> None:
    assert grpc_target(address) == target
    assert DEFAULT_CDH_ADDRESS == "127.0.0.1:50000"


@pytest.mark.parametrize("address", ["", "https://cdh:50000", "tcp://1.2.3.4:5", "unix://",
                                     "host/path", "http://"])
def test_bad_addresses(address: str) -> None:
    with pytest.raises(ConfigError) as err:
        CdhResourceProvider(address)
    one_line(err)


# -- without grpcio ----------------------------------------------------------------------


def test_grpcio_missing_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "grpc", None)  # makes `import grpc` raise ImportError
    provider = CdhResourceProvider("127.0.0.1:1")  # constructing needs no grpcio
    with pytest.raises(ConfigError) as err:
        read_resource("kbs:///default/key/1", kbs=provider)
    assert one_line(err) == GRPC_MISSING
    assert "pip install 'unlade[kbs]'" in GRPC_MISSING
    f = tmp_path / "k"
    f.write_bytes(b"k")
    assert read_resource(str(f), kbs=provider) == b"k"  # local files still work


def test_unlade_imports_without_grpcio() -> None:
    code = ("import sys; sys.modules['grpc'] = None\n"
            "import unlade.resources, unlade.config\n"
            "c = unlade.config.UnladeConfig(); c.resource_provider()\n"
            "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "ok"
