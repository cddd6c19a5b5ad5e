"""``unlade bench run``: the performance targets, memory flatness across image sizes and
start-up figures of results.json. The targets are tested on synthetic documents (no timing
is asserted anywhere); the start-up measurement and the ``-X importtime`` parser run for
real, on ``unlade --help``, which is quick."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from unlade.bench import image as bench_image
from unlade.bench import report
from unlade.bench import run as bench_run

MiB = 1 << 20
TARGET_NAMES = ["unpack vs containerd", "unpack vs limit", "pull vs containerd",
                "decryption overhead", "peak RSS", "flat memory", "Python heap", "start-up"]
FILE_BYTES = 1000 * MiB


def rec(tool: str, phase: str, wall: float, rss: float, *, valid: bool = True,
        kind: str = "timed") -> dict[str, Any]:
    """A run record with the fields the summary reads."""
    r = {"phase": phase, "tool": tool, "index": 0, "kind": kind, "valid": valid,
         "download_only": False, "wall_s": wall, "cpu_s": wall, "peak_rss_bytes": int(rss),
         "peak_rss_sampled_bytes": int(rss), "peak_cpu_percent": 100.0, "peak_procs": 1,
         "peak_threads": 1, "compressed_mib_s": 300 / wall,
         "unpacked_mib_s": FILE_BYTES / MiB / wall, "commands": [[["x", tool]]]}
    if kind == "reference":
        r["image"] = "reg/ref:small"
    return r


def startup(median: float | None) -> dict[str, Any]:
    if median is None:
        return {"argv": ["python", "-m", "unlade", "--help"], "runs": 5, "wall_s": None,
                "importtime_argv": [], "import_us": None, "top_imports": None,
                "error": "timing: OSError: boom"}
    return {"argv": ["python", "-m", "unlade", "--help"], "runs": 5,
            "wall_s": {"median": median, "min": median * 0.9, "max": median * 1.1},
            "importtime_argv": [], "import_us": 31_000,
            "top_imports": [{"module": "unlade.cli", "cumulative_us": 7000},
                            {"module": "site", "cumulative_us": 3000}], "error": None}


def make_doc(records: list[dict[str, Any]], *, fs: str = "ext4",
             heaps: dict[str, int | None] | None = None,
             start: dict[str, Any] | None = None, reference: bool = True) -> dict[str, Any]:
    tools = sorted({r["tool"] for r in records}, key=report.TOOL_ORDER.index)
    flat = (report.memory_flatness(records, "reg/ref:small",
                                   {"compressed_bytes": 20 * MiB, "file_bytes": 60 * MiB,
                                    "entries": 900})
            if reference else None)
    return report.build_document(
        started=dt.datetime.now(dt.UTC), image_ref="reg/img:full", image_info=None,
        facts={"reference": "reg/img:full", "layers": [{}], "compressed_bytes": 300 * MiB,
               "uncompressed_bytes": 1100 * MiB, "entries": 30000, "file_bytes": FILE_BYTES},
        machine={"cpu_model": "cpu", "cores": 2, "memory_bytes": 1 << 30, "kernel": "k",
                 "fs_type": fs, "work_dir": "/w"},
        versions={"unlade": "0"}, tmpfs=fs == "tmpfs", runs=1, tools=tools,
        phases=["pull", "unpack"], records=records, heaps=heaps or {}, startup=start,
        memory_flatness=flat)


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in doc["targets"]}


def passing_records() -> list[dict[str, Any]]:
    return [
        rec("unlade", "pull", 5.0, 42 * MiB), rec("containerd", "pull", 14.0, 93 * MiB),
        rec("unlade", "unpack", 3.30, 40 * MiB), rec("containerd", "unpack", 11.24, 82 * MiB),
        rec("limit", "unpack", 3.0, 5 * MiB),
        rec("unlade-enc", "pull", 5.5, 42 * MiB), rec("unlade-enc", "unpack", 3.63, 40 * MiB),
        rec("unlade", "pull", 1.0, 41 * MiB, kind="reference"),
        rec("unlade", "unpack", 0.8, 39 * MiB, kind="reference"),
        rec("unlade", "unpack", 0.7, 41 * MiB, kind="reference"),
    ]


# ----------------------------------------------------------------------------------------------
# Targets


def test_targets_pass() -> None:
    doc = make_doc(passing_records(), heaps={"pull": 10 * MiB, "unpack": 12 * MiB},
                   start=startup(0.045))
    assert [t["name"] for t in doc["targets"]] == TARGET_NAMES
    for t in doc["targets"]:
        assert set(t) == {"name", "target", "measured", "value", "ok"}
        assert t["ok"] is True, t
        assert isinstance(t["value"], float), t
    t = by_name(doc)
    assert t["unpack vs containerd"]["measured"] == "3.41× faster (3.30 s vs 11.24 s)"
    assert t["unpack vs containerd"]["value"] == pytest.approx(3.30 / 11.24, abs=1e-4)
    assert t["unpack vs limit"]["value"] == pytest.approx(1.1)
    assert "1.2×" in t["unpack vs limit"]["target"]
    assert t["pull vs containerd"]["value"] == pytest.approx(14.0 / 5.0)
    assert t["decryption overhead"]["value"] == pytest.approx(1.1)
    assert t["decryption overhead"]["measured"] == "+10 % (3.63 s vs 3.30 s; pull 1.10×)"
    assert t["peak RSS"]["value"] == 42.0 and "(pull)" in t["peak RSS"]["measured"]
    # flatness: pull 42/41, unpack 40/40 (the median of the two reference runs)
    assert t["flat memory"]["value"] == pytest.approx(round(42 / 41, 3))
    assert t["flat memory"]["measured"] == "pull 1.02×, unpack 1.00×"
    assert t["Python heap"]["value"] == 12.0
    assert t["start-up"]["value"] == 0.045
    assert "45.0 ms" in t["start-up"]["measured"]


def test_targets_fail() -> None:
    records = [
        rec("unlade", "pull", 10.0, 70 * MiB), rec("containerd", "pull", 14.0, 93 * MiB),
        rec("unlade", "unpack", 6.0, 60 * MiB), rec("containerd", "unpack", 11.0, 82 * MiB),
        rec("limit", "unpack", 4.0, 5 * MiB), rec("unlade-enc", "unpack", 8.0, 50 * MiB),
        rec("unlade-snap", "pull", 9.0, 80 * MiB), rec("unlade-snap", "unpack", 5.0, 50 * MiB),
        rec("unlade", "pull", 1.0, 40 * MiB, kind="reference"),
        rec("unlade", "unpack", 1.0, 58 * MiB, kind="reference"),
        rec("unlade-snap", "pull", 1.0, 80 * MiB, kind="reference"),
        rec("unlade-snap", "unpack", 1.0, 50 * MiB, kind="reference"),
    ]
    doc = make_doc(records, heaps={"pull": 20 * MiB, "unpack": 10 * MiB}, start=startup(0.2))
    names = [t["name"] for t in doc["targets"]]
    assert names == ["unpack vs containerd", "unpack vs limit", "pull vs containerd",
                     "decryption overhead", "peak RSS", "peak RSS (unlade-snap)", "flat memory",
                     "flat memory (unlade-snap)", "Python heap", "start-up"]
    t = by_name(doc)
    for name in names:
        if name != "flat memory (unlade-snap)":
            assert t[name]["ok"] is False, t[name]
    assert t["unpack vs containerd"]["measured"] == "1.83× faster (6.00 s vs 11.00 s)"
    assert t["unpack vs limit"]["value"] == 1.5
    assert t["pull vs containerd"]["value"] == pytest.approx(1.4)
    assert t["decryption overhead"]["measured"] == "+33 % (8.00 s vs 6.00 s)"
    assert t["peak RSS"]["value"] == 70.0
    assert t["peak RSS (unlade-snap)"]["value"] == 80.0
    # one phase out of range fails it; the value is the ratio farthest from 1
    assert t["flat memory"]["value"] == 1.75
    assert t["flat memory (unlade-snap)"]["ok"] is True
    assert t["Python heap"]["value"] == 20.0 and "(pull)" in t["Python heap"]["measured"]
    # slower than containerd reads as such
    slow = make_doc([rec("unlade", "unpack", 12.0, MiB), rec("containerd", "unpack", 10.0, MiB)])
    assert by_name(slow)["unpack vs containerd"]["measured"] == \
        "1.20× slower (12.00 s vs 10.00 s)"


def test_targets_missing_data() -> None:
    """No containerd, no limit, no reference image, no start-up, no heap: null, not guessed."""
    doc = make_doc([rec("unlade", "pull", 5.0, 40 * MiB), rec("unlade", "unpack", 3.0, 40 * MiB)],
                   reference=False)
    t = by_name(doc)
    assert [x["name"] for x in doc["targets"]] == TARGET_NAMES
    for name in ("unpack vs containerd", "unpack vs limit", "pull vs containerd",
                 "decryption overhead", "flat memory", "Python heap", "start-up"):
        assert t[name]["value"] is None and t[name]["ok"] is None, t[name]
        assert t[name]["measured"].startswith("not measured"), t[name]
    assert t["peak RSS"]["ok"] is True
    assert doc["memory_flatness"] is None and doc["settings"]["reference_image"] is None
    # containerd ran but none of its runs was valid; a failed start-up says why
    doc = make_doc([rec("unlade", "unpack", 3.0, MiB),
                    rec("containerd", "unpack", 9.0, MiB, valid=False)],
                   start=startup(None))
    t = by_name(doc)
    assert t["unpack vs containerd"]["ok"] is None
    assert t["start-up"]["ok"] is None and "boom" in t["start-up"]["measured"]
    # a reference image whose runs all failed
    doc = make_doc([rec("unlade", "unpack", 3.0, MiB),
                    rec("unlade", "unpack", 3.0, MiB, kind="reference", valid=False)])
    t = by_name(doc)
    assert t["flat memory"]["ok"] is None
    assert doc["memory_flatness"]["unpack"]["unlade"]["reference_valid_runs"] == 0
    # nothing valid at all
    doc = make_doc([rec("unlade", "unpack", 3.0, MiB, valid=False)], reference=False)
    assert all(x["ok"] is None for x in doc["targets"])


@pytest.mark.parametrize("fs, ok", [("ext4", False), ("xfs", False), ("tmpfs", True)])
def test_limit_threshold_depends_on_tmpfs(fs: str, ok: bool) -> None:
    """On tmpfs the limit is all CPU, so unlade is allowed 1.3× it rather than 1.2×."""
    doc = make_doc([rec("unlade", "unpack", 1.25, MiB), rec("limit", "unpack", 1.0, MiB)],
                   fs=fs)
    t = by_name(doc)["unpack vs limit"]
    assert t["value"] == 1.25 and t["ok"] is ok
    assert t["target"] == f"wall ≤ {'1.3' if fs == 'tmpfs' else '1.2'}× the unpigz | tar " \
                          f"limit's (on {fs})"
    doc = make_doc([rec("unlade", "unpack", 1.35, MiB), rec("limit", "unpack", 1.0, MiB)],
                   fs=fs)
    assert by_name(doc)["unpack vs limit"]["ok"] is False


# ----------------------------------------------------------------------------------------------
# Reference runs and memory flatness


def test_summary_ignores_reference_runs() -> None:
    records = [*passing_records(), rec("containerd", "pull", 0.001, 1, kind="reference")]
    doc = make_doc(records)
    pull = doc["summary"]["pull"]
    assert pull["unlade"]["runs"] == 1 and pull["unlade"]["wall_s"]["median"] == 5.0
    assert pull["containerd"]["wall_s"]["median"] == 14.0
    assert doc["summary"]["unpack"]["unlade"]["runs"] == 1
    summary, ratios = report.summarize([rec("unlade", "pull", 1.0, MiB, kind="reference")])
    assert summary == {} and ratios == {}


def test_memory_flatness() -> None:
    doc = make_doc(passing_records())
    mf = doc["memory_flatness"]
    assert doc["settings"]["reference_image"] == mf["reference_image"] == "reg/ref:small"
    assert mf["reference_facts"] == {"compressed_bytes": 20 * MiB, "file_bytes": 60 * MiB,
                                     "entries": 900}
    assert mf["error"] is None
    assert [(p, t) for p, t, _ in report.flatness_entries(mf)] == [("pull", "unlade"),
                                                                   ("unpack", "unlade")]
    assert mf["unpack"]["unlade"] == {"peak_rss_bytes": 40 * MiB,
                                      "reference_peak_rss_bytes": 40 * MiB, "ratio": 1.0,
                                      "reference_runs": 2, "reference_valid_runs": 2}
    assert mf["pull"]["unlade"]["ratio"] == round(42 / 41, 3)
    assert "containerd" not in mf["pull"]  # no reference runs of it


# ----------------------------------------------------------------------------------------------
# Rendering


def test_markdown_and_text_have_the_targets(tmp_path: Path) -> None:
    doc = make_doc(passing_records(), heaps={"pull": MiB}, start=startup(0.05))
    md = report.markdown(doc)
    lines = md.splitlines()
    image_line = next(i for i, line in enumerate(lines) if line.startswith("Image "))
    assert lines[image_line + 2] == "## Targets"
    assert lines[image_line + 4].startswith("Set for the full benchmark image")
    assert lines[image_line + 6] == "| target | goal | measured | met |"
    assert md.index("## Targets") < md.index("## pull")
    row = next(line for line in lines if line.startswith("| unpack vs containerd |"))
    assert row.endswith("| 3.41× faster (3.30 s vs 11.24 s) | yes |")
    assert "unpigz \\| tar" in md  # a bar in a cell is escaped
    assert "## Memory across image sizes" in md and "## Start-up" in md
    assert "- unlade.cli: 7.0 ms" in md
    # the reference runs' commands are not listed twice
    assert md.count("- pull, unlade:") == 1
    text = report.table_text(doc)
    assert "\ntargets:\n" in text
    assert any(line.startswith("start-up ") and line.endswith("yes")
               for line in text.splitlines())
    failing = make_doc([rec("unlade", "unpack", 6.0, 100 * MiB),
                        rec("containerd", "unpack", 10.0, MiB)], reference=False)
    assert "| peak RSS | ≤ 64 MiB in every phase | 100.0 MiB (unpack) | NO |" in \
        report.markdown(failing)
    # documents from before the targets still render
    old = {k: v for k, v in doc.items() if k not in ("targets", "startup", "memory_flatness")}
    assert "## Targets" not in report.markdown(old)
    assert "targets:" not in report.table_text(old)
    report.write_all(doc, tmp_path)
    assert "## Targets" in (tmp_path / "results.md").read_text()


# ----------------------------------------------------------------------------------------------
# Start-up


def _env() -> dict[str, str]:
    return bench_run._unlade_env({"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                  "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/")})


def test_parse_importtime_real_output() -> None:
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "unlade", "--help"],
                       env=_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    total, top = bench_run.parse_importtime(p.stderr)
    entries = [line.split("|") for line in p.stderr.splitlines()
               if line.startswith("import time:") and line.split("|")[1].strip().isdigit()]
    top_level = {e[2].strip(): int(e[1]) for e in entries if not e[2].startswith("  ")}
    assert len(top_level) < len(entries)  # there are nested imports, and they do not count
    assert total == sum(top_level.values()) > 0
    assert 0 < len(top) <= bench_run.TOP_IMPORTS
    assert [i["cumulative_us"] for i in top] == sorted(top_level.values(), reverse=True)[
        :len(top)]
    assert all(top_level[i["module"]] == i["cumulative_us"] for i in top)
    assert "unlade.cli" in {i["module"] for i in top}


def test_parse_importtime_sample() -> None:
    sample = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       123 |        123 |   _io",
        "import time:       280 |        701 | _frozen_importlib_external",
        "some warning on stderr",
        "import time:        35 |         35 |     _codecs",
        "import time:       229 |        263 |   codecs",
        "import time:       545 |       1135 | encodings",
        "import time:       545 |       1135 | zz",
        "import time:       bad |        nan | broken",
    ])
    total, top = bench_run.parse_importtime(sample, top=2)
    assert total == 701 + 1135 + 1135
    assert top == [{"module": "encodings", "cumulative_us": 1135},
                   {"module": "zz", "cumulative_us": 1135}]
    assert bench_run.parse_importtime("") == (0, [])


def test_measure_startup() -> None:
    st = bench_run.measure_startup(_env(), runs=2)
    assert st["error"] is None, st["error"]
    assert st["argv"] == [sys.executable, "-m", "unlade", "--help"]
    assert st["runs"] == 2
    wall = st["wall_s"]
    assert set(wall) == {"median", "min", "max"}
    assert 0 < wall["min"] <= wall["median"] <= wall["max"]
    assert isinstance(st["import_us"], int) and st["import_us"] > 0
    assert 0 < len(st["top_imports"]) <= 8
    assert all(set(i) == {"module", "cumulative_us"} for i in st["top_imports"])


def test_measure_startup_failure_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    st = bench_run.measure_startup(_env(), runs=2)
    assert st["wall_s"] is None and st["import_us"] is None and st["top_imports"] is None
    assert "timing: FileNotFoundError" in st["error"]
    assert "importtime: FileNotFoundError" in st["error"]


# ----------------------------------------------------------------------------------------------
# The command: which reference image is used


class _FakeImage:
    def __init__(self, tag: str) -> None:
        self.tag = tag


class _FakeRegistry:
    def __init__(self, storage: Path) -> None:
        self.storage = storage

    def __enter__(self) -> _FakeRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.mark.parametrize("argv, built, image, reference", [
    ([], ["full", "small"], "reg/unlade-bench/image:full", "reg/unlade-bench/image:small"),
    (["--small"], ["small"], "reg/unlade-bench/image:small", None),
    (["--no-reference"], ["full"], "reg/unlade-bench/image:full", None),
    (["--reference-image", "r/x:1"], ["full"], "reg/unlade-bench/image:full", "r/x:1"),
    (["--image", "r/i:1"], [], "r/i:1", None),
    (["--image", "r/i:1", "--reference-image", "r/s:1"], [], "r/i:1", "r/s:1"),
])
def test_run_command_reference(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                               argv: list[str], built: list[str], image: str,
                               reference: str | None) -> None:
    monkeypatch.delenv("TARGET_IMAGE", raising=False)
    calls: dict[str, Any] = {"built": []}

    def build_image(workdir: Path, *, small: bool, log: Any = None) -> _FakeImage:
        assert workdir == tmp_path / ("small" if small else "full")
        calls["built"].append("small" if small else "full")
        return _FakeImage("small" if small else "full")

    def run_benchmark(ref: str, info: Any, **kw: Any) -> dict[str, Any]:
        calls["ref"], calls["kw"] = ref, kw
        return {}

    monkeypatch.setattr(bench_image, "build_image", build_image)
    monkeypatch.setattr(bench_image, "LocalRegistry", _FakeRegistry)
    monkeypatch.setattr(bench_image, "push", lambda im, reg, repo: f"reg/{repo}:{im.tag}")
    monkeypatch.setattr(bench_run, "run_benchmark", run_benchmark)
    parser = argparse.ArgumentParser()
    bench_run.add_run_arguments(parser)
    args = parser.parse_args([*argv, "--image-cache", str(tmp_path)])
    assert bench_run.run_command(args) == 0
    assert calls["built"] == built
    assert calls["ref"] == image
    assert calls["kw"]["reference_image"] == reference


def test_run_command_without_a_small_image(monkeypatch: pytest.MonkeyPatch, tmp_path: Path
                                           ) -> None:
    """A small image that cannot be built costs the flatness figures, not the run."""
    monkeypatch.delenv("TARGET_IMAGE", raising=False)
    seen: dict[str, Any] = {}

    def build_image(workdir: Path, *, small: bool, log: Any = None) -> _FakeImage:
        if small:
            raise bench_image.BuildError("no network")
        return _FakeImage("full")

    monkeypatch.setattr(bench_image, "build_image", build_image)
    monkeypatch.setattr(bench_image, "LocalRegistry", _FakeRegistry)
    monkeypatch.setattr(bench_image, "push", lambda im, reg, repo: f"reg/{repo}:{im.tag}")
    monkeypatch.setattr(bench_run, "run_benchmark",
                        lambda ref, info, **kw: seen.update(ref=ref, **kw) or {})
    parser = argparse.ArgumentParser()
    bench_run.add_run_arguments(parser)
    assert bench_run.run_command(parser.parse_args(["--image-cache", str(tmp_path)])) == 0
    assert seen["ref"] == "reg/unlade-bench/image:full" and seen["reference_image"] is None


def test_reference_options_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    bench_run.add_run_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--reference-image", "r/x:1", "--no-reference"])
    assert "not allowed with" in capsys.readouterr().err
