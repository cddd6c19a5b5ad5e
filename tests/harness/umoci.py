"""Reference unpacking with ``umoci`` (0.4.7 in Debian 12: gzip and uncompressed layers only,
no zstd)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def umoci_unpack(layout_dir: Path, tag: str, bundle_dir: Path) -> Path:
    """``umoci unpack --image LAYOUT:TAG BUNDLE``; returns ``BUNDLE/rootfs``.

    Run as root so ownership, devices and ``trusted.*``/``security.*`` xattrs are kept
    (as non-root umoci would need ``--rootless`` and loses them). ``bundle_dir`` must not
    exist yet.
    """
    proc = subprocess.run(
        ["umoci", "--log=error", "unpack", "--image", f"{layout_dir}:{tag}", str(bundle_dir)],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"umoci unpack failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return Path(bundle_dir) / "rootfs"
