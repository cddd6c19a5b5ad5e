"""Inspect an unlade store from the outside (no unlade imports): blobs that do not match
their digest, ingest files whose lock is held, and what a pull still has to download.

Also starts ``unlade pull`` processes in the background, as the crash and concurrency
tests need them running side by side.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SRC_DIR = Path(__file__).resolve().parents[2] / "src"


def unlade_env(root: str | os.PathLike[str]) -> dict[str, str]:
    """The environment ``run_unlade`` uses: ``UNLADE_ROOT`` and ``src`` on the path."""
    env = dict(os.environ)
    env["UNLADE_ROOT"] = os.fspath(root)
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(SRC_DIR) + (os.pathsep + pp if pp else "")
    return env


def start_unlade(root: str | os.PathLike[str], *args: str | os.PathLike[str]
                 ) -> subprocess.Popen[str]:
    """``python -m unlade ARGS`` in the background (stdout/stderr piped, text)."""
    return subprocess.Popen([sys.executable, "-m", "unlade", *map(os.fspath, args)],
                            env=unlade_env(root), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    """Wait for a ``pull --json`` and return its document (AssertionError on failure)."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{err}"
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def check_problems(root: str | os.PathLike[str]) -> list[str]:
    """``unlade check`` (``--json`` where the CLI has it): the problems it reports.
    The exit status must agree (0 exactly when there are none)."""
    cmd = [sys.executable, "-m", "unlade", "check", "--json"]
    proc = subprocess.run(cmd, env=unlade_env(root), capture_output=True, text=True,
                          timeout=120)
    if proc.returncode == 2 and "--json" in proc.stderr:  # a CLI without check --json
        proc = subprocess.run(cmd[:-1], env=unlade_env(root), capture_output=True,
                              text=True, timeout=120)
        problems = [line for line in proc.stdout.splitlines() if line.startswith("problem")]
        assert proc.stdout.strip(), proc.stderr
    else:
        assert proc.returncode in (0, 1), f"check exited {proc.returncode}: {proc.stderr}"
        doc = json.loads(proc.stdout)
        problems = [str(p) for p in doc["problems"]]
        assert doc.get("ok", not problems) == (not problems), doc
    assert (proc.returncode == 0) == (not problems), (proc.returncode, problems, proc.stderr)
    return problems


def bad_blobs(root: Path) -> list[str]:
    """Files under ``blobs/`` whose content does not hash to their name."""
    bad = []
    base = root / "blobs"
    for algo_dir in sorted(base.iterdir()) if base.is_dir() else []:
        for blob in sorted(algo_dir.iterdir()):
            h = hashlib.new(algo_dir.name)
            with open(blob, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            if h.hexdigest() != blob.name:
                bad.append(f"{algo_dir.name}:{blob.name}")
    return bad


def lock_is_held(path: Path) -> bool:
    """Whether anyone holds an ``flock`` on ``path`` (False if it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def held_ingest(root: Path) -> list[str]:
    """Ingest files (``.part`` or ``.lock``) whose lock somebody holds."""
    ingest = root / "ingest"
    if not ingest.is_dir():
        return []
    return sorted(p.name for p in ingest.iterdir()
                  if p.suffix in (".part", ".lock") and lock_is_held(p.with_suffix(".lock")))


def ingest_files(root: Path) -> list[str]:
    ingest = root / "ingest"
    return sorted(p.name for p in ingest.iterdir()) if ingest.is_dir() else []


def part_size(root: Path, digest: str) -> int:
    """Bytes of ``digest`` already in its ingest file (0 if there is none)."""
    algo, _, hexpart = digest.partition(":")
    try:
        return (root / "ingest" / f"{algo}-{hexpart}.part").stat().st_size
    except FileNotFoundError:
        return 0


def stored(root: Path, digest: str) -> bool:
    algo, _, hexpart = digest.partition(":")
    return (root / "blobs" / algo / hexpart).is_file()


def still_to_fetch(root: Path, layers: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Per layer blob (digest, size) not in ``blobs/``: the bytes a pull must download,
    a resumable ``.part`` (not longer than the blob) being kept."""
    todo = {}
    for digest, size in layers:
        if stored(root, digest) or digest in todo:
            continue
        have = part_size(root, digest)
        todo[digest] = size - (have if have <= size else 0)
    return todo


def open_ingest_locks(root: Path, pid: int) -> list[str]:
    """The ingest lock files process ``pid`` has open (held or waited for)."""
    out = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return out
    prefix = os.path.realpath(root / "ingest") + "/"
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(prefix) and target.endswith(".lock"):
            out.append(target[len(prefix):])
    return sorted(out)
