"""Registry HTTP API v2 client: manifests and blobs, with auth, TLS, retries and resume.

urllib3 is the transport because it is the cheapest well-kept client measured here
(~0.15 s CPU per GB plain, 0.65 s over TLS, against 1.3-3.5 s for httpx). Bodies are
streamed with content decoding off, one socket read (up to 120 KiB) at a time: blob bytes go
untouched to the hasher, and a stream that breaks loses nothing it delivered.

A registry, a CDN or the network between may misbehave in every way: reset, stall, trickle,
cut a body short, send more than announced, answer 429/5xx, redirect in circles. Each
request is bounded: ``connect_timeout`` for the connection, ``header_timeout`` for the
status line and headers, ``read_timeout`` for any silence, and ``low_speed_limit`` over
``low_speed_time`` for a body that still moves but too slowly to ever finish (a per-recv
timeout never trips on one byte a second). Failures are retried ``RetryPolicy.attempts``
times with exponential backoff and jitter (a server's Retry-After honoured up to
``max_backoff``); a broken blob stream resumes with Range where it stopped. So one request
fails, at worst, after about ``attempts × (connect_timeout + header_timeout + max_backoff)``
seconds, with an error naming what went wrong.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import http
import http.client
import io
import json
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.exceptions import (
    TimeoutError as Urllib3Timeout,
)

from . import __version__
from .auth import AuthDocument, Credentials, credentials_for, parse_www_authenticate
from .errors import (
    ConfigError,
    DigestMismatch,
    Interrupted,
    ManifestError,
    ManifestTooLarge,
    NotFound,
    RegistryError,
    RegistryTimeout,
    RegistryUnreachable,
    Unauthorized,
)
from .manifest import ACCEPT, MAX_MANIFEST
from .reference import Reference

USER_AGENT = f"unlade/{__version__}"
CHUNK = 120 << 10
_RETRY_STATUS = frozenset((408, 429, 500, 502, 503, 504))
_CERT_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")
#: Redirects followed for one request (Go's client, which containers/image uses, stops at
#: 10; registries and CDNs need one or two).
MAX_REDIRECTS = 5
#: A broken blob stream that still brought this many bytes counts as progress: the count of
#: failed attempts starts again, so a long download on a flaky link is not given up.
_PROGRESS = 1 << 20


def _positive(settings: object, name: str, *, zero: bool = False, whole: bool = False) -> None:
    """Refuse a setting that would make requests fail at once or never (a one-line
    ConfigError naming it)."""
    value = getattr(settings, name)
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0 or (
            value == 0 and not zero) or value != value:
        what = "a whole number" if whole else "a number of seconds"
        raise ConfigError(f"{type(settings).__name__}.{name} must be {what} "
                          f"{'of 0 or more' if zero else 'above 0'}, not {value!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before a request (or a blob download) is given up.

    ``attempts``: tries per request; for a blob, broken streams in a row (each resumed with
    Range where the last one stopped; one that brought at least 1 MiB resets the count).
    Retried: connection failures, timeouts, too-slow transfers, and HTTP 408, 429, 500,
    502, 503, 504. Never retried: other statuses, and content that fails its digest.

    ``backoff``: the first delay between tries in seconds; it doubles with every retry, up
    to ``max_backoff``, and is drawn at random between half and all of that ("equal
    jitter"), so that clients failed by one outage do not all come back at once. A
    server's ``Retry-After`` (seconds or an HTTP date) replaces it, but is also capped at
    ``max_backoff``: a registry cannot park a pull for an hour.
    """

    attempts: int = 5
    backoff: float = 0.25
    max_backoff: float = 8.0

    def __post_init__(self) -> None:
        _positive(self, "attempts", whole=True)
        _positive(self, "backoff", zero=True)
        _positive(self, "max_backoff", zero=True)

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        wanted = _retry_after(retry_after) if retry_after else None
        if wanted is not None:
            return min(wanted, self.max_backoff)
        return min(self.backoff * (2 ** attempt), self.max_backoff) * (0.5 + random.random() / 2)


def _retry_after(value: str) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    text = value.strip()
    if _digits(text):
        return float(text[:6])
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Cancellation:
    """Lets one thread stop another's downloads at once: blocked socket reads are shut
    down and retry sleeps end, instead of waiting out timeouts and backoffs."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._responses: set[urllib3.BaseHTTPResponse] = set()
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        self._event.set()
        with self._lock:
            responses = list(self._responses)
        for resp in responses:
            with contextlib.suppress(Exception):
                resp.shutdown()

    def check(self) -> None:
        if self._event.is_set():
            raise Interrupted("pull cancelled")

    def sleep(self, seconds: float) -> None:
        if self._event.wait(seconds):
            raise Interrupted("pull cancelled")

    @contextlib.contextmanager
    def watching(self, resp: urllib3.BaseHTTPResponse) -> Iterator[None]:
        with self._lock:
            self._responses.add(resp)
        try:
            if self._event.is_set():
                resp.shutdown()
            yield
        finally:
            with self._lock:
                self._responses.discard(resp)


_NEVER = Cancellation()


@dataclass(frozen=True)
class RegistryOptions:
    """Connection settings shared by every registry a client talks to.

    Timeouts, in seconds, bound every request to a registry, a token service or a
    redirect target (each attempt of it; see :class:`RetryPolicy` for retries):

    * ``connect_timeout`` (30): to open the TCP connection (and for TLS, each step of the
      handshake).
    * ``read_timeout`` (60): the longest silence on an open connection, before the
      response or in the middle of its body (a stall).
    * ``header_timeout`` (60): from the request sent to the end of the response's
      headers, however the bytes trickle in (Go's ``ResponseHeaderTimeout``).
    * ``low_speed_limit`` (1024 bytes/s) over ``low_speed_time`` (60): a body slower
      than this on average over that long is given up (curl's options of the same name):
      the per-read ``read_timeout`` never trips on a byte a second. A blob resumes with
      Range on a new connection, as after any broken stream. 0 turns the check off.
    """

    plain_http: bool = False
    cert_dir: str | None = None
    credentials: Credentials | None = None
    authfile: str | AuthDocument | None = None
    retry: RetryPolicy = RetryPolicy()
    connect_timeout: float = 30.0
    read_timeout: float = 60.0
    header_timeout: float = 60.0
    low_speed_limit: int = 1024
    low_speed_time: float = 60.0
    #: Hosts (host[:port]) allowed over plain HTTP, or over TLS without verifying the
    #: certificate (registries.conf's ``insecure``): HTTPS is tried first.
    insecure_hosts: frozenset[str] = frozenset()
    #: Proxies: ``{"https_proxy": URL, "http_proxy": URL, "no_proxy": "a,b"}`` (the
    #: config file's ``[proxy]``); None: the environment's HTTPS_PROXY, HTTP_PROXY,
    #: NO_PROXY (and their lower-case forms), as curl and Go read them.
    proxy: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout", "header_timeout", "low_speed_time"):
            _positive(self, name)
        _positive(self, "low_speed_limit", zero=True, whole=True)


class _TooSlow(TimeoutError):
    """Raised inside a socket read when a response breaks :class:`RegistryOptions`'
    ``header_timeout`` or ``low_speed_limit``; urllib3 wraps it (as any socket timeout)
    and :func:`_describe` finds it again to say what happened."""


class _GuardedSocket:
    """A connection's socket that times the responses read from it: the headers must be
    complete within ``header_timeout`` (the socket timeout is shortened to what is left,
    so even a silent server is cut off on time), and a body must average at least
    ``low_speed_limit`` bytes/s over every ``low_speed_time`` seconds. http.client reads
    only through :meth:`makefile`, so every byte of a response passes :meth:`recv_into`.
    Everything else is the real socket's."""

    def __init__(self, sock: socket.socket, options: RegistryOptions) -> None:
        self._sock = sock
        self._options = options
        self._timeout: float | None = sock.gettimeout()
        self._header_deadline: float | None = None
        self._window_start = 0.0
        self._window_bytes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout
        self._sock.settimeout(timeout)

    def makefile(self, mode: str = "r", buffering: int | None = None, **kw: Any) -> Any:
        if mode != "rb" or not isinstance(self._sock, socket.socket):  # (TLS in TLS)
            return self._sock.makefile(mode, buffering, **kw)  # type: ignore[call-overload]
        # as socket.makefile does, so that closing the connection before its response is
        # read (http.client does, for "Connection: close") keeps the descriptor open
        self._sock._io_refs += 1  # type: ignore[attr-defined]
        raw = socket.SocketIO(self, "rb")  # type: ignore[arg-type]
        size = buffering if buffering and buffering > 0 else io.DEFAULT_BUFFER_SIZE
        return io.BufferedReader(raw, size)

    def _decref_socketios(self) -> None:
        self._sock._decref_socketios()  # type: ignore[attr-defined]

    def expect_response(self) -> None:
        """The request is sent: its response's headers are due within header_timeout."""
        self._header_deadline = time.monotonic() + self._options.header_timeout

    def response_started(self) -> None:
        """The headers are in: from now on, the body's speed is watched."""
        self._header_deadline = None
        self._window_start = time.monotonic()
        self._window_bytes = 0

    def recv_into(self, *args: Any) -> int:
        if self._header_deadline is not None:
            return self._recv_header(*args)
        n: int = self._sock.recv_into(*args)
        now = time.monotonic()
        self._window_bytes += n
        elapsed = now - self._window_start
        if n and elapsed >= self._options.low_speed_time:
            if self._window_bytes < self._options.low_speed_limit * elapsed:
                got = self._window_bytes
                raise _TooSlow(
                    f"timed out: {got:,} byte{'s' if got != 1 else ''} in {elapsed:.1f} s, "
                    f"below the minimum of {self._options.low_speed_limit:,} bytes/s "
                    f"(low_speed_limit)")
            self._window_start, self._window_bytes = now, 0
        return n

    def _recv_header(self, *args: Any) -> int:
        assert self._header_deadline is not None
        left = self._header_deadline - time.monotonic()
        message = (f"timed out: no complete response headers within "
                   f"{self._options.header_timeout:g} s (header_timeout)")
        if left <= 0:
            raise _TooSlow(message)
        shorter = self._timeout is None or left < self._timeout
        if shorter:
            self._sock.settimeout(left)
        try:
            n: int = self._sock.recv_into(*args)
        except TimeoutError:
            if shorter:
                raise _TooSlow(message) from None
            raise
        finally:
            if shorter:
                self._sock.settimeout(self._timeout)
        return n


class _Guarded:
    """Connections whose socket is a :class:`_GuardedSocket` (``options`` is set on the
    per-client subclasses :func:`_pool_classes` makes)."""

    options: RegistryOptions
    sock: Any

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.sock = _GuardedSocket(self.sock, self.options)

    def getresponse(self) -> Any:
        sock = self.sock
        if isinstance(sock, _GuardedSocket):
            sock.expect_response()
        resp = super().getresponse()  # type: ignore[misc]
        if isinstance(sock, _GuardedSocket):
            sock.response_started()
        return resp


def _pool_classes(options: RegistryOptions) -> dict[str, type[HTTPConnectionPool]]:
    """urllib3 pool classes whose connections enforce ``options``' timeouts."""
    conn = type("GuardedHTTPConnection", (_Guarded, HTTPConnection), {"options": options})
    tls = type("GuardedHTTPSConnection", (_Guarded, HTTPSConnection), {"options": options})
    return {
        "http": type("GuardedPool", (HTTPConnectionPool,), {"ConnectionCls": conn}),
        "https": type("GuardedTLSPool", (HTTPSConnectionPool,), {"ConnectionCls": tls}),
    }


_SMALL_BODY = 64 * 1024


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _error_detail(body: bytes) -> str:
    """The registry's own words from an error body ({"errors": [...]}), if any."""
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(
            f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors
        )[:300]
    except (ValueError, AttributeError, TypeError, RecursionError):
        return ""


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Be done with a response whose body we do not want: a small body is drained so the
    connection can be reused; anything larger (or endless) closes the connection."""
    length = resp.headers.get("Content-Length", "")
    if _digits(length) and int(length) <= _SMALL_BODY:
        try:
            resp.drain_conn()
        except (HTTPError, OSError):
            resp.close()
    else:
        resp.close()
    resp.release_conn()


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


class RegistryClient:
    """Talks to registries on behalf of one pull (or many): connection pools per host,
    bearer tokens cached per (realm, service, scope)."""

    def __init__(self, options: RegistryOptions | None = None) -> None:
        self.options = options or RegistryOptions()
        self._pools: dict[str, urllib3.PoolManager] = {}
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._auth: dict[tuple[str, str], str] = {}  # (host, repo) -> Authorization header
        self._lock = threading.Lock()
        self._pool_classes = _pool_classes(self.options)
        self._schemes: dict[str, str] = {}  # insecure host -> the scheme it answered on
        #: Hosts that never get the client's own ``credentials`` (mirrors: only what an
        #: auth file holds for their own host is sent to them).
        self.mirror_hosts: set[str] = set()
        self._proxies = _proxy_settings(self.options.proxy)
        #: See ``RegistryOptions.insecure_hosts``; pulls add the insecure endpoints of
        #: registries.conf here.
        self.insecure_hosts: set[str] = set(self.options.insecure_hosts)

    # -- connections ---------------------------------------------------------------------
    def _ssl_context(self, host: str | None) -> ssl.SSLContext:
        if host and host in self.insecure_hosts:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        ctx = ssl.create_default_context()
        dirs = [Path(self.options.cert_dir)] if self.options.cert_dir else []
        if host:
            dirs += [Path(d) / host for d in _CERT_DIRS]
        for d in dirs:
            if not d.is_dir():
                continue
            for crt in sorted(d.glob("*.crt")):
                ctx.load_verify_locations(cafile=str(crt))
            for cert in sorted(d.glob("*.cert")):
                key = cert.with_suffix(".key")
                if key.exists():
                    ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def _pool(self, host: str | None, tls: bool = True, target: str | None = None
              ) -> urllib3.PoolManager:
        """The pool for ``host``'s TLS trust; ``target`` (host:port the request goes to,
        default ``host``) decides whether it goes through a proxy."""
        scheme = "https" if tls else "http"
        proxy = _proxy_for(self._proxies, scheme, target or host or "")
        key = f"{scheme}://{host or ''} via {proxy or 'direct'}"
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                common: dict[str, Any] = dict(
                    num_pools=4,
                    maxsize=8,
                    retries=False,
                    # loading the system CAs costs ~45 ms: only for pools that speak TLS
                    ssl_context=self._ssl_context(host) if tls else None,
                    timeout=urllib3.Timeout(
                        connect=self.options.connect_timeout, read=self.options.read_timeout
                    ),
                    headers={"User-Agent": USER_AGENT},
                )
                if proxy is None:
                    pool = urllib3.PoolManager(**common)
                else:  # HTTPS through CONNECT; plain HTTP as absolute-form requests
                    pool = urllib3.ProxyManager(proxy, **common)
                pool.pool_classes_by_scheme = self._pool_classes
                self._pools[key] = pool
            return pool

    def _base(self, ref: Reference) -> str:
        return f"{self._scheme(ref.api_host)}://{ref.api_host}"

    def _scheme(self, host: str) -> str:
        """``http`` with --plain-http; for an insecure host, ``https`` (unverified) if it
        speaks TLS, else ``http`` (as containers/image pings an insecure registry);
        ``https`` otherwise."""
        if self.options.plain_http:
            return "http"
        if host not in self.insecure_hosts:
            return "https"
        with self._lock:
            known = self._schemes.get(host)
        if known is not None:
            return known
        scheme = "https"
        try:
            resp = self._pool(host, True).request(
                "GET", f"https://{host}/v2/", preload_content=False, redirect=False,
                timeout=urllib3.Timeout(connect=self.options.connect_timeout,
                                        read=self.options.read_timeout))
            _discard(resp)
        except (SSLError, ProtocolError, OSError, MaxRetryError, Urllib3Timeout):
            scheme = "http"
        with self._lock:
            self._schemes[host] = scheme
        return scheme

    # -- auth ----------------------------------------------------------------------------
    def _credentials(self, ref: Reference) -> Credentials | None:
        if self.options.credentials is not None and ref.registry not in self.mirror_hosts:
            return self.options.credentials
        return credentials_for(ref.registry, ref.repository, authfile=self.options.authfile)

    def _authenticate(self, ref: Reference, challenge_header: str, sent: str | None) -> bool:
        """Answer a 401 challenge to a request sent with ``sent``; True if a different
        Authorization header is worth a retry. Decided per request, not from shared state,
        so that concurrent downloads hitting an expired token all recover."""
        creds = self._credentials(ref)
        for challenge in parse_www_authenticate(challenge_header):
            if challenge.scheme == "bearer" and "realm" in challenge.params:
                header = f"Bearer {self._token(ref, challenge.params, creds)}"
                if header == sent:  # our cached token was refused: it expired early
                    self._forget_token(ref, challenge.params)
                    header = f"Bearer {self._token(ref, challenge.params, creds)}"
            elif challenge.scheme == "basic" and creds is not None:
                raw = f"{creds.username}:{creds.password}".encode()
                header = "Basic " + base64.b64encode(raw).decode()
            else:
                continue
            if header == sent:
                return False  # the same answer was already refused
            self._auth[(ref.registry, ref.repository)] = header
            return True
        return False

    def _forget_token(self, ref: Reference, params: Mapping[str, str]) -> None:
        scope = f"repository:{ref.repository}:pull"
        self._tokens.pop((params["realm"], params.get("service", ""), scope), None)

    def _token(self, ref: Reference, params: Mapping[str, str], creds: Credentials | None) -> str:
        realm = params["realm"]
        service = params.get("service", "")
        scope = f"repository:{ref.repository}:pull"
        cached = self._tokens.get((realm, service, scope))
        if cached and cached[1] > time.monotonic():
            return cached[0]
        try:
            scheme = urlsplit(realm).scheme
        except ValueError:
            scheme = ""
        if scheme not in ("http", "https") or (
            scheme == "http" and not self.options.plain_http and creds is not None
        ):
            raise Unauthorized(
                f"registry {ref.registry} sent a token realm unlade will not use: {realm[:200]!r}"
            )
        query = {"scope": scope, **({"service": service} if service else {})}
        headers = {}
        who = f"token service {urlsplit(realm).netloc}"
        if creds and creds.identity_token:
            fields = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                      "client_id": "unlade", **query}
            resp = self._send("POST", realm, headers={
                "Content-Type": "application/x-www-form-urlencoded"}, body=urlencode(fields),
                stream=True, who=who)
        else:
            if creds:
                raw = f"{creds.username}:{creds.password}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
            sep = "&" if "?" in realm else "?"
            resp = self._send("GET", f"{realm}{sep}{urlencode(query)}", headers=headers,
                              stream=True, who=who)
        try:
            body = _read_limited(resp, _SMALL_BODY)
        except (HTTPError, OSError, http.client.HTTPException) as err:
            resp.close()
            raise _failure(f"reading the answer of {who} failed", err, self.options) from None
        finally:
            _discard(resp)
        if len(body) > _SMALL_BODY:
            raise RegistryError(f"{who} sent an oversized answer")
        if resp.status in (401, 403):
            detail = _error_detail(body)
            raise Unauthorized(
                f"unauthorized: token service {urlsplit(realm).netloc} refused "
                f"{'the given credentials' if creds else 'anonymous access'} for "
                f"{ref.repository}" + (f" ({detail})" if detail else "")
            )
        if resp.status != 200:
            raise RegistryError(f"{who} answered {_status(resp.status)}"
                                + _gave_up(resp.status, self.options.retry))
        try:
            doc: dict[str, Any] = json.loads(body)
            token = str(doc.get("token") or doc.get("access_token"))
            ttl = float(doc.get("expires_in") or 60)
            ttl = min(ttl, 86400.0)
        except (ValueError, TypeError, AttributeError, OverflowError, RecursionError):
            raise RegistryError(f"token service {realm} sent an invalid answer") from None
        if not token or token == "None":
            raise RegistryError(f"token service {realm} sent no token")
        self._tokens[(realm, service, scope)] = (token, time.monotonic() + max(ttl - 10, 5))
        return token

    # -- requests ------------------------------------------------------------------------
    def _send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        stream: bool = False,
        host: str | None = None,
        cancel: Cancellation = _NEVER,
        who: str | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """One request with retries on connection failures, timeouts, 408, 429 and 5xx
        (the last such answer is returned when the attempts run out). ``who`` names the
        server in errors (default: its host:port)."""
        policy = self.options.retry
        netloc = urlsplit(url).netloc
        who = who or netloc
        for attempt in range(policy.attempts):
            cancel.check()
            try:
                resp = self._pool(host, not url.startswith("http:"), netloc).request(
                    method, url, headers=dict(headers or {}), body=body,
                    preload_content=not stream, decode_content=False, redirect=False,
                )
            except SSLError as err:
                raise RegistryUnreachable(
                    f"TLS error talking to {netloc}: {_reason(err)} "
                    "(trust its CA with --cert-dir, or use --plain-http for an HTTP registry)"
                ) from None
            except ProxyError as err:
                if attempt + 1 >= policy.attempts:
                    proxy = _proxy_for(self._proxies, urlsplit(url).scheme, netloc) or "?"
                    raise RegistryUnreachable(
                        f"cannot reach {netloc} through the proxy {urlsplit(proxy).netloc}: "
                        f"{_describe(err, self.options)}" + _attempts(attempt + 1)) from None
            except (NameResolutionError, NewConnectionError) as err:
                if isinstance(err, NameResolutionError):
                    raise RegistryUnreachable(f"unknown host {netloc.rsplit(':', 1)[0]}") from None
                if attempt + 1 >= policy.attempts:
                    raise RegistryUnreachable(
                        f"cannot connect to {netloc}: {_describe(err, self.options)}"
                        + _attempts(attempt + 1)) from None
            except (ProtocolError, Urllib3Timeout, MaxRetryError, OSError) as err:
                if attempt + 1 >= policy.attempts:
                    if isinstance(err, ConnectTimeoutError):
                        raise _failure(f"cannot connect to {netloc}", err, self.options,
                                       attempt + 1) from None
                    what = f"request to {who}" if who != netloc else \
                        f"request to {netloc} for {urlsplit(url).path[:200]}"
                    raise _failure(f"{what} failed", err, self.options, attempt + 1) from None
            else:
                if resp.status not in _RETRY_STATUS or attempt + 1 >= policy.attempts:
                    return resp
                retry_after = resp.headers.get("Retry-After")
                _discard(resp)
                cancel.sleep(policy.delay(attempt, retry_after))
                continue
            cancel.sleep(policy.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def request(
        self, ref: Reference, path: str, *, headers: Mapping[str, str] | None = None,
        stream: bool = False, cancel: Cancellation = _NEVER,
    ) -> urllib3.BaseHTTPResponse:
        """GET ``/v2/<repo>/<path>``, answering auth challenges and following redirects
        (without our Authorization header once the redirect leaves the registry host)."""
        return self.request_path(ref, f"/v2/{ref.repository}/{path}", headers=headers,
                                 stream=stream, cancel=cancel)

    @staticmethod
    def _redirect_target(url: str, location: str, who: str) -> str:
        """Where a redirect from ``url`` leads; ``who`` (the server) names it in errors."""
        try:
            target = urljoin(url, location)
            parts = urlsplit(target)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise RegistryError(f"{who} sent an invalid redirect {location[:200]!r}") \
                from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryError(f"{who} sent an invalid redirect {location[:200]!r}")
        if urlsplit(url).scheme == "https" and parts.scheme == "http":
            raise RegistryError(f"{who} redirected from https to plain http; refused")
        return target

    def _unauthorized_message(self, ref: Reference, challenge: str) -> str:
        creds = self._credentials(ref)
        what = "the given credentials" if creds else "anonymous access (no credentials found)"
        return f"unauthorized: {ref.registry} refused {what} to {ref.repository}"

    def _check(self, resp: urllib3.BaseHTTPResponse, ref: Reference, what: str) -> None:
        if resp.status in (200, 206):
            return
        try:
            body = resp.read(_SMALL_BODY)
        except (HTTPError, OSError):
            body = b""
        _discard(resp)
        detail = _error_detail(body)
        suffix = f" ({detail})" if detail else ""
        if resp.status == 401:
            raise Unauthorized(self._unauthorized_message(ref, "") + suffix)
        if resp.status == 403:
            raise Unauthorized(f"unauthorized: access to {ref.repository} is denied{suffix}")
        if resp.status == 404:
            raise NotFound(f"{what} unknown: {ref} not found{suffix}")
        raise RegistryError(f"{ref.registry} answered {_status(resp.status)} for {what}{suffix}"
                            + _gave_up(resp.status, self.options.retry))

    # -- the API -------------------------------------------------------------------------
    def get_manifest(self, ref: Reference, obj: str | None = None, *,
                     limit: int = MAX_MANIFEST) -> tuple[bytes, str]:
        """The raw manifest bytes and their Content-Type, refused above ``limit`` bytes
        before more than that is read (a Content-Length above it is refused unread). A
        broken or too slow answer is asked for again, as any failed request."""
        policy = self.options.retry
        for attempt in range(policy.attempts):
            resp = self.request(ref, f"manifests/{obj or ref.object}",
                                headers={"Accept": ACCEPT}, stream=True)
            try:
                self._check(resp, ref, "manifest")
                length = resp.headers.get("Content-Length", "")
                if _digits(length) and int(length) > limit:
                    raise ManifestTooLarge(f"manifest of {int(length):,} bytes from "
                                           f"{ref.registry} exceeds the limit of {limit:,} bytes")
                data = _read_limited(resp, limit)
                if len(data) > limit:
                    raise ManifestTooLarge(f"manifest from {ref.registry} exceeds the limit of "
                                           f"{limit:,} bytes")
                return data, resp.headers.get("Content-Type", "")
            except _BROKEN as err:
                resp.close()
                if attempt + 1 >= policy.attempts:
                    raise _failure(f"reading the manifest from {ref.registry} failed", err,
                                   self.options, attempt + 1) from None
            except BaseException:
                resp.close()  # the rest of a refused body is not read, nor left for reuse
                raise
            finally:
                resp.release_conn()
            time.sleep(policy.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def get_small_blob(self, ref: Reference, digest: str, size: int, *,
                       limit: int = MAX_MANIFEST) -> bytes:
        """A config-sized blob, read whole (refused above ``limit``), resumed with Range
        like any blob if its stream breaks; the caller verifies its digest."""
        if size > limit:
            raise ManifestError(f"blob {digest} of {size:,} bytes exceeds the limit of "
                                f"{limit:,} bytes")
        buffer = _Buffer(digest, size)
        self.download(ref, digest, buffer)
        return buffer.getvalue()

    def blob_chunks(
        self, ref: Reference, digest: str, offset: int, cancel: Cancellation = _NEVER,
        size: int | None = None,
    ) -> Iterator[bytes]:
        """Stream a blob from ``offset`` (by Range); errors mid-stream propagate. With
        ``size`` (the descriptor's), an answer announcing another length is refused before
        its body is read."""
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = self.request(ref, f"blobs/{digest}", headers=headers, stream=True,
                            cancel=cancel)
        with cancel.watching(resp):
            yield from self._body(resp, ref, digest, offset, size)

    def _body(
        self, resp: urllib3.BaseHTTPResponse, ref: Reference, digest: str, offset: int,
        size: int | None = None,
    ) -> Iterator[bytes]:
        try:
            self._check(resp, ref, f"blob {digest}")
            if size is not None:
                _check_length(resp, digest, offset, size)
            skip = offset if offset and resp.status == 200 else 0  # Range ignored
            # read1: each chunk is what one socket read brought (up to CHUNK), so a stream
            # that breaks loses nothing it delivered: the resume starts after its last byte
            while chunk := resp.read1(CHUNK, decode_content=False):
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                    if not chunk:
                        continue
                yield chunk
        except BaseException:
            resp.close()  # never hand a half-read connection back to the pool
            raise
        finally:
            resp.release_conn()

    def download(
        self, ref: Reference, digest: str, writer: BlobSink,
        progress: Callable[[int], None] | None = None, cancel: Cancellation = _NEVER,
    ) -> None:
        """Fill ``writer`` with the blob, resuming with Range after a broken stream (a
        reset, a body cut short, a stall, a trickle): nothing received is fetched again.
        Gives up after ``attempts`` broken streams in a row that each brought less than
        1 MiB."""
        policy = self.options.retry
        failures = 0
        while True:
            start = writer.written
            try:
                if writer.size is not None and writer.written >= writer.size:
                    return  # every byte is in: the writer's commit checks them
                for chunk in self.blob_chunks(ref, digest, writer.written, cancel,
                                              writer.size):
                    cancel.check()
                    writer.write(chunk)
                    if progress:
                        progress(len(chunk))
                cancel.check()  # a shut-down stream may end quietly
                return
            except _BROKEN as err:
                cancel.check()
                failures = 1 if writer.written - start >= _PROGRESS else failures + 1
                if failures >= policy.attempts:
                    raise _failure(f"download of {digest} failed", err, self.options,
                                   failures) from None
                cancel.sleep(policy.delay(failures - 1))

    # -- for signature sources (sigsources.py) -----------------------------------------------
    def ping(self, ref: Reference) -> Mapping[str, str]:
        """The headers of ``GET /v2/`` sent without credentials, as containers/image pings a
        registry to learn its properties (X-Registry-Supports-Signatures); 200 and 401 are
        both answers, anything else is the registry's error."""
        url = f"{self._base(ref)}/v2/"
        resp = self._send("GET", url, stream=True, host=ref.api_host)
        _discard(resp)
        if resp.status not in (200, 401):
            raise RegistryError(f"{ref.registry} answered HTTP {resp.status} to GET /v2/")
        return resp.headers  # case-insensitive

    def request_path(
        self, ref: Reference, path: str, *, headers: Mapping[str, str] | None = None,
        stream: bool = False, cancel: Cancellation = _NEVER,
    ) -> urllib3.BaseHTTPResponse:
        """GET ``path`` (absolute, e.g. ``/extensions/v2/<repo>/signatures/<digest>``) on the
        registry of ``ref`` exactly as :meth:`request` does under ``/v2/<repo>/``: the same
        credentials and token scope (the repository's pull), challenges and redirects
        (without our Authorization header once a redirect leaves the registry host)."""
        if not path.startswith("/"):
            raise ValueError(f"request_path needs an absolute path, not {path[:100]!r}")
        url = f"{self._base(ref)}{path}"
        registry_origin = _origin(url)
        sent_auth_retry = False
        redirects = 0
        while True:
            hdrs = dict(headers or {})
            same_host = _origin(url) == registry_origin  # scheme too: never downgrade
            auth = self._auth.get((ref.registry, ref.repository)) if same_host else None
            if auth:
                hdrs["Authorization"] = auth
            resp = self._send("GET", url, headers=hdrs, stream=stream,
                              host=ref.api_host if same_host else None, cancel=cancel)
            if resp.status == 401 and not same_host:
                _discard(resp)
                raise Unauthorized(
                    f"unauthorized: {ref.registry} redirected to {urlsplit(url).netloc}, which "
                    "asks for credentials; the registry's are not sent to another host")
            if resp.status == 401 and same_host and not sent_auth_retry:
                challenge = resp.headers.get("WWW-Authenticate", "")
                _discard(resp)
                sent_auth_retry = True
                if self._authenticate(ref, challenge, auth):
                    continue
                raise Unauthorized(self._unauthorized_message(ref, challenge))
            if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                redirects += 1
                location = resp.headers["Location"]
                _discard(resp)
                if redirects > MAX_REDIRECTS:
                    raise RegistryError(f"too many redirects ({MAX_REDIRECTS} followed) fetching "
                                        f"{path} from {ref.registry}")
                url = self._redirect_target(url, location, ref.registry)
                continue
            return resp

    def get_url(
        self, url: str, *, headers: Mapping[str, str] | None = None,
        cancel: Cancellation = _NEVER,
    ) -> urllib3.BaseHTTPResponse:
        """GET a URL that is not a registry endpoint (a signature lookaside), streamed, with
        this client's pools, timeouts and retries and the TLS trust of that host (certs.d):
        no registry credentials are ever sent. Up to 5 redirects are followed (as Go's client
        does for containers/image), never from https to plain http, and the caller's
        ``Authorization`` is dropped once a redirect leaves the original origin."""
        origin = _origin(url)
        redirects = 0
        while True:
            hdrs = dict(headers or {})
            if _origin(url) != origin:
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            parts = urlsplit(url)
            resp = self._send("GET", url, headers=hdrs, stream=True,
                              host=parts.netloc.rpartition("@")[2] or None, cancel=cancel)
            if resp.status not in (301, 302, 303, 307, 308) or "Location" not in resp.headers:
                return resp
            redirects += 1
            location = resp.headers["Location"]
            _discard(resp)
            if redirects > MAX_REDIRECTS:
                raise RegistryError(f"too many redirects ({MAX_REDIRECTS} followed) fetching "
                                    f"{parts.netloc}{parts.path}")
            url = self._redirect_target(url, location, parts.netloc)


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    text = str(reason)
    if "Connection refused" in text:
        return "connection refused"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "certificate verify failed"
    return text.split(": ", 1)[-1] if isinstance(reason, Exception) and ": " in text else text


#: What breaks a response after its headers arrived: resets, a body cut short, stalls and
#: trickles (urllib3 wraps them in ProtocolError or ReadTimeoutError). Not other OSErrors:
#: a disk failing under the writer is not the network's, and is not retried.
_BROKEN = (ProtocolError, Urllib3Timeout, HTTPError, ConnectionError, TimeoutError,
           http.client.HTTPException)


class BlobSink(Protocol):
    """Where :meth:`RegistryClient.download` puts a blob (a store's ``BlobWriter``)."""

    size: int | None
    written: int

    def write(self, data: bytes | memoryview) -> None: ...


class _Buffer:
    """A small blob gathered in memory (the image config), refusing bytes past its size."""

    def __init__(self, digest: str, size: int) -> None:
        self.digest = digest
        self.size: int | None = size
        self.written = 0
        self._parts: list[bytes] = []

    def write(self, data: bytes | memoryview) -> None:
        if self.size is not None and self.written + len(data) > self.size:
            raise DigestMismatch(
                f"blob {self.digest}: more data than the {self.size} bytes announced")
        self._parts.append(bytes(data))
        self.written += len(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def _read_limited(resp: urllib3.BaseHTTPResponse, limit: int) -> bytes:
    """The body, read up to ``limit + 1`` bytes (so the caller sees it is too long). A body
    that ends before its Content-Length raises IncompleteRead: urllib3's ``read(amt)``
    returns a cut body as if it were whole."""
    data = resp.read(limit + 1)
    length = resp.headers.get("Content-Length", "")
    if len(data) <= limit and _digits(length) and len(data) < int(length):
        raise http.client.IncompleteRead(data, int(length) - len(data))
    return data


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


def _check_length(resp: urllib3.BaseHTTPResponse, digest: str, offset: int, size: int) -> None:
    """A blob answer must announce what the manifest says: ``size`` bytes, or from
    ``offset`` on for a 206; else it is another blob (or garbage), refused unread."""
    length = resp.headers.get("Content-Length", "")
    if resp.status == 206:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset or (
                match.group(3) != "*" and int(match.group(3)) != size):
            raise RegistryError(
                f"blob {digest}: asked for bytes {offset}- of {size}, the answer holds "
                f"{resp.headers.get('Content-Range', 'no Content-Range')[:100]!r}")
        expected = size - offset
    else:
        expected = size
    if _digits(length) and int(length) != expected:
        raise DigestMismatch(f"blob {digest}: the answer announces {int(length):,} bytes, "
                             f"{expected:,} expected (size {size:,} in the manifest)")


def _status(status: int) -> str:
    """``HTTP 503 Service Unavailable``."""
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _gave_up(status: int, policy: RetryPolicy) -> str:
    """For a status that is retried, that the attempts ran out on it."""
    return _attempts(policy.attempts) if status in _RETRY_STATUS else ""


def _attempts(n: int) -> str:
    return f" (after {n} attempt{'s' if n != 1 else ''})"


def _causes(err: BaseException) -> Iterator[BaseException]:
    """``err``, what it wraps (urllib3 puts causes in args), and their causes."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [a for a in e.args if isinstance(a, BaseException)]
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]


def _describe(err: BaseException, options: RegistryOptions) -> str:
    """What went wrong with a connection, in words naming the fault (a timeout and which,
    a reset, a body cut short, ...)."""
    causes = list(_causes(err))
    for e in causes:
        if isinstance(e, _TooSlow):
            return str(e)
    for e in causes:
        if isinstance(e, ConnectTimeoutError) and not isinstance(e, NewConnectionError):
            return f"timed out: no connection within {options.connect_timeout:g} s"
        if isinstance(e, ReadTimeoutError | TimeoutError) and not isinstance(e, _TooSlow):
            return f"timed out: no data for {options.read_timeout:g} s (read_timeout)"
        if isinstance(e, http.client.IncompleteRead):
            missing = e.expected
            return ("connection closed before the end of the body"
                    + (f", {missing:,} bytes short of its Content-Length"
                       if isinstance(missing, int) and missing else ""))
        if isinstance(e, ConnectionResetError):
            return "connection reset by peer"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, http.client.RemoteDisconnected):
            return "connection closed without an answer"
        if isinstance(e, http.client.BadStatusLine | http.client.LineTooLong):
            return f"not an HTTP answer ({str(e)[:80]!r})"
        if isinstance(e, BrokenPipeError):
            return "connection closed while sending the request"
    return _reason(err)


def _failure(context: str, err: BaseException, options: RegistryOptions,
             attempts: int | None = None) -> RegistryError:
    """The error for a request that failed for good: a :class:`RegistryTimeout` when
    the last failure was a timeout, else :class:`RegistryUnreachable`."""
    text = _describe(err, options)
    cls = RegistryTimeout if text.startswith("timed out") else RegistryUnreachable
    return cls(f"{context}: {text}" + (_attempts(attempts) if attempts else ""))


def _proxy_settings(config: Mapping[str, str] | None) -> dict[str, str]:
    """``{"https": URL, "http": URL, "no": "a,b"}`` from the config file's ``[proxy]`` or,
    without one, from the environment (lower-case variables win, as in curl)."""
    if config is not None:
        raw = {"https": config.get("https_proxy"), "http": config.get("http_proxy"),
               "no": config.get("no_proxy")}
    else:
        env = os.environ
        raw = {k: env.get(f"{k}_proxy") or env.get(f"{k.upper()}_PROXY")
               for k in ("https", "http", "no")}
    out: dict[str, str] = {}
    for key, value in raw.items():
        if value and value.strip():
            value = value.strip()
            if key != "no" and "://" not in value:
                value = "http://" + value  # curl's default scheme for a proxy
            out[key] = value
    return out


def _no_proxy(no: str, target: str) -> bool:
    """Whether NO_PROXY's list covers ``target`` (host[:port]): ``*``, a host, a domain
    (``example.com`` and ``.example.com`` both cover its subdomains), an IP, a CIDR
    range, each optionally with ``:port``."""
    import ipaddress

    host, _, port = target.rpartition(":") if not target.endswith("]") else (target, "", "")
    if not host:
        host, port = target, ""
    host = host.strip("[]").lower()
    for item in (x.strip().lower() for x in no.split(",")):
        if not item:
            continue
        if item == "*":
            return True
        want_port = ""
        if item.count(":") == 1 and not item.startswith("["):
            item, want_port = item.split(":")
        item = item.strip("[]")
        if want_port and want_port != port:
            continue
        try:
            if "/" in item:
                if ipaddress.ip_address(host) in ipaddress.ip_network(item, strict=False):
                    return True
                continue
            if ipaddress.ip_address(host) == ipaddress.ip_address(item):
                return True
            continue
        except ValueError:
            pass
        domain = item.lstrip(".")
        if host == domain or host.endswith("." + domain):
            return True
    return False


def _proxy_for(proxies: Mapping[str, str], scheme: str, target: str) -> str | None:
    """The proxy URL for a request to ``target`` over ``scheme``, or None (direct)."""
    proxy = proxies.get(scheme)
    if proxy is None or _no_proxy(proxies.get("no", ""), target):
        return None
    return proxy
