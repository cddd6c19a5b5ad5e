"""Shared fixtures for unlade's tests (see ``tests/harness`` for the building blocks).

Session fixtures (one per pytest-xdist worker): ``registry`` (plain HTTP), ``tls_registry``,
``auth_registry`` (htpasswd basic auth), ``token_registry`` (bearer tokens), ``tricky_image``
(pushed to ``registry``), ``tricky_rootfs`` (umoci reference unpack), ``big_image``.
Function fixtures: ``make_registry`` (custom registries), ``run_unlade``.

Tests needing missing tools are skipped -- or fail when ``CI`` is set. Mark tests needing
root with ``@pytest.mark.root`` (same skip/fail rule).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent
SRC_DIR = TESTS_DIR.parent / "src"

# Make `import unlade` work without an editable install (find_spec does not import it).
if importlib.util.find_spec("unlade") is None and SRC_DIR.is_dir():
    sys.path.insert(0, str(SRC_DIR))

from harness import images  # noqa: E402
from harness.images import PushedImage  # noqa: E402
from harness.protocols import RegistryFactory, RunUnlade  # noqa: E402
from harness.registry import Mode, Registry  # noqa: E402
from harness.tools import require_root, require_tool  # noqa: E402

REGISTRY_TOOLS = ("docker-registry",)
PUSH_TOOLS = ("docker-registry", "skopeo")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Honour the ``root`` and ``tools`` markers (skip locally, fail under CI)."""
    if item.get_closest_marker("root") is not None:
        require_root()
    if item.get_closest_marker("tools") is not None:
        require_tool("docker-registry", "skopeo", "umoci")


# ----------------------------------------------------------------------------------------------
# Registries


def _start_registry(mode: Mode, workdir: Path, **kw: Any) -> Registry:
    require_tool(*REGISTRY_TOOLS)
    return Registry(mode, workdir=workdir, **kw).start()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain-HTTP registry without auth."""
    reg = _start_registry("plain", tmp_path_factory.mktemp("registry-plain"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An HTTPS registry (``ca_pem_path``, ``cert_dir``/``ca.crt``, ``certs_d``/HOST/ca.crt)."""
    reg = _start_registry("tls", tmp_path_factory.mktemp("registry-tls"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain-HTTP registry with htpasswd basic auth (``credentials``)."""
    reg = _start_registry("htpasswd", tmp_path_factory.mktemp("registry-htpasswd"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain-HTTP registry with token auth; anonymous pull allowed, push needs credentials.

    Shared by the session: compare ``tokens_issued`` before/after, or call
    ``token_registry.token_server.reset_counters()``.
    """
    reg = _start_registry("token", tmp_path_factory.mktemp("registry-token"))
    yield reg
    reg.stop()


@pytest.fixture
def make_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryFactory]:
    """Factory for registries private to one test (stopped at teardown).

    ``make_registry("token", anonymous_pull=False, token_ttl=2, tls=True)``.
    """
    started: list[Registry] = []

    def factory(mode: Mode = "plain", **kw: Any) -> Registry:
        reg = _start_registry(mode, tmp_path_factory.mktemp(f"registry-{mode}"), **kw)
        started.append(reg)
        return reg

    yield factory
    for reg in started:
        reg.stop()


# ----------------------------------------------------------------------------------------------
# Images


@pytest.fixture(scope="session")
def tricky_image(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> PushedImage:
    """:func:`harness.images.tricky_layers` as OCI (gzip) pushed with skopeo to ``registry``."""
    require_tool(*PUSH_TOOLS)
    layout = tmp_path_factory.mktemp("tricky") / "layout"
    info = images.build_layout(layout, "tricky", images.tricky_layers())
    digest = images.push(layout, "tricky", registry, "harness/tricky")
    return PushedImage(layout, "tricky", "harness/tricky", registry, digest, info)


@pytest.fixture(scope="session")
def tricky_rootfs(tmp_path_factory: pytest.TempPathFactory, tricky_image: PushedImage) -> Path:
    """umoci's unpack of ``tricky_image`` (the reference tree; needs root and umoci)."""
    require_root()
    require_tool("umoci")
    from harness.umoci import umoci_unpack

    bundle = tmp_path_factory.mktemp("tricky-umoci") / "bundle"
    return umoci_unpack(tricky_image.layout, tricky_image.tag, bundle)


@pytest.fixture(scope="session")
def big_image(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> PushedImage:
    """A one-layer ~1 GiB (env ``UNLADE_TEST_BIG_SIZE`` bytes) incompressible gzip image.

    Built streaming with pigz and pushed byte-exact to ``registry`` (slow: seconds).
    """
    require_tool("docker-registry", "pigz")
    size = int(os.environ.get("UNLADE_TEST_BIG_SIZE", str(1 << 30)))
    layout = tmp_path_factory.mktemp("big") / "layout"
    info = images.big_layer_layout(layout, size, tag="big")
    digest = images.push_raw(layout, "big", registry, "harness/big")
    return PushedImage(layout, "big", "harness/big", registry, digest, info)


# ----------------------------------------------------------------------------------------------
# Running the CLI


@pytest.fixture
def unlade_root(tmp_path: Path) -> Path:
    """The per-test store used by ``run_unlade`` (``UNLADE_ROOT``); not created in advance."""
    return tmp_path / "unlade-root"


@pytest.fixture
def run_unlade(unlade_root: Path) -> RunUnlade:
    """Run ``python -m unlade ARGS`` with ``UNLADE_ROOT`` = a per-test store.

    ``root`` overrides the store, ``env`` adds (or with ``None`` removes) variables,
    ``check=True`` raises on a non-zero exit. Output is captured as text.
    """

    def run(
        *args: str | os.PathLike[str],
        root: str | os.PathLike[str] | None = None,
        env: Mapping[str, str | None] | None = None,
        check: bool = False,
        timeout: float = 300,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = dict(os.environ)
        full_env["UNLADE_ROOT"] = os.fspath(root if root is not None else unlade_root)
        pp = full_env.get("PYTHONPATH")
        full_env["PYTHONPATH"] = str(SRC_DIR) + (os.pathsep + pp if pp else "")
        for k, v in (env or {}).items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
        cmd = [sys.executable, "-m", "unlade", *map(os.fspath, args)]
        proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True,
                              timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}"
                f"\n--- stderr\n{proc.stderr}")
        return proc

    return run


