"""Run Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1 for tests.

Modes:

* ``plain`` -- HTTP, no auth.
* ``tls`` -- HTTPS with a ``trustme`` CA (``ca_pem_path``, ``cert_dir``, ``certs_d``).
* ``htpasswd`` -- HTTP basic auth (bcrypt htpasswd). Plain HTTP unless ``tls=True``:
  distribution 2.8 accepts basic auth over plain HTTP (the docs only *warn*).
* ``token`` -- Bearer token auth. A :class:`TokenServer` in a thread implements
  ``GET /token?service=..&scope=repository:NAME:pull,push`` (and the OAuth2
  ``POST /token`` password grant), signing ES256 JWTs whose ``x5c`` header carries a leaf
  certificate issued by a CA that the registry trusts (``auth.token.rootcertbundle``).
  Anonymous pull is allowed unless ``anonymous_pull=False``; push needs credentials.

Example::

    with Registry("token") as reg:
        reg.host            # "127.0.0.1:PORT"
        reg.tokens_issued   # tokens handed out over HTTP so far
        reg.requests()      # parsed access-log lines since the last reg.mark()
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urljoin, urlsplit

import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

Mode = Literal["plain", "tls", "htpasswd", "token"]
DEFAULT_USER = "alice"
DEFAULT_PASSWORD = "s3cret-pw"
SERVICE = "unlade-test-registry"
ISSUER = "unlade-test-issuer"


def free_port() -> int:
    """A currently unused TCP port on 127.0.0.1 (racy, callers retry on EADDRINUSE)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash (cost 4, to keep the registry fast) for an htpasswd file."""
    try:
        import bcrypt  # type: ignore[import-not-found]

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt  # glibc/libxcrypt supports $2b$; module removed in Python 3.13
        except ImportError:
            crypt = None  # type: ignore[assignment]
    if crypt is not None:
        h = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        if h and h.startswith("$2"):
            return h
    if shutil.which("htpasswd"):
        out = subprocess.run(["htpasswd", "-nbB", "-C", "4", "x", password],
                             capture_output=True, text=True, check=True).stdout
        return out.strip().split(":", 1)[1]
    raise RuntimeError("no bcrypt implementation: pip install bcrypt or apt install apache2-utils")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_kid(public_key: ec.EllipticCurvePublicKey) -> str:
    """libtrust key id: base32 of the first 240 bits of sha256(DER SPKI), in 4-char groups."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(b32[i:i + 4] for i in range(0, 48, 4))


# ----------------------------------------------------------------------------------------------
# Token server


@dataclass
class TokenRequest:
    """One request to the token server (also recorded when refused)."""

    method: str
    user: str | None
    scopes: list[str]
    service: str | None
    status: int
    granted: list[dict[str, Any]]


class TokenServer:
    """Docker token-auth issuer on 127.0.0.1 (a :class:`ThreadingHTTPServer` in a thread).

    Attributes that tests may change while running: ``anonymous_pull``, ``users``
    (``{name: password}``), ``ttl`` (seconds), ``fail_status`` (if set, every request
    answers that status, e.g. 500), ``fail_first`` (the next N requests answer
    ``fail_first_status``, 503 by default), ``delay`` (seconds every answer waits, or only
    the next ``delay_first`` answers if that is set). ``received`` counts requests as they
    arrive (``requests`` records them once answered, after any delay).

    Note: distribution 2.8 accepts tokens up to 60 s after ``exp`` (clock-skew leeway), so
    a small ``ttl`` only affects clients that honour ``expires_in``.
    """

    def __init__(
        self,
        users: Mapping[str, str],
        anonymous_pull: bool = True,
        ttl: int = 300,
        service: str = SERVICE,
        issuer: str = ISSUER,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        import trustme

        self.users = dict(users)
        self.anonymous_pull = anonymous_pull
        self.ttl = ttl
        self.service = service
        self.issuer = issuer
        self.fail_status: int | None = None
        self.fail_first = 0
        self.fail_first_status = 503
        self.delay = 0.0
        self.delay_first: int | None = None
        self.received = 0
        self._ssl_context = ssl_context
        self._lock = threading.Lock()
        self._issued = 0
        self.requests: list[TokenRequest] = []
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert("token-issuer.invalid")
        self._key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        assert isinstance(self._key, ec.EllipticCurvePrivateKey)
        cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        self._x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self._kid = libtrust_kid(self._key.public_key())
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def root_cert_pem(self) -> bytes:
        """The CA certificate the registry must trust (``rootcertbundle``)."""
        return self.ca.cert_pem.bytes()

    @property
    def tokens_issued(self) -> int:
        """Number of tokens handed out over HTTP (not counting :meth:`mint`)."""
        with self._lock:
            return self._issued

    @property
    def port(self) -> int:
        assert self._server is not None, "token server not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The realm URL, ``http(s)://127.0.0.1:PORT/token``."""
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}/token"

    def reset_counters(self) -> None:
        """Forget issued-token count and request history."""
        with self._lock:
            self._issued = 0
            self.received = 0
            self.requests.clear()

    def mint(self, scopes: Iterable[str], subject: str = "", ttl: int | None = None) -> str:
        """Sign a token granting ``scopes`` fully (not counted; for the harness itself)."""
        access = [self._parse_scope(s) for s in scopes]
        return self._sign(subject, [a for a in access if a], ttl)

    # -- internals --

    @staticmethod
    def _parse_scope(scope: str) -> dict[str, Any] | None:
        # "repository:name/with/slashes:pull,push" ; names may not contain ':' but a
        # "registry:catalog:*" scope is also possible.
        typ, sep, rest = scope.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2:
            return None
        return {"type": typ, "name": name, "actions": [a for a in actions.split(",") if a]}

    def _grant(self, scope: str, user: str | None) -> dict[str, Any] | None:
        parsed = self._parse_scope(scope)
        if parsed is None:
            return None
        if user is not None:
            return parsed  # authenticated users may do everything they ask for
        if parsed["type"] == "repository" and self.anonymous_pull:
            parsed["actions"] = [a for a in parsed["actions"] if a == "pull"]
            return parsed
        parsed["actions"] = []
        return parsed

    def _sign(self, subject: str, access: list[dict[str, Any]], ttl: int | None) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "kid": self._kid, "x5c": self._x5c}
        claims = {
            "iss": self.issuer, "sub": subject, "aud": self.service,
            "exp": now + (self.ttl if ttl is None else ttl), "nbf": now - 10, "iat": now,
            "jti": uuid.uuid4().hex, "access": access,
        }
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def _wait(self) -> None:
        """Sleep ``delay`` before answering (if this answer is among those delayed)."""
        with self._lock:
            self.received += 1
            delay = self.delay
            if self.delay_first is not None:
                if self.delay_first <= 0:
                    delay = 0.0
                self.delay_first -= 1
        if delay > 0:
            time.sleep(delay)

    def _handle(self, method: str, query: dict[str, list[str]], auth: str | None
                ) -> tuple[int, dict[str, Any], dict[str, str]]:
        user: str | None = None
        password: str | None = None
        if auth and auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                user, password = "", None
        if method == "POST" and query.get("grant_type", [""])[0] == "password":  # OAuth2
            user = query.get("username", [""])[0]
            password = query.get("password", [""])[0]
        scopes = [s for v in query.get("scope", []) for s in v.split(" ") if s]
        service = query.get("service", [None])[0]

        def record(status: int, granted: list[dict[str, Any]]) -> None:
            with self._lock:
                self.requests.append(
                    TokenRequest(method, user, scopes, service, status, granted))
                if status == 200:
                    self._issued += 1

        with self._lock:
            failing = self.fail_first > 0
            if failing:
                self.fail_first -= 1
        if failing:
            record(self.fail_first_status, [])
            return (self.fail_first_status,
                    {"errors": [{"message": "configured failure (first requests)"}]}, {})
        if self.fail_status:
            record(self.fail_status, [])
            return self.fail_status, {"errors": [{"message": "configured failure"}]}, {}
        if user is not None and self.users.get(user) != password:
            record(401, [])
            return (401, {"details": "invalid credentials"},
                    {"WWW-Authenticate": 'Basic realm="unlade-token"'})
        if service is not None and service != self.service:
            record(400, [])
            return 400, {"details": f"unknown service {service!r}"}, {}
        granted = [g for g in (self._grant(s, user) for s in scopes) if g]
        token = self._sign(user or "", granted, None)
        record(200, granted)
        issued_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {"token": token, "access_token": token, "expires_in": self.ttl,
                "issued_at": issued_at}
        return 200, body, {}

    def start(self) -> TokenServer:
        """Start serving in a daemon thread."""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                parts = urlsplit(self.path)
                if parts.path.rstrip("/") != "/token":
                    self._reply(404, {"details": "not found"}, {})
                    return
                query = parse_qs(parts.query)
                if method == "POST":
                    length = int(self.headers.get("Content-Length") or 0)
                    for k, v in parse_qs(self.rfile.read(length).decode()).items():
                        query.setdefault(k, []).extend(v)
                outer._wait()
                status, body, headers = outer._handle(
                    method, query, self.headers.get("Authorization"))
                self._reply(status, body, headers)

            def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self._ssl_context is not None:
            self._server.socket = self._ssl_context.wrap_socket(  # handshake in handler thread
                self._server.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="token-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the server thread."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# ----------------------------------------------------------------------------------------------
# Registry


_RUNNING: weakref.WeakSet[Registry] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:  # e.g. after KeyboardInterrupt
    for reg in list(_RUNNING):
        reg._kill()


@dataclass
class AccessLogEntry:
    """One line of the registry's (Apache combined) access log."""

    method: str
    path: str
    status: int
    size: int
    user_agent: str


_ACCESS_RE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]+\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-) "[^"]*" "([^"]*)"')


class Registry:
    """A ``docker-registry serve`` process on 127.0.0.1 with a free port.

    ``mode`` is ``plain``, ``tls``, ``htpasswd`` or ``token``; ``tls`` may be forced on for
    ``htpasswd``/``token`` (the token server then also speaks HTTPS with the same CA).
    Credentials (``username``/``password``) are ``None`` for ``plain`` and ``tls``.
    ``extra_config`` is deep-merged into the generated registry config.
    """

    def __init__(
        self,
        mode: Mode = "plain",
        *,
        tls: bool | None = None,
        workdir: Path | None = None,
        username: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        anonymous_pull: bool = True,
        token_ttl: int = 300,
        extra_config: Mapping[str, Any] | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        if mode not in ("plain", "tls", "htpasswd", "token"):
            raise ValueError(f"unknown registry mode {mode!r}")
        self.mode = mode
        self.tls = (mode == "tls") if tls is None else tls
        if mode == "tls" and not self.tls:
            raise ValueError("mode 'tls' needs tls=True")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"registry-{mode}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.username: str | None = username if mode in ("htpasswd", "token") else None
        self.password: str | None = password if mode in ("htpasswd", "token") else None
        self._anonymous_pull = anonymous_pull
        self._token_ttl = token_ttl
        self._extra_config = dict(extra_config or {})
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._mark = 0
        self._http: urllib3.PoolManager | None = None
        self.port = 0
        self.token_server: TokenServer | None = None
        self.ca_pem_path: Path | None = None
        self.cert_dir: Path | None = None
        self.certs_d: Path | None = None
        self._server_cert: Any = None

    # -- properties --

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:PORT``."""
        return f"{self.scheme}://{self.host}"

    @property
    def credentials(self) -> tuple[str, str] | None:
        """``(username, password)`` or ``None`` when the registry has no auth."""
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    @property
    def tokens_issued(self) -> int:
        """Tokens issued by the token server over HTTP (token mode only)."""
        if self.token_server is None:
            raise AttributeError("tokens_issued is only available in token mode")
        return self.token_server.tokens_issued

    @property
    def storage_dir(self) -> Path:
        return self.workdir / "storage"

    @property
    def log_path(self) -> Path:
        """The registry's own log (stderr)."""
        return self.workdir / "registry.log"

    @property
    def access_log_path(self) -> Path:
        """Apache combined access log (the registry writes it to stdout)."""
        return self.workdir / "access.log"

    def ref(self, repo: str, tag_or_digest: str = "latest") -> str:
        """``127.0.0.1:PORT/repo:tag`` or ``127.0.0.1:PORT/repo@sha256:...``."""
        sep = "@" if ":" in tag_or_digest else ":"
        return f"{self.host}/{repo}{sep}{tag_or_digest}"

    # -- lifecycle --

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _setup_tls(self) -> tuple[Path, Path]:
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        tls_dir = self.workdir / "tls"
        tls_dir.mkdir(exist_ok=True)
        self.ca_pem_path = tls_dir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_pem_path))
        cert_path, key_path = tls_dir / "server.crt", tls_dir / "server.key"
        server.private_key_pem.write_to_path(str(key_path))
        cert_path.write_bytes(b"".join(b.bytes() for b in server.cert_chain_pems))
        self.cert_dir = self.workdir / "certs"  # for skopeo --*-cert-dir
        self.cert_dir.mkdir(exist_ok=True)
        shutil.copy(self.ca_pem_path, self.cert_dir / "ca.crt")
        self._server_cert = server
        self._ca = ca
        return cert_path, key_path

    def _config(self, tls_files: tuple[Path, Path] | None) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False},
                    "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": uuid.uuid4().hex},
            "health": {"storagedriver": {"enabled": False}},
        }
        if tls_files:
            cfg["http"]["tls"] = {"certificate": str(tls_files[0]), "key": str(tls_files[1])}
        if self.mode == "htpasswd":
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(f"{self.username}:{bcrypt_hash(self.password or '')}\n")
            cfg["auth"] = {"htpasswd": {"realm": "unlade-test", "path": str(htpasswd)}}
        elif self.mode == "token":
            assert self.token_server is not None
            bundle = self.workdir / "token-root.pem"
            bundle.write_bytes(self.token_server.root_cert_pem)
            cfg["auth"] = {"token": {
                "realm": self.token_server.url, "service": self.token_server.service,
                "issuer": self.token_server.issuer, "rootcertbundle": str(bundle),
            }}
        return _deep_merge(cfg, self._extra_config)

    def start(self) -> Registry:
        """Start the registry (and token server) and wait until ``/v2/`` answers."""
        if shutil.which("docker-registry") is None:
            raise FileNotFoundError("docker-registry not installed (apt install docker-registry)")
        tls_files = self._setup_tls() if self.tls else None
        if self.cert_dir is not None:
            self.certs_d = self.workdir / "certs.d"
        if self.mode == "token":
            ctx = None
            if self.tls:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                self._server_cert.configure_cert(ctx)
            self.token_server = TokenServer(
                {self.username or "": self.password or ""}, self._anonymous_pull,
                self._token_ttl, ssl_context=ctx).start()
        last_err = ""
        for _attempt in range(5):
            self.port = free_port()
            cfg_path = self.workdir / "config.yml"
            cfg_path.write_text(json.dumps(self._config(tls_files), indent=1))  # JSON is YAML
            with open(self.log_path, "ab") as err, open(self.access_log_path, "ab") as out:
                self._proc = subprocess.Popen(
                    ["docker-registry", "serve", str(cfg_path)],
                    stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                    env={"PATH": "/usr/bin:/bin", "HOME": str(self.workdir)})
            if self._wait_ready():
                break
            last_err = self.log_path.read_text(errors="replace")[-3000:]
            self._kill()
            if "address already in use" not in last_err:
                break
        if self._proc is None:
            self.stop()
            raise RuntimeError(f"docker-registry did not start:\n{last_err}")
        if self.certs_d is not None and self.cert_dir is not None:
            d = self.certs_d / self.host
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.cert_dir / "ca.crt", d / "ca.crt")
        _RUNNING.add(self)
        self.mark()
        return self

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.ca_pem_path))
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw:
                    sock: socket.socket = raw
                    if ctx is not None:
                        sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
                    sock.sendall(b"GET /v2/ HTTP/1.0\r\nHost: " + self.host.encode()
                                 + b"\r\nUser-Agent: harness-readiness\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/1."):
                        return True
            except OSError:
                pass
            time.sleep(0.01)
        return False

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None

    def stop(self) -> None:
        """Stop the registry and token server; remove the work dir if we created it."""
        self._kill()
        if self.token_server is not None:
            self.token_server.stop()
        if self._http is not None:
            self._http.clear()
            self._http = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- access log --

    def _access_lines(self) -> list[str]:
        try:
            text = self.access_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [ln for ln in text.splitlines() if ln.strip()]

    def mark(self) -> None:
        """Make :meth:`requests` count only requests after this point."""
        time.sleep(0.02)
        self._mark = len(self._access_lines())

    def requests(self, since_mark: bool = True, settle: float = 0.1) -> list[AccessLogEntry]:
        """Parsed access-log entries (after waiting ``settle`` s for late log writes)."""
        if settle:
            time.sleep(settle)
        lines = self._access_lines()[self._mark if since_mark else 0:]
        out = []
        for ln in lines:
            m = _ACCESS_RE.match(ln)
            if m:
                size = 0 if m.group(4) == "-" else int(m.group(4))
                out.append(AccessLogEntry(m.group(1), m.group(2), int(m.group(3)), size,
                                          m.group(5)))
        return out

    # -- a tiny client, used by images.push_raw and tests --

    def http(self) -> urllib3.PoolManager:
        """A urllib3 pool trusting this registry's CA (if TLS)."""
        if self._http is None:
            if self.tls:
                self._http = urllib3.PoolManager(ca_certs=str(self.ca_pem_path))
            else:
                self._http = urllib3.PoolManager()
        return self._http

    def auth_headers(self, repo: str | None = None, actions: Sequence[str] = ("pull",)
                     ) -> dict[str, str]:
        """Authorization header for the harness itself (tokens are minted, not counted)."""
        if self.mode == "htpasswd":
            cred = f"{self.username}:{self.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(cred).decode()}
        if self.mode == "token":
            assert self.token_server is not None
            scopes = [f"repository:{repo}:{','.join(actions)}"] if repo else []
            return {"Authorization": "Bearer "
                    + self.token_server.mint(scopes, subject=self.username or "")}
        return {}

    def request(self, method: str, path: str, repo: str | None = None,
                actions: Sequence[str] = ("pull",), headers: Mapping[str, str] | None = None,
                body: Any = None, **kw: Any) -> urllib3.BaseHTTPResponse:
        """An authenticated request to ``path`` (relative to :attr:`url`, or absolute)."""
        h = {**self.auth_headers(repo, actions), **(headers or {})}
        url = path if "://" in path else self.url + path
        return self.http().request(method, url, headers=h, body=body, redirect=False, **kw)

    def get_manifest(self, repo: str, ref: str, accept: Sequence[str] | None = None
                     ) -> tuple[bytes, str, str]:
        """``(bytes, media type, Docker-Content-Digest)`` of a manifest."""
        from .images import (
            MT_DOCKER_LIST,
            MT_DOCKER_MANIFEST,
            MT_OCI_INDEX,
            MT_OCI_MANIFEST,
        )

        accept = accept or [MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST, MT_DOCKER_LIST]
        r = self.request("GET", f"/v2/{repo}/manifests/{ref}", repo,
                         headers={"Accept": ", ".join(accept)})
        if r.status != 200:
            raise RuntimeError(f"GET manifest {repo}:{ref}: {r.status} {r.data[:500]!r}")
        return (r.data, r.headers.get("Content-Type", ""),
                r.headers.get("Docker-Content-Digest", ""))

    def blob_exists(self, repo: str, digest: str) -> bool:
        """HEAD the blob."""
        return self.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo).status == 200

    def upload_blob_file(self, repo: str, path: Path, digest: str | None = None) -> str:
        """Monolithic upload of the file ``path`` (streamed); returns its digest."""
        if digest is None:
            sha = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    sha.update(chunk)
            digest = "sha256:" + sha.hexdigest()
        if self.blob_exists(repo, digest):
            return digest
        acts = ("pull", "push")
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/", repo, acts)
        if r.status != 202:
            raise RuntimeError(f"start upload: {r.status} {r.data[:500]!r}")
        loc = urljoin(self.url + "/", r.headers["Location"])
        loc += ("&" if "?" in loc else "?") + f"digest={digest}"
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            r = self.request("PUT", loc, repo, acts, body=f, preload_content=True,
                             headers={"Content-Type": "application/octet-stream",
                                      "Content-Length": str(size)})
        if r.status != 201:
            raise RuntimeError(f"finish upload: {r.status} {r.data[:500]!r}")
        return digest

    def upload_blob(self, repo: str, data: bytes) -> str:
        """Monolithic upload of ``data``; returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.blob_exists(repo, digest):
            return digest
        acts = ("pull", "push")
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/", repo, acts)
        if r.status != 202:
            raise RuntimeError(f"start upload: {r.status} {r.data[:500]!r}")
        loc = urljoin(self.url + "/", r.headers["Location"])
        loc += ("&" if "?" in loc else "?") + f"digest={digest}"
        r = self.request("PUT", loc, repo, acts, body=data,
                         headers={"Content-Type": "application/octet-stream"})
        if r.status != 201:
            raise RuntimeError(f"finish upload: {r.status} {r.data[:500]!r}")
        return digest

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """PUT a manifest/index under a tag or digest; returns the registry's digest."""
        r = self.request("PUT", f"/v2/{repo}/manifests/{ref}", repo, ("pull", "push"),
                         body=data, headers={"Content-Type": media_type})
        if r.status != 201:
            raise RuntimeError(f"PUT manifest {repo}:{ref}: {r.status} {r.data[:500]!r}")
        return r.headers.get("Docker-Content-Digest", "")


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = v
    return base


with contextlib.suppress(AttributeError):  # keep urllib3 quiet about our self-signed CAs
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
