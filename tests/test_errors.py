"""The error table: bad input gets one line naming the problem, exit 1, no traceback, and
nothing half-written at the target or in the store."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import images
from harness.protocols import RegistryFactory, RunUnlade
from harness.registry import Registry

pytestmark = [pytest.mark.root, pytest.mark.tools]

Setup = Callable[[Path, Registry], tuple[str, list[str]]]


def _image(tmp_path: Path, registry: Registry, repo: str, layers: list, **kw: object) -> str:
    layout = tmp_path / "layout"
    images.build_layout(layout, "t", layers, **kw)  # type: ignore[arg-type]
    images.push_raw(layout, "t", registry, repo)
    return f"{registry.host}/{repo}:t"


def bad_reference(tmp_path: Path, registry: Registry) -> tuple[str, list[str]]:
    return "Registry.example/UPPER//x:tag", []


def manifest_unknown(tmp_path: Path, registry: Registry) -> tuple[str, list[str]]:
    return f"{registry.host}/nothing/here:missing", []


def unknown_media_type(tmp_path: Path, registry: Registry) -> tuple[str, list[str]]:
    layout = tmp_path / "layout"
    info = images.build_layout(layout, "t", [[images.file("a", "a")]])
    manifest = dict(info.manifest)
    manifest["layers"] = [{**manifest["layers"][0], "mediaType": "application/x-bogus-layer"}]
    data = images.canonical_json(manifest)
    desc = images.write_blob(layout, data, info.manifest["mediaType"])
    images.tag_descriptor(layout, "bogus", desc)
    images.push_raw(layout, "bogus", registry, "errors/mediatype")
    return f"{registry.host}/errors/mediatype:bogus", []


def digest_mismatch(tmp_path: Path, registry: Registry) -> tuple[str, list[str]]:
    ref = _image(tmp_path, registry, "errors/corrupt",
                 [[images.file("payload", os.urandom(300_000))]], compression="none")
    layer = json.loads(images.read_blob(tmp_path / "layout", images.tagged_descriptor(
        tmp_path / "layout", "t")["digest"]))["layers"][0]["digest"][7:]
    data = registry.storage_dir / "docker/registry/v2/blobs/sha256" / layer[:2] / layer / "data"
    raw = bytearray(data.read_bytes())
    raw[-2000] ^= 0xFF  # same size, other bytes: the registry serves them as they are
    data.write_bytes(bytes(raw))
    return ref, []


def diffid_mismatch(tmp_path: Path, registry: Registry) -> tuple[str, list[str]]:
    wrong = "sha256:" + hashlib.sha256(b"not the layer").hexdigest()
    return _image(tmp_path, registry, "errors/diffid", [[images.file("a", "a")]],
                  config_overrides={"rootfs": {"diff_ids": [wrong]}}), []


def _raw_tar(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def truncated_layer(tmp_path: Path, registry: Registry) -> tuple[str, list[str]]:
    tar = _raw_tar([("ok", b"fine"), ("cut", b"x" * 5000)])
    return _image(tmp_path, registry, "errors/truncated", [tar[: 1536 + 2000]]), []


def layer_escape(tmp_path: Path, registry: Registry) -> tuple[str, list[str]]:
    tar = _raw_tar([("etc/.wh..", b"")])
    return _image(tmp_path, registry, "errors/escape", [tar]), []


ROWS: list[tuple[str, Setup, str]] = [
    ("bad reference", bad_reference, "invalid reference"),
    ("manifest unknown", manifest_unknown, "manifest unknown"),
    ("unknown media type", unknown_media_type, "unsupported media type 'application/x-bogus"),
    ("digest mismatch", digest_mismatch, "digest mismatch"),
    ("diffID mismatch", diffid_mismatch, "diffID mismatch"),
    ("truncated layer", truncated_layer, "'cut': stream ends inside its data"),
    ("layer escape", layer_escape, "invalid whiteout '.wh..' escapes its directory"),
]


def _assert_clean_failure(proc: subprocess.CompletedProcess[str], needle: str, target: Path,
                          store: Path) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("unlade: error: "), lines[0]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert not target.exists()
    assert list(target.parent.glob(f".{target.name}.unlade-*")) == []
    ingest = store / "ingest"
    assert not ingest.exists() or list(ingest.iterdir()) == []
    for blob in (store / "blobs" / "sha256").glob("*"):
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


@pytest.mark.parametrize("name,setup,needle", ROWS, ids=[r[0] for r in ROWS])
def test_error_table(name: str, setup: Setup, needle: str, tmp_path: Path,
                     make_registry: RegistryFactory, run_unlade: RunUnlade,
                     unlade_root: Path) -> None:
    registry = make_registry()
    ref, extra = setup(tmp_path, registry)
    target = tmp_path / "out" / "rootfs"
    target.parent.mkdir()
    proc = run_unlade("pull", "--plain-http", ref, "--rootfs", target, *extra)
    _assert_clean_failure(proc, needle, target, unlade_root)


def test_unauthorized(tmp_path: Path, auth_registry: Registry, run_unlade: RunUnlade,
                      unlade_root: Path) -> None:
    target = tmp_path / "rootfs"
    home = tmp_path / "home"
    home.mkdir()
    proc = run_unlade("pull", "--plain-http", f"{auth_registry.host}/any/thing:t",
                      "--rootfs", target, env={"HOME": str(home), "REGISTRY_AUTH_FILE": None,
                                               "XDG_RUNTIME_DIR": str(home)})
    _assert_clean_failure(proc, "unauthorized", target, unlade_root)


def test_unknown_host_without_any_network(tmp_path: Path, unlade_root: Path) -> None:
    """In a network namespace of its own (loopback only), so no DNS query leaves."""
    target = tmp_path / "rootfs"
    env = {**os.environ, "UNLADE_ROOT": str(unlade_root)}
    proc = subprocess.run(
        ["unshare", "--net", sys.executable, "-m", "unlade", "pull",
         "no-such-registry.invalid:5000/x:y", "--rootfs", str(target)],
        env=env, capture_output=True, text=True, timeout=60)
    _assert_clean_failure(proc, "unknown host no-such-registry.invalid", target, unlade_root)


def test_connection_refused(tmp_path: Path, run_unlade: RunUnlade, unlade_root: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = tmp_path / "rootfs"
    proc = run_unlade("pull", "--plain-http", f"127.0.0.1:{port}/x:y", "--rootfs", target)
    _assert_clean_failure(proc, f"cannot connect to 127.0.0.1:{port}", target, unlade_root)


def test_no_space_left(tmp_path: Path, make_registry: RegistryFactory,
                       run_unlade: RunUnlade, unlade_root: Path) -> None:
    registry = make_registry()
    ref = _image(tmp_path, registry, "errors/big", [[images.file("big", os.urandom(3 << 20))]])
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        target = small / "rootfs"
        proc = run_unlade("pull", "--plain-http", ref, "--rootfs", target)
        _assert_clean_failure(proc, "no space left on device", target, unlade_root)
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_usage_errors_exit_2(run_unlade: RunUnlade) -> None:
    assert run_unlade("pull").returncode == 2
    assert run_unlade("frobnicate").returncode == 2
    assert run_unlade().returncode == 2
