"""A real HTTP forward proxy on 127.0.0.1: Debian's ``tinyproxy``, started per test.

It forwards plain-HTTP requests (absolute-form ``GET http://host/...``) and tunnels TLS
with ``CONNECT host:port``. What it did is read back from its log: :meth:`requests` gives
(method, target) pairs, so a test can tell that traffic went through the proxy, and which
hosts were reached through it and which were not.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .registry import free_port

_LINE = re.compile(r'Request \(file descriptor \d+\): (\S+) (\S+) HTTP/')


class ForwardProxy:
    """``with ForwardProxy() as p: p.url`` -> ``http://127.0.0.1:PORT``.

    ``allow`` lists client addresses allowed to use it (default: loopback only);
    ``connect_ports`` restricts CONNECT targets (default: any port, as tests use random
    ports)."""

    def __init__(self, workdir: Path | None = None) -> None:
        if shutil.which("tinyproxy") is None:
            raise FileNotFoundError("tinyproxy not installed (apt install tinyproxy)")
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="tinyproxy-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "tinyproxy.log"

    def _config(self) -> str:
        # No ConnectPort line: CONNECT to any port (the registries listen on random ones).
        # No upstream, no filtering, no Via header games: a plain forward proxy.
        return "\n".join([
            "User root", "Group root",
            f"Port {self.port}", "Listen 127.0.0.1", "Timeout 60",
            f"LogFile \"{self.log_path}\"", "LogLevel Info",
            f"PidFile \"{self.workdir / 'tinyproxy.pid'}\"",
            "MaxClients 64", "Allow 127.0.0.1", "DisableViaHeader Yes", "",
        ])

    def start(self) -> ForwardProxy:
        for _attempt in range(5):
            self.port = free_port()
            conf = self.workdir / "tinyproxy.conf"
            conf.write_text(self._config())
            self._proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return self
                except OSError:
                    time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"tinyproxy did not start: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def requests(self) -> list[tuple[str, str]]:
        """(method, target) of every request the proxy received, in order: ``CONNECT
        host:port`` for TLS tunnels, ``GET http://host/path`` for plain HTTP."""
        time.sleep(0.1)  # let it flush
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [(m.group(1), m.group(2)) for m in _LINE.finditer(text)]

    def hosts(self) -> set[str]:
        """The ``host:port`` of every target reached through the proxy."""
        out = set()
        for method, target in self.requests():
            if method == "CONNECT":
                out.add(target)
            else:
                out.add(target.split("://", 1)[-1].split("/", 1)[0])
        return out

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> ForwardProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
