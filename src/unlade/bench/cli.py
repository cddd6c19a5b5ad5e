"""``unlade bench``: build the benchmark image, run the benchmark, compare two runs.

Kept apart from :mod:`unlade.cli` so that ``unlade --help`` and ``unlade pull`` never
import the benchmark's modules.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _cache_default() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unlade-bench"


def _parser() -> argparse.ArgumentParser:
    from .compare import add_compare_arguments
    from .run import add_run_arguments

    parser = argparse.ArgumentParser(
        prog="unlade bench",
        description="Benchmark unlade against containerd (and umoci, skopeo, the "
                    "unpigz | tar limit) on images served from this machine.")
    sub = parser.add_subparsers(dest="bench_command", metavar="COMMAND")
    sub.required = True
    build = sub.add_parser("build-image", help="build the benchmark image(s) from real content",
                           description="Build the benchmark image: Debian minbase + real "
                                       "Python wheels (numpy, scipy, pandas, torch, …); "
                                       "--small: busybox + a few wheels, for CI.")
    build.add_argument("--small", action="store_true", help="the small (tens of MB) variant")
    build.add_argument("--image-cache", metavar="DIR", default=str(_cache_default()),
                       help="where images are built and cached (default: %(default)s)")
    run = sub.add_parser("run", help="run the benchmark and write results.json/md/png",
                         description="Run the benchmark: interleaved runs per tool and "
                                     "phase, medians and ratios to containerd.")
    add_run_arguments(run)
    compare = sub.add_parser(
        "compare", help="compare two results.json files (new/old ratios; never fails on "
                        "timings)",
        description="Compare two benchmark results of the same image: old and new medians "
                    "and new/old per tool and phase (wall time, peak RSS, CPU, Python heap), "
                    "and unlade/peer ratios of each run side by side. Changes beyond the "
                    "threshold are marked; timings never change the exit code. Exit 1 when a "
                    "file cannot be read or the images differ (unless --force).")
    add_compare_arguments(compare)
    return parser


def main(argv: list[str]) -> int:
    """``unlade bench ARGV``; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.bench_command == "compare":
        from .compare import compare_command

        return compare_command(args)
    if args.bench_command == "run":
        from .run import run_command

        return run_command(args)
    from ..errors import UnladeError
    from .image import build_image

    workdir = Path(args.image_cache) / ("small" if args.small else "full")
    try:
        image = build_image(workdir, small=args.small,
                            log=lambda line: print(line, file=sys.stderr))
    except UnladeError as err:
        print(f"unlade bench: error: {err}", file=sys.stderr)
        return 1
    print(f"built {image.layout}:{image.tag}: {len(image.layers)} layers, "
          f"{image.total_compressed / 2**20:.1f} MiB compressed, "
          f"{image.total_uncompressed / 2**20:.1f} MiB uncompressed, {image.entries} entries")
    return 0
