"""``unlade bench run``: a smoke run of the whole benchmark on a tiny image, plus the pieces
that need neither root nor tools (the expected-tree replay, chain IDs, the report)."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from pathlib import Path

import pytest
from harness import images as im
from harness.registry import Registry
from harness.tools import require_tool, unavailable

from unlade.bench import report
from unlade.bench.run import LayerFacts, chain_ids, expected_tree, run_benchmark, walk_tree


def tiny_layers() -> list[list[im.Entry]]:
    """Two layers: files, a symlinked directory, a hardlink, a whiteout and an opaque dir."""
    rng = random.Random(4)
    base = [im.dir("usr"), im.dir("usr/lib"), im.symlink("lib", "usr/lib"), im.dir("etc"),
            im.dir("opt"), im.file("opt/old", "old\n")]
    base += [im.file(f"usr/lib/f{i:02d}", rng.randbytes(rng.randrange(0, 40_000)))
             for i in range(40)]
    top = [im.file("etc/hostname", "bench\n"), im.hardlink("etc/hostname2", "etc/hostname"),
           im.whiteout("usr/lib/f03"), im.file("lib/via-symlink", "x" * 1000),
           im.dir("opt"), im.opaque("opt"), im.file("opt/new", "new\n")]
    return [base, top]


def _layer_facts(layout: Path, info: im.ImageInfo) -> list[LayerFacts]:
    out = []
    for digest, diff_id in zip(info.layer_digests, info.diff_ids, strict=True):
        path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
        out.append(LayerFacts(digest, path.stat().st_size, im.MT_OCI_LAYER_GZIP, "gzip",
                              diff_id, path))
    return out


def test_expected_tree_replays_whiteouts_symlinks_and_hardlinks(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    info = im.build_layout(layout, "v1", tiny_layers())
    layers = _layer_facts(layout, info)
    (entries, nbytes), (tar_entries, tar_nbytes) = expected_tree(layers)
    rng = random.Random(4)
    sizes = [len(rng.randbytes(rng.randrange(0, 40_000))) for _ in range(40)]
    # usr, usr/lib, lib, etc, opt, 39 files; etc/hostname(2), usr/lib/via-symlink, opt/new
    assert entries == 5 + 39 + 2 + 1 + 1
    assert nbytes == sum(sizes) - sizes[3] + 6 + 6 + 1000 + 4
    # plain tar keeps f03, opt/old and the two markers (empty files)
    assert tar_entries == entries + 4
    assert tar_nbytes == nbytes + sizes[3] + 4
    assert all(la.uncompressed > 0 for la in layers)


def test_chain_ids() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert chain_ids([a, b]) == [a, "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()]


def test_walk_tree(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"12345")
    (tmp_path / "l").symlink_to("d")
    (tmp_path / "h").hardlink_to(tmp_path / "d" / "f")
    assert walk_tree(tmp_path) == (4, 10)


def require_module(name: str) -> None:
    """Skip (locally) or fail (under CI) unless ``name`` can be imported."""
    try:
        __import__(name)
    except ImportError:
        unavailable(f"Python module {name} is not installed")


def test_report_from_records(tmp_path: Path) -> None:
    require_module("matplotlib")
    import datetime as dt

    def rec(tool: str, phase: str, wall: float, rss: int, valid: bool = True) -> dict:
        return {"phase": phase, "tool": tool, "index": 0, "valid": valid,
                "download_only": tool == "skopeo", "wall_s": wall, "cpu_s": wall,
                "peak_rss_bytes": rss, "peak_rss_sampled_bytes": rss, "peak_cpu_percent": 90.0,
                "peak_procs": 1, "peak_threads": 2, "compressed_mib_s": 10.0 / wall,
                "unpacked_mib_s": None if tool == "skopeo" else 30.0 / wall}

    records = [rec("unlade", "pull", 1.0, 30 << 20), rec("containerd", "pull", 2.0, 60 << 20),
               rec("unlade", "pull", 3.0, 31 << 20), rec("containerd", "pull", 9.0, 1, False),
               rec("skopeo", "pull", 0.5, 20 << 20), rec("unlade", "unpack", 0.5, 29 << 20),
               rec("containerd", "unpack", 1.0, 58 << 20), rec("limit", "unpack", 0.25, 4 << 20),
               rec("unlade-snap", "pull", 1.5, 40 << 20),
               rec("unlade-snap", "unpack", 0.4, 35 << 20)]
    doc = report.build_document(
        started=dt.datetime.now(dt.UTC), image_ref="r", image_info=None,
        facts={"reference": "r", "layers": [{}], "compressed_bytes": 10 << 20,
               "uncompressed_bytes": 40 << 20, "entries": 9, "file_bytes": 30 << 20},
        machine={"cpu_model": "cpu", "cores": 2, "memory_bytes": 1 << 30, "kernel": "k",
                 "fs_type": "ext4"},
        versions={"unlade": "0"}, tmpfs=False, runs=2, tools=["unlade", "containerd"],
        phases=["pull", "unpack"], records=records, heaps={"pull": 1 << 20},
        tool_heaps={"unlade-snap": {"pull": 2 << 20, "unpack": 3 << 20}})
    pull = doc["summary"]["pull"]
    assert pull["unlade"]["wall_s"] == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert pull["containerd"]["valid_runs"] == 1  # the invalid run does not count
    assert pull["unlade"]["peak_python_heap_bytes"] == 1 << 20
    assert doc["ratios"]["pull"]["unlade"]["wall_s"] == 1.0
    assert doc["ratios"]["unpack"]["limit"]["wall_s"] == 0.25
    assert list(pull) == ["unlade", "unlade-snap", "containerd", "skopeo"]  # report order
    assert pull["unlade-snap"]["peak_python_heap_bytes"] == 2 << 20
    assert doc["summary"]["unpack"]["unlade-snap"]["peak_python_heap_bytes"] == 3 << 20
    assert "peak_python_heap_bytes" not in pull["containerd"]
    assert doc["ratios"]["pull"]["unlade-snap"]["wall_s"] == 0.75
    assert doc["ratios"]["unpack"]["unlade-snap"]["peak_rss_bytes"] == round(35 / 58, 3)
    written = report.write_all(doc, tmp_path)
    assert {p.name for p in written} == {"results.json", "results.md", "results.png"}
    md = (tmp_path / "results.md").read_text()
    assert "| unlade |" in md and md.count("| unlade-snap |") == 2
    assert "0.75×" in md


@pytest.mark.root
@pytest.mark.tools
def test_bench_smoke(tmp_path: Path, registry: Registry) -> None:
    """One run each of unlade (flat rootfs and snapshots), containerd and the tar limit,
    both phases, on a tiny image; then start-up, and unlade's runs on an even smaller
    reference image (memory flatness), and the targets."""
    require_tool("containerd", "ctr", "unpigz", "skopeo")
    require_module("psutil")
    require_module("matplotlib")
    layout = tmp_path / "layout"
    im.build_layout(layout, "v1", tiny_layers())
    im.push(layout, "v1", registry, "bench/smoke")
    ref = f"{registry.host}/bench/smoke:v1"
    ref_layout = tmp_path / "ref-layout"
    im.build_layout(ref_layout, "v1", [[im.dir("etc"), im.file("etc/a", "a\n")]])
    im.push(ref_layout, "v1", registry, "bench/smoke-ref")
    small_ref = f"{registry.host}/bench/smoke-ref:v1"
    lines: list[str] = []
    out = tmp_path / "out"
    doc = run_benchmark(ref, {"layout": layout, "tag": "v1"}, runs=1,
                        tools=["unlade", "unlade-snap", "unlade-enc", "containerd", "limit"],
                        phases=["pull", "unpack"],
                        output=out, tmpfs=False, log=lines.append, workdir=tmp_path / "work",
                        reference_image=small_ref)

    saved = json.loads((out / "results.json").read_text())
    assert saved["schema"] == doc["schema"] == report.SCHEMA
    for key in ("started", "settings", "machine", "versions", "image", "runs", "summary",
                "ratios", "startup", "memory_flatness", "targets"):
        assert key in saved, key
    for key in ("cpu_model", "cores", "memory_bytes", "kernel", "fs_type"):
        assert saved["machine"][key], key
    for key in ("unlade", "containerd", "ctr", "unpigz", "tar"):
        assert saved["versions"][key], key
    image = saved["image"]
    assert image["entries"] == 48 and len(image["layers"]) == 2
    assert image["compressed_bytes"] > 0 and image["uncompressed_bytes"] > image["file_bytes"]
    assert image["builder"] == {"layout": str(layout), "tag": "v1"}

    runs = [r for r in saved["runs"] if r["kind"] == "timed"]
    assert sorted((r["phase"], r["tool"]) for r in runs) == [
        ("pull", "containerd"), ("pull", "unlade"), ("pull", "unlade-enc"),
        ("pull", "unlade-snap"), ("unpack", "containerd"), ("unpack", "limit"),
        ("unpack", "unlade"), ("unpack", "unlade-enc"), ("unpack", "unlade-snap")]
    for r in runs:
        check = r["check"]
        assert r["valid"], (r["tool"], r["phase"], r["error"], check)
        assert check["ok"] and check["entries"] == check["expected_entries"]
        assert check["file_bytes"] == check["expected_file_bytes"]
        assert r["wall_s"] > 0 and r["cpu_s"] > 0 and r["peak_rss_bytes"] > 0
        assert set(r["samples"]) == {"t", "rss", "cpu_percent", "procs", "threads"}
        assert len(r["samples"]["t"]) >= 2
    by = {(r["phase"], r["tool"]): r for r in runs}
    assert by[("unpack", "limit")]["check"]["expected_entries"] == 48 + 4  # markers kept
    for phase in ("pull", "unpack"):
        roles = {p["role"] for p in by[(phase, "containerd")]["processes"]}
        assert {"command", "daemon"} <= roles
        for tool in ("unlade", "unlade-snap"):
            assert saved["ratios"][phase][tool]["wall_s"] is not None
            assert saved["summary"][phase][tool]["peak_python_heap_bytes"] > 0
        snap = by[(phase, "unlade-snap")]
        argv = snap["commands"][0][0]
        assert argv[argv.index("pull"):] == [
            "pull", "--plain-http", "-q", "--snapshotter", "overlayfs", ref]
        assert "--rootfs" not in argv
        assert snap["check"]["entries"] == 48  # through the mount: whiteouts applied
    assert saved["summary"]["unpack"]["limit"]["valid_runs"] == 1
    for phase in ("pull", "unpack"):  # the encrypted copy, decrypted to the same tree
        enc = by[(phase, "unlade-enc")]
        argv = enc["commands"][0][0]
        assert argv[argv.index("pull"):][:4] == ["pull", "--plain-http", "-q",
                                                 "--decryption-key"]
        assert f"{ref}-encrypted" in argv and enc["check"]["entries"] == 48
    overhead = {t["name"]: t for t in saved["targets"]}["decryption overhead"]
    assert overhead["value"] is not None and overhead["value"] > 0

    # the reference image: unlade and unlade-snap only, kept out of the summary
    refs = [r for r in saved["runs"] if r["kind"] == "reference"]
    assert sorted((r["phase"], r["tool"]) for r in refs) == [
        ("pull", "unlade"), ("pull", "unlade-snap"), ("unpack", "unlade"),
        ("unpack", "unlade-snap")]
    for r in refs:
        assert r["image"] == small_ref
        assert r["valid"], (r["tool"], r["phase"], r["error"], r["check"])
        assert r["check"]["entries"] == 2 and r["peak_rss_bytes"] > 0
    assert all(e["runs"] == 1 for p in saved["summary"].values() for e in p.values())
    mf = saved["memory_flatness"]
    assert saved["settings"]["reference_image"] == mf["reference_image"] == small_ref
    assert mf["error"] is None
    assert mf["reference_facts"]["entries"] == 2 and mf["reference_facts"]["file_bytes"] == 2
    for phase in ("pull", "unpack"):
        assert set(mf[phase]) == {"unlade", "unlade-snap"}
        for tool, entry in mf[phase].items():
            assert entry["ratio"] > 0 and entry["reference_valid_runs"] == 1
            assert entry["peak_rss_bytes"] == saved["summary"][phase][tool][
                "peak_rss_bytes"]["median"]
    startup = saved["startup"]
    assert startup["error"] is None and startup["runs"] == 5
    assert startup["wall_s"]["median"] > 0 and startup["import_us"] > 0
    assert [t["name"] for t in saved["targets"]] == [
        "unpack vs containerd", "unpack vs limit", "pull vs containerd",
        "decryption overhead", "peak RSS", "peak RSS (unlade-snap)", "flat memory",
        "flat memory (unlade-snap)", "Python heap", "start-up"]
    # every figure a target needs was measured (whether they hold on a tiny image is moot)
    assert all(t["value"] is not None and t["ok"] is not None for t in saved["targets"])

    md = (out / "results.md").read_text()
    rows = md.splitlines()
    assert sum(r.startswith("| containerd |") for r in rows) == 2
    assert sum(r.startswith("| unlade-snap |") for r in rows) == 2
    assert sum(r.startswith("| unlade-enc |") for r in rows) == 2
    assert "## Targets" in md and "## Memory across image sizes" in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(" run 1/1 " in line for line in lines) == 9  # one progress line per run
    assert sum(" ref 1/1 " in line for line in lines) == 4
    assert sum(" heap " in line and line.endswith("(ok)") for line in lines) == 6
    assert not (tmp_path / "work").exists()
    mounts = subprocess.run(["cat", "/proc/self/mountinfo"], capture_output=True,
                            text=True).stdout
    assert str(tmp_path) not in mounts
