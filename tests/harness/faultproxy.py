"""A TCP proxy on 127.0.0.1 in front of a real registry that makes the link misbehave:
slow (bytes per second), or cut once after N bytes of a blob response. It does not invent
registry answers: everything the client sees was sent by the real registry.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

_REQUEST = re.compile(rb"^(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.[01]\r\n(.*?)\r\n\r\n",
                      re.S)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


class FaultProxy:
    """``with FaultProxy("127.0.0.1:5000", rate=..., cut_blob_after=...) as p: p.host``."""

    def __init__(self, upstream: str, *, rate: float | None = None,
                 cut_blob_after: int | None = None, fail_first: int = 0,
                 fail_status: int = 503, redirect_blobs_to: str | None = None,
                 bind: str = "127.0.0.1") -> None:
        """``fail_first`` answers the first N requests with ``fail_status`` itself;
        ``redirect_blobs_to`` answers blob GETs with a 307 to that host:port."""
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rate = rate
        self.cut_blob_after = cut_blob_after
        self.cuts = 0
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.redirect_blobs_to = redirect_blobs_to
        self.injected = 0
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((bind, 0))
        self._server.listen(32)
        self._server.settimeout(0.2)
        self._threads: list[threading.Thread] = []

    def blob_gets(self, digests: Iterable[str] | None = None, since: int = 0
                  ) -> Counter[str]:
        """How many times each blob was requested with GET (Range requests included),
        by digest; only ``digests`` if given (each listed, zero if never requested);
        only requests from ``since`` on (an earlier ``len(proxy.requests)``)."""
        with self._lock:
            seen = self.requests[since:]
        counts: Counter[str] = Counter()
        if digests is not None:
            counts.update({d: 0 for d in digests})
        for r in seen:
            if r.method == "GET" and "/blobs/" in r.path:
                digest = r.path.rsplit("/blobs/", 1)[1].split("?", 1)[0]
                if digests is None or digest in counts:
                    counts[digest] += 1
        return counts

    @property
    def host(self) -> str:
        addr, port = self._server.getsockname()
        return f"{addr}:{port}"

    def __enter__(self) -> FaultProxy:
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.close()
        for t in self._threads:
            t.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(self.upstream, timeout=30)
            state = {"blob": False, "sent": 0}
            for src, dst, fn in ((client, upstream, self._up), (upstream, client, self._down)):
                t = threading.Thread(target=fn, args=(src, dst, state), daemon=True)
                t.start()
                self._threads.append(t)

    def _inject(self, seen: Seen) -> bytes | None:
        """A response of our own instead of forwarding, or None."""
        with self._lock:
            if self.injected < self.fail_first:
                self.injected += 1
                return (f"HTTP/1.1 {self.fail_status} Injected\r\nContent-Length: 0\r\n"
                        "Retry-After: 0\r\n\r\n").encode()
        if self.redirect_blobs_to and "/blobs/sha256:" in seen.path and seen.method == "GET":
            return (f"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://"
                    f"{self.redirect_blobs_to}{seen.path}\r\nContent-Length: 0\r\n\r\n"
                    ).encode()
        return None

    def _up(self, src: socket.socket, dst: socket.socket, state: dict[str, object]) -> None:
        self._pump(src, dst, state, upstream=True)

    def _down(self, src: socket.socket, dst: socket.socket, state: dict[str, object]) -> None:
        self._pump(src, dst, state, upstream=False)

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict[str, object],
              upstream: bool) -> None:
        try:
            src.settimeout(0.5)  # in the try: the other direction may have closed it already
            while not self._stop.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if upstream:
                    m = _REQUEST.match(data)
                    if m:
                        headers = dict(
                            line.decode().split(": ", 1) for line in m.group(3).split(b"\r\n")
                            if b": " in line
                        )
                        seen = Seen(m.group(1).decode(), m.group(2).decode(), headers)
                        with self._lock:
                            self.requests.append(seen)
                        state["blob"] = "/blobs/sha256:" in seen.path and seen.method == "GET"
                        state["sent"] = 0
                        answer = self._inject(seen)
                        if answer is not None:
                            src.sendall(answer)
                            continue
                else:
                    if self.rate:
                        time.sleep(len(data) / self.rate)
                    cut = self.cut_blob_after
                    if cut is not None and state["blob"] and self.cuts == 0:
                        sent = int(state["sent"])  # type: ignore[call-overload]
                        if sent + len(data) > cut:
                            dst.sendall(data[: max(cut - sent, 0)])
                            with self._lock:
                                self.cuts += 1
                            break
                        state["sent"] = sent + len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
