"""Where signatures come from: registries.d, lookasides (file and HTTP), the
X-Registry-Supports-Signatures extension and sigstore attachments.

Real parts: the session ``registry`` (docker-registry on 127.0.0.1), an HTTP server thread
serving a lookaside directory, and a small fake registry only for the API extension (which
only OpenShift's registry implements). Signature bytes are arbitrary: nothing is verified
here, only fetched.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from harness.registry import Registry

from unlade.auth import Credentials
from unlade.errors import (
    ConfigError,
    DigestMismatch,
    NotFound,
    SignatureSourceError,
    Unauthorized,
)
from unlade.reference import Reference, parse_reference
from unlade.registry import RegistryClient, RegistryOptions, RetryPolicy
from unlade.sigsources import (
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE,
    RegistriesD,
    SignatureConfig,
    Signatures,
    SigstoreSignature,
    default_lookaside,
    docker_scopes,
    fetch_signatures,
    fetch_sigstore_signatures,
    fetch_simple_signatures,
    lookaside_url,
    sigstore_attachment_tag,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
FAST_RETRY = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.02)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def simple(data: bytes) -> bytes:
    """Arbitrary bytes that containers/image takes for a bare OpenPGP signature (its first
    byte opens a signature packet); nothing here verifies them."""
    return b"\x88" + data


def new_digest() -> str:
    """A manifest digest for one test: lookaside paths and .sig tags derive from it."""
    return sha256(os.urandom(16))


@pytest.fixture
def client() -> RegistryClient:
    return RegistryClient(RegistryOptions(plain_http=True, retry=FAST_RETRY))


def image_ref(registry: Registry, repo: str = "sig/app") -> Reference:
    return Reference(registry.host, repo, "v1", None)


# ---------------------------------------------------------------------------------------------
# A lookaside over HTTP: a directory served by a thread, plus paths that misbehave


class _LookasideHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        self.server.auths.append(self.headers.get("Authorization"))  # type: ignore[attr-defined]
        if self.path.startswith("/broken/"):
            body = b"internal error"
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.startswith("/endless/"):  # no Content-Length, never ends by itself
            self.send_response(200)
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(800):  # 50 MiB at most, should the client keep reading
                    self.wfile.write(chunk)
            except OSError:
                pass
            return
        if self.path.startswith("/moved/"):
            self.send_response(302)
            self.send_header("Location", self.path.replace("/moved/", "/", 1))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()


class Lookaside:
    def __init__(self, root: Path, server: ThreadingHTTPServer) -> None:
        self.root = root
        self.server = server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def hits(self) -> list[str]:
        return self.server.hits  # type: ignore[attr-defined,no-any-return]

    @property
    def auths(self) -> list[str | None]:
        return self.server.auths  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def http_lookaside(tmp_path: Path) -> Iterator[Lookaside]:
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_LookasideHandler, directory=root))
    server.hits = []  # type: ignore[attr-defined]
    server.auths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Lookaside(root, server)
    server.shutdown()
    server.server_close()
    thread.join(5)


def write_signatures(store: Path, repo: str, digest: str, blobs: list[bytes]) -> Path:
    """Lay out signatures as containers/image does: repo@algo=hex/signature-N."""
    algo, hexa = digest.split(":")
    folder = store / f"{repo}@{algo}={hexa}"
    folder.mkdir(parents=True, exist_ok=True)
    for i, blob in enumerate(blobs, 1):
        (folder / f"signature-{i}").write_bytes(blob)
    return folder


# ---------------------------------------------------------------------------------------------
# URL layout and scopes


def test_lookaside_url_layout() -> None:
    digest = "sha256:" + "ab" * 32
    hub = parse_reference("busybox:1.36")
    assert lookaside_url("https://sigs.example.com/base", hub, digest, 1) == (
        f"https://sigs.example.com/base/library/busybox@sha256={'ab' * 32}/signature-1")
    assert lookaside_url("file:///var/lib/containers/sigstore", hub, digest, 3) == (
        f"file:///var/lib/containers/sigstore/library/busybox@sha256={'ab' * 32}/signature-3")
    pinned = parse_reference(f"registry.example:5000/ns/app:v1@{digest}")
    sha512 = "sha512:" + "cd" * 64
    # the repository only: no registry, tag or digest of the reference in the path
    assert lookaside_url("http://h:8080", pinned, sha512, 2) == (
        f"http://h:8080/ns/app@sha512={'cd' * 64}/signature-2")
    # a trailing slash is kept as containers/image keeps it; the query stays at the end
    assert lookaside_url("http://h/s/?k=v", pinned, digest, 1) == (
        f"http://h/s//ns/app@sha256={'ab' * 32}/signature-1?k=v")
    # the path is unescaped then escaped again as Go's net/url does
    assert lookaside_url("file:///srv/my%20sigs", pinned, digest, 1) == (
        f"file:///srv/my%20sigs/ns/app@sha256={'ab' * 32}/signature-1")
    with pytest.raises(ValueError):
        lookaside_url("file:///x", pinned, digest, 0)
    with pytest.raises(ValueError, match="invalid digest"):
        lookaside_url("file:///x", pinned, "sha256:../../etc", 1)
    with pytest.raises(SignatureSourceError, match="unexpected path"):
        lookaside_url("file:///x", Reference("h", "a/../../b", "t", None), digest, 1)


def test_docker_scopes_most_specific_first() -> None:
    ref = parse_reference("registry.example.com:5000/ns/sub/app:v1")
    assert docker_scopes(ref) == [
        "registry.example.com:5000/ns/sub/app:v1",
        "registry.example.com:5000/ns/sub/app",
        "registry.example.com:5000/ns/sub",
        "registry.example.com:5000/ns",
        "registry.example.com:5000",
        "*.example.com",
        "*.com",
    ]
    digest = "sha256:" + "0" * 64
    pinned = parse_reference(f"quay.io/org/app:v2@{digest}")
    assert docker_scopes(pinned)[:3] == [
        "quay.io/org/app:v2", f"quay.io/org/app@{digest}", "quay.io/org/app"]
    assert docker_scopes(parse_reference("alpine"))[:2] == [
        "docker.io/library/alpine:latest", "docker.io/library/alpine"]


# ---------------------------------------------------------------------------------------------
# registries.d


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_registries_d_scope_precedence(tmp_path: Path) -> None:
    d = tmp_path / "registries.d"
    write(d / "a.yaml", """
default-docker:
  lookaside: https://default.example/sigs
docker:
  registry.example.com:
    lookaside: https://host.example/sigs
    use-sigstore-attachments: true
  registry.example.com/team:
    sigstore: https://old-name.example/sigs   # the older key name still works
""")
    write(d / "b.yaml", """
docker:
  registry.example.com/team/app:
    lookaside: https://repo.example/sigs
    sigstore: https://loses-to-lookaside.example
    use-sigstore-attachments: false
  registry.example.com/team/app:v2:
    lookaside: file:///srv/v2-sigs
  registry.example.com/team/nolookaside:
    lookaside-staging: file:///staging   # write-only: reading falls through to the parent
  "*.example.org":
    lookaside: https://wildcard.example/sigs
""")
    write(d / "ignored.yml", "docker: {registry.example.com: {lookaside: nope}}\n")
    conf = RegistriesD.load(d)

    def config(text: str) -> SignatureConfig:
        return conf.config_for(parse_reference(text))

    assert config("registry.example.com/team/app:v2") == SignatureConfig(
        "file:///srv/v2-sigs", False)  # attachments: from the repository scope
    assert config("registry.example.com/team/app:v1") == SignatureConfig(
        "https://repo.example/sigs", False)
    assert config("registry.example.com/team/other:v1") == SignatureConfig(
        "https://old-name.example/sigs", True)  # attachments: from the host scope
    assert config("registry.example.com/team/nolookaside:v1").lookaside == \
        "https://old-name.example/sigs"
    assert config("registry.example.com/elsewhere:v1") == SignatureConfig(
        "https://host.example/sigs", True)
    assert config("mirror.example.org/x:1").lookaside == "https://wildcard.example/sigs"
    assert config("quay.io/x:1") == SignatureConfig("https://default.example/sigs", False)
    sections = conf.sections_for(parse_reference("registry.example.com/team/app:v2"))
    assert [s.source.rsplit("/", 1)[-1] for s in sections] == ["b.yaml"] * 2 + ["a.yaml"] * 3


def test_registries_d_nothing_configured(tmp_path: Path) -> None:
    for conf in (RegistriesD.load(tmp_path / "missing"), RegistriesD.load(tmp_path)):
        config = conf.config_for(parse_reference("quay.io/x:1"))
        assert config == SignatureConfig(None, False)
        # then containers/image reads its built-in default directory
        assert config.lookaside_base() == default_lookaside()
        assert default_lookaside().startswith("file:///")


def test_registries_d_yaml_as_yaml_v3_reads_it(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", """
base: &base {lookaside: "https://merged.example"}
docker:
  a.example: {<<: *base, use-sigstore-attachments: yes}
  b.example: {lookaside: 0x10, use-sigstore-attachments: "off"}
  c.example:
  d.example: {use-sigstore-attachments: ~, unknown-key: [1, 2]}
""")
    conf = RegistriesD.load(tmp_path)
    assert conf.config_for(parse_reference("a.example/x:1")) == SignatureConfig(
        "https://merged.example", True)
    # strings keep their text (not YAML 1.1's 16); yaml.v3 takes "off" for a bool field
    assert conf.config_for(parse_reference("b.example/x:1")) == SignatureConfig("0x10", False)
    assert conf.config_for(parse_reference("c.example/x:1")) == SignatureConfig(None, False)
    assert conf.config_for(parse_reference("d.example/x:1")) == SignatureConfig(None, False)


@pytest.mark.parametrize(("files", "message"), [
    ({"a.yaml": "docker: {r.example/ns: {lookaside: 'file:///a'}}",
      "b.yaml": "docker:\n  r.example/ns:\n    lookaside: file:///b\n"},
     r"\"docker\" scope 'r.example/ns' is defined both in .*/a\.yaml and .*/b\.yaml"),
    ({"a.yaml": "default-docker: {lookaside: 'file:///a'}",
      "b.yaml": "default-docker: {use-sigstore-attachments: true}"},
     r"\"default-docker\" is defined both in .*/a\.yaml and .*/b\.yaml"),
    ({"a.yaml": "docker:\n  r.example: {}\n  r.example: {}\n"},
     r"a\.yaml: line 3: key 'r\.example' already defined"),
    ({"a.yaml": "docker: {r.example: {use-sigstore-attachments: 'true'}}"},
     r"a\.yaml: .*use-sigstore-attachments must be true or false"),
    ({"a.yaml": "docker: [r.example]"}, r"a\.yaml: \"docker\" must be a mapping, not a list"),
    ({"a.yaml": "docker: {r.example: {lookaside: [1]}}"}, r"lookaside must be a string"),
    ({"a.yaml": "docker: {r.example: {lookaside: x}\n"}, r"parsing .*a\.yaml: "),
])
def test_registries_d_errors(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ConfigError, match=message) as err:
        RegistriesD.load(tmp_path)
    assert "\n" not in str(err.value)


def test_registries_d_default_directory(tmp_path: Path) -> None:
    assert RegistriesD.default_directory(tmp_path) == Path("/etc/containers/registries.d")
    user = tmp_path / ".config/containers/registries.d"
    user.mkdir(parents=True)
    assert RegistriesD.default_directory(tmp_path) == user


# ---------------------------------------------------------------------------------------------
# Lookaside reads (the registry is pinged first: docker-registry has no signature extension)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_file_lookaside(tmp_path: Path, registry: Registry, client: RegistryClient,
                        count: int) -> None:
    ref, digest = image_ref(registry), new_digest()
    blobs = [simple(os.urandom(50 + i)) for i in range(count)]
    write_signatures(tmp_path / "store", ref.repository, digest, blobs)
    write_signatures(tmp_path / "store", ref.repository, new_digest(), [simple(b"other")])
    config = SignatureConfig(f"file://{tmp_path}/store", False)
    assert fetch_simple_signatures(client, ref, digest, config) == blobs


@pytest.mark.parametrize("count", [0, 1, 3])
def test_http_lookaside(registry: Registry, client: RegistryClient, http_lookaside: Lookaside,
                        count: int) -> None:
    ref, digest = image_ref(registry, "sig/http"), new_digest()
    blobs = [simple(os.urandom(1000 * (i + 1))) for i in range(count)]
    write_signatures(http_lookaside.root / "store", ref.repository, digest, blobs)
    config = SignatureConfig(f"{http_lookaside.url}/store", False)
    assert fetch_simple_signatures(client, ref, digest, config) == blobs
    hexa = digest.split(":")[1]
    assert http_lookaside.hits == [
        f"/store/sig/http@sha256={hexa}/signature-{i}" for i in range(1, count + 2)]


def test_http_lookaside_redirect_and_userinfo(registry: Registry, client: RegistryClient,
                                              http_lookaside: Lookaside) -> None:
    ref, digest = image_ref(registry), new_digest()
    blobs = [simple(b"one"), simple(b"two")]
    write_signatures(http_lookaside.root / "store", ref.repository, digest, blobs)
    url = http_lookaside.url.replace("http://", "http://user:secret@") + "/moved/store"
    config = SignatureConfig(url, False)
    assert fetch_simple_signatures(client, ref, digest, config) == blobs
    basic = "Basic " + base64.b64encode(b"user:secret").decode()
    assert len(http_lookaside.hits) == 6  # three redirects, three reads (the last a 404)
    assert http_lookaside.auths == [basic] * 6  # same origin: the URL's login is kept


def test_lookaside_count_cap(tmp_path: Path, registry: Registry, client: RegistryClient,
                             http_lookaside: Lookaside) -> None:
    ref, digest = image_ref(registry), new_digest()
    blobs = [simple(b"a"), simple(b"b"), simple(b"c")]
    write_signatures(tmp_path / "store", ref.repository, digest, blobs)
    write_signatures(http_lookaside.root, ref.repository, digest, blobs)
    for base in (f"file://{tmp_path}/store", http_lookaside.url):
        config = SignatureConfig(base, False)
        assert fetch_simple_signatures(client, ref, digest, config, limit=3) == blobs
        with pytest.raises(SignatureSourceError, match=r"more than 2 signatures"):
            fetch_simple_signatures(client, ref, digest, config, limit=2)
    assert len(http_lookaside.hits) == 4 + 3  # never past signature-(limit + 1)


def test_lookaside_size_cap(tmp_path: Path, registry: Registry, client: RegistryClient,
                            http_lookaside: Lookaside) -> None:
    ref, digest = image_ref(registry), new_digest()
    blobs = [simple(b"s" * 99), simple(b"t" * 100)]
    write_signatures(tmp_path / "store", ref.repository, digest, blobs)
    write_signatures(http_lookaside.root, ref.repository, digest, blobs)
    with pytest.raises(SignatureSourceError, match=r"signature-2 is larger than 100 bytes"):
        fetch_simple_signatures(client, ref, digest,
                                SignatureConfig(f"file://{tmp_path}/store", False), max_size=100)
    with pytest.raises(SignatureSourceError,
                       match=rf"signature at {http_lookaside.url}/.*/signature-2 is larger"):
        fetch_simple_signatures(client, ref, digest,
                                SignatureConfig(http_lookaside.url, False), max_size=100)


def test_lookaside_endless_body_stops_at_cap(registry: Registry, client: RegistryClient,
                                             http_lookaside: Lookaside) -> None:
    ref, digest = image_ref(registry), new_digest()
    start = time.monotonic()
    with pytest.raises(SignatureSourceError, match=r"/endless/.*signature-1 is larger than"):
        fetch_simple_signatures(client, ref, digest,
                                SignatureConfig(f"{http_lookaside.url}/endless", False),
                                max_size=1 << 20)
    assert time.monotonic() - start < 10


def test_lookaside_server_error(registry: Registry, client: RegistryClient,
                                http_lookaside: Lookaside) -> None:
    ref, digest = image_ref(registry), new_digest()
    config = SignatureConfig(http_lookaside.url.replace("//", "//u:pw@") + "/broken", False)
    with pytest.raises(SignatureSourceError) as err:
        fetch_simple_signatures(client, ref, digest, config)
    message = str(err.value)
    assert message.startswith("reading signature from http://u:xxxxx@127.0.0.1:")
    assert message.endswith("/broken/sig/app@sha256=" + digest[7:] + "/signature-1: HTTP 500")
    assert "pw" not in message


def test_lookaside_unreachable_and_bad_urls(tmp_path: Path, registry: Registry,
                                            client: RegistryClient) -> None:
    ref, digest = image_ref(registry), new_digest()
    dead = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = dead.server_address[1]
    dead.server_close()
    cases = [
        (f"http://127.0.0.1:{port}/s", rf"reading signature from http://127.0.0.1:{port}/s/"),
        ("ftp://example.com/s", r"unsupported scheme 'ftp' in lookaside URL ftp://"),
        ("/var/lib/sigs", r"unsupported scheme '' in lookaside URL /var/lib/sigs/"),
        ("file://var/lib/sigs", r"names a host; a file URL needs three slashes"),
    ]
    for base, message in cases:
        with pytest.raises(SignatureSourceError, match=message):
            fetch_simple_signatures(client, ref, digest, SignatureConfig(base, False))
    # a signature path that is not a regular file is refused, not read (or waited on)
    folder = write_signatures(tmp_path / "store", ref.repository, digest, [])
    os.mkfifo(folder / "signature-1")
    with pytest.raises(SignatureSourceError, match=r"signature-1 is not a regular file"):
        fetch_simple_signatures(client, ref, digest,
                                SignatureConfig(f"file://{tmp_path}/store", False))


def test_lookaside_blob_formats(tmp_path: Path, registry: Registry,
                                client: RegistryClient) -> None:
    """Lookaside blobs are decoded as containers/image's signature.FromBlob: bare OpenPGP,
    or a zero byte, a format name and a newline; sigstore ones go with the sigstore list."""
    ref, digest = image_ref(registry), new_digest()
    cosign = {"mimeType": SIMPLE_SIGNING_MEDIA_TYPE,
              "payload": base64.b64encode(b'{"critical": {}}').decode(),
              "annotations": {SIGNATURE_ANNOTATION: "c2ln"}}
    attestation = {**cosign, "mimeType": "application/vnd.in-toto+json"}
    folder = write_signatures(tmp_path, ref.repository, digest, [
        simple(b"bare"),
        b"\x00simple-signing\n\xa3framed",
        b"\x00sigstore-json\n" + json.dumps(cosign).encode(),
        b"\x00sigstore-json\n" + json.dumps(attestation).encode(),
    ])
    config = SignatureConfig(f"file://{tmp_path}", False)
    assert fetch_simple_signatures(client, ref, digest, config) == [
        simple(b"bare"), b"\xa3framed"]
    found = fetch_signatures(client, ref, digest, config)
    assert found == Signatures([simple(b"bare"), b"\xa3framed"], [SigstoreSignature(
        b'{"critical": {}}', "c2ln", {SIGNATURE_ANNOTATION: "c2ln"},
        f"file://{folder}/signature-3")])


@pytest.mark.parametrize(("blob", "message"), [
    (b"", "empty signature blob"),
    (b"-----BEGIN PGP MESSAGE-----", "unrecognized signature format, starting with binary 0x2d"),
    (b"\x00simple-signing", "missing newline"),
    (b"\x00simple\x01signing\nx", "non-ASCII byte"),
    (b"\x00x509\nx", "unrecognized signature format 'x509'"),
    (b"\x00sigstore-json\n[1]", "sigstore-json is not a JSON object"),
    (b'\x00sigstore-json\n{"payload": "%%%"}', "payload is not valid base64"),
])
def test_lookaside_bad_blobs(tmp_path: Path, registry: Registry, client: RegistryClient,
                             blob: bytes, message: str) -> None:
    ref, digest = image_ref(registry), new_digest()
    write_signatures(tmp_path, ref.repository, digest, [simple(b"good"), blob])
    with pytest.raises(SignatureSourceError,
                       match=rf"^parsing signature file://.*/signature-2: .*{message}"):
        fetch_simple_signatures(client, ref, digest, SignatureConfig(f"file://{tmp_path}"))


# ---------------------------------------------------------------------------------------------
# X-Registry-Supports-Signatures (a fake registry: only OpenShift's implements it)


class FakeSignatureRegistry:
    """Answers /v2/ with the extension header and serves /extensions/v2/…/signatures/…
    behind basic auth, as OpenShift's registry does."""

    def __init__(self, body: Callable[[str], tuple[int, bytes]]) -> None:
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                outer.requests.append((self.path, auth))
                status, data, headers = 404, b"{}", {}
                if self.path == "/v2/":
                    status, headers = 401, {"X-Registry-Supports-Signatures": "1",
                                            "WWW-Authenticate": 'Basic realm="fake"'}
                elif self.path.startswith("/extensions/v2/"):
                    if auth != "Basic " + base64.b64encode(b"alice:s3cret").decode():
                        status, headers = 401, {"WWW-Authenticate": 'Basic realm="fake"'}
                    else:
                        status, data = body(self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def fake_registry() -> Iterator[Callable[..., FakeSignatureRegistry]]:
    started: list[FakeSignatureRegistry] = []

    def make(body: Callable[[str], tuple[int, bytes]]) -> FakeSignatureRegistry:
        started.append(FakeSignatureRegistry(body))
        return started[-1]

    yield make
    for fake in started:
        fake.close()


def test_api_extension_is_preferred(fake_registry: Callable[..., FakeSignatureRegistry],
                                    tmp_path: Path) -> None:
    digest = new_digest()

    def entry(content: bytes | None, version: Any = 2, kind: str = "atomic") -> dict[str, Any]:
        return {"schemaVersion": version, "type": kind, "name": f"{digest}@x",
                "content": None if content is None else base64.b64encode(content).decode()}

    doc = {"signatures": [entry(b"first"), entry(b"v1", version=1), entry(b"other", kind="x"),
                          entry(b"second"), None]}
    fake = fake_registry(lambda path: (200, json.dumps(doc).encode()))
    ref = Reference(fake.host, "ns/app", "v1", None)
    client = RegistryClient(RegistryOptions(plain_http=True, retry=FAST_RETRY,
                                            credentials=Credentials("alice", "s3cret")))
    # a configured lookaside is not read when the registry supports the extension
    write_signatures(tmp_path, ref.repository, digest, [simple(b"from the lookaside")])
    config = SignatureConfig(f"file://{tmp_path}", False)
    assert fetch_simple_signatures(client, ref, digest, config) == [b"first", b"second"]
    paths = [p for p, _ in fake.requests]
    assert paths[0] == "/v2/" and fake.requests[0][1] is None  # the ping: no credentials
    assert paths[-1] == f"/extensions/v2/ns/app/signatures/{digest}"
    assert fake.requests[-1][1] is not None
    with pytest.raises(SignatureSourceError, match=r"more than 1 signatures"):
        fetch_simple_signatures(client, ref, digest, config, limit=1)


@pytest.mark.parametrize(("status", "body", "error", "message"), [
    (404, b'{"errors": [{"code": "NOT_FOUND", "message": "no"}]}', NotFound, "not found"),
    (200, b"[1, 2]", SignatureSourceError, "decoding signatures of .*: not a JSON object"),
    (200, b'{"signatures": [{"schemaVersion": 2, "type": "atomic", "content": "!!"}]}',
     SignatureSourceError, "signature 1 content is not valid base64"),
    (200, b'{"signatures": [{"schemaVersion": 2.5}]}', SignatureSourceError, "non-integer"),
    (200, b"null", None, ""),
])
def test_api_extension_errors(fake_registry: Callable[..., FakeSignatureRegistry], status: int,
                              body: bytes, error: type[Exception] | None, message: str) -> None:
    fake = fake_registry(lambda path: (status, body))
    ref = Reference(fake.host, "ns/app", "v1", None)
    client = RegistryClient(RegistryOptions(plain_http=True, retry=FAST_RETRY,
                                            credentials=Credentials("alice", "s3cret")))
    if error is None:
        assert fetch_simple_signatures(client, ref, new_digest(), SignatureConfig()) == []
    else:
        with pytest.raises(error, match=message):
            fetch_simple_signatures(client, ref, new_digest(), SignatureConfig())


def test_api_extension_uses_the_pull_credentials(
        fake_registry: Callable[..., FakeSignatureRegistry], tmp_path: Path) -> None:
    fake = fake_registry(lambda path: (200, b'{"signatures": []}'))
    ref = Reference(fake.host, "ns/app", "v1", None)
    authfile = write(tmp_path / "auth.json", '{"auths": {}}')
    anonymous = RegistryClient(RegistryOptions(plain_http=True, retry=FAST_RETRY,
                                               authfile=str(authfile)))
    with pytest.raises(Unauthorized):
        fetch_simple_signatures(anonymous, ref, new_digest(), SignatureConfig())


# ---------------------------------------------------------------------------------------------
# Sigstore attachments, pushed to the real registry


def push_attachments(registry: Registry, repo: str, digest: str,
                     layers: list[tuple[str, bytes, dict[str, str]]],
                     media_type: str = OCI_MANIFEST) -> list[str]:
    """Push a cosign-style ``sha256-<hex>.sig`` manifest; returns the layer digests."""
    config = b'{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}'
    descriptors: list[dict[str, Any]] = []
    for layer_type, data, notes in layers:
        descriptors.append({"mediaType": layer_type, "size": len(data),
                            "digest": registry.upload_blob(repo, data),
                            "annotations": notes})
    manifest = {"schemaVersion": 2, "mediaType": media_type,
                "config": {"mediaType": OCI_CONFIG, "size": len(config),
                           "digest": registry.upload_blob(repo, config)},
                "layers": descriptors}
    registry.put_manifest(repo, sigstore_attachment_tag(digest),
                          json.dumps(manifest).encode(), media_type)
    return [d["digest"] for d in descriptors]


SIGSTORE_ON = SignatureConfig(None, True)


def test_sigstore_attachments_present(registry: Registry, client: RegistryClient) -> None:
    ref, digest = image_ref(registry, "sig/cosign"), new_digest()
    payloads = [b'{"critical": {"identity": 1}}', b'{"critical": {"identity": 2}}']
    annotations = [
        {SIGNATURE_ANNOTATION: "c2lnbmF0dXJlLTE=",
         "dev.sigstore.cosign/certificate": "-----BEGIN CERTIFICATE-----\n…",
         "dev.sigstore.cosign/chain": "chain", "dev.sigstore.cosign/bundle": '{"x": 1}'},
        {SIGNATURE_ANNOTATION: "c2lnbmF0dXJlLTI=", "org.example/other": "kept"},
    ]
    attestation = b'{"payloadType": "in-toto"}'
    digests = push_attachments(registry, ref.repository, digest, [
        (SIMPLE_SIGNING_MEDIA_TYPE, payloads[0], annotations[0]),
        ("application/vnd.dsse.envelope.v1+json", attestation, {}),
        (SIMPLE_SIGNING_MEDIA_TYPE, payloads[1], annotations[1]),
    ])
    registry.mark()
    sigs = fetch_sigstore_signatures(client, ref, digest, SIGSTORE_ON)
    assert [s.payload for s in sigs] == payloads
    assert [s.signature for s in sigs] == ["c2lnbmF0dXJlLTE=", "c2lnbmF0dXJlLTI="]
    assert [s.annotations for s in sigs] == annotations
    assert [s.source for s in sigs] == [digests[0], digests[2]]
    assert sigs[0].certificate == "-----BEGIN CERTIFICATE-----\n…"
    assert (sigs[0].chain, sigs[0].bundle) == ("chain", '{"x": 1}')
    assert sigs[1].certificate is None
    fetched = [r.path for r in registry.requests()]
    assert f"/v2/sig/cosign/manifests/{sigstore_attachment_tag(digest)}" in fetched
    assert f"/v2/sig/cosign/blobs/{digests[1]}" not in fetched  # attestations not downloaded
    # the simple-signing path is independent: no lookaside signatures here
    config = SignatureConfig("file:///nonexistent", True)
    assert fetch_simple_signatures(client, ref, digest, config) == []
    assert fetch_signatures(client, ref, digest, config) == Signatures([], sigs)


def test_sigstore_attachments_absent_or_disabled(registry: Registry,
                                                 client: RegistryClient) -> None:
    ref, digest = image_ref(registry, "sig/none"), new_digest()
    assert fetch_sigstore_signatures(client, ref, digest, SIGSTORE_ON) == []
    push_attachments(registry, ref.repository, digest, [(SIMPLE_SIGNING_MEDIA_TYPE, b"p", {})])
    registry.mark()
    assert fetch_sigstore_signatures(client, ref, digest, SignatureConfig(None, False)) == []
    assert registry.requests() == []  # disabled: not even looked for
    [sig] = fetch_sigstore_signatures(client, ref, digest, SIGSTORE_ON)
    assert (sig.payload, sig.signature, sig.annotations) == (b"p", "", {})


def test_sigstore_payload_digest_mismatch(registry: Registry, client: RegistryClient) -> None:
    ref, digest = image_ref(registry, "sig/corrupt"), new_digest()
    payload = b'{"critical": "original payload"}'
    [layer] = push_attachments(registry, ref.repository, digest,
                               [(SIMPLE_SIGNING_MEDIA_TYPE, payload, {SIGNATURE_ANNOTATION: "x"})])
    hexa = layer.split(":")[1]
    data = registry.storage_dir / "docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"
    data.write_bytes(payload.replace(b"original", b"tampered"))  # served as it is
    with pytest.raises(DigestMismatch, match=rf"sigstore attachment {layer} in .*hashes to"):
        fetch_sigstore_signatures(client, ref, digest, SIGSTORE_ON)


def test_sigstore_caps_and_wrong_manifest_type(registry: Registry,
                                               client: RegistryClient) -> None:
    ref, digest = image_ref(registry, "sig/caps"), new_digest()
    push_attachments(registry, ref.repository, digest, [
        (SIMPLE_SIGNING_MEDIA_TYPE, b"x" * 200, {}), (SIMPLE_SIGNING_MEDIA_TYPE, b"y", {})])
    with pytest.raises(SignatureSourceError, match=r"is larger than 100 bytes"):
        fetch_sigstore_signatures(client, ref, digest, SIGSTORE_ON, max_size=100)
    with pytest.raises(SignatureSourceError, match=r"lists more than 1 signatures"):
        fetch_sigstore_signatures(client, ref, digest, SIGSTORE_ON, limit=1)
    other = new_digest()
    push_attachments(registry, ref.repository, other, [(SIMPLE_SIGNING_MEDIA_TYPE, b"z", {})],
                     media_type="application/vnd.docker.distribution.manifest.v2+json")
    with pytest.raises(SignatureSourceError, match=r"unexpected MIME type for sigstore"):
        fetch_sigstore_signatures(client, ref, other, SIGSTORE_ON)


# ---------------------------------------------------------------------------------------------
# Against containers/image itself: read back what skopeo wrote


def test_reads_what_skopeo_wrote(tmp_path: Path, registry: Registry,
                                 client: RegistryClient) -> None:
    """skopeo signs with two GPG keys into a file lookaside and adds a sigstore attachment,
    all through its registries.d; the same registries.d leads us to the same bytes."""
    from harness import signing as sg
    from harness.tools import require_tool

    require_tool("docker-registry", "skopeo", "gpg", "gpgconf", "gpg-agent")
    cosign = sg.make_cosign_key(tmp_path / "cosign", name="one")
    with sg.gpg_keys(tmp_path / "gpg", "alice", "bob") as keys:
        signed = sg.sign_and_push(tmp_path / "signed", registry, "sig/skopeo", gpg=keys,
                                  cosign=cosign)
    ref = parse_reference(signed.reference)
    config = RegistriesD.load(signed.registries_d).config_for(ref)
    assert config == SignatureConfig(signed.lookaside_url, True)
    gpg = [p.read_bytes() for p in signed.signature_paths]
    assert len(gpg) == 2
    assert fetch_simple_signatures(client, ref, signed.manifest_digest, config) == gpg
    [attached] = sg.read_attachment_signatures(registry, signed.repo, signed.manifest_digest)
    [sig] = fetch_sigstore_signatures(client, ref, signed.manifest_digest, config)
    assert (sig.payload, sig.signature) == (attached.payload, attached.annotation)
    assert cosign.verify(sig.payload, base64.b64decode(sig.signature))
    # skopeo may also keep a sigstore signature in the lookaside (a \x00sigstore-json blob)
    found = fetch_signatures(client, ref, signed.manifest_digest, config)
    assert found.simple == gpg
    assert found.sigstore[-1] == sig
    for other in found.sigstore[:-1]:
        assert other.source.startswith(signed.lookaside_url)
        assert (other.payload, other.signature) == (sig.payload, sig.signature)
