"""The fuzz harnesses (``fuzz/``) without the fuzzing engine: every harness's
``TestOneInput`` over its committed seed corpus, so plain pytest runs the harness code and
the invariants it checks; the corpus is what ``fuzz/make_corpus.py`` writes; and, where
atheris is installed, ``fuzz/run.py`` drives a harness and writes its JSON summary.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))


def _harness(name: str) -> ModuleType:
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))
    return importlib.import_module(f"fuzz_{name}")


def test_every_harness_is_run_and_has_a_corpus() -> None:
    text = (FUZZ / "run.py").read_text()
    assert len(HARNESSES) >= 10
    for name in HARNESSES:
        assert f'"{name}":' in text, f"fuzz/run.py does not run {name}"
        assert any((FUZZ / "corpus" / name).iterdir()), f"no seed corpus for {name}"


@pytest.mark.parametrize("name", HARNESSES)
def test_seed_corpus(name: str) -> None:
    """No seed crashes its harness (a crash is any exception: the harness itself lets
    the documented errors through)."""
    module = _harness(name)
    for path in sorted((FUZZ / "corpus" / name).iterdir()):
        try:
            module.TestOneInput(path.read_bytes())
        except BaseException as err:
            raise AssertionError(f"fuzz/corpus/{name}/{path.name}: {err!r}") from err


def test_corpus_is_what_make_corpus_writes(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(FUZZ / "make_corpus.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    written = {p.relative_to(tmp_path): p.read_bytes()
               for p in tmp_path.rglob("*") if p.is_file()}
    committed = {p.relative_to(FUZZ / "corpus"): p.read_bytes()
                 for p in (FUZZ / "corpus").rglob("*") if p.is_file()}
    assert written.keys() == committed.keys()
    assert [str(p) for p in written if written[p] != committed[p]] == []
    assert sum(map(len, committed.values())) < 200_000, "keep the seed corpus small"


def test_run_py_fuzzes_and_summarises(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, str(FUZZ / "run.py"), "--seconds", "2", "--jobs", "1",
         "--out", str(tmp_path / "out"), "--json", str(summary), "www_authenticate"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(summary.read_text())
    harness = result["harnesses"]["www_authenticate"]
    assert harness["executions"] > 100 and harness["crashes"] == 0
    assert result["total_crashes"] == 0
    assert "www_authenticate" in done.stdout and "crashes 0" in done.stdout
