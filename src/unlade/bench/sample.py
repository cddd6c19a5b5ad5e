"""Sample a process tree every 100 ms: memory, CPU, process and thread counts.

``TreeSampler(pid)`` is a thread that, until :meth:`TreeSampler.stop`, walks the tree under
``pid`` (and under any ``extra_pids``, such as a long-lived daemon) and records per sample:

- ``rss``: the sum of the resident set sizes of every process in the tree (bytes);
- ``cpu_percent``: CPU time the live processes used since the previous sample, divided by
  the time between the samples (100 % = one core busy);
- ``procs`` and ``threads``: how many processes and threads the tree had.

It also keeps, per process, the last ``VmHWM`` it read (the kernel's peak RSS of that
process, exact up to the growth in the last interval before the process exits) and its CPU
seconds. Processes listed in ``exclude`` (a launcher), and the children of those in
``exclude_children_of`` (wrappers such as GNU time), are walked through but not counted,
and so is a child caught between its fork and its exec (same command line as its parent):
its memory is its parent's.

psutil is imported only when a sampler is created.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

INTERVAL = 0.1


def read_status(pid: int) -> dict[str, str]:
    """``/proc/PID/status`` as a dict (empty if the process is gone or a zombie)."""
    out: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                out[key] = value.strip()
    except OSError:
        return {}
    return out


def vm_hwm(pid: int) -> int | None:
    """Peak RSS of ``pid`` in bytes (``VmHWM``), or None when unavailable."""
    value = read_status(pid).get("VmHWM")
    if not value:
        return None
    return int(value.split()[0]) * 1024


def cpu_times_total(pid: int) -> tuple[float, float]:
    """(own user+system, reaped children's user+system) seconds of ``pid`` from /proc."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(x) / tick for x in fields[11:15])
    return utime + stime, cutime + cstime


@dataclass
class ProcInfo:
    """What the sampler saw of one process."""

    pid: int
    name: str
    ppid: int
    peak_rss: int = 0          # largest VmHWM read (bytes)
    cpu_first: float = 0.0     # user+system at first sight (0 if born after the first sample)
    cpu_last: float = 0.0      # user+system at the last sample
    first_seen: float = 0.0    # seconds since the sampler started
    last_seen: float = 0.0

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_last - self.cpu_first

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "ppid": self.ppid,
                "peak_rss_bytes": self.peak_rss, "cpu_s": round(self.cpu_seconds, 3),
                "first_seen_s": round(self.first_seen, 3),
                "last_seen_s": round(self.last_seen, 3)}


@dataclass
class Samples:
    """The time series of one sampler (parallel lists)."""

    t: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    cpu_percent: list[float] = field(default_factory=list)
    procs: list[int] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, list[Any]]:
        return {"t": [round(x, 3) for x in self.t], "rss": self.rss,
                "cpu_percent": [round(x, 1) for x in self.cpu_percent],
                "procs": self.procs, "threads": self.threads}


class TreeSampler(threading.Thread):
    """Sample the process tree under ``pid`` every ``interval`` seconds (see module doc).

    Use as a context manager or call :meth:`start` and :meth:`stop`. Results: ``samples``
    (:class:`Samples`), ``processes`` (pid -> :class:`ProcInfo`) and the ``peak_*`` and
    ``cpu_seconds`` properties.
    """

    def __init__(self, pid: int, *, extra_pids: Iterable[int] = (),
                 exclude: Iterable[int] = (), exclude_children_of: Iterable[int] = (),
                 interval: float = INTERVAL) -> None:
        super().__init__(name=f"TreeSampler-{pid}", daemon=True)
        import psutil

        self._psutil = psutil
        self.roots = [pid, *extra_pids]
        self.exclude = set(exclude)
        self.exclude_children_of = set(exclude_children_of)
        self.interval = interval
        self.samples = Samples()
        self.processes: dict[int, ProcInfo] = {}
        self._handles: dict[int, Any] = {}
        self._stop_event = threading.Event()
        self._t0 = time.monotonic()
        self._prev_t: float | None = None
        self._prev_cpu: dict[int, float] = {}
        self.error: BaseException | None = None

    # -- control -----------------------------------------------------------------------
    def __enter__(self) -> TreeSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._t0 = time.monotonic()
        self.sample()  # a first sample right away: baseline CPU of processes already there
        super().start()

    def stop(self) -> None:
        """Take a last sample and stop the thread."""
        self._stop_event.set()
        if self.is_alive():
            self.join()
        with contextlib.suppress(Exception):
            self.sample()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.interval):
                self.sample()
        except BaseException as err:  # pragma: no cover - reported by the caller
            self.error = err

    # -- sampling ----------------------------------------------------------------------
    def _handle(self, pid: int) -> Any:
        h = self._handles.get(pid)
        if h is None:
            h = self._handles[pid] = self._psutil.Process(pid)
        return h

    def _tree(self) -> list[Any]:
        psutil = self._psutil
        seen: dict[int, Any] = {}
        for root in self.roots:
            try:
                h = self._handle(root)
                seen[root] = h
                for child in h.children(recursive=True):
                    seen.setdefault(child.pid, self._handles.setdefault(child.pid, child))
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
        out = []
        for pid, h in seen.items():
            if pid in self.exclude:
                continue
            if self.exclude_children_of:
                try:
                    if h.ppid() in self.exclude_children_of:
                        continue
                except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                    continue
            out.append(h)
        return out

    def sample(self) -> None:
        """Take one sample now (the thread calls this every ``interval``)."""
        psutil = self._psutil
        now = time.monotonic()
        rel = now - self._t0
        first = self._prev_t is None
        rss_sum = threads = procs = 0
        cpu_delta = 0.0
        cpu_now: dict[int, float] = {}
        tree = self._tree()
        cmdlines: dict[int, tuple[str, ...]] = {}
        for h in tree:
            with contextlib.suppress(psutil.Error):
                cmdlines[h.pid] = tuple(h.cmdline())
        for h in tree:
            try:
                with h.oneshot():
                    mem = h.memory_info().rss
                    ct = h.cpu_times()
                    nthreads = h.num_threads()
                    name = h.name()
                    ppid = h.ppid()
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            if ppid in cmdlines and cmdlines.get(h.pid) == cmdlines[ppid]:
                # Forked but not yet exec'd (Go's os/exec, posix_spawn): its memory is its
                # parent's, so counting it would count the parent twice.
                continue
            hwm = vm_hwm(h.pid) or mem
            cpu = ct.user + ct.system
            info = self.processes.get(h.pid)
            if info is None:
                info = self.processes[h.pid] = ProcInfo(
                    h.pid, name, ppid, cpu_first=cpu if first else 0.0, first_seen=rel)
            info.peak_rss = max(info.peak_rss, hwm)
            info.cpu_last = cpu
            info.last_seen = rel
            cpu_now[h.pid] = cpu
            cpu_delta += cpu - self._prev_cpu.get(h.pid, info.cpu_first)
            rss_sum += mem
            threads += nthreads
            procs += 1
        pct = 0.0
        if self._prev_t is not None and now > self._prev_t:
            pct = max(0.0, 100.0 * cpu_delta / (now - self._prev_t))
        self._prev_t, self._prev_cpu = now, cpu_now
        s = self.samples
        s.t.append(rel)
        s.rss.append(rss_sum)
        s.cpu_percent.append(pct)
        s.procs.append(procs)
        s.threads.append(threads)

    # -- results -----------------------------------------------------------------------
    @property
    def peak_rss(self) -> int:
        """Largest sampled sum of RSS over the tree (bytes)."""
        return max(self.samples.rss, default=0)

    @property
    def peak_cpu_percent(self) -> float:
        return max(self.samples.cpu_percent, default=0.0)

    @property
    def peak_procs(self) -> int:
        return max(self.samples.procs, default=0)

    @property
    def peak_threads(self) -> int:
        return max(self.samples.threads, default=0)

    @property
    def peak_rss_per_process_sum(self) -> int:
        """Sum over the processes seen of each one's peak (``VmHWM``): an upper bound of the
        tree's simultaneous peak, and exact for concurrently running processes."""
        return sum(p.peak_rss for p in self.processes.values())

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds the sampled processes used while sampled (children reaped between
        two samples lose their last interval; use rusage when exact figures matter)."""
        return sum(p.cpu_seconds for p in self.processes.values())
