"""Summaries of a benchmark and the files it leaves: ``results.json``, ``results.md`` and
``results.png``.

``results.json`` (schema ``unlade-bench/1``)::

    {
      "schema": "unlade-bench/1",
      "started": "2026-11-24T21:00:00+00:00",          # UTC, ISO 8601
      "settings": {"image": REF, "runs": N, "tools": [...], "phases": ["pull", "unpack"],
                   "tmpfs": false,
                   "reference_image": REF | null},  # see memory_flatness
      "machine": {"cpu_model": str, "cores": int, "memory_bytes": int, "kernel": str,
                  "os": str, "fs_type": "ext4" | "tmpfs" | ..., "work_dir": str,
                  "python": str},
      "versions": {"unlade", "python", "containerd", "ctr", "umoci", "skopeo", "unpigz",
                   "zstd", "tar": str or null (first line of --version)},
      "image": {
        "reference": REF, "manifest_digest", "config_digest", "platform",
        "layers": [{"digest", "size", "media_type", "diff_id", "uncompressed"}],
        "compressed_bytes": int,        # sum of the layer blobs
        "uncompressed_bytes": int,      # sum of the layer tar streams
        "entries": int,                 # entries of the unpacked rootfs (root excluded)
        "file_bytes": int,              # bytes in its regular files (each hardlink counts)
        "builder": {...} | null         # what the image builder reported, as given
      },
      "runs": [{                        # every run, in the order run (interleaved)
        "phase": "pull" | "unpack", "tool": str, "index": int,
        "kind": "timed" | "reference",  # reference: on the reference image (see
                                        # memory_flatness); never in summary or ratios
        "image": REF,                   # reference runs only: the reference image
        "valid": bool,                  # exited 0 and passed the check; only these count
        "download_only": bool,          # skopeo: no unpacked rootfs
        "error": str | null,
        "output_tail": str,             # only when a command failed: the end of its output
        "commands": [[[argv...]]],      # steps, each a pipeline of commands
        "wall_s": float, "cpu_s": float,  # cpu_s = user_s + sys_s + daemon_cpu_s
        "user_s": float, "sys_s": float,  # the commands and their reaped descendants
        "daemon_cpu_s": float,          # containerd: the daemon and unpigz during the run
        "peak_rss_bytes": int,          # sum of per-process peaks (see unlade.bench.run)
        "peak_rss_sampled_bytes": int,  # largest 100 ms sample of the tree's summed RSS
        "peak_cpu_percent": float,      # largest 100 ms sample (100 = one core)
        "peak_procs": int, "peak_threads": int,
        "compressed_mib_s": float | null,  # compressed bytes / wall (pull phase)
        "unpacked_mib_s": float | null,    # image file_bytes / wall (not download-only)
        "check": {"ok", "entries", "file_bytes", "expected_entries",
                  "expected_file_bytes", "detail"},
        "processes": [{"pid", "name", "role": "command" | "descendant" | "daemon" |
                       "daemon child", "peak_rss_bytes", "peak_rss_exact", "cpu_s", ...}],
        "samples": {"t": [s], "rss": [bytes], "cpu_percent": [...], "procs": [...],
                    "threads": [...]}   # every 100 ms, t from the first command's start
      }],
      "summary": {PHASE: {TOOL: {
        "runs": int, "valid_runs": int, "download_only": bool,
        "wall_s" | "cpu_s" | "peak_rss_bytes" | "peak_rss_sampled_bytes" |
        "peak_cpu_percent" | "peak_procs" | "peak_threads" | "compressed_mib_s" |
        "unpacked_mib_s": {"median", "min", "max"} | null,   # over valid runs
        "peak_python_heap_bytes": int | null   # unlade and unlade-snap only: one extra
                                               # tracemalloc run
      }}},
      "ratios": {PHASE: {TOOL: {"wall_s", "cpu_s", "peak_rss_bytes": float | null}}},
                                        # median(TOOL) / median(containerd)
      "startup": {                      # `unlade --help`, after the phases; or null
        "argv": [argv...],              # python -m unlade --help, unlade's environment
        "runs": int,                    # timed runs, after one untimed warm-up
        "wall_s": {"median", "min", "max"} | null,
        "importtime_argv": [argv...],   # one run with -X importtime:
        "import_us": int | null,        # sum of the top-level imports' cumulative µs
        "top_imports": [{"module": str, "cumulative_us": int}] | null,  # 8 slowest
                                        # top-level imports, slowest first
        "error": str | null             # why something is null
      },
      "memory_flatness": {              # null without a reference image
        "reference_image": REF,         # a smaller image in the same registry
        "reference_facts": {"compressed_bytes", "file_bytes", "entries"} | null,
        "error": str | null,            # why the reference runs stopped (then partial)
        PHASE: {TOOL: {                 # unlade, unlade-snap; phases that ran
          "peak_rss_bytes": float | null,            # median, valid timed runs
          "reference_peak_rss_bytes": float | null,  # median, valid reference runs
          "ratio": float | null,                     # the first ÷ the second
          "reference_runs": int, "reference_valid_runs": int}}
      },
      "targets": [{                     # the project's performance targets (see targets())
        "name": str,                    # "unpack vs containerd", "peak RSS", "start-up", ...
        "target": str, "measured": str, # for people
        "value": float | null,          # what is compared with the target: a ratio, MiB
                                        # or seconds (the name says which)
        "ok": bool | null               # null when the figures needed are missing
      }]
    }

The targets (:func:`targets`): unlade's unpack at least 2.5× faster than containerd's and
within 1.2× of the ``unpigz | tar`` limit (1.3× on tmpfs, where the limit is all CPU),
its pull at least 2× containerd's throughput, peak RSS at most 64 MiB and flat across image
sizes (±10 %), the Python heap at most 16 MiB, ``unlade --help`` at most 150 ms.

Heavy imports (matplotlib) happen inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SCHEMA = "unlade-bench/1"
METRICS = ("wall_s", "cpu_s", "peak_rss_bytes", "peak_rss_sampled_bytes", "peak_cpu_percent",
           "peak_procs", "peak_threads", "compressed_mib_s", "unpacked_mib_s")
RATIO_METRICS = ("wall_s", "cpu_s", "peak_rss_bytes")
TOOL_ORDER = ("unlade", "unlade-snap", "unlade-enc", "containerd", "umoci", "skopeo",
              "limit")
COLORS = {"unlade": "#1f77b4", "unlade-snap": "#17becf", "unlade-enc": "#ff7f0e",
          "containerd": "#d62728",
          "umoci": "#2ca02c", "skopeo": "#9467bd", "limit": "#7f7f7f"}
#: What each tool's result is, for the notes of ``results.md``.
TOOL_NOTES = {
    "unlade": "a flat rootfs (`--rootfs DIR`)",
    "unlade-snap": "one overlayfs snapshot per layer, layers unpacked in parallel "
                   "(`--snapshotter overlayfs`, no `--rootfs`): like for like with containerd",
    "unlade-enc": "a flat rootfs of the same image encrypted by `skopeo copy "
                  "--encryption-key jwe:…` (every layer), decrypted on the way "
                  "(`--decryption-key`)",
    "containerd": "one overlayfs snapshot per layer (private containerd 1.6 daemon, `ctr`)",
    "umoci": "a flat rootfs from an OCI layout written by `skopeo copy`",
    "skopeo": "the blobs in an OCI layout (download only, nothing unpacked)",
    "limit": "`unpigz -dc | tar -x` of each layer from local blobs: what the disk and "
             "decompressor allow",
}
MiB = 1 << 20

#: The project's performance targets (see :func:`targets`).
TARGET_UNPACK_VS_CONTAINERD = 0.4     # unlade's unpack wall ÷ containerd's, at most
TARGET_UNPACK_VS_LIMIT = 1.2          # unlade's unpack wall ÷ the limit's, at most ...
TARGET_UNPACK_VS_LIMIT_TMPFS = 1.3    # ... and on tmpfs
TARGET_PULL_VS_CONTAINERD = 2.0       # unlade's pull MiB/s ÷ containerd's, at least
TARGET_PEAK_RSS_BYTES = 64 * MiB
TARGET_FLATNESS = (0.9, 1.1)          # peak RSS, main image ÷ reference image
TARGET_PYTHON_HEAP_BYTES = 16 * MiB
TARGET_STARTUP_S = 0.150              # `unlade --help`, median
TARGET_DECRYPT_OVERHEAD = 1.15        # unpack wall, encrypted image ÷ plain image, at most
#: The keys of ``memory_flatness`` that are not phases.
FLATNESS_KEYS = ("reference_image", "reference_facts", "error")


def _jsonable(obj: Any, depth: int = 0) -> Any:
    if depth > 6:
        return str(obj)
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name), depth + 1)
                for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in obj]
    return str(obj)


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(records: Sequence[dict[str, Any]], heaps: dict[str, int | None] | None = None,
              tool_heaps: Mapping[str, Mapping[str, int | None]] | None = None,
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, ratios) of the timed runs; only valid runs count. ``heaps``: unlade's peak
    Python heap by phase; ``tool_heaps``: other tools' (unlade-snap), by tool and phase."""
    heaps = heaps or {}
    tool_heaps = tool_heaps or {}
    summary: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec.get("kind", "timed") != "timed":
            continue
        summary.setdefault(rec["phase"], {}).setdefault(rec["tool"], []).append(rec)
    out: dict[str, Any] = {}
    for phase, by_tool in summary.items():
        out[phase] = {}
        for tool in sorted(by_tool, key=_tool_key):
            recs = by_tool[tool]
            valid = [r for r in recs if r["valid"]]
            entry: dict[str, Any] = {"runs": len(recs), "valid_runs": len(valid),
                                     "download_only": bool(recs[0].get("download_only"))}
            for m in METRICS:
                entry[m] = _stats([r[m] for r in valid if r.get(m) is not None])
            if tool == "unlade":
                entry["peak_python_heap_bytes"] = heaps.get(phase)
            elif tool in tool_heaps:
                entry["peak_python_heap_bytes"] = tool_heaps[tool].get(phase)
            out[phase][tool] = entry
    ratios: dict[str, Any] = {}
    for phase, by_tool in out.items():
        base = by_tool.get("containerd")
        ratios[phase] = {}
        for tool, entry in by_tool.items():
            r: dict[str, float | None] = {}
            for m in RATIO_METRICS:
                a, b = entry.get(m), (base or {}).get(m)
                r[m] = (round(a["median"] / b["median"], 3)
                        if a and b and b["median"] else None)
            ratios[phase][tool] = r
    return out, ratios


def _tool_key(tool: str) -> tuple[int, str]:
    return (TOOL_ORDER.index(tool) if tool in TOOL_ORDER else len(TOOL_ORDER), tool)


def memory_flatness(records: Sequence[dict[str, Any]], reference_image: str,
                    reference_facts: dict[str, Any] | None, error: str | None = None,
                    ) -> dict[str, Any]:
    """``memory_flatness`` (see the module docstring): per phase and tool that ran on the
    reference image, the median peak RSS of the valid timed runs (main image) and of the
    valid reference runs, and their ratio. A ratio near 1 means unlade's memory does not
    grow with the image, which is what its streaming design promises."""
    out: dict[str, Any] = {"reference_image": reference_image,
                           "reference_facts": reference_facts, "error": error}
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for rec in records:
        kind = rec.get("kind", "timed")
        if kind in ("timed", "reference"):
            groups.setdefault((rec["phase"], rec["tool"]), {}).setdefault(kind, []).append(rec)

    def median_rss(recs: Sequence[dict[str, Any]]) -> float | None:
        values = [r["peak_rss_bytes"] for r in recs
                  if r.get("valid") and r.get("peak_rss_bytes") is not None]
        return statistics.median(values) if values else None

    order = {"pull": 0, "unpack": 1}
    for (phase, tool) in sorted(groups, key=lambda k: (order.get(k[0], 2), k[0],
                                                       _tool_key(k[1]))):
        ref_recs = groups[(phase, tool)].get("reference", [])
        if not ref_recs:
            continue
        main = median_rss(groups[(phase, tool)].get("timed", []))
        ref = median_rss(ref_recs)
        out.setdefault(phase, {})[tool] = {
            "peak_rss_bytes": main, "reference_peak_rss_bytes": ref,
            "ratio": round(main / ref, 3) if main is not None and ref else None,
            "reference_runs": len(ref_recs),
            "reference_valid_runs": sum(1 for r in ref_recs if r.get("valid"))}
    return out


def flatness_entries(memory_flatness: Mapping[str, Any] | None
                     ) -> list[tuple[str, str, dict[str, Any]]]:
    """(phase, tool, entry) of a ``memory_flatness`` object, whose phases sit beside its
    fixed keys."""
    out = []
    for phase, by_tool in (memory_flatness or {}).items():
        if phase in FLATNESS_KEYS or not isinstance(by_tool, dict):
            continue
        out += [(phase, tool, e) for tool, e in by_tool.items() if isinstance(e, dict)]
    return out


def build_document(*, started: _dt.datetime, image_ref: str, image_info: Any,
                   facts: dict[str, Any], machine: dict[str, Any],
                   versions: dict[str, Any], tmpfs: bool, runs: int, tools: list[str],
                   phases: list[str], records: list[dict[str, Any]],
                   heaps: dict[str, int | None],
                   tool_heaps: Mapping[str, Mapping[str, int | None]] | None = None,
                   startup: dict[str, Any] | None = None,
                   memory_flatness: dict[str, Any] | None = None,
                   ) -> dict[str, Any]:
    """The ``results.json`` document (see the module docstring), targets included."""
    for rec in records:
        rec.setdefault("kind", "timed")
    summary, ratios = summarize(records, heaps, tool_heaps)
    image = dict(facts)
    image["builder"] = _jsonable(image_info) if image_info is not None else None
    return {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "settings": {"image": image_ref, "runs": runs, "tools": tools, "phases": phases,
                     "tmpfs": tmpfs,
                     "reference_image": (memory_flatness or {}).get("reference_image")},
        "machine": machine,
        "versions": versions,
        "image": image,
        "runs": records,
        "summary": summary,
        "ratios": ratios,
        "startup": startup,
        "memory_flatness": memory_flatness,
        "targets": targets(summary, machine=machine, startup=startup,
                           memory_flatness=memory_flatness),
    }


# ----------------------------------------------------------------------------------------------
# Targets


def _median_of(summary: Mapping[str, Any], phase: str, tool: str, metric: str
               ) -> float | None:
    value = (summary.get(phase) or {}).get(tool, {}).get(metric)
    if isinstance(value, dict):
        value = value.get("median")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _target(name: str, target: str, measured: str, value: float | None,
            ok: bool | None) -> dict[str, Any]:
    return {"name": name, "target": target, "measured": measured, "value": value, "ok": ok}


def _speed(ratio: float) -> str:
    """A wall-time ratio (unlade ÷ peer) in words: "3.41× faster", "1.20× slower"."""
    return f"{1 / ratio:.2f}× faster" if ratio <= 1 else f"{ratio:.2f}× slower"


def _max_over_phases(summary: Mapping[str, Any], tool: str, metric: str
                     ) -> tuple[float, str] | None:
    """(the largest median of ``metric`` over the phases, that phase), or None."""
    found = [(v, phase) for phase in summary
             if (v := _median_of(summary, phase, tool, metric)) is not None]
    return max(found, key=lambda f: f[0]) if found else None


def targets(summary: Mapping[str, Any], *, machine: Mapping[str, Any],
            startup: Mapping[str, Any] | None = None,
            memory_flatness: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Whether each of the project's performance targets holds (see the module docstring
    and the ``TARGET_*`` constants), from one run's summary, start-up and memory-flatness
    figures, so that a single ``results.json`` answers it. A target whose figures are
    missing (containerd not among the tools, no valid runs, no reference image) has null
    ``value`` and ``ok``, never a guess."""
    rows: list[dict[str, Any]] = []

    # unpack vs containerd: wall time ratio
    goal = (f"wall ≤ {TARGET_UNPACK_VS_CONTAINERD:g}× containerd's "
            f"(≥ {1 / TARGET_UNPACK_VS_CONTAINERD:g}× faster)")
    a = _median_of(summary, "unpack", "unlade", "wall_s")
    b = _median_of(summary, "unpack", "containerd", "wall_s")
    if a is not None and b:
        v = round(a / b, 4)
        rows.append(_target("unpack vs containerd", goal,
                            f"{_speed(v)} ({a:.2f} s vs {b:.2f} s)", v,
                            v <= TARGET_UNPACK_VS_CONTAINERD))
    else:
        rows.append(_target("unpack vs containerd", goal,
                            "not measured (no valid unlade and containerd unpack runs)",
                            None, None))

    # unpack vs the unpigz | tar limit
    fs = str(machine.get("fs_type") or "unknown")
    limit = TARGET_UNPACK_VS_LIMIT_TMPFS if fs == "tmpfs" else TARGET_UNPACK_VS_LIMIT
    goal = f"wall ≤ {limit:g}× the unpigz | tar limit's (on {fs})"
    a = _median_of(summary, "unpack", "unlade", "wall_s")
    b = _median_of(summary, "unpack", "limit", "wall_s")
    if a is not None and b:
        v = round(a / b, 4)
        rows.append(_target("unpack vs limit", goal,
                            f"{v:.2f}× the limit's time ({a:.2f} s vs {b:.2f} s)", v,
                            v <= limit))
    else:
        rows.append(_target("unpack vs limit", goal,
                            "not measured (no valid unlade and limit unpack runs)", None, None))

    # pull vs containerd: throughput ratio
    goal = f"MiB/s ≥ {TARGET_PULL_VS_CONTAINERD:g}× containerd's"
    a = _median_of(summary, "pull", "unlade", "unpacked_mib_s")
    b = _median_of(summary, "pull", "containerd", "unpacked_mib_s")
    if a is not None and b:
        v = round(a / b, 4)
        rows.append(_target("pull vs containerd", goal,
                            f"{v:.2f}× the throughput ({a:.1f} vs {b:.1f} MiB/s)", v,
                            v >= TARGET_PULL_VS_CONTAINERD))
    else:
        rows.append(_target("pull vs containerd", goal,
                            "not measured (no valid unlade and containerd pull runs)",
                            None, None))

    # decryption overhead: the encrypted copy's unpack against the plain image's
    goal = (f"unpack wall of the encrypted image ≤ {TARGET_DECRYPT_OVERHEAD:g}× the plain "
            "image's")
    a = _median_of(summary, "unpack", "unlade-enc", "wall_s")
    b = _median_of(summary, "unpack", "unlade", "wall_s")
    if a is not None and b:
        v = round(a / b, 4)
        pull_a = _median_of(summary, "pull", "unlade-enc", "wall_s")
        pull_b = _median_of(summary, "pull", "unlade", "wall_s")
        pull = f"; pull {pull_a / pull_b:.2f}×" if pull_a is not None and pull_b else ""
        rows.append(_target("decryption overhead", goal,
                            f"{(v - 1) * 100:+.0f} % ({a:.2f} s vs {b:.2f} s{pull})", v,
                            v <= TARGET_DECRYPT_OVERHEAD))
    else:
        rows.append(_target("decryption overhead", goal,
                            "not measured (no valid unlade-enc and unlade unpack runs)",
                            None, None))

    # peak RSS: the largest phase median, for unlade and (if it ran) unlade-snap
    snap_ran = any("unlade-snap" in by_tool for by_tool in summary.values())
    for tool in ("unlade", "unlade-snap") if snap_ran else ("unlade",):
        name = "peak RSS" if tool == "unlade" else f"peak RSS ({tool})"
        goal = f"≤ {TARGET_PEAK_RSS_BYTES / MiB:g} MiB in every phase"
        found = _max_over_phases(summary, tool, "peak_rss_bytes")
        if found is None:
            rows.append(_target(name, goal, f"not measured (no valid {tool} runs)", None,
                                None))
            continue
        rss, phase = found
        rows.append(_target(name, goal, f"{rss / MiB:.1f} MiB ({phase})",
                            round(rss / MiB, 2), rss <= TARGET_PEAK_RSS_BYTES))

    # flat memory: main image ÷ reference image, every phase
    lo, hi = TARGET_FLATNESS
    flat = flatness_entries(memory_flatness)
    flat_tools = ["unlade"]
    if snap_ran or any(tool == "unlade-snap" for _, tool, _ in flat):
        flat_tools.append("unlade-snap")
    for tool in flat_tools:
        name = "flat memory" if tool == "unlade" else f"flat memory ({tool})"
        goal = f"peak RSS ÷ the reference image's within {lo:g}–{hi:g} in every phase"
        if not memory_flatness:
            rows.append(_target(name, goal, "not measured (no reference image)", None, None))
            continue
        ratios = [(phase, e["ratio"]) for phase, t, e in flat
                  if t == tool and e.get("ratio") is not None]
        if not ratios:
            why = memory_flatness.get("error") or f"no valid {tool} runs on both images"
            rows.append(_target(name, goal, f"not measured ({why})", None, None))
            continue
        worst = max((r for _, r in ratios), key=lambda r: abs(r - 1))
        rows.append(_target(name, goal, ", ".join(f"{p} {r:.2f}×" for p, r in ratios),
                            worst, all(lo <= r <= hi for _, r in ratios)))

    # Python heap (tracemalloc): unlade's largest
    goal = f"≤ {TARGET_PYTHON_HEAP_BYTES / MiB:g} MiB in every phase (tracemalloc)"
    found = _max_over_phases(summary, "unlade", "peak_python_heap_bytes")
    if found is None:
        rows.append(_target("Python heap", goal, "not measured (no valid heap run)", None,
                            None))
    else:
        heap, phase = found
        rows.append(_target("Python heap", goal, f"{heap / MiB:.1f} MiB ({phase})",
                            round(heap / MiB, 2), heap <= TARGET_PYTHON_HEAP_BYTES))

    # start-up
    goal = f"`unlade --help` median ≤ {TARGET_STARTUP_S * 1000:g} ms"
    st = startup or {}
    wall = st.get("wall_s")
    if isinstance(wall, dict) and isinstance(wall.get("median"), int | float):
        med = float(wall["median"])
        imports = st.get("import_us")
        extra = f"; imports {imports / 1000:.1f} ms" if isinstance(imports, int) else ""
        rows.append(_target("start-up", goal,
                            f"{med * 1000:.1f} ms (median of {st.get('runs')}{extra})",
                            round(med, 5), med <= TARGET_STARTUP_S))
    else:
        why = st.get("error") or "not run"
        rows.append(_target("start-up", goal, f"not measured ({why})", None, None))
    return rows


# ----------------------------------------------------------------------------------------------
# Text


def _fmt_range(s: dict[str, float] | None, scale: float = 1.0, digits: int = 2) -> str:
    if not s:
        return "–"
    return (f"{s['median'] / scale:.{digits}f} "
            f"({s['min'] / scale:.{digits}f}–{s['max'] / scale:.{digits}f})")


def _fmt_med(s: dict[str, float] | None, scale: float = 1.0, digits: int = 1) -> str:
    return "–" if not s else f"{s['median'] / scale:.{digits}f}"


def _fmt_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def table_rows(doc: dict[str, Any], phase: str) -> list[list[str]]:
    """Header + one row per tool for ``phase``."""
    rows = [["tool", "wall s, median (min–max)", "MiB/s", "CPU s", "peak RSS MiB (min–max)",
             "peak CPU %", "time ÷ containerd", "RSS ÷ containerd", "valid"]]
    for tool, s in doc["summary"].get(phase, {}).items():
        rate_key = "compressed_mib_s" if s["download_only"] else "unpacked_mib_s"
        rate = _fmt_med(s.get(rate_key))
        if s["download_only"]:
            rate += " (compressed, download only)"
        ratio = doc["ratios"].get(phase, {}).get(tool, {})
        rss = _fmt_range(s.get("peak_rss_bytes"), MiB, 1)
        if s.get("peak_python_heap_bytes"):
            rss += f"; Python heap {s['peak_python_heap_bytes'] / MiB:.1f}"
        rows.append([tool, _fmt_range(s.get("wall_s"), 1.0, 3), rate,
                     _fmt_med(s.get("cpu_s"), 1.0, 2), rss, _fmt_med(s.get("peak_cpu_percent")),
                     _fmt_ratio(ratio.get("wall_s")), _fmt_ratio(ratio.get("peak_rss_bytes")),
                     f"{s['valid_runs']}/{s['runs']}"])
    return rows


def _image_line(doc: dict[str, Any]) -> str:
    im, m = doc["image"], doc["machine"]
    return (f"Image {im['reference']}: {len(im['layers'])} layer(s), "
            f"{im['compressed_bytes'] / MiB:.1f} MiB compressed, "
            f"{im['file_bytes'] / MiB:.1f} MiB in files, {im['entries']} entries. "
            f"{m['fs_type']}, {m['cores']} × {m['cpu_model']}, "
            f"{m['memory_bytes'] / 2**30:.0f} GiB, kernel {m['kernel']}.")


def _ok_word(ok: bool | None) -> str:
    return "–" if ok is None else ("yes" if ok else "NO")


def target_rows(doc: dict[str, Any]) -> list[list[str]]:
    """Header + one row per target (none for a document older than the targets)."""
    found = doc.get("targets") or []
    if not found:
        return []
    return [["target", "goal", "measured", "met"],
            *([t["name"], t["target"], t["measured"], _ok_word(t["ok"])] for t in found)]


def table_text(doc: dict[str, Any]) -> str:
    """The summary as aligned plain text (for the terminal)."""
    lines = [_image_line(doc)]
    rows = target_rows(doc)
    if rows:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines.append("targets:")
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for phase in doc["settings"]["phases"]:
        rows = table_rows(doc, phase)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines.append(f"{phase}:")
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _flatness_md(doc: dict[str, Any]) -> list[str]:
    """The memory-flatness section of ``results.md`` (none without a reference image)."""
    mf = doc.get("memory_flatness")
    if not mf:
        return []
    facts = mf.get("reference_facts") or {}
    out = ["## Memory across image sizes", ""]
    if facts:
        out += [f"Reference image {mf['reference_image']}: "
                f"{facts['compressed_bytes'] / MiB:.1f} MiB compressed, "
                f"{facts['file_bytes'] / MiB:.1f} MiB in files, {facts['entries']} entries; "
                "peak RSS medians, this image's timed runs and the reference runs.", ""]
    if mf.get("error"):
        out += [f"Reference runs failed: {mf['error']}", ""]
    rows = [f"| {phase} | {tool} | {_fmt_mib(e['peak_rss_bytes'])} | "
            f"{_fmt_mib(e['reference_peak_rss_bytes'])} | {_fmt_ratio(e['ratio'])} | "
            f"{e['reference_valid_runs']}/{e['reference_runs']} |"
            for phase, tool, e in flatness_entries(mf)]
    if rows:
        out += ["| phase | tool | peak RSS MiB | on the reference MiB | ratio | valid |",
                "|---|---|---|---|---|---|", *rows, ""]
    return out


def _fmt_mib(n: float | None) -> str:
    return "–" if n is None else f"{n / MiB:.1f}"


def _startup_md(doc: dict[str, Any]) -> list[str]:
    """The start-up section of ``results.md``: the slowest top-level imports."""
    st = doc.get("startup")
    if not st or not st.get("top_imports"):
        return []
    out = ["## Start-up", "",
           f"`unlade --help` imports {st['import_us'] / 1000:.1f} ms in all "
           "(`python -X importtime`); the slowest top-level imports:", ""]
    out += [f"- {i['module']}: {i['cumulative_us'] / 1000:.1f} ms" for i in st["top_imports"]]
    out.append("")
    return out


def _shell(cmd: Sequence[str], work: str) -> str:
    text = " ".join(cmd)
    return text.replace(work, "WORK") if work else text


def markdown(doc: dict[str, Any]) -> str:
    """``results.md``."""
    v = doc["versions"]
    out = ["# unlade benchmark", "", _image_line(doc), ""]
    rows = target_rows(doc)
    if rows:
        out += ["## Targets", "",
                "Set for the full benchmark image (1.2 GiB in files). On a small image the "
                "fixed costs (interpreter start, manifest fetch) weigh more, so the speed "
                "targets are not expected to hold there.", "",
                "| " + " | ".join(rows[0]) + " |",
                "|" + "|".join("---" for _ in rows[0]) + "|"]
        out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows[1:]]
        out.append("")
    out += [
           f"{doc['settings']['runs']} run(s) per tool and phase, interleaved; medians with "
           "(min–max) over valid runs. Page cache dropped before every run. Peak RSS is the "
           "sum of the per-process peaks of the tool's process tree (containerd: daemon + ctr "
           "+ unpigz).", ""]
    shown = sorted({t for p in doc["summary"].values() for t in p}, key=_tool_key)
    notes = [f"- {t}: {TOOL_NOTES[t]}" for t in shown if t in TOOL_NOTES]
    if notes:
        out += ["What each tool leaves:", "", *notes, ""]
    for phase in doc["settings"]["phases"]:
        rows = table_rows(doc, phase)
        out += [f"## {phase}", "", "| " + " | ".join(rows[0]) + " |",
                "|" + "|".join("---" for _ in rows[0]) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        out.append("")
    out += _flatness_md(doc)
    out += _startup_md(doc)
    out += ["## Commands", ""]
    work = str(doc["machine"].get("work_dir", ""))
    seen: set[tuple[str, str]] = set()
    for rec in doc["runs"]:
        key = (rec["phase"], rec["tool"])
        if key in seen or not rec.get("commands"):
            continue
        if rec.get("kind", "timed") != "timed":
            continue
        seen.add(key)
        steps = ["; ".join(" | ".join(_shell(c, work) for c in step)
                           for step in rec["commands"])]
        out.append(f"- {rec['phase']}, {rec['tool']}: `{steps[0]}`")
    out += ["", "## Versions", ""]
    out += [f"- {k}: {v[k]}" for k in v if v[k]]
    out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Picture


def plot(doc: dict[str, Any], path: Path) -> None:
    """``results.png``: wall time and peak RSS per tool (rows) and phase (columns); bars are
    medians, whiskers min–max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [p for p in doc["settings"]["phases"] if doc["summary"].get(p)]
    ncols = max(1, len(phases))
    bars_max = max((len(doc["summary"][p]) for p in phases), default=1)
    fig, axes = plt.subplots(2, ncols, figsize=(max(5.2, 1.25 * bars_max) * ncols, 7.2),
                             squeeze=False)
    metrics = (("wall_s", 1.0, "wall time (s)", "{:.2f} s"),
               ("peak_rss_bytes", MiB, "peak RSS, process tree (MiB)", "{:.0f} MiB"))
    for col, phase in enumerate(phases):
        tools = list(doc["summary"][phase])
        for row, (key, scale, label, fmt) in enumerate(metrics):
            ax = axes[row][col]
            names, meds, lo, hi, colors, hatches = [], [], [], [], [], []
            for tool in tools:
                s = doc["summary"][phase][tool].get(key)
                names.append(tool + ("\n(download only)"
                                     if doc["summary"][phase][tool]["download_only"] else ""))
                colors.append(COLORS.get(tool, "#bcbd22"))
                hatches.append("//" if doc["summary"][phase][tool]["download_only"] else "")
                if s:
                    meds.append(s["median"] / scale)
                    lo.append((s["median"] - s["min"]) / scale)
                    hi.append((s["max"] - s["median"]) / scale)
                else:
                    meds.append(0.0)
                    lo.append(0.0)
                    hi.append(0.0)
            xs = range(len(names))
            bars = ax.bar(xs, meds, color=colors, yerr=[lo, hi], capsize=6,
                          error_kw={"elinewidth": 1.2, "ecolor": "#333333"})
            for bar, hatch in zip(bars, hatches, strict=True):
                bar.set_hatch(hatch)
            top = max((m + h for m, h in zip(meds, hi, strict=True)), default=0) or 1.0
            for x, m, h in zip(xs, meds, hi, strict=True):
                ax.text(x, m + h + top * 0.02, fmt.format(m), ha="center", va="bottom",
                        fontsize=9)
            ax.set_ylim(0, top * 1.18)
            ax.set_xticks(list(xs))
            ax.set_xticklabels(names, fontsize=9)
            ax.set_ylabel(label)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
            if row == 0:
                ax.set_title(f"{phase} phase", fontsize=12, fontweight="bold")
    im, m = doc["image"], doc["machine"]
    fig.suptitle(
        f"{im['compressed_bytes'] / MiB:.1f} MiB compressed → "
        f"{im['file_bytes'] / MiB:.1f} MiB in files, "
        f"{im['entries']} entries, {len(im['layers'])} layer(s) · {m['fs_type']} · "
        f"{m['cores']} cores · median of {doc['settings']['runs']}, whiskers min–max",
        fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(doc: dict[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``results.json``, ``results.md`` and ``results.png`` (only when matplotlib is
    installed) into ``out_dir``; return the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "results.md"]
    written[0].write_text(json.dumps(doc, indent=1) + "\n")
    written[1].write_text(markdown(doc))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return written
    plot(doc, out / "results.png")
    return [*written, out / "results.png"]
