"""Memory stays flat: a 1 GiB layer is pulled and unpacked in a small, constant footprint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.images import PushedImage

pytestmark = [pytest.mark.root, pytest.mark.tools]

LIMIT_MIB = 64


def test_big_layer_peak_rss_under_limit(tmp_path: Path, big_image: PushedImage) -> None:
    target = tmp_path / "rootfs"
    env = {**os.environ, "UNLADE_ROOT": str(tmp_path / "store")}
    out_path, err_path = tmp_path / "out.json", tmp_path / "err.txt"
    # ru_maxrss survives execve and a forked child starts with its parent's pages, so a
    # child forked straight from pytest (~80 MiB) would report pytest's size. A bare Python
    # (~9 MiB) in between runs unlade and reports unlade's own peak from wait4.
    launcher = (
        "import os, subprocess, sys\n"
        "with open(sys.argv[1], 'wb') as o, open(sys.argv[2], 'wb') as e:\n"
        "    p = subprocess.Popen(sys.argv[3:], stdout=o, stderr=e)\n"
        "    _, status, usage = os.wait4(p.pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", launcher, str(out_path), str(err_path),
         sys.executable, "-m", "unlade", "pull", "--plain-http", "--json", big_image.ref,
         "--rootfs", str(target)],
        env=env, capture_output=True, text=True, timeout=900, check=True)
    code, maxrss_kib = map(int, proc.stdout.split())
    assert code == 0, err_path.read_text()
    doc = json.loads(out_path.read_text())
    expected = int(os.environ.get("UNLADE_TEST_BIG_SIZE", str(1 << 30)))
    assert doc["layers"][0]["file_bytes"] >= expected * 0.95
    assert sum(f.stat().st_size for f in (target / "big").iterdir()) >= expected * 0.95
    peak_mib = maxrss_kib / 1024  # kilobytes on Linux
    print(f"peak RSS {peak_mib:.1f} MiB for {expected / 2**30:.2f} GiB")
    assert peak_mib < LIMIT_MIB, f"peak RSS {peak_mib:.1f} MiB >= {LIMIT_MIB} MiB"
