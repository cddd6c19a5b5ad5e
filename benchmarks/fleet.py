#!/usr/bin/env python3
"""A fleet on one machine: N unlade processes (each its own store, as N nodes would have)
pull the same image at once through a pull-through cache, a ``docker-registry`` in proxy
mode in front of an origin ``docker-registry``, all on 127.0.0.1. Reports wall time and
the bytes the origin served, from its access log.

Scenarios (each on a fresh origin and cache):
  direct  N pulls at once from the origin (no cache): the baseline;
  cold    N pulls at once through the cache while it is empty;
  warm    one pull through the cache, then N at once.

    .venv/bin/python benchmarks/fleet.py [--nodes 20] [--layers 4] [--layer-mib 8] [--runs 3]

Needs docker-registry and skopeo (the test harness pushes the image). Prints a table and
writes fleet.json (medians over --runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import images as im  # noqa: E402
from harness.registry import Registry  # noqa: E402


def blob_bytes(registry: Registry) -> int:
    return sum(e.size for e in registry.requests()
               if e.method == "GET" and "/blobs/" in e.path and e.status in (200, 206))


def burst(ref: str, conf: Path | None, n: int, work: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = ["--registries-conf", str(conf)] if conf else []
    start = time.monotonic()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "unlade", "--root", str(work / f"node{i}"), "pull",
         "--plain-http", "-q", "--no-unpack", *args, ref],
        env=env, stderr=subprocess.PIPE, text=True) for i in range(n)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.monotonic() - start
    failed = [e for p, e in zip(procs, errors, strict=True) if p.returncode]
    if failed:
        raise SystemExit(f"{len(failed)} pulls failed: {failed[0].strip()}")
    return wall


def scenario(kind: str, n: int, layers: list[bytes], work: Path) -> dict[str, float]:
    with Registry(workdir=work / "origin") as origin:
        im.build_and_push(work / "layout", origin, "fleet/app", "v1",
                          [[im.file(f"l{i}", data)] for i, data in enumerate(layers)],
                          raw=True)
        ref = f"{origin.host}/fleet/app:v1"
        with Registry(workdir=work / "cache",
                      extra_config={"proxy": {"remoteurl": origin.url}}) as cache:
            conf = work / "registries.conf"
            conf.write_text(f'[[registry]]\nlocation = "{origin.host}"\ninsecure = true\n'
                            f'[[registry.mirror]]\nlocation = "{cache.host}"\n'
                            'insecure = true\n')
            warm_bytes = 0
            if kind == "warm":
                origin.mark()
                burst(ref, conf, 1, work / "warmup")
                warm_bytes = blob_bytes(origin)
            origin.mark()
            cache.mark()
            wall = burst(ref, None if kind == "direct" else conf, n, work / "nodes")
            return {"wall_s": wall, "origin_bytes": blob_bytes(origin),
                    "warmup_origin_bytes": warm_bytes,
                    "cache_bytes": blob_bytes(cache) if kind != "direct" else 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mib", type=float, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", default="fleet.json")
    args = parser.parse_args()
    layers = [os.urandom(int(args.layer_mib * (1 << 20))) for _ in range(args.layers)]
    image = sum(len(x) for x in layers)
    results: dict[str, list[dict[str, float]]] = {"direct": [], "cold": [], "warm": []}
    for run in range(args.runs):
        for kind in results:
            with tempfile.TemporaryDirectory(prefix=f"fleet-{kind}-") as td:
                results[kind].append(scenario(kind, args.nodes, layers, Path(td)))
                r = results[kind][-1]
                print(f"run {run + 1} {kind:<6} wall {r['wall_s']:.2f} s, origin "
                      f"{r['origin_bytes'] / image:.2f} images"
                      + (f" (+{r['warmup_origin_bytes'] / image:.2f} warming)"
                         if kind == "warm" else ""), file=sys.stderr)
    summary = {kind: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
               for kind, rows in results.items()}
    doc = {"nodes": args.nodes, "image_bytes": image, "layers": args.layers,
           "runs": args.runs, "median": summary, "all": results}
    Path(args.output).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{args.nodes} nodes, image {image / (1 << 20):.0f} MiB in {args.layers} layers, "
          f"medians of {args.runs}:")
    print("| scenario | wall | origin bytes | origin ÷ image |")
    print("|---|---|---|---|")
    for kind, m in summary.items():
        extra = (f" (+ {m['warmup_origin_bytes'] / image:.2f} to warm it)"
                 if kind == "warm" else "")
        print(f"| {kind} | {m['wall_s']:.2f} s | {m['origin_bytes'] / (1 << 20):.0f} MiB | "
              f"{m['origin_bytes'] / image:.2f}×{extra} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
