"""``unlade bench run``: pull and unpack one image with unlade (into a flat rootfs, and into
overlayfs snapshots), containerd, umoci and skopeo, measured the same way for every tool,
and report medians (see :mod:`unlade.bench.report`).

Entry points: :func:`run_benchmark` (library), :func:`add_run_arguments` and
:func:`run_command` (for ``unlade bench run``), :func:`main` (``python -m unlade.bench.run``).

What one run of a tool is (every one needs root):

- **pull** phase: the tool's store is empty and the page cache dropped
  (``sync; echo 3 > /proc/sys/vm/drop_caches``); the wall time runs from the start of the
  command to a complete unpacked image.

  - unlade: ``python -m unlade --root STORE pull --plain-http -q REF --rootfs DIR``
  - unlade-snap: ``python -m unlade --root STORE pull --plain-http -q --snapshotter
    overlayfs REF``: each layer into an overlayfs snapshot of its own, layers unpacked in
    parallel (the like-for-like comparison with containerd)
  - containerd: a fresh private daemon (see :class:`Containerd`), then
    ``ctr images pull --plain-http --snapshotter overlayfs REF``
  - umoci: ``skopeo copy docker://REF oci:LAYOUT:bench`` then
    ``umoci raw unpack --image LAYOUT:bench ROOTFS``
  - skopeo: ``skopeo copy docker://REF oci:LAYOUT:bench`` only (download-only: no unpack)

- **unpack** phase: the content is already in the tool's store (put there untimed); only
  the unpacked state is removed between runs, and the page cache is dropped.

  - unlade: the same pull with the store kept, into a fresh ``--rootfs`` (blobs are read
    from the store; only the manifest is fetched again)
  - unlade-snap: the same pull into a fresh copy of a store holding only the blobs (made
    untimed with ``pull --no-unpack``; the copy hardlinks the blobs and copies ``meta.db``),
    so that no snapshot exists before the run and every layer is unpacked
  - containerd: the image's snapshots are deleted, content kept (the config's
    ``gc.ref.snapshot`` label is dropped and the GC run, see :meth:`Containerd.drop_unpacked`;
    ``ctr snapshots rm`` fails once the GC has taken part of the chain), then
    ``ctr snapshots unpack --snapshotter overlayfs MANIFEST`` (containerd 1.6 has no
    ``ctr images unpack``; this calls the same client-side ``image.Unpack``)
  - umoci: ``umoci raw unpack`` into a fresh directory from the OCI layout skopeo wrote
  - limit: ``unpigz -dc LAYER | tar -x`` (``zstd -dc`` for zstd) of each layer in turn, from
    blobs on the same filesystem: what the disk and decompressor allow

Every command is started by a small launcher process that times it and collects its rusage.
Figures of a run:

- ``wall_s``: from the first command's start to the last one's exit (launcher clock).
- ``cpu_s``: user+system of the commands and all their reaped descendants (rusage), plus,
  for containerd, what the daemon and its children (``unpigz``) used during the run.
- ``peak_rss_bytes``: the sum of the peak RSS of each process of the tree. A command's own
  peak is exact: GNU time (``/usr/bin/time -f %M``, Debian package ``time``) wraps every
  command, and without it the launcher's ``ru_maxrss`` counts when it is above the
  launcher's own size (which a spawned child inherits as a floor). Other processes (a
  command's children, the daemon's ``unpigz``) count with the last ``VmHWM`` sampled every
  100 ms. containerd's daemon counts with its ``VmHWM``, reset before the run with
  ``echo 5 > /proc/PID/clear_refs``. With several sequential commands (umoci's pull) the
  largest command's tree counts.
- ``peak_rss_sampled_bytes``, ``peak_cpu_percent``, ``peak_procs``, ``peak_threads`` and
  the ``samples`` time series come from :class:`unlade.bench.sample.TreeSampler`.
- unlade and unlade-snap also get one extra, untimed run per phase under ``tracemalloc``:
  ``peak_python_heap_bytes``.

A run counts only if its result has the expected number of entries and regular-file bytes
(computed from the layers by replaying them, whiteouts included). containerd's result is
checked through ``ctr images mount`` (a read-only view of the top snapshot, which must
exist already), walked, then ``ctr images unmount --rm``; unlade-snap's likewise through
``unlade mount`` (once every layer's snapshot is recorded committed, so that the mount
unpacks nothing itself), walked, then ``unlade unmount``.

After the phases, two more figures (neither ever fails the benchmark; a failure is recorded):

- **start-up** (:func:`measure_startup`): ``python -m unlade --help`` with unlade's
  environment, one untimed warm-up then ``max(runs, 5)`` runs timed with
  ``time.perf_counter``, and one run under ``-X importtime`` (:func:`parse_importtime`).
- **memory flatness** (``reference_image``): unlade and unlade-snap pull and unpack a second,
  smaller image of the same registry ``min(runs, 3)`` times per phase, measured as the
  timed runs are but recorded with ``"kind": "reference"`` (kept out of the summary). Peak
  RSS that does not grow with the image is a target; these runs show whether it holds.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform as _platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..manifest import chain_ids
from .sample import TreeSampler, cpu_times_total, vm_hwm

TOOLS = ("unlade", "unlade-snap", "unlade-enc", "containerd", "umoci", "skopeo", "limit")
DEFAULT_TOOLS = TOOLS
PHASES = ("pull", "unpack")
#: Which phases each tool takes part in.
TOOL_PHASES: dict[str, tuple[str, ...]] = {
    "unlade": PHASES, "unlade-snap": PHASES, "unlade-enc": PHASES, "containerd": PHASES,
    "umoci": PHASES, "skopeo": ("pull",), "limit": ("unpack",),
}
#: The tag suffix of the benchmark image's encrypted copy (made by skopeo, untimed).
ENCRYPTED_SUFFIX = "-encrypted"
DOWNLOAD_ONLY = frozenset({"skopeo"})
SNAPSHOTTER = "overlayfs"
NAMESPACE = "unlade-bench"
OCI_TAG = "bench"
RUN_TIMEOUT = 3600.0
MiB = 1 << 20
#: Tools whose memory is compared across image sizes (see ``reference_image``).
FLATNESS_TOOLS = ("unlade", "unlade-snap")
#: At most this many runs per phase and tool on the reference image.
REFERENCE_RUNS = 3
#: At least this many timed runs of ``unlade --help``.
STARTUP_RUNS = 5
#: How many of the slowest top-level imports ``-X importtime`` keeps.
TOP_IMPORTS = 8

Log = Callable[[str], None]


def _stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """The benchmark could not be set up or a tool failed in an unexpected way."""


# ----------------------------------------------------------------------------------------------
# Small system helpers


def drop_caches() -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def clear_refs(pid: int) -> None:
    """Reset the peak RSS (``VmHWM``) of ``pid`` to its current RSS."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5\n")


def _mountinfo() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mnt = left.split()[4].encode().decode("unicode_escape")
            out.append((mnt, right.split()[0]))
    return out


def fs_type(path: str | os.PathLike[str]) -> str:
    """The type of the filesystem ``path`` is on (``ext4``, ``tmpfs``, …)."""
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    for mnt, fstype in _mountinfo():
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, fstype
    return kind


def unmount_under(path: str | os.PathLike[str]) -> list[str]:
    """Unmount everything mounted at or below ``path`` (deepest first); return them."""
    real = os.path.realpath(path)
    mounts = [m for m, _ in _mountinfo() if m == real or m.startswith(real.rstrip("/") + "/")]
    done = []
    for mnt in sorted(set(mounts), key=len, reverse=True):
        if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        done.append(mnt)
    return done


def remove_tree(path: str | os.PathLike[str]) -> None:
    """``rm -rf`` after unmounting anything below ``path``."""
    if not os.path.lexists(path):
        return
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", os.fspath(path)], check=False)


def walk_tree(root: str | os.PathLike[str]) -> tuple[int, int]:
    """(entries below ``root``, bytes of its regular files): ``root`` itself is not counted,
    symlinks are not followed, and every hardlinked path counts with its size."""
    entries = nbytes = 0
    stack = [os.fspath(root)]
    while stack:
        top = stack.pop()
        with os.scandir(top) as it:
            for e in it:
                entries += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    nbytes += e.stat(follow_symlinks=False).st_size
    return entries, nbytes


# ----------------------------------------------------------------------------------------------
# The image


@dataclass
class LayerFacts:
    digest: str
    size: int
    media_type: str
    compression: str
    diff_id: str
    path: Path  # the blob in unlade's store (on the benchmark filesystem)
    uncompressed: int = 0


@dataclass
class ImageFacts:
    """What the checks and throughput figures need to know about the image."""

    reference: str
    manifest_digest: str
    config_digest: str
    platform: str
    layers: list[LayerFacts]
    entries: int
    file_bytes: int
    tar_entries: int = 0       # what plain ``tar -x`` of the layers leaves (whiteouts kept)
    tar_file_bytes: int = 0

    @property
    def compressed_bytes(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def uncompressed_bytes(self) -> int:
        return sum(layer.uncompressed for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference, "manifest_digest": self.manifest_digest,
            "config_digest": self.config_digest, "platform": self.platform,
            "layers": [{"digest": la.digest, "size": la.size, "media_type": la.media_type,
                        "diff_id": la.diff_id, "uncompressed": la.uncompressed}
                       for la in self.layers],
            "compressed_bytes": self.compressed_bytes,
            "uncompressed_bytes": self.uncompressed_bytes,
            "entries": self.entries, "file_bytes": self.file_bytes,
            "tar_entries": self.tar_entries, "tar_file_bytes": self.tar_file_bytes,
        }


def _norm(name: str) -> str | None:
    parts: list[str] = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return "/".join(parts) or None


class _Replay:
    """A rootfs as a dict path -> (type, size, link target), built from tar headers.

    ``whiteouts=True`` is what an unpacker does (whiteouts and opaque markers delete lower
    entries, as containerd's ``applyNaive``); ``False`` is what plain ``tar -x`` does (the
    markers stay as empty files). Parent paths resolve through symlinks inside the root.
    """

    def __init__(self, whiteouts: bool) -> None:
        self.whiteouts = whiteouts
        self.tree: dict[str, tuple[str, int, str]] = {}
        self.added: set[str] = set()

    def new_layer(self) -> None:
        self.added = set()

    def _drop_below(self, path: str, keep: set[str] | None = None) -> None:
        prefix = path + "/" if path else ""
        for p in [p for p in self.tree if p.startswith(prefix) and p != path]:
            if keep is None or p not in keep:
                del self.tree[p]

    def resolve_parent(self, parent: str) -> str:
        """``parent`` with symlinks (in the tree) resolved, scoped to the root; missing
        directories are created."""
        todo = [p for p in parent.split("/") if p]
        done: list[str] = []
        hops = 0
        while todo:
            part = todo.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            cur = "/".join([*done, part])
            node = self.tree.get(cur)
            if node is not None and node[0] == "2" and hops < 255:  # symlink
                hops += 1
                target = node[2]
                base = [] if target.startswith("/") else list(done)
                todo = [*base, *[t for t in target.split("/") if t and t != "."], *todo]
                done = []
                continue
            if node is None or node[0] != "5":
                self.tree[cur] = ("5", 0, "")
            done.append(part)
        return "/".join(done)

    def add(self, name: str, kind: str, size: int, linkname: str) -> None:
        parent, _, base = name.rpartition("/")
        parent = self.resolve_parent(parent)
        if self.whiteouts and base == ".wh..wh..opq":
            self._drop_below(parent, keep=self.added)
            return
        if self.whiteouts and base.startswith(".wh."):
            gone = (parent + "/" if parent else "") + base[4:]
            self.tree.pop(gone, None)
            self._drop_below(gone)
            return
        path = (parent + "/" if parent else "") + base
        old = self.tree.get(path)
        if kind == "1":  # hardlink: a regular file sharing its target's size
            lparent, _, lbase = (_norm(linkname) or "").rpartition("/")
            lpath = "/".join(p for p in (self.resolve_parent(lparent), lbase) if p)
            target = self.tree.get(lpath, ("0", 0, ""))
            kind, size, linkname = "0", target[1], ""
        elif kind in ("7", "\0"):
            kind = "0"
        if old is not None and old[0] == "5" and kind == "5":
            pass  # directories merge
        elif old is not None and old[0] == "5":
            self._drop_below(path)
        self.tree[path] = (kind, size if kind == "0" else 0, linkname if kind == "2" else "")
        self.added.add(path)

    def counts(self) -> tuple[int, int]:
        return len(self.tree), sum(s for k, s, _ in self.tree.values() if k == "0")


def expected_tree(layers: Sequence[LayerFacts]) -> tuple[tuple[int, int], tuple[int, int]]:
    """((entries, regular-file bytes) of the rootfs the layers make, the same for plain
    ``tar -x`` of each layer in turn), by replaying the layers' tar headers: whiteouts and
    opaque markers, replaced entries, implied parent directories, symlinked parents and
    hardlinks (which count with their target's size). Fills in ``uncompressed``."""
    from ..decompress import open_decompressed
    from ..tarstream import TarReader

    class Counting:
        def __init__(self, raw: Any) -> None:
            self.raw, self.n = raw, 0

        def read(self, n: int = -1) -> bytes:
            b: bytes = self.raw.read(n)
            self.n += len(b)
            return b

    unpacker, tar = _Replay(whiteouts=True), _Replay(whiteouts=False)
    for layer in layers:
        unpacker.new_layer()
        tar.new_layer()
        with open(layer.path, "rb") as raw:
            counted = Counting(open_decompressed(raw, layer.compression))
            for e in TarReader(counted):  # type: ignore[arg-type]
                name = _norm(e.name)
                if e.type == "g" or name is None:
                    continue
                for r in (unpacker, tar):
                    r.add(name, e.type, e.size, e.linkname)
        layer.uncompressed = counted.n
    return unpacker.counts(), tar.counts()


def inspect_image(ref: str, store: Path) -> ImageFacts:
    """Pull ``ref`` with unlade into ``store`` (untimed; this is also unlade's store for the
    unpack phase) and work out what the image unpacks to."""
    from ..client import Client

    client = Client(store, plain_http=True)
    result = client.pull(ref)
    layers = [LayerFacts(la.digest, la.size, la.media_type,
                         _compression(la.media_type), la.diff_id, client.store.path(la.digest))
              for la in result.layers]
    (entries, file_bytes), (tar_entries, tar_file_bytes) = expected_tree(layers)
    return ImageFacts(ref, result.manifest_digest, result.config_digest, result.platform,
                      layers, entries, file_bytes, tar_entries, tar_file_bytes)


def _compression(media_type: str) -> str:
    if media_type.endswith("zstd"):
        return "zstd"
    if media_type.endswith("gzip") or media_type.endswith(".gzip"):
        return "gzip"
    return "none"


# ----------------------------------------------------------------------------------------------
# Machine and versions


def machine_info(workdir: Path) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    os_name = ""
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    return {
        "cpu_model": cpu, "cores": os.cpu_count(), "memory_bytes": mem,
        "kernel": _platform.release(), "os": os_name, "fs_type": fs_type(workdir),
        "work_dir": str(workdir), "python": _platform.python_version(),
    }


def _first_line(cmd: Sequence[str]) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (p.stdout or p.stderr).strip()
    return text.splitlines()[0].strip() if text else None


def tool_versions() -> dict[str, str | None]:
    from .. import __version__

    return {
        "unlade": __version__,
        "python": _platform.python_version(),
        "containerd": _first_line(["containerd", "--version"]),
        "ctr": _first_line(["ctr", "--version"]),
        "umoci": _first_line(["umoci", "--version"]),
        "skopeo": _first_line(["skopeo", "--version"]),
        "unpigz": _first_line(["unpigz", "--version"]),
        "zstd": _first_line(["zstd", "--version"]),
        "tar": _first_line(["tar", "--version"]),
        "time": _first_line([GNU_TIME, "--version"]) if os.access(GNU_TIME, os.X_OK) else None,
    }


# ----------------------------------------------------------------------------------------------
# Launching and measuring

#: GNU time, when installed, wraps every command: it forks the command from its own small
#: process, so its ``%M`` is the command's true peak RSS (see :data:`LAUNCHER`).
GNU_TIME = "/usr/bin/time"

#: Runs steps (each a pipeline of commands) one after another and reports, per command, its
#: pid, exit status and rusage (the command and its reaped descendants). A child that a
#: process spawns starts its ``ru_maxrss`` at the spawner's peak RSS (exec keeps the larger
#: of the two), so from this ~8 MiB launcher ``ru_maxrss`` means something only above that
#: ``floor``; wrapped in GNU time (a ~1 MiB process that forks), ``%M`` is exact.
LAUNCHER = r"""
import json, os, sys, time
spec = json.load(open(sys.argv[1]))
env, wrapper, tmp = spec["env"], spec["wrapper"], os.path.dirname(sys.argv[2])
out = {"steps": [], "floor": 0, "wrapped": bool(wrapper)}
t0 = time.monotonic()
n = 0
for step in spec["steps"]:
    fds, pids, prev, mfiles = [], [], None, []
    s0 = time.monotonic()
    err = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for i, argv in enumerate(step):
        acts = []
        if prev is not None:
            acts.append((os.POSIX_SPAWN_DUP2, prev, 0))
        else:
            acts.append((os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0))
        if i + 1 < len(step):
            r, w = os.pipe()
            acts.append((os.POSIX_SPAWN_DUP2, w, 1))
            fds += [r, w]
        else:
            r = None
            acts.append((os.POSIX_SPAWN_DUP2, err, 1))
        acts.append((os.POSIX_SPAWN_DUP2, err, 2))
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                out["floor"] = max(out["floor"], int(line.split()[1]) * 1024)
        n += 1
        mfile = os.path.join(tmp, "maxrss-%d" % n)
        mfiles.append(mfile)
        full = [wrapper, "-f", "%M", "-o", mfile, "--", *argv] if wrapper else argv
        try:
            pids.append(os.posix_spawnp(full[0], full, env, file_actions=acts))
        except OSError as e:
            os.write(err, ("cannot run %s: %s\n" % (full[0], e)).encode())
            pids.append(-1)
        prev = r
    for fd in fds:
        os.close(fd)
    os.close(err)
    res = []
    for pid, argv, mfile in zip(pids, step, mfiles):
        if pid < 0:
            res.append({"pid": pid, "argv0": os.path.basename(argv[0]), "code": 127,
                        "maxrss": 0, "utime": 0.0, "stime": 0.0})
            continue
        _, status, ru = os.wait4(pid, 0)
        maxrss = ru.ru_maxrss * 1024
        if wrapper:
            try:
                maxrss = int(open(mfile).read().split()[-1]) * 1024
            except (OSError, ValueError, IndexError):
                maxrss = 0
        res.append({"pid": pid, "argv0": os.path.basename(argv[0]),
                    "code": os.waitstatus_to_exitcode(status), "maxrss": maxrss,
                    "utime": ru.ru_utime, "stime": ru.ru_stime})
    out["steps"].append({"wall": time.monotonic() - s0, "start": s0, "procs": res})
    if any(r["code"] != 0 for r in res):
        break
out["t0"], out["wall"] = t0, time.monotonic() - t0
json.dump(out, open(sys.argv[2], "w"))
"""


@dataclass
class Measurement:
    """Figures of one measured command sequence (see the module docstring)."""

    ok: bool
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    peak_rss_bytes: int
    peak_rss_sampled_bytes: int
    peak_cpu_percent: float
    peak_procs: int
    peak_threads: int
    processes: list[dict[str, Any]]
    samples: dict[str, list[Any]]
    daemon_cpu_s: float = 0.0
    error: str | None = None
    output_tail: str | None = None


@dataclass
class Daemon:
    """A long-lived process that does part of a tool's work (containerd)."""

    pid: int
    name: str


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def measure(steps: Sequence[Sequence[Sequence[str]]], *, env: Mapping[str, str],
            daemon: Daemon | None = None, timeout: float = RUN_TIMEOUT,
            drop: bool = True, wrapper: str | None = "auto") -> Measurement:
    """Run ``steps`` (pipelines, in sequence) under the launcher and measure them.

    The commands' output goes to a file in a temporary directory (not on the filesystem
    being measured); its end is kept in ``output_tail`` when a command fails.
    ``wrapper``: GNU time's path, None for none, ``"auto"`` for :data:`GNU_TIME` if present.
    """
    if wrapper == "auto":
        wrapper = GNU_TIME if os.access(GNU_TIME, os.X_OK) else None
    spec_dir = Path(tempfile.mkdtemp(prefix="unlade-bench-launch-"))
    try:
        spec_path, out_path = spec_dir / "spec.json", spec_dir / "out.json"
        log_path = spec_dir / "output.log"
        spec_path.write_text(json.dumps({
            "steps": [[list(cmd) for cmd in step] for step in steps],
            "env": dict(env), "log": str(log_path), "wrapper": wrapper}))
        if drop:
            drop_caches()
        d_cpu0 = (0.0, 0.0)
        if daemon is not None:
            clear_refs(daemon.pid)
            d_cpu0 = cpu_times_total(daemon.pid)
        launcher = subprocess.Popen(
            [sys.executable, "-S", "-c", LAUNCHER, str(spec_path), str(out_path)],
            stdin=subprocess.DEVNULL, start_new_session=True)
        sampler = TreeSampler(launcher.pid, extra_pids=[daemon.pid] if daemon else (),
                              exclude=[launcher.pid],
                              exclude_children_of=[launcher.pid] if wrapper else ())
        sampler.start()
        error = None
        try:
            launcher.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s"
        except BaseException:  # Ctrl-C: the commands run in a session of their own
            _kill_group(launcher)
            raise
        finally:
            if error is not None:
                _kill_group(launcher)
            sampler.stop()
        d_hwm, d_cpu1 = 0, (0.0, 0.0)
        if daemon is not None:
            d_hwm = vm_hwm(daemon.pid) or 0
            d_cpu1 = cpu_times_total(daemon.pid)
        if error is None and (launcher.returncode != 0 or not out_path.exists()):
            error = f"launcher failed ({launcher.returncode})"
        report = json.loads(out_path.read_text()) if out_path.exists() else {"steps": []}
        failed = error is not None or any(
            pr["code"] != 0 for step in report["steps"] for pr in step["procs"])
        tail = None
        if failed and log_path.exists():
            tail = log_path.read_bytes()[-2000:].decode(errors="replace")
    finally:
        shutil.rmtree(spec_dir, ignore_errors=True)

    procs = sampler.processes
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)

    def subtree(pid: int) -> list[int]:
        out, stack = [], [pid]
        while stack:
            q = stack.pop()
            out.append(q)
            stack += children.get(q, [])
        return out

    floor = int(report.get("floor", 0))
    wrapped = bool(report.get("wrapped"))
    rows: list[dict[str, Any]] = []
    step_peaks: list[int] = []
    user = system = daemon_cpu = 0.0
    for step in report["steps"]:
        step_sum = 0
        for pr in step["procs"]:
            user += pr["utime"]
            system += pr["stime"]
            # The command itself: launched directly, or the child of its GNU time wrapper.
            pid = pr["pid"]
            if wrapped:
                pid = next(iter(children.get(pid, [])), -1)
            tree = subtree(pid) if pid in procs else []
            seen = procs.get(pid)
            sampled = seen.peak_rss if seen else 0
            exact = len(tree) <= 1 and (wrapped or pr["maxrss"] > floor)
            own = max(pr["maxrss"], sampled) if exact else sampled
            step_sum += own
            rows.append({"pid": pid if pid > 0 else None, "name": pr["argv0"],
                         "role": "command", "peak_rss_bytes": own, "peak_rss_exact": exact,
                         "cpu_s": round(pr["utime"] + pr["stime"], 3),
                         "exit_code": pr["code"]})
            for q in tree[1:]:
                step_sum += procs[q].peak_rss
                rows.append({**procs[q].to_json(), "role": "descendant",
                             "peak_rss_exact": False})
            if pr["code"] != 0 and error is None:
                error = f"{pr['argv0']} exited {pr['code']}"
        step_peaks.append(step_sum)
    peak = max(step_peaks, default=0)
    if daemon is not None:
        d_own = d_cpu1[0] - d_cpu0[0]
        d_children = d_cpu1[1] - d_cpu0[1]
        rows.append({"pid": daemon.pid, "name": daemon.name, "role": "daemon",
                     "peak_rss_bytes": d_hwm, "peak_rss_exact": True,
                     "cpu_s": round(d_own, 3), "reaped_children_cpu_s": round(d_children, 3)})
        peak += d_hwm
        for q in subtree(daemon.pid)[1:]:
            peak += procs[q].peak_rss
            rows.append({**procs[q].to_json(), "role": "daemon child", "peak_rss_exact": False})
        daemon_cpu = d_own + d_children
    # Samples relative to the start of the first command.
    shift = float(report.get("t0", sampler._t0)) - sampler._t0
    samples = sampler.samples.to_json()
    samples["t"] = [round(t - shift, 3) for t in sampler.samples.t]
    wall = float(report.get("wall", 0.0))
    return Measurement(
        ok=error is None, wall_s=wall, cpu_s=user + system + daemon_cpu, user_s=user,
        sys_s=system, daemon_cpu_s=daemon_cpu,
        peak_rss_bytes=peak, peak_rss_sampled_bytes=sampler.peak_rss,
        peak_cpu_percent=sampler.peak_cpu_percent, peak_procs=sampler.peak_procs,
        peak_threads=sampler.peak_threads, processes=rows, samples=samples, error=error,
        output_tail=tail)


# ----------------------------------------------------------------------------------------------
# A private containerd


def _toml_str(s: str | os.PathLike[str]) -> str:
    return json.dumps(os.fspath(s))


class Containerd:
    """A private ``containerd`` daemon: own root (under ``root``, on the filesystem being
    measured), own state and gRPC socket (a short directory in /run, as socket paths are
    limited to 108 bytes), overlayfs snapshotter, ``unpigz`` on ``PATH``.

    ``with Containerd(path) as ctd: ctd.ctr("images", "pull", ...)``. On exit the daemon is
    stopped (SIGTERM, then SIGKILL) and anything left mounted below its root or state is
    unmounted.
    """

    def __init__(self, root: Path, *, namespace: str = NAMESPACE) -> None:
        self.base = Path(root)
        self.root = self.base / "root"
        self.namespace = namespace
        self.state: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        assert self.state is not None
        return str(self.state / "c.sock")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def snapshots_dir(self) -> Path:
        return self.root / f"io.containerd.snapshotter.v1.{SNAPSHOTTER}" / "snapshots"

    def config(self) -> str:
        assert self.state is not None
        disabled = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.devmapper"]
        return "\n".join([
            "version = 2",
            f"root = {_toml_str(self.root)}",
            f"state = {_toml_str(self.state / 'state')}",
            f"disabled_plugins = {json.dumps(disabled)}",
            "[grpc]",
            f"  address = {_toml_str(self.address)}",
            "[ttrpc]",
            f"  address = {_toml_str(self.address + '.ttrpc')}",
            "[debug]",
            '  address = ""',
            '  level = "warn"',
            "[metrics]",
            '  address = ""',
            '[plugins."io.containerd.internal.v1.opt"]',
            f"  path = {_toml_str(self.base / 'opt')}",
            "",
        ])

    def __enter__(self) -> Containerd:
        self.base.mkdir(parents=True, exist_ok=True)
        run_dir = "/run" if os.access("/run", os.W_OK) else None
        self.state = Path(tempfile.mkdtemp(prefix="unlade-ctd-", dir=run_dir))
        conf = self.state / "config.toml"
        conf.write_text(self.config())
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": str(self.state), "TMPDIR": str(self.base)}
        with open(self.state / "containerd.log", "ab") as logf:
            self.proc = subprocess.Popen(["containerd", "--config", str(conf)], env=env,
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                if self.proc.poll() is not None:
                    raise BenchError(f"containerd exited {self.proc.returncode}: "
                                     f"{self.log_tail()}")
                if os.path.exists(self.address) and self.ctr(
                        "version", check=False).returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"containerd did not start: {self.log_tail()}")
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, n: int = 5) -> str:
        if self.state is None:
            return ""
        try:
            lines = (self.state / "containerd.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for where in (self.root, self.state):
            if where is not None and os.path.exists(where):
                unmount_under(where)
        if self.state is not None:
            shutil.rmtree(self.state, ignore_errors=True)
            self.state = None

    def ctr_argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", self.address, "--namespace", self.namespace, *args]

    def ctr(self, *args: str, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(self.ctr_argv(*args), capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise BenchError(f"ctr {' '.join(args)} failed ({p.returncode}): "
                             f"{(p.stderr or p.stdout).strip()[-500:]}")
        return p

    def image_target(self, ref: str) -> str:
        """The digest ``ref`` points to in the daemon (``ctr images ls``)."""
        for line in self.ctr("images", "ls").stdout.splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == ref:
                return cols[2]
        raise BenchError(f"containerd does not know {ref}")

    def collect_garbage(self) -> None:
        """Run containerd's GC now (a lease deleted with ``--sync`` runs it synchronously)."""
        lease = self.ctr("leases", "create").stdout.split()
        if not lease:
            raise BenchError("ctr leases create printed no lease")
        self.ctr("leases", "rm", "--sync", lease[0])

    def drop_unpacked(self, config_digest: str, *, wait: float = 60) -> None:
        """Delete the image's snapshots, keeping its content: drop the config's
        ``containerd.io/gc.ref.snapshot.*`` label (which ``image.Unpack`` sets and which
        alone keeps the chain alive), run the GC and wait until the snapshot directories
        are gone, so that no deletion overlaps the next timed run.

        Not ``ctr snapshots rm`` top to bottom: containerd 1.6's GC deletes a snapshot
        without clearing its parent's list of children, so when the GC takes one layer
        of the chain first (and it may, as soon as the layer above is gone) its parent
        can no longer be removed: "cannot remove snapshot with child", for good."""
        self.ctr("content", "label", config_digest,
                 f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}=")
        self.collect_garbage()
        deadline = time.monotonic() + wait
        while self.snapshots_dir.exists() and any(self.snapshots_dir.iterdir()):
            if time.monotonic() > deadline:
                raise BenchError(f"containerd left {self.snapshots_dir} non-empty "
                                 f"after {wait:.0f} s")
            time.sleep(0.05)
        left = self.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout.splitlines()
        if len(left) > 1:
            raise BenchError(f"snapshots left after GC: {' '.join(left[1:])[:300]}")

    @contextlib.contextmanager
    def mounted_image(self, ref: str, top: str, where: Path) -> Iterator[Path]:
        """Mount ``ref`` read-only at ``where`` (``ctr images mount``), provided its top
        snapshot ``top`` exists: ``ctr images mount`` would otherwise unpack it itself.

        The view is made under a lease named after ``where``; afterwards it is unmounted
        and the lease deleted with ``--sync``, so that the GC removes the view at once. A
        bare ``ctr snapshots view`` is not used: nothing protects it from the GC, which
        can collect it at any moment.
        """
        info = self.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "info", top, check=False)
        if info.returncode != 0:
            raise BenchError(f"snapshot {top} does not exist: the image was not unpacked")
        where.mkdir(parents=True, exist_ok=True)
        self.ctr("images", "mount", "--snapshotter", SNAPSHOTTER, ref, str(where))
        try:
            yield where
        finally:
            unmount_under(where)
            self.ctr("leases", "rm", "--sync", str(where), check=False)


# ----------------------------------------------------------------------------------------------
# Tools


@dataclass
class Check:
    ok: bool
    entries: int | None
    file_bytes: int | None
    detail: str = ""
    expected: tuple[int, int] | None = None

    def to_json(self, facts: ImageFacts) -> dict[str, Any]:
        want = self.expected or (facts.entries, facts.file_bytes)
        return {"ok": self.ok, "entries": self.entries, "file_bytes": self.file_bytes,
                "expected_entries": want[0], "expected_file_bytes": want[1],
                "detail": self.detail}


def check_tree(path: Path, facts: ImageFacts, *, plain_tar: bool = False) -> Check:
    """Walk ``path``: the image's entry count and regular-file bytes, or with ``plain_tar``
    what ``tar -x`` of the layers leaves (whiteout markers kept as files)."""
    want = (facts.tar_entries, facts.tar_file_bytes) if plain_tar else (
        facts.entries, facts.file_bytes)
    if not path.is_dir():
        return Check(False, None, None, f"{path} does not exist", want)
    entries, nbytes = walk_tree(path)
    ok = (entries, nbytes) == want
    detail = "" if ok else (f"{entries} entries / {nbytes} file bytes, expected "
                            f"{want[0]} / {want[1]}")
    return Check(ok, entries, nbytes, detail, want)


def check_layout_blobs(layout: Path, facts: ImageFacts) -> Check:
    """skopeo (download-only): every layer blob is in the layout with its digest."""
    for la in facts.layers:
        algo, _, hexpart = la.digest.partition(":")
        blob = layout / "blobs" / algo / hexpart
        if not blob.is_file() or blob.stat().st_size != la.size:
            return Check(False, None, None, f"layer {la.digest[:19]} missing from {layout}")
        h = hashlib.new(algo)
        with open(blob, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if f"{algo}:{h.hexdigest()}" != la.digest:
            return Check(False, None, None, f"layer {la.digest[:19]} corrupt in {layout}")
    return Check(True, None, None, "download only: layer blobs present and verified")


@dataclass
class Ctx:
    """What every tool runner shares."""

    ref: str
    facts: ImageFacts
    work: Path
    unlade_store: Path  # filled by inspect_image; unlade's store for the unpack phase
    timeout: float = RUN_TIMEOUT
    base_env: dict[str, str] = field(default_factory=dict)


class Tool:
    """One tool's runner: untimed setup per phase, then :meth:`run` per measured run."""

    name = ""
    download_only = False

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.dir = ctx.work / self.name
        self.dir.mkdir(parents=True, exist_ok=True)

    def setup(self, phase: str) -> None:
        """Untimed preparation before the runs of ``phase``."""

    def teardown(self, phase: str) -> None:
        """Undo :meth:`setup`."""

    def close(self) -> None:
        """Release everything (also after errors)."""

    def run(self, phase: str, index: int) -> tuple[Measurement, Check, list[list[list[str]]]]:
        raise NotImplementedError

    def _measure(self, steps: list[list[list[str]]], env: Mapping[str, str] | None = None,
                 daemon: Daemon | None = None) -> Measurement:
        return measure(steps, env=env or self.ctx.base_env, daemon=daemon,
                       timeout=self.ctx.timeout)

    def fresh(self, what: str) -> Path:
        path = self.dir / what
        remove_tree(path)
        return path


def _unlade_env(base: Mapping[str, str]) -> dict[str, str]:
    import unlade

    src = str(Path(unlade.__file__).resolve().parent.parent)
    env = dict(base)
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = src + (os.pathsep + pp if pp else "")
    return env


class UnladeTool(Tool):
    """``unlade pull --rootfs DIR``: a flat rootfs (the unpack phase reads the blobs from
    the store :func:`inspect_image` filled)."""

    name = "unlade"

    def pull_args(self, store: Path, target: Path) -> list[str]:
        """unlade's command line (after ``python -m unlade``) for one run."""
        return ["--root", str(store), "pull", "--plain-http", "-q", self.ctx.ref,
                "--rootfs", str(target)]

    def argv(self, store: Path, target: Path, *, prefix: Sequence[str] = ("-m", "unlade")
             ) -> list[str]:
        return [sys.executable, *prefix, *self.pull_args(store, target)]

    def store_for(self, phase: str) -> Path:
        """The store of one run: empty for a pull, the blobs already in for an unpack."""
        return self.ctx.unlade_store if phase == "unpack" else self.fresh("store")

    def target(self) -> Path:
        """Where the run's result goes (absent)."""
        return self.fresh("rootfs")

    def check(self, store: Path, target: Path) -> Check:
        return check_tree(target, self.ctx.facts)

    def cleanup(self, phase: str, store: Path, target: Path) -> None:
        remove_tree(target)
        if store != self.ctx.unlade_store:
            remove_tree(store)

    def run(self, phase: str, index: int) -> tuple[Measurement, Check, list[list[list[str]]]]:
        store = self.store_for(phase)
        target = self.target()
        steps = [[self.argv(store, target)]]
        try:
            m = self._measure(steps, _unlade_env(self.ctx.base_env))
            check = self.check(store, target)
        finally:
            self.cleanup(phase, store, target)
        return m, check, steps

    def heap_run(self, phase: str) -> tuple[int | None, Check]:
        """One untimed run under tracemalloc: the peak of Python's heap (bytes)."""
        store = self.store_for(phase)
        target = self.target()
        out = self.dir / "heap.txt"
        out.unlink(missing_ok=True)
        wrapper = ("import sys, tracemalloc\ntracemalloc.start()\n"
                   "from unlade.cli import main\nrc = 1\n"
                   "try:\n    rc = main(sys.argv[2:])\nfinally:\n"
                   "    open(sys.argv[1], 'w').write(str(tracemalloc.get_traced_memory()[1]))\n"
                   "sys.exit(rc)\n")
        argv = [sys.executable, "-c", wrapper, str(out), *self.pull_args(store, target)]
        try:
            if phase == "pull":
                drop_caches()
            p = subprocess.run(argv, env=_unlade_env(self.ctx.base_env), capture_output=True,
                               text=True, timeout=self.ctx.timeout)
            check = self.check(store, target)
            if p.returncode != 0:
                check = Check(False, check.entries, check.file_bytes, p.stderr.strip()[-300:])
            heap = int(out.read_text()) if out.exists() else None
        finally:
            self.cleanup(phase, store, target)
        return heap, check


def check_mounted(mount: contextlib.AbstractContextManager[Path], facts: ImageFacts) -> Check:
    """:func:`check_tree` of an image mounted by ``mount`` (a context manager yielding the
    mount point and raising :class:`BenchError` when it cannot mount)."""
    try:
        with mount as mnt:
            return check_tree(mnt, facts)
    except BenchError as err:
        return Check(False, None, None, f"cannot mount the image: {err}"[:300])


def _copy_store(src: Path, dst: Path) -> None:
    """A copy of the unlade store ``src`` (not in use) at the absent ``dst``: blobs
    hardlinked (unlade never writes a committed blob), everything else (``meta.db``, locks)
    copied, so that ``dst`` evolves on its own."""
    blobs = src / "blobs"

    def link_or_copy(s: str, d: str) -> None:
        if Path(s).is_relative_to(blobs):
            os.link(s, d)
        else:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)


class UnladeSnapTool(UnladeTool):
    """``unlade pull --snapshotter overlayfs`` (no ``--rootfs``): every layer into an
    overlayfs snapshot of its own, as containerd does; checked through ``unlade mount``.

    The unpack phase pulls into a fresh copy of a store holding only the blobs (made once,
    untimed, with ``pull --no-unpack``): no snapshot exists before a run, so every layer is
    unpacked, and no blob is downloaded."""

    name = "unlade-snap"

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        self.chain = chain_ids([la.diff_id for la in ctx.facts.layers])
        self.template = self.dir / "store-blobs"

    def pull_args(self, store: Path, target: Path) -> list[str]:
        return ["--root", str(store), "pull", "--plain-http", "-q", "--snapshotter",
                SNAPSHOTTER, self.ctx.ref]

    def unlade(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``python -m unlade ARGS`` (untimed)."""
        p = subprocess.run([sys.executable, "-m", "unlade", *args],
                           env=_unlade_env(self.ctx.base_env), capture_output=True, text=True,
                           timeout=self.ctx.timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise BenchError(f"unlade {' '.join(args)} failed ({p.returncode}): "
                             f"{(p.stderr or p.stdout).strip()[-500:]}")
        return p

    def snapshots(self, store: Path) -> dict[str, str]:
        """chain ID -> state of every overlayfs snapshot recorded in ``store``."""
        from ..metastore import MetaStore

        if not (store / "meta.db").exists():
            return {}
        with MetaStore(store / "meta.db") as meta:
            return {s.chain_id: s.state for s in meta.snapshots(SNAPSHOTTER)}

    def setup(self, phase: str) -> None:
        if phase != "unpack":
            return
        remove_tree(self.template)
        self.unlade("--root", str(self.template), "pull", "--plain-http", "-q", "--no-unpack",
                    self.ctx.ref)
        left = self.snapshots(self.template)
        if left or any(self.template.glob("snapshots-*")):
            raise BenchError(f"pull --no-unpack left snapshots in {self.template}")

    def teardown(self, phase: str) -> None:
        remove_tree(self.template)

    def close(self) -> None:
        remove_tree(self.template)

    def store_for(self, phase: str) -> Path:
        store = self.fresh("store")
        if phase == "unpack":
            if not self.template.is_dir():
                raise BenchError(f"no blobs-only store at {self.template}")
            _copy_store(self.template, store)
        return store

    def target(self) -> Path:
        return self.fresh("view")

    @contextlib.contextmanager
    def mounted_image(self, store: Path, where: Path) -> Iterator[Path]:
        """``unlade mount`` the image at ``where``, provided every layer's snapshot is
        committed (the mount would otherwise unpack what is missing itself); then
        ``unlade unmount``."""
        states = self.snapshots(store)
        missing = [c for c in self.chain if states.get(c) != "committed"]
        if missing:
            raise BenchError(f"{len(missing)} of {len(self.chain)} layer snapshot(s) not "
                             "committed: the image was not unpacked")
        where.mkdir(parents=True, exist_ok=True)
        self.unlade("--root", str(store), "mount", self.ctx.ref, str(where))
        try:
            yield where
        finally:
            self.unlade("--root", str(store), "unmount", str(where), check=False)
            unmount_under(where)

    def check(self, store: Path, target: Path) -> Check:
        return check_mounted(self.mounted_image(store, target), self.ctx.facts)

    def cleanup(self, phase: str, store: Path, target: Path) -> None:
        remove_tree(target)
        remove_tree(store)


def encrypted_ref(ref: str) -> str:
    """Where the encrypted copy of ``ref`` (``REPO:TAG``) goes: ``REPO:TAG-encrypted``."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or "@" in ref:
        raise BenchError(f"the benchmark image must be REPO:TAG, not {ref!r}")
    return f"{name}:{tag}{ENCRYPTED_SUFFIX}"


class UnladeEncTool(UnladeTool):
    """``unlade pull --decryption-key KEY --rootfs DIR`` of the benchmark image encrypted
    by ``skopeo copy --encryption-key jwe:PUB`` (every layer; AES-256-CTR + HMAC-SHA256,
    the key wrapped for a fresh RSA-2048 key): what decryption adds to pull and unpack,
    next to ``unlade`` on the plain image. The copy is made once per benchmark, untimed;
    its unpack phase reads the encrypted blobs from a store of its own."""

    name = "unlade-enc"

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        self.ref = encrypted_ref(ctx.ref)
        self.key = self.dir / "private.pem"
        self.blobs = self.dir / "store-blobs"
        self._encrypted = False

    def pull_args(self, store: Path, target: Path) -> list[str]:
        return ["--root", str(store), "pull", "--plain-http", "-q", "--decryption-key",
                str(self.key), self.ref, "--rootfs", str(target)]

    def _encrypt(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        public = self.dir / "public.pem"
        public.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                "--dest-tls-verify=false", "--src-no-creds", "--dest-no-creds",
                f"--encryption-key=jwe:{public}", f"docker://{self.ctx.ref}",
                f"docker://{self.ref}"]
        p = subprocess.run(argv, env=_skopeo_env(self.ctx.base_env, self.dir / "home"),
                           capture_output=True, text=True, timeout=self.ctx.timeout,
                           stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise BenchError(f"skopeo could not encrypt the image ({p.returncode}): "
                             f"{(p.stderr or p.stdout).strip()[-500:]}")
        self._encrypted = True

    def setup(self, phase: str) -> None:
        if not self._encrypted:
            self._encrypt()
        if phase == "unpack":
            remove_tree(self.blobs)
            p = subprocess.run([sys.executable, "-m", "unlade", "--root", str(self.blobs),
                                "pull", "--plain-http", "-q", "--no-unpack", "--decryption-key",
                                str(self.key), self.ref],
                               env=_unlade_env(self.ctx.base_env), capture_output=True,
                               text=True, timeout=self.ctx.timeout, stdin=subprocess.DEVNULL)
            if p.returncode != 0:
                raise BenchError(f"unlade could not fetch the encrypted image: "
                                 f"{(p.stderr or p.stdout).strip()[-500:]}")

    def store_for(self, phase: str) -> Path:
        return self.blobs if phase == "unpack" else self.fresh("store")

    def cleanup(self, phase: str, store: Path, target: Path) -> None:
        remove_tree(target)
        if store != self.blobs:
            remove_tree(store)

    def teardown(self, phase: str) -> None:
        remove_tree(self.blobs)

    def close(self) -> None:
        remove_tree(self.blobs)


class ContainerdTool(Tool):
    name = "containerd"

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        self.daemon: Containerd | None = None
        self.target = ""
        self.chain = chain_ids([la.diff_id for la in ctx.facts.layers])

    def pull_argv(self, d: Containerd) -> list[str]:
        return d.ctr_argv("images", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER,
                          self.ctx.ref)

    def check(self, d: Containerd) -> Check:
        return check_mounted(d.mounted_image(self.ctx.ref, self.chain[-1], self.dir / "view"),
                             self.ctx.facts)

    def setup(self, phase: str) -> None:
        if phase == "unpack":
            self.daemon = Containerd(self.fresh("daemon-unpack")).__enter__()
            self.daemon.ctr("images", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER,
                            self.ctx.ref)
            self.target = self.daemon.image_target(self.ctx.ref)

    def teardown(self, phase: str) -> None:
        self.close()
        remove_tree(self.dir / "daemon-unpack")

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.close()
            self.daemon = None

    def run(self, phase: str, index: int) -> tuple[Measurement, Check, list[list[list[str]]]]:
        if phase == "pull":
            base = self.fresh("daemon-pull")
            with Containerd(base) as d:
                steps = [[self.pull_argv(d)]]
                m = self._measure(steps, daemon=Daemon(d.pid, "containerd"))
                check = self.check(d)
            remove_tree(base)
            return m, check, steps
        d = self.daemon
        assert d is not None
        d.drop_unpacked(self.ctx.facts.config_digest)
        steps = [[d.ctr_argv("snapshots", "--snapshotter", SNAPSHOTTER, "unpack",
                             self.target)]]
        m = self._measure(steps, daemon=Daemon(d.pid, "containerd"))
        return m, self.check(d), steps


def _skopeo_env(base: Mapping[str, str], home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {**base, "HOME": str(home), "REGISTRY_AUTH_FILE": str(home / "auth.json")}


class SkopeoTool(Tool):
    name = "skopeo"
    download_only = True

    def copy_argv(self, layout: Path) -> list[str]:
        return ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                "--src-no-creds", f"docker://{self.ctx.ref}", f"oci:{layout}:{OCI_TAG}"]

    def run(self, phase: str, index: int) -> tuple[Measurement, Check, list[list[list[str]]]]:
        layout = self.fresh("layout")
        steps = [[self.copy_argv(layout)]]
        m = self._measure(steps, _skopeo_env(self.ctx.base_env, self.dir / "home"))
        check = check_layout_blobs(layout, self.ctx.facts)
        remove_tree(layout)
        return m, check, steps


class UmociTool(SkopeoTool):
    name = "umoci"
    download_only = False

    def unpack_argv(self, layout: Path, rootfs: Path) -> list[str]:
        return ["umoci", "raw", "unpack", "--image", f"{layout}:{OCI_TAG}", str(rootfs)]

    def setup(self, phase: str) -> None:
        if phase == "unpack":
            layout = self.fresh("layout-unpack")
            p = subprocess.run(self.copy_argv(layout), capture_output=True, text=True,
                               env=_skopeo_env(self.ctx.base_env, self.dir / "home"),
                               timeout=self.ctx.timeout)
            if p.returncode != 0:
                raise BenchError(f"skopeo copy failed: {p.stderr.strip()[-500:]}")

    def teardown(self, phase: str) -> None:
        remove_tree(self.dir / "layout-unpack")

    def run(self, phase: str, index: int) -> tuple[Measurement, Check, list[list[list[str]]]]:
        rootfs = self.fresh("rootfs")
        if phase == "pull":
            layout = self.fresh("layout")
            steps = [[self.copy_argv(layout)], [self.unpack_argv(layout, rootfs)]]
        else:
            layout = self.dir / "layout-unpack"
            steps = [[self.unpack_argv(layout, rootfs)]]
        m = self._measure(steps, _skopeo_env(self.ctx.base_env, self.dir / "home"))
        check = check_tree(rootfs, self.ctx.facts)
        remove_tree(rootfs)
        if phase == "pull":
            remove_tree(layout)
        return m, check, steps


class LimitTool(Tool):
    """``unpigz -dc LAYER | tar -x`` per layer: the physical limit of an unpack."""

    name = "limit"

    def steps(self, rootfs: Path) -> list[list[list[str]]]:
        tar = ["tar", "-x", "-p", "--numeric-owner", "--xattrs", "--xattrs-include=*",
               "-C", str(rootfs)]
        out: list[list[list[str]]] = []
        for la in self.ctx.facts.layers:
            blob = str(la.path)
            if la.compression == "gzip":
                out.append([["unpigz", "-dc", blob], tar])
            elif la.compression == "zstd":
                out.append([["zstd", "-dcq", blob], tar])
            else:
                out.append([[*tar, "-f", blob]])
        return out

    def run(self, phase: str, index: int) -> tuple[Measurement, Check, list[list[list[str]]]]:
        rootfs = self.fresh("rootfs")
        rootfs.mkdir(mode=0o700)
        steps = self.steps(rootfs)
        m = self._measure(steps)
        check = check_tree(rootfs, self.ctx.facts, plain_tar=True)
        remove_tree(rootfs)
        return m, check, steps


TOOL_CLASSES: dict[str, type[Tool]] = {
    "unlade": UnladeTool, "unlade-snap": UnladeSnapTool, "unlade-enc": UnladeEncTool,
    "containerd": ContainerdTool,
    "umoci": UmociTool, "skopeo": SkopeoTool, "limit": LimitTool,
}
#: Executables each tool needs.
TOOL_NEEDS: dict[str, tuple[str, ...]] = {
    "unlade": (), "unlade-snap": ("mount", "umount", "unshare"), "unlade-enc": ("skopeo",),
    "containerd": ("containerd", "ctr", "mount", "umount"),
    "umoci": ("skopeo", "umoci"), "skopeo": ("skopeo",), "limit": ("tar", "unpigz"),
}


# ----------------------------------------------------------------------------------------------
# Start-up


def parse_importtime(stderr: str, top: int = TOP_IMPORTS) -> tuple[int, list[dict[str, Any]]]:
    """(the sum of the top-level imports' cumulative µs, the ``top`` top-level imports with
    the largest cumulative µs, largest first, as ``{"module", "cumulative_us"}``) from the
    stderr of ``python -X importtime``.

    Only top-level (non-indented) entries count: an indented one is already in its parent's
    cumulative time, so summing the top level gives the whole import time once. Lines that
    are not import-time entries (the header, anything else on stderr) are skipped.
    """
    total = 0
    entries: list[tuple[int, str]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:"):].split("|", 2)
        if len(parts) != 3:
            continue
        cumulative, name = parts[1].strip(), parts[2].rstrip()
        if not cumulative.isdigit():
            continue  # the header
        if name.startswith(" "):
            name = name[1:]  # the one space after the bar
        if not name or name.startswith(" "):
            continue  # indented: counted in its parent
        total += int(cumulative)
        entries.append((int(cumulative), name))
    entries.sort(key=lambda e: (-e[0], e[1]))
    return total, [{"module": name, "cumulative_us": us} for us, name in entries[:top]]


def _run_quiet(argv: Sequence[str], env: Mapping[str, str], timeout: float
               ) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(argv), env=dict(env), capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise BenchError(f"{' '.join(argv[1:])} exited {p.returncode}: "
                         f"{(p.stderr or p.stdout).strip()[-300:]}")
    return p


def measure_startup(env: Mapping[str, str], *, runs: int = STARTUP_RUNS,
                    timeout: float = 60.0) -> dict[str, Any]:
    """How long ``unlade --help`` takes, run as the benchmark runs unlade (this interpreter,
    ``-m unlade``, ``env``), and where its import time goes: every command starts by paying
    it, so it is a target of its own.

    One untimed warm-up (the page cache then holds the interpreter and the modules), ``runs``
    runs timed with ``time.perf_counter`` around :func:`subprocess.run`, then one under
    ``-X importtime``. Returns ``{"argv", "runs", "wall_s": {"median", "min", "max"},
    "importtime_argv", "import_us", "top_imports", "error"}``; what could not be measured is
    null and ``error`` says why (never raises for a failing command).
    """
    argv = [sys.executable, "-m", "unlade", "--help"]
    it_argv = [sys.executable, "-X", "importtime", "-m", "unlade", "--help"]
    out: dict[str, Any] = {"argv": argv, "runs": runs, "wall_s": None,
                           "importtime_argv": it_argv, "import_us": None, "top_imports": None,
                           "error": None}
    errors: list[str] = []
    try:
        _run_quiet(argv, env, timeout)
        walls = []
        for _ in range(runs):
            t0 = time.perf_counter()
            _run_quiet(argv, env, timeout)
            walls.append(time.perf_counter() - t0)
        out["wall_s"] = {"median": round(statistics.median(walls), 5),
                         "min": round(min(walls), 5), "max": round(max(walls), 5)}
    except (BenchError, OSError, subprocess.SubprocessError, ValueError) as err:
        errors.append(f"timing: {type(err).__name__}: {err}")
    try:
        total, top = parse_importtime(_run_quiet(it_argv, env, timeout).stderr)
        if not top:
            raise BenchError("no import times on its stderr")
        out["import_us"], out["top_imports"] = total, top
    except (BenchError, OSError, subprocess.SubprocessError) as err:
        errors.append(f"importtime: {type(err).__name__}: {err}")
    if errors:
        out["error"] = "; ".join(errors)[:600]
    return out


# ----------------------------------------------------------------------------------------------
# The benchmark


@contextlib.contextmanager
def _workspace(work: Path, tmpfs: bool) -> Iterator[Path]:
    work.mkdir(parents=True, exist_ok=True)
    if tmpfs:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=50%", "unlade-bench",
                        str(work)], check=True, capture_output=True)
    try:
        yield work
    finally:
        for p in list(work.iterdir()) if work.exists() else []:
            remove_tree(p)
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


def _mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def run_benchmark(
    image_ref: str,
    image_info: Any = None,
    *,
    runs: int = 5,
    tools: Sequence[str] = DEFAULT_TOOLS,
    phases: Sequence[str] = PHASES,
    output: str | os.PathLike[str] = "bench-results",
    tmpfs: bool = False,
    log: Log | None = None,
    workdir: str | os.PathLike[str] | None = None,
    timeout: float = RUN_TIMEOUT,
    reference_image: str | None = None,
) -> dict[str, Any]:
    """Benchmark ``image_ref`` (a plain-HTTP registry on this machine) and write
    ``results.json``, ``results.md`` and ``results.png`` into ``output``.

    ``image_info`` is what the image builder returned (:class:`unlade.bench.image.BenchImage`),
    recorded as given; the checks use figures worked out from the pulled layers. Runs are
    interleaved (tool A, B, A, B …) within each phase. ``workdir`` (default
    ``OUTPUT/work``) holds the tools' stores and outputs and is removed at the end; with
    ``tmpfs`` a tmpfs is mounted on it. Returns the results document (see
    :mod:`unlade.bench.report`). Needs root.

    After the phases, ``unlade --help`` is timed (``startup``). ``reference_image``, a
    second, smaller image in the same registry, is pulled and unpacked by unlade and
    unlade-snap ``min(runs, 3)`` times per phase (runs of kind ``reference``), so that
    ``memory_flatness`` shows whether their peak RSS is the same on both images.
    """
    from . import report

    log = log or _stderr_log
    if os.geteuid() != 0:
        raise BenchError("the benchmark needs root (drop_caches, mounts, containerd)")
    unknown = [t for t in tools if t not in TOOL_CLASSES]
    bad_phases = [p for p in phases if p not in PHASES]
    if unknown or bad_phases:
        raise BenchError(f"unknown tool(s)/phase(s): {', '.join(unknown + bad_phases)}")
    if runs < 1:
        raise BenchError("runs must be at least 1")
    missing = sorted({exe for t in tools for exe in TOOL_NEEDS[t] if shutil.which(exe) is None})
    if missing:
        raise BenchError(f"missing executables: {', '.join(missing)}")
    try:
        import psutil  # noqa: F401
    except ImportError:
        raise BenchError("the benchmark needs psutil (pip install psutil)") from None
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(workdir) if workdir is not None else out_dir / "work"
    if work.exists() and any(work.iterdir()):
        raise BenchError(f"work directory {work} is not empty")
    started = _dt.datetime.now(_dt.UTC)
    base_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/root")}
    records: list[dict[str, Any]] = []
    with _workspace(work, tmpfs):
        log(f"bench: {image_ref} on {fs_type(work)} ({work}); runs={runs} "
            f"tools={','.join(tools)} phases={','.join(phases)}")
        store = work / "unlade-store"
        facts = inspect_image(image_ref, store)
        log(f"bench: {len(facts.layers)} layer(s), {_mib(facts.compressed_bytes)} compressed, "
            f"{_mib(facts.uncompressed_bytes)} tar, {facts.entries} entries, "
            f"{_mib(facts.file_bytes)} in files")
        ctx = Ctx(image_ref, facts, work, store, timeout, base_env)
        runners = {t: TOOL_CLASSES[t](ctx) for t in tools}
        heaps: dict[str, int | None] = {}  # unlade's, by phase
        tool_heaps: dict[str, dict[str, int | None]] = {}  # the others', by tool and phase
        try:
            for phase in phases:
                active = [t for t in tools if phase in TOOL_PHASES[t]]
                for t in active:
                    runners[t].setup(phase)
                for i in range(runs):
                    for t in active:
                        rec = _one_run(runners[t], phase, i, facts)
                        records.append(rec)
                        log(_progress_line(rec, runs))
                for t in active:
                    tool = runners[t]
                    if not isinstance(tool, UnladeTool):
                        continue
                    heap, check = tool.heap_run(phase)
                    if t == "unlade":
                        heaps[phase] = heap if check.ok else None
                    else:
                        tool_heaps.setdefault(t, {})[phase] = heap if check.ok else None
                    log(f"{phase:<6} heap    {t:<11} peak Python heap {_mib(heap or 0)} "
                        f"({'ok' if check.ok else 'INVALID ' + check.detail})")
                for t in active:
                    runners[t].teardown(phase)
        finally:
            for r in runners.values():
                r.close()
        startup = measure_startup(_unlade_env(base_env), runs=max(runs, STARTUP_RUNS))
        wall = startup["wall_s"]
        log("start-up: unlade --help "
            + (f"{wall['median'] * 1000:.1f} ms median of {startup['runs']}" if wall else "–")
            + (f", imports {startup['import_us'] / 1000:.1f} ms"
               if startup["import_us"] is not None else "")
            + (f" ({startup['error']})" if startup["error"] else ""))
        flatness = None
        if reference_image is not None:
            ref_records, ref_facts, ref_error = _reference_runs(
                reference_image, work / "reference", tools=tools, phases=phases,
                runs=min(runs, REFERENCE_RUNS), timeout=timeout, base_env=base_env, log=log)
            records += ref_records
            flatness = report.memory_flatness(records, reference_image, ref_facts, ref_error)
        machine = machine_info(work)
    doc = report.build_document(
        started=started, image_ref=image_ref, image_info=image_info, facts=facts.to_json(),
        machine=machine, versions=tool_versions(), tmpfs=tmpfs, runs=runs, tools=list(tools),
        phases=list(phases), records=records, heaps=heaps, tool_heaps=tool_heaps,
        startup=startup, memory_flatness=flatness)
    written = report.write_all(doc, out_dir)
    log(report.table_text(doc))
    log(f"bench: wrote {', '.join(str(p) for p in written)}")
    if not any(p.suffix == ".png" for p in written):
        log("bench: matplotlib is not installed, so there is no results.png "
            "(pip install matplotlib)")
    return doc


def _reference_runs(
    image_ref: str, work: Path, *, tools: Sequence[str], phases: Sequence[str], runs: int,
    timeout: float, base_env: dict[str, str], log: Log,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str | None]:
    """(records, facts, error) of the reference image's runs: ``runs`` per phase of each of
    :data:`FLATNESS_TOOLS` in ``tools``, interleaved and measured as the timed runs, by
    fresh runners in ``work`` (their own store, facts from :func:`inspect_image`).

    Records get ``"kind": "reference"`` and ``"image"``; ``facts`` is ``{compressed_bytes,
    file_bytes, entries}``. A failure (the image cannot be pulled, a setup fails) ends the
    reference runs and is returned as ``error`` rather than raised: the main results, which
    may have taken an hour, are worth more than this comparison.
    """
    chosen = [t for t in tools if t in FLATNESS_TOOLS]
    if not chosen:
        return [], None, "neither unlade nor unlade-snap ran"
    records: list[dict[str, Any]] = []
    runners: dict[str, Tool] = {}
    facts_json: dict[str, Any] | None = None
    work.mkdir(parents=True, exist_ok=True)
    try:
        facts = inspect_image(image_ref, work / "unlade-store")
        facts_json = {"compressed_bytes": facts.compressed_bytes,
                      "file_bytes": facts.file_bytes, "entries": facts.entries}
        log(f"reference: {image_ref}: {len(facts.layers)} layer(s), "
            f"{_mib(facts.compressed_bytes)} compressed, {facts.entries} entries, "
            f"{_mib(facts.file_bytes)} in files; {runs} run(s) per phase of "
            f"{', '.join(chosen)}")
        ctx = Ctx(image_ref, facts, work, work / "unlade-store", timeout, base_env)
        runners = {t: TOOL_CLASSES[t](ctx) for t in chosen}
        for phase in phases:
            active = [t for t in chosen if phase in TOOL_PHASES[t]]
            for t in active:
                runners[t].setup(phase)
            for i in range(runs):
                for t in active:
                    rec = _one_run(runners[t], phase, i, facts)
                    rec["kind"], rec["image"] = "reference", image_ref
                    records.append(rec)
                    log(_progress_line(rec, runs))
            for t in active:
                runners[t].teardown(phase)
    except Exception as err:  # anything: the main results must still be written
        error = f"{type(err).__name__}: {err}"[:500]
        log(f"reference: FAILED, no memory flatness figures: {error}")
        return records, facts_json, error
    finally:
        for r in runners.values():
            r.close()
        remove_tree(work)
    return records, facts_json, None


def _one_run(tool: Tool, phase: str, index: int, facts: ImageFacts) -> dict[str, Any]:
    try:
        m, check, steps = tool.run(phase, index)
    except (BenchError, OSError, subprocess.SubprocessError) as err:
        return {"phase": phase, "tool": tool.name, "index": index, "kind": "timed",
                "valid": False, "download_only": tool.download_only,
                "error": f"{type(err).__name__}: {err}"[:500], "commands": [],
                "wall_s": None, "cpu_s": None, "user_s": None, "sys_s": None,
                "daemon_cpu_s": None, "peak_rss_bytes": None, "peak_rss_sampled_bytes": None,
                "peak_cpu_percent": None, "peak_procs": None, "peak_threads": None,
                "compressed_mib_s": None, "unpacked_mib_s": None,
                "check": {"ok": False, "entries": None, "file_bytes": None,
                          "expected_entries": facts.entries,
                          "expected_file_bytes": facts.file_bytes, "detail": "not run"},
                "processes": [], "samples": {}}
    valid = m.ok and check.ok
    wall = m.wall_s
    rec: dict[str, Any] = {
        "phase": phase, "tool": tool.name, "index": index, "kind": "timed", "valid": valid,
        "download_only": tool.download_only, "error": m.error,
        "commands": steps,
        "wall_s": round(wall, 4), "cpu_s": round(m.cpu_s, 3),
        "user_s": round(m.user_s, 3), "sys_s": round(m.sys_s, 3),
        "daemon_cpu_s": round(m.daemon_cpu_s, 3),
        "peak_rss_bytes": m.peak_rss_bytes, "peak_rss_sampled_bytes": m.peak_rss_sampled_bytes,
        "peak_cpu_percent": round(m.peak_cpu_percent, 1), "peak_procs": m.peak_procs,
        "peak_threads": m.peak_threads,
        "compressed_mib_s": round(facts.compressed_bytes / MiB / wall, 2) if wall else None,
        "unpacked_mib_s": (round(facts.file_bytes / MiB / wall, 2)
                           if wall and not tool.download_only else None),
        "check": check.to_json(facts), "processes": m.processes, "samples": m.samples,
    }
    if m.output_tail is not None:
        rec["output_tail"] = m.output_tail
    if phase == "unpack":
        rec["compressed_mib_s"] = None if tool.download_only else rec["compressed_mib_s"]
    return rec


def _progress_line(rec: dict[str, Any], runs: int) -> str:
    state = "ok" if rec["valid"] else f"INVALID: {rec['error'] or rec['check']['detail']}"
    what = "run" if rec.get("kind", "timed") == "timed" else "ref"
    if rec["wall_s"] is None:
        return f"{rec['phase']:<6} {what} {rec['index'] + 1}/{runs} {rec['tool']:<11} {state}"
    rate = rec["unpacked_mib_s"] if rec["unpacked_mib_s"] is not None else rec[
        "compressed_mib_s"]
    return (f"{rec['phase']:<6} {what} {rec['index'] + 1}/{runs} {rec['tool']:<11} "
            f"{rec['wall_s']:7.3f} s {rate or 0:8.1f} MiB/s  cpu {rec['cpu_s']:6.2f} s  "
            f"peak {rec['peak_rss_bytes'] / MiB:7.1f} MiB  {state}")


# ----------------------------------------------------------------------------------------------
# Command line


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``unlade bench run`` (environment: TARGET_IMAGE, NUM_RUNS,
    OUTPUT_DIR)."""
    parser.add_argument("--image", metavar="REF", default=os.environ.get("TARGET_IMAGE"),
                        help="image in a plain-HTTP registry on this machine (default: "
                             "$TARGET_IMAGE, else build the benchmark image and serve it)")
    parser.add_argument("--runs", type=int, default=int(os.environ.get("NUM_RUNS", "5")),
                        metavar="N", help="measured runs per tool and phase (default: "
                                          "$NUM_RUNS or 5)")
    parser.add_argument("--tools", default=",".join(DEFAULT_TOOLS),
                        help=f"comma-separated, of {','.join(TOOLS)} (default: %(default)s)")
    parser.add_argument("--phase", choices=("pull", "unpack", "both"), default="both")
    parser.add_argument("--output", metavar="DIR",
                        default=os.environ.get("OUTPUT_DIR", "bench-results"),
                        help="where results.json/.md/.png go (default: $OUTPUT_DIR or "
                             "%(default)s)")
    parser.add_argument("--tmpfs", action="store_true",
                        help="put the tools' stores and outputs on a tmpfs")
    parser.add_argument("--small", action="store_true",
                        help="build the small benchmark image (when no --image is given)")
    ref = parser.add_mutually_exclusive_group()
    ref.add_argument("--reference-image", metavar="REF",
                     help="a second, smaller image in the same registry: unlade's peak RSS "
                          "on it is compared with the main image's (memory flatness); by "
                          "default, without --image and --small, the small benchmark image")
    ref.add_argument("--no-reference", action="store_true",
                     help="no reference image (no memory flatness figures)")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unlade-bench"
    parser.add_argument("--image-cache", metavar="DIR", default=str(cache),
                        help="where the benchmark image is built, cached and served from "
                             "(default: %(default)s)")


def run_command(args: argparse.Namespace) -> int:
    """Run ``unlade bench run`` with parsed ``args``; returns the exit code."""
    from ..errors import UnladeError

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    phases = list(PHASES) if args.phase == "both" else [args.phase]
    reference = None if args.no_reference else args.reference_image
    try:
        if args.image:
            run_benchmark(args.image, None, runs=args.runs, tools=tools, phases=phases,
                          output=args.output, tmpfs=args.tmpfs, reference_image=reference)
            return 0
        from .image import LocalRegistry, build_image, push

        cache = Path(args.image_cache)
        kind = "small" if args.small else "full"
        _stderr_log(f"bench: building the {kind} benchmark image in {cache / kind}")
        image = build_image(cache / kind, small=args.small, log=_stderr_log)
        # The full image's memory is compared with the small one's (cached like any build),
        # so that one run shows whether unlade's peak RSS is flat across image sizes.
        # A reference that cannot be built or pushed costs only the flatness figures.
        small = None
        if not args.small and reference is None and not args.no_reference:
            _stderr_log(f"bench: building the small image (memory reference) in "
                        f"{cache / 'small'}")
            try:
                small = build_image(cache / "small", small=True, log=_stderr_log)
            except UnladeError as err:
                _stderr_log(f"bench: no memory reference, the small image failed: {err}")
        with LocalRegistry(cache / "registry") as registry:
            ref = push(image, registry, "unlade-bench/image")
            if small is not None:
                try:
                    reference = push(small, registry, "unlade-bench/image")
                except UnladeError as err:
                    _stderr_log(f"bench: no memory reference, pushing the small image "
                                f"failed: {err}")
            run_benchmark(ref, image, runs=args.runs, tools=tools, phases=phases,
                          output=args.output, tmpfs=args.tmpfs, reference_image=reference)
    except (BenchError, UnladeError) as err:
        print(f"unlade bench: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("unlade bench: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unlade bench run",
                                     description="Benchmark unlade (flat rootfs and overlayfs "
                                                 "snapshots) against containerd, umoci and "
                                                 "skopeo.")
    add_run_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
