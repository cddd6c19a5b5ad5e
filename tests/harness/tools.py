"""Skip-or-fail helpers for tests needing external tools or root.

Locally a missing tool skips the test; when the ``CI`` environment variable is set the
test fails instead, so CI cannot silently skip the integration tests.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to a non-empty, non-false value."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip (locally) or fail (under CI) the current test with ``reason``."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def require_tool(*names: str) -> None:
    """Skip/fail unless every executable in ``names`` is on ``PATH``."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        unavailable(f"required tool(s) not installed: {', '.join(missing)}")


def is_root() -> bool:
    """True when running as uid 0."""
    return os.geteuid() == 0


def require_root() -> None:
    """Skip/fail unless running as root."""
    if not is_root():
        unavailable("needs root (mknod, chown, trusted.* xattrs)")
