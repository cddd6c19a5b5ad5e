"""Call signatures of the factory fixtures in ``tests/conftest.py`` (for type hints)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from typing import Any, Protocol

from .registry import Mode, Registry


class RegistryFactory(Protocol):
    """``make_registry(mode="plain", **Registry_kwargs) -> Registry`` (stopped at teardown)."""

    def __call__(self, mode: Mode = "plain", **kw: Any) -> Registry: ...


class RunUnlade(Protocol):
    """``run_unlade(*args, root=None, env=None, check=False, timeout=300, input=None)``."""

    def __call__(
        self,
        *args: str | os.PathLike[str],
        root: str | os.PathLike[str] | None = None,
        env: Mapping[str, str | None] | None = None,
        check: bool = False,
        timeout: float = 300,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]: ...
