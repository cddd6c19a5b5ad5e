#!/usr/bin/env python3
"""Run every fuzz harness (or those named) for a fixed time each and report.

Each harness runs under atheris' libFuzzer for ``--seconds`` seconds, starting from its
committed seed corpus (``fuzz/corpus/<name>``, only read) and a scratch corpus
(``<out>/<name>/corpus``, where what the run finds new is written, kept between runs).
Crashes, hangs (``--timeout`` seconds on one input) and out-of-memory inputs are written as
``<out>/<name>/crash-*`` / ``timeout-*`` / ``oom-*``; the log is ``<out>/<name>/log.txt``.

Prints one line per harness (executions, executions/s, coverage and features, corpus size,
crashes) and writes the same as JSON (``--json``, default ``<out>/summary.json``). Exits 1
if any harness crashed, hung or failed to run. ``make fuzz FUZZ_SECONDS=60`` runs this.

    .venv/bin/python fuzz/run.py --seconds 60 --jobs 2 [reference manifest ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
CORPUS = FUZZ / "corpus"

#: Harness name -> the largest input libFuzzer makes (tar streams and documents need room).
HARNESSES = {
    "reference": 512,
    "manifest": 16384,
    "www_authenticate": 4096,
    "policy": 16384,
    "registries_d": 8192,
    "unlade_toml": 8192,
    "registries_conf": 8192,
    "keyprovider": 8192,
    "signature": 16384,
    "tarstream": 32768,
    "layer": 32768,
}
ARTIFACT_PREFIXES = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


@dataclass
class Result:
    harness: str
    seconds: float = 0.0
    executions: int = 0
    exec_per_second: int = 0
    coverage: int | None = None  # libFuzzer's "cov": edges/branches hit
    features: int | None = None  # libFuzzer's "ft"
    corpus_units: int | None = None
    new_units: int = 0
    peak_rss_mb: int | None = None
    crashes: int = 0
    artifacts: list[str] = field(default_factory=list)
    exit_code: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.crashes == 0 and self.error is None


def _stat(log: str, name: str) -> int | None:
    m = re.search(rf"^stat::{name}:\s*(\d+)", log, re.MULTILINE)
    return int(m.group(1)) if m else None


def run_one(name: str, seconds: int, timeout: int, out: Path, python: str,
            rss_limit_mb: int) -> Result:
    work = out / name
    scratch = work / "corpus"
    scratch.mkdir(parents=True, exist_ok=True)
    for old in work.iterdir():
        if old.name.startswith(ARTIFACT_PREFIXES):
            old.unlink()
    cmd = [
        python, str(FUZZ / f"fuzz_{name}.py"), str(scratch), str(CORPUS / name),
        f"-max_total_time={seconds}", f"-timeout={timeout}", f"-rss_limit_mb={rss_limit_mb}",
        f"-max_len={HARNESSES[name]}", "-print_final_stats=1",
        f"-artifact_prefix={work}/",
    ]
    dictionary = FUZZ / "dicts" / f"{name}.dict"
    if dictionary.exists():
        cmd.append(f"-dict={dictionary}")
    result = Result(name)
    # (Sequoia's errors carry a Rust backtrace: capturing it costs milliseconds a time)
    start = time.monotonic()
    with open(work / "log.txt", "wb") as log_file:
        try:
            done = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                  timeout=seconds + max(60, seconds), check=False, cwd=work,
                                  env={**os.environ, "RUST_BACKTRACE": "0"})
            result.exit_code = done.returncode
        except subprocess.TimeoutExpired:
            result.error = "the fuzzer did not stop in time"
    result.seconds = round(time.monotonic() - start, 1)
    log = (work / "log.txt").read_text(errors="replace")
    result.executions = _stat(log, "number_of_executed_units") or 0
    result.exec_per_second = _stat(log, "average_exec_per_sec") or 0
    result.new_units = _stat(log, "new_units_added") or 0
    result.peak_rss_mb = _stat(log, "peak_rss_mb")
    progress = re.findall(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", log,
                          re.MULTILINE)
    if progress:
        last = progress[-1]
        result.executions = result.executions or int(last[0])
        result.coverage, result.features, result.corpus_units = map(int, last[1:])
    result.artifacts = sorted(str(p) for p in work.iterdir()
                              if p.name.startswith(ARTIFACT_PREFIXES))
    result.crashes = len(result.artifacts)
    if result.error is None and result.exit_code not in (0, None) and not result.crashes:
        result.crashes = 1  # died without leaving an input (e.g. killed)
        result.error = f"the fuzzer exited with status {result.exit_code}; see {work}/log.txt"
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("harnesses", nargs="*", help=f"default: all of {', '.join(HARNESSES)}")
    parser.add_argument("--seconds", type=int, default=60, help="per harness (default 60)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="harnesses run at once (default: the CPU count)")
    parser.add_argument("--timeout", type=int, default=10,
                        help="seconds one input may take before it counts as a hang")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=FUZZ.parent / "build" / "fuzz",
                        help="scratch corpora, logs and crashes (default build/fuzz)")
    parser.add_argument("--json", type=Path, help="summary file (default OUT/summary.json)")
    parser.add_argument("--fresh", action="store_true",
                        help="start from the seed corpus only (drop earlier scratch corpora)")
    args = parser.parse_args()
    names = args.harnesses or list(HARNESSES)
    unknown = [n for n in names if n not in HARNESSES]
    if unknown:
        parser.error(f"unknown harness {', '.join(unknown)}; choose from {', '.join(HARNESSES)}")
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("fuzz: atheris is not installed (.venv/bin/pip install atheris)", file=sys.stderr)
        return 2
    out = args.out.resolve()
    if args.fresh:
        for n in names:
            shutil.rmtree(out / n / "corpus", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    print(f"fuzz: {len(names)} harnesses x {args.seconds} s, {args.jobs} at a time; "
          f"output in {out}", flush=True)
    started = time.time()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_one, n, args.seconds, args.timeout, out, sys.executable,
                               args.rss_limit_mb) for n in names]
        results = []
        for future in futures:
            r = future.result()
            results.append(r)
            cov = f"cov {r.coverage} ft {r.features}" if r.coverage is not None else "cov ?"
            print(f"  {r.harness:<17} {r.executions:>10,} execs {r.exec_per_second:>6,}/s  "
                  f"{cov:<18} corpus {r.corpus_units or 0:>5}  crashes {r.crashes}"
                  + (f"  ({r.error})" if r.error else ""), flush=True)
            for artifact in r.artifacts:
                print(f"    {artifact}", flush=True)
    summary = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds_per_harness": args.seconds,
        "jobs": args.jobs,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "total_executions": sum(r.executions for r in results),
        "total_crashes": sum(r.crashes for r in results),
        "harnesses": {r.harness: {k: v for k, v in asdict(r).items() if k != "harness"}
                      for r in results},
    }
    json_path = args.json or out / "summary.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    bad = [r.harness for r in results if not r.ok]
    print(f"fuzz: {summary['total_executions']:,} executions, "
          f"{summary['total_crashes']} crashes; summary in {json_path}", flush=True)
    if bad:
        print(f"fuzz: FAILED: {', '.join(bad)} (inputs above; replay one with "
              f"python fuzz/fuzz_NAME.py FILE)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
