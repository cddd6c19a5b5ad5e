"""Limits against bombs (issue 9): one test per limit, end to end against a real registry.

Each image here is small; the limit is lowered with ``--limit`` (or unlade.toml, or the
library's ``Client(limits=...)``) until the image goes over it. The pull must fail with a
one-line error naming the limit, leave no rootfs (nor its hidden work directory), and the
store must still check clean; a limit found in the manifest or config fails before any
layer is downloaded.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from harness import images as im
from harness.protocols import RunUnlade
from harness.registry import Registry
from harness.storecheck import bad_blobs, check_problems

from unlade.errors import ConfigError, LayerLimitExceeded, LimitExceeded
from unlade.limits import DEFAULT_LIMITS, Limits, format_size, parse_size

# -- the settings ------------------------------------------------------------------------------


def test_sizes_and_counts_parse() -> None:
    assert parse_size("64GiB") == 64 << 30
    assert parse_size("512 MiB") == parse_size("512m") == 512 << 20
    assert parse_size("1.5k") == 1536 and parse_size(4096) == 4096
    assert format_size(64 << 30) == "64 GiB" and format_size(4097) == "4097 bytes"
    limits = DEFAULT_LIMITS.with_specs(["layer-size=1GiB", "layers=7", "layer_entries=1_000"])
    assert (limits.layer_size, limits.layers, limits.layer_entries) == (1 << 30, 7, 1000)
    assert limits.path_length == DEFAULT_LIMITS.path_length
    for bad, message in [(["layers"], "expected NAME=VALUE"), (["nope=1"], "unknown limit"),
                         (["layers=0"], "at least 1"), (["layer_size=big"], "expected a size"),
                         (["layers=1.5"], "whole number")]:
        with pytest.raises(ConfigError, match=message):
            DEFAULT_LIMITS.with_specs(bad)
    with pytest.raises(ConfigError, match="positive integer"):
        Limits(layers=-1)


def test_defaults_are_documented_in_the_config_example() -> None:
    import unlade.config as config_module

    doc = config_module.__doc__ or ""
    for name, shown in [("layer_size", '"64GiB"'), ("layer_entries", "5000000"),
                        ("path_length", "4096"), ("xattr_size", '"64KiB"'),
                        ("manifest_size", '"4MiB"'), ("config_size", '"4MiB"'),
                        ("layers", "500")]:
        assert f"{name} = {shown}" in doc.replace("  ", " "), name
        raw = shown.strip('"')
        assert getattr(DEFAULT_LIMITS, name) == (parse_size(raw) if raw[-1].isalpha()
                                                 else int(raw)), name


# -- end to end --------------------------------------------------------------------------------


def push(tmp_path: Path, registry: Registry, repo: str, layers: list, **kw: object) -> str:
    pushed = im.build_and_push(tmp_path / "layout", registry, repo, "v1", layers, raw=True,
                               **kw)
    assert pushed.digest
    return f"{registry.host}/{repo}:v1"


def refused(run_unlade: RunUnlade, unlade_root: Path, tmp_path: Path, ref: str,
            *args: str, downloaded: bool) -> str:
    """Pull ``ref`` with ``args``; it must fail cleanly. Returns the error line."""
    target = tmp_path / "rootfs"
    proc = run_unlade("pull", "--plain-http", *args, ref, "--rootfs", target)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlade: error: "), proc.stderr
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rootfs.unlade-")]
    assert bad_blobs(unlade_root) == [] and check_problems(unlade_root) == []
    layer_blobs = [p for p in (unlade_root / "blobs" / "sha256").glob("*")
                   if p.stat().st_size > 0 and not _is_json(p)] \
        if (unlade_root / "blobs").exists() else []
    assert bool(layer_blobs) == downloaded, layer_blobs
    return lines[0].removeprefix("unlade: error: ")


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
        return True
    except ValueError:
        return False


def test_layer_size(registry: Registry, run_unlade: RunUnlade, unlade_root: Path,
                    tmp_path: Path) -> None:
    ref = push(tmp_path, registry, "limits/size",
               [[im.file("zeros", b"\0" * (1 << 20))]])
    msg = refused(run_unlade, unlade_root, tmp_path, ref, "--limit", "layer_size=512KiB",
                  downloaded=True)
    assert msg.startswith("layer 1 (sha256:")
    assert msg.endswith("larger than 512 KiB uncompressed (limit layer_size = 512 KiB; "
                        "raise it with --limit layer_size=...)")
    run_unlade("pull", "--plain-http", "-q", "--limit", "layer_size=2MiB", ref, "--rootfs",
               tmp_path / "ok", check=True)


def test_layer_size_counts_bytes_after_the_end_of_the_archive(
        registry: Registry, run_unlade: RunUnlade, unlade_root: Path, tmp_path: Path) -> None:
    """A bomb may hide after the end-of-archive blocks: those bytes are inflated too (the
    diffID covers them), so they count."""
    tar = im.layer_tar([im.file("small", b"x")]) + b"\0" * (2 << 20)
    ref = push(tmp_path, registry, "limits/trailing", [tar])
    msg = refused(run_unlade, unlade_root, tmp_path, ref, "--limit", "layer_size=1MiB",
                  downloaded=True)
    assert "larger than 1 MiB uncompressed" in msg


def test_layer_entries(registry: Registry, run_unlade: RunUnlade, unlade_root: Path,
                       tmp_path: Path) -> None:
    ref = push(tmp_path, registry, "limits/entries",
               [[im.file(f"f{i}", b"") for i in range(50)]])
    msg = refused(run_unlade, unlade_root, tmp_path, ref, "--limit", "layer_entries=20",
                  downloaded=True)
    assert msg.endswith(": more than 20 entries (limit layer_entries = 20; raise it with "
                        "--limit layer_entries=...)")
    assert msg.startswith("layer 1 (sha256:")


def test_path_length(registry: Registry, run_unlade: RunUnlade, unlade_root: Path,
                     tmp_path: Path) -> None:
    long_name = "d/" + "n" * 300
    ref = push(tmp_path, registry, "limits/path",
               [[im.directory("d"), im.file(long_name, b"x")]])
    msg = refused(run_unlade, unlade_root, tmp_path, ref, "--limit", "path_length=256",
                  downloaded=True)
    assert "path longer than 256 bytes (limit path_length = 256 bytes" in msg
    # the default (4096, PATH_MAX) refuses what no filesystem call could take anyway
    ref = push(tmp_path / "2", registry, "limits/path2",
               [[im.symlink("s", "t/" * 2100)]])
    msg = refused(run_unlade, unlade_root, tmp_path, ref, downloaded=True)
    assert "entry 's': link target longer than 4096 bytes" in msg


def test_xattr_size(registry: Registry, run_unlade: RunUnlade, unlade_root: Path,
                    tmp_path: Path) -> None:
    ref = push(tmp_path, registry, "limits/xattr",
               [[im.file("f", b"x", xattrs={"user.big": b"v" * 2048})]])
    msg = refused(run_unlade, unlade_root, tmp_path, ref, "--limit", "xattr_size=1KiB",
                  downloaded=True)
    assert "entry 'f': xattr user.big of 2048 bytes (limit xattr_size = 1 KiB" in msg


def test_manifest_size(registry: Registry, run_unlade: RunUnlade, unlade_root: Path,
                       tmp_path: Path) -> None:
    ref = push(tmp_path, registry, "limits/manifest", [[im.file("f", b"x")]],
               annotations={"org.example.padding": "p" * 4000})
    msg = refused(run_unlade, unlade_root, tmp_path, ref, "--limit", "manifest_size=2KiB",
                  downloaded=False)
    assert msg.startswith(f"{ref}: manifest of ")
    assert msg.endswith("exceeds the limit of 2,048 bytes (limit manifest_size = 2 KiB; "
                        "raise it with --limit manifest_size=...)")


def test_config_size(registry: Registry, run_unlade: RunUnlade, unlade_root: Path,
                     tmp_path: Path) -> None:
    ref = push(tmp_path, registry, "limits/config", [[im.file("f", b"x")]],
               config_overrides={"config": {"Env": [f"PAD={'p' * 3000}"]}})
    msg = refused(run_unlade, unlade_root, tmp_path, ref, "--limit", "config_size=2KiB",
                  downloaded=False)
    assert "config of " in msg and "(limit config_size = 2 KiB" in msg


def test_layer_count(registry: Registry, run_unlade: RunUnlade, unlade_root: Path,
                     tmp_path: Path) -> None:
    ref = push(tmp_path, registry, "limits/layers",
               [[im.file(f"f{i}", str(i))] for i in range(5)])
    msg = refused(run_unlade, unlade_root, tmp_path, ref, "--limit", "layers=3",
                  downloaded=False)
    assert msg == (f"{ref} has 5 layers (limit layers = 3; raise it with --limit "
                   "layers=...)")
    assert not (unlade_root / "blobs").exists() or not any(
        (unlade_root / "blobs" / "sha256").iterdir()), "the refused manifest was not stored"


def test_limits_from_the_config_file(registry: Registry, run_unlade: RunUnlade,
                                     unlade_root: Path, tmp_path: Path) -> None:
    ref = push(tmp_path, registry, "limits/file",
               [[im.file(f"f{i}", b"") for i in range(30)]])
    conf = tmp_path / "unlade.toml"
    conf.write_text("[limits]\nlayer_entries = 10\n")
    proc = run_unlade("--config", conf, "pull", "--plain-http", ref, "--rootfs",
                      tmp_path / "a")
    assert "more than 10 entries (limit layer_entries = 10" in proc.stderr
    # the command line wins over the file
    run_unlade("--config", conf, "pull", "--plain-http", "-q", "--limit", "layer_entries=100",
               ref, "--rootfs", tmp_path / "b", check=True)
    conf.write_text("[limits]\nlayer_entrys = 10\n")
    bad = run_unlade("--config", conf, "pull", "--plain-http", ref)
    assert "[limits]: unknown limit 'layer_entrys'" in bad.stderr


def test_limits_in_the_library(registry: Registry, tmp_path: Path) -> None:
    from unlade import Client

    ref = push(tmp_path, registry, "limits/lib",
               [[im.file("a", b"a"), im.file("a2", b"a")], [im.file("b", b"b")]])
    client = Client(tmp_path / "store", plain_http=True, limits=Limits(layers=1))
    with pytest.raises(LimitExceeded, match="has 2 layers"):
        client.pull(ref, rootfs=tmp_path / "r")
    client = Client(tmp_path / "store", plain_http=True, limits=Limits(layer_entries=1))
    with pytest.raises(LayerLimitExceeded, match="more than 1 entries"):
        client.pull(ref, rootfs=tmp_path / "r2")
    # snapshots and stored images are bound by the same limits
    client = Client(tmp_path / "store2", plain_http=True, limits=Limits(layer_size=2048),
                    snapshotter="native")
    big = push(tmp_path / "big", registry, "limits/lib-big",
               [[im.file("z", gzip.compress(b"") + b"\0" * 8192)]])
    with pytest.raises(LayerLimitExceeded, match="larger than 2 KiB uncompressed"):
        client.pull(big)
