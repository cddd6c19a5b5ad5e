"""``unlade bench compare``: two results.json side by side, built by editing copies of the
committed real results (benchmarks/results/full-ext4)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from unlade.bench import compare as cmp
from unlade.bench.report import SCHEMA

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
FULL_EXT4 = RESULTS / "full-ext4" / "results.json"
FULL_TMPFS = RESULTS / "full-tmpfs" / "results.json"
SMALL = RESULTS / "small" / "results.json"


@pytest.fixture(scope="module")
def real() -> dict[str, Any]:
    return json.loads(FULL_EXT4.read_text())


@pytest.fixture
def doc(real: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(real)


def _scale(doc: dict[str, Any], phase: str, tool: str, metric: str, factor: float) -> None:
    entry = doc["summary"][phase][tool]
    if isinstance(entry[metric], dict):
        for k in ("median", "min", "max"):
            entry[metric][k] *= factor
    else:
        entry[metric] = int(entry[metric] * factor)


def _tools(doc: dict[str, Any], phase: str) -> list[str]:
    """The tools of ``phase`` in ``doc``, in the report's order."""
    order = ("unlade", "unlade-snap", "unlade-enc", "containerd", "umoci", "skopeo", "limit")
    return [t for t in order if t in doc["summary"][phase]]


def _write(tmp_path: Path, name: str, doc: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unlade", "bench", "compare",
                           *map(str, args)], capture_output=True, text=True, timeout=60)


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("unlade bench: error: ")
    return lines[0]


# ----------------------------------------------------------------------------------------------
# The function


def test_ratios_and_marks(real: dict[str, Any], doc: dict[str, Any]) -> None:
    _scale(doc, "unpack", "unlade", "wall_s", 1.25)
    _scale(doc, "unpack", "unlade", "peak_rss_bytes", 0.8)
    _scale(doc, "unpack", "unlade", "cpu_s", 1.05)
    _scale(doc, "pull", "unlade", "peak_python_heap_bytes", 1.5)
    _scale(doc, "pull", "containerd", "wall_s", 0.5)
    result = cmp.compare(real, doc)
    assert result["schema"] == cmp.COMPARE_SCHEMA
    assert result["same_image"] and result["same_machine"] and result["warnings"] == []
    unpack = result["tools"]["unpack"]["unlade"]["metrics"]
    old_wall = real["summary"]["unpack"]["unlade"]["wall_s"]["median"]
    assert unpack["wall_s"]["old"] == old_wall
    assert unpack["wall_s"]["new"] == pytest.approx(old_wall * 1.25)
    assert unpack["wall_s"]["ratio"] == pytest.approx(1.25)
    assert unpack["wall_s"]["change"] == "slower"
    assert unpack["peak_rss_bytes"]["ratio"] == pytest.approx(0.8)
    assert unpack["peak_rss_bytes"]["change"] == "less memory"
    assert unpack["cpu_s"]["ratio"] == pytest.approx(1.05)
    assert unpack["cpu_s"]["change"] is None  # within the default 10 %
    heap = result["tools"]["pull"]["unlade"]["metrics"]["peak_python_heap_bytes"]
    assert heap["ratio"] == pytest.approx(1.5, abs=1e-4) and heap["change"] == "more memory"
    assert result["tools"]["pull"]["containerd"]["metrics"]["wall_s"]["change"] == "faster"
    # the heap is unlade's alone; every tool in both files is there, in the report's order
    assert "peak_python_heap_bytes" not in result["tools"]["pull"]["containerd"]["metrics"]
    assert list(result["tools"]["pull"]) == _tools(real, "pull")
    assert list(result["tools"]["unpack"]) == _tools(real, "unpack")
    assert {"unlade", "containerd", "umoci", "skopeo"} <= set(_tools(real, "pull"))
    assert {"unlade", "containerd", "umoci", "limit"} <= set(_tools(real, "unpack"))
    assert result["tools"]["pull"]["umoci"]["valid_runs"] == {"old": 3, "new": 3}
    for phase, tool in (("pull", "umoci"), ("unpack", "containerd"), ("unpack", "limit")):
        for cell in result["tools"][phase][tool]["metrics"].values():
            assert cell["ratio"] == 1.0 and cell["change"] is None


def test_peer_ratios_side_by_side(real: dict[str, Any], doc: dict[str, Any]) -> None:
    _scale(doc, "unpack", "unlade", "wall_s", 1.25)
    result = cmp.compare(real, doc)
    peers = result["peers"]
    assert list(peers["pull"]) == [t for t in _tools(real, "pull") if t != "unlade"]
    assert list(peers["unpack"]) == [t for t in _tools(real, "unpack") if t != "unlade"]
    cell = peers["unpack"]["containerd"]["wall_s"]
    s = real["summary"]["unpack"]
    expected_old = s["unlade"]["wall_s"]["median"] / s["containerd"]["wall_s"]["median"]
    assert cell["old"] == pytest.approx(expected_old, abs=1e-4)
    # the same figure as the file's own ratio to containerd (which is rounded to 3 places)
    assert cell["old"] == pytest.approx(real["ratios"]["unpack"]["unlade"]["wall_s"], abs=1e-3)
    assert cell["new"] == pytest.approx(expected_old * 1.25, abs=1e-4)
    assert cell["ratio"] == pytest.approx(1.25, abs=1e-3)
    assert cell["change"] == "slower"
    limit = peers["unpack"]["limit"]["peak_rss_bytes"]
    assert limit["old"] == pytest.approx(s["unlade"]["peak_rss_bytes"]["median"]
                                         / s["limit"]["peak_rss_bytes"]["median"], abs=1e-4)
    assert limit["ratio"] == 1.0 and limit["change"] is None


def test_threshold(real: dict[str, Any], doc: dict[str, Any]) -> None:
    _scale(doc, "pull", "unlade", "wall_s", 1.07)
    _scale(doc, "pull", "unlade", "cpu_s", 0.93)
    cell = cmp.compare(real, doc)["tools"]["pull"]["unlade"]["metrics"]
    assert cell["wall_s"]["change"] is None and cell["cpu_s"]["change"] is None
    cell = cmp.compare(real, doc, threshold=0.05)["tools"]["pull"]["unlade"]["metrics"]
    assert cell["wall_s"]["change"] == "slower" and cell["cpu_s"]["change"] == "less CPU"
    cell = cmp.compare(real, doc, threshold=0.5)["tools"]["pull"]["unlade"]["metrics"]
    assert cell["wall_s"]["change"] is None
    # threshold 0: any change at all is marked, no change is not
    result = cmp.compare(real, doc, threshold=0.0)
    assert result["tools"]["pull"]["unlade"]["metrics"]["wall_s"]["change"] == "slower"
    assert result["tools"]["pull"]["containerd"]["metrics"]["wall_s"]["change"] is None


def test_image_mismatch_refused_unless_forced(real: dict[str, Any], doc: dict[str, Any]
                                              ) -> None:
    doc["image"]["manifest_digest"] = "sha256:" + "ab" * 32
    with pytest.raises(cmp.CompareError, match=r"different images \(manifest sha256:8ffc4e8c"
                                               r"75dd vs sha256:abababababab\)"):
        cmp.compare(real, doc)
    result = cmp.compare(real, doc, force=True)
    assert result["same_image"] is False
    assert len(result["warnings"]) == 1 and "different images" in result["warnings"][0]
    # a different size alone is a different image too (the reference, with its random
    # registry port, is not)
    other = copy.deepcopy(real)
    other["image"]["compressed_bytes"] += 1 << 20
    other["image"]["reference"] = "127.0.0.1:1/unlade-bench/image:full"
    with pytest.raises(cmp.CompareError, match="346.6 vs 347.6 MiB compressed"):
        cmp.compare(real, other)
    other = copy.deepcopy(real)
    other["image"]["uncompressed_bytes"] += 512
    with pytest.raises(cmp.CompareError, match="bytes of tar"):
        cmp.compare(real, other)
    other = copy.deepcopy(real)
    other["settings"]["image"] = other["image"]["reference"] = "127.0.0.1:2/x:full"
    assert cmp.compare(real, other)["same_image"] is True


def test_machine_difference_is_a_warning(real: dict[str, Any], doc: dict[str, Any]) -> None:
    doc["machine"]["cores"] = 8
    doc["machine"]["work_dir"] = "/elsewhere"  # per run: not a difference
    result = cmp.compare(real, doc)
    assert result["same_machine"] is False
    assert result["warnings"] == ["the machines differ (cores 2 vs 8); the unlade/peer "
                                  "ratios compare better than the times"]
    doc["machine"]["cores"] = 2
    assert cmp.compare(real, doc)["warnings"] == []


def test_tools_in_one_file_only_and_no_valid_runs(real: dict[str, Any], doc: dict[str, Any]
                                                  ) -> None:
    del doc["summary"]["pull"]["umoci"]
    del doc["summary"]["unpack"]
    entry = doc["summary"]["pull"]["containerd"]
    entry["valid_runs"] = 0
    for key in cmp.PEER_METRICS:
        entry[key] = None
    result = cmp.compare(real, doc)
    assert result["only_old"] == [["pull", "umoci"]] + [["unpack", t]
                                                        for t in _tools(real, "unpack")]
    assert result["only_new"] == []
    assert list(result["tools"]) == ["pull"]
    wall = result["tools"]["pull"]["containerd"]["metrics"]["wall_s"]
    assert wall["new"] is None and wall["ratio"] is None and wall["change"] is None
    assert result["peers"]["pull"]["containerd"]["wall_s"]["new"] is None
    text = cmp.text(result)
    assert "(valid runs: 3 old, 0 new)" in text
    assert "only in old: pull umoci, unpack unlade" in text
    # swapped round, the tools are "only in new"
    assert cmp.compare(doc, real)["only_new"] == result["only_old"]


def test_text_table(real: dict[str, Any], doc: dict[str, Any]) -> None:
    _scale(doc, "unpack", "unlade", "wall_s", 1.25)
    text = cmp.text(cmp.compare(real, doc, old_path="a.json", new_path="b.json"))
    lines = text.splitlines()
    assert lines[0] == f"old: a.json ({real['started']}, 3 run(s))"
    assert lines[2].startswith("image sha256:8ffc4e8c75dd: 346.6 MiB compressed")
    assert "±10%" in lines[2]
    row = next(line for line in lines if line.startswith("unpack"))
    wall = real["summary"]["unpack"]["unlade"]["wall_s"]["median"]
    assert row.split() == ["unpack", "unlade", "wall", "s", f"{wall:.3f}", f"{wall * 1.25:.3f}",
                           "1.25×", "slower"]
    tables = [t.splitlines() for t in text.split("\n\n")[1:3]]
    assert tables[0][0].split() == ["phase", "tool", "metric", "old", "new", "new/old"]
    assert tables[1][0].split() == ["phase", "ratio", "metric", "old", "new", "new/old"]
    for table in tables:  # aligned: the new/old column ends at the same place on every row
        header_end = table[0].index("new/old") + len("new/old")
        assert all(line[header_end - 1] == "×" for line in table[1:]), table
    phase_of, phase = {}, ""
    for line in tables[1][1:]:  # the phase is only written on its first row
        phase = line.split()[0] if not line.startswith(" ") else phase
        phase_of[line] = phase
    peer_row = next(line for line in tables[1] if "unlade/containerd" in line
                    and phase_of.get(line) == "unpack")
    ratio = wall / real["summary"]["unpack"]["containerd"]["wall_s"]["median"]
    assert peer_row.split()[-6:] == ["unlade/containerd", "wall", f"{ratio:.2f}×",
                                f"{ratio * 1.25:.2f}×", "1.25×", "slower"]


def test_startup_side_by_side(real: dict[str, Any], doc: dict[str, Any]) -> None:
    """Files with ``startup`` get its median compared; files from before it do not."""
    real = {k: v for k, v in real.items() if k != "startup"}  # a file from before it
    doc = copy.deepcopy(real)
    result = cmp.compare(real, doc)
    assert result["startup"] is None
    assert "start-up" not in cmp.text(result)
    doc["startup"] = {"runs": 5, "wall_s": {"median": 0.06, "min": 0.05, "max": 0.07}}
    result = cmp.compare(real, doc)
    assert result["startup"] == {"old": None, "new": 0.06, "ratio": None, "change": None}
    old = copy.deepcopy(doc)
    old["startup"]["wall_s"]["median"] = 0.04
    result = cmp.compare(old, doc)
    assert result["startup"]["ratio"] == pytest.approx(1.5)
    assert result["startup"]["change"] == "slower"
    assert cmp.text(result).splitlines()[-1] == ("start-up (unlade --help): old 40.0 ms, "
                                                 "new 60.0 ms, 1.50× slower")
    doc["startup"] = {"wall_s": None, "error": "timing: OSError: boom"}
    assert cmp.compare(old, doc)["startup"]["new"] is None


def test_load_errors(tmp_path: Path, real: dict[str, Any]) -> None:
    with pytest.raises(cmp.CompareError, match="cannot read .*: No such file or directory"):
        cmp.load(tmp_path / "missing.json")
    with pytest.raises(cmp.CompareError, match=r"not JSON \(Expecting value at line 1\)"):
        cmp.load(_write_text(tmp_path / "a.json", "results:\n"))
    with pytest.raises(cmp.CompareError, match="no schema"):
        cmp.load(_write_text(tmp_path / "b.json", "[1, 2]"))
    with pytest.raises(cmp.CompareError, match="schema 'unlade-bench/2', not 'unlade-bench/1'"):
        cmp.load(_write(tmp_path, "c.json", {**real, "schema": "unlade-bench/2"}))
    with pytest.raises(cmp.CompareError, match="no 'summary' object"):
        cmp.load(_write(tmp_path, "d.json", {k: v for k, v in real.items() if k != "summary"}))
    bad = copy.deepcopy(real)
    bad["summary"]["pull"]["unlade"]["wall_s"]["median"] = "fast"
    loaded = cmp.load(_write(tmp_path, "e.json", bad))
    with pytest.raises(cmp.CompareError, match="e.json: malformed results.json: wall_s is "
                                               "'fast'"):
        cmp.compare(real, loaded, new_path=str(tmp_path / "e.json"))
    assert cmp.load(FULL_EXT4)["schema"] == SCHEMA


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_committed_results() -> None:
    """The committed runs load; ext4 against tmpfs is one machine line apart."""
    result = cmp.compare(cmp.load(FULL_EXT4), cmp.load(FULL_TMPFS))
    assert result["warnings"] == ["the machines differ (fs_type ext4 vs tmpfs); the "
                                  "unlade/peer ratios compare better than the times"]
    if SMALL.exists():  # the CI baseline
        small = cmp.load(SMALL)
        same = cmp.compare(small, small)
        assert all(c["ratio"] == 1.0 for e in same["tools"].values() for t in e.values()
                   for c in t["metrics"].values() if c["ratio"] is not None)
        with pytest.raises(cmp.CompareError, match="different images"):
            cmp.compare(small, cmp.load(FULL_EXT4))


# ----------------------------------------------------------------------------------------------
# The command


def test_cli_table_and_exit_status(tmp_path: Path, real: dict[str, Any], doc: dict[str, Any]
                                   ) -> None:
    _scale(doc, "unpack", "unlade", "wall_s", 2.0)  # a big regression still exits 0
    new = _write(tmp_path, "new.json", doc)
    proc = _cli(FULL_EXT4, new)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines()[0] == f"old: {FULL_EXT4} ({real['started']}, 3 run(s))"
    assert any(line.split()[-2:] == ["2.00×", "slower"] for line in proc.stdout.splitlines())
    proc = _cli(FULL_EXT4, new, "--threshold", "1.5")
    assert proc.returncode == 0 and "slower" not in proc.stdout
    assert "±150%" in proc.stdout


def test_cli_json(tmp_path: Path, doc: dict[str, Any]) -> None:
    _scale(doc, "pull", "unlade", "peak_rss_bytes", 1.2)
    doc["machine"]["kernel"] = "6.1.0"
    proc = _cli(FULL_EXT4, _write(tmp_path, "new.json", doc), "--json", "--threshold=0.15")
    assert proc.returncode == 0
    assert proc.stderr == ("unlade bench: warning: the machines differ (kernel 6.18.44-fc-v595 "
                           "vs 6.1.0); the unlade/peer ratios compare better than the times\n")
    result = json.loads(proc.stdout)
    assert result["schema"] == "unlade-bench-compare/1"
    assert result["threshold"] == 0.15
    assert result["old"]["path"] == str(FULL_EXT4) and result["old"]["runs"] == 3
    assert result["new"]["machine"]["kernel"] == "6.1.0"
    assert result["image"]["manifest_digest"].startswith("sha256:8ffc4e8c")
    rss = result["tools"]["pull"]["unlade"]["metrics"]["peak_rss_bytes"]
    assert rss["ratio"] == pytest.approx(1.2) and rss["change"] == "more memory"
    assert result["peers"]["pull"]["containerd"]["peak_rss_bytes"]["change"] == "more memory"
    assert result["warnings"] and result["same_machine"] is False


def test_cli_image_mismatch(tmp_path: Path, doc: dict[str, Any]) -> None:
    doc["image"]["entries"] += 1
    new = _write(tmp_path, "new.json", doc)
    proc = _cli(FULL_EXT4, new)
    assert proc.returncode == 1 and proc.stdout == ""
    assert _one_error_line(proc) == ("unlade bench: error: different images (29965 vs 29966 "
                                     "entries); --force compares them anyway")
    proc = _cli(FULL_EXT4, new, "--force")
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == ["unlade bench: warning: different images (29965 vs "
                                        "29966 entries); compared anyway"]
    assert "unlade/containerd" in proc.stdout


@pytest.mark.parametrize("content, message", [
    (None, "cannot read {path}: No such file or directory"),
    ("{", "{path}: not JSON (Expecting property name enclosed in double quotes at line 1)"),
    ('{"schema": "other/1"}', "{path}: schema 'other/1', not 'unlade-bench/1'"),
    ('{"schema": "unlade-bench/1", "image": {}, "machine": {}, "summary": {"pull": []}}',
     "{path}: malformed results.json: summary of 'pull'"),
])
def test_cli_bad_file(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    for args in ((path, FULL_EXT4), (FULL_EXT4, path)):
        proc = _cli(*args)
        assert proc.returncode == 1 and proc.stdout == ""
        assert _one_error_line(proc) == "unlade bench: error: " + message.format(path=path)


def test_cli_directory_and_binary(tmp_path: Path) -> None:
    proc = _cli(tmp_path, FULL_EXT4)
    assert proc.returncode == 1
    assert _one_error_line(proc) == f"unlade bench: error: cannot read {tmp_path}: " \
                                    "Is a directory"
    binary = tmp_path / "results.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    proc = _cli(FULL_EXT4, binary)
    assert proc.returncode == 1
    _one_error_line(proc)


@pytest.mark.parametrize("args", [[], ["only-one.json"], ["a", "b", "--threshold", "-0.1"],
                                  ["a", "b", "--threshold", "ten"], ["a", "b", "--bogus"]])
def test_cli_usage_errors(args: list[str]) -> None:
    proc = _cli(*args)
    assert proc.returncode == 2
    assert "usage: unlade bench" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("unlade bench")
    assert ": error: " in proc.stderr.strip().splitlines()[-1]


def test_cli_help_lists_compare() -> None:
    proc = subprocess.run([sys.executable, "-m", "unlade", "bench", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "compare" in proc.stdout
