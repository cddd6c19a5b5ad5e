"""Summaries of a benchmark and the files it leaves: ``results.json``, ``results.md`` and
``results.png``.

``results.json`` (schema ``unlade-bench/1``)::

    {
      "schema": "unlade-bench/1",
      "started": "2026-11-24T21:00:00+00:00",          # UTC, ISO 8601
      "settings": {"image": REF, "runs": N, "tools": [...], "phases": ["pull", "unpack"],
                   "tmpfs": false},
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
        "kind": "timed",
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
      "ratios": {PHASE: {TOOL: {"wall_s", "cpu_s", "peak_rss_bytes": float | null}}}
                                        # median(TOOL) / median(containerd)
    }

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
TOOL_ORDER = ("unlade", "unlade-snap", "containerd", "umoci", "skopeo", "limit")
COLORS = {"unlade": "#1f77b4", "unlade-snap": "#17becf", "containerd": "#d62728",
          "umoci": "#2ca02c", "skopeo": "#9467bd", "limit": "#7f7f7f"}
#: What each tool's result is, for the notes of ``results.md``.
TOOL_NOTES = {
    "unlade": "a flat rootfs (`--rootfs DIR`)",
    "unlade-snap": "one overlayfs snapshot per layer, layers unpacked in parallel "
                   "(`--snapshotter overlayfs`, no `--rootfs`): like for like with containerd",
    "containerd": "one overlayfs snapshot per layer (private containerd 1.6 daemon, `ctr`)",
    "umoci": "a flat rootfs from an OCI layout written by `skopeo copy`",
    "skopeo": "the blobs in an OCI layout (download only, nothing unpacked)",
    "limit": "`unpigz -dc | tar -x` of each layer from local blobs: what the disk and "
             "decompressor allow",
}
MiB = 1 << 20


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


def build_document(*, started: _dt.datetime, image_ref: str, image_info: Any,
                   facts: dict[str, Any], machine: dict[str, Any],
                   versions: dict[str, Any], tmpfs: bool, runs: int, tools: list[str],
                   phases: list[str], records: list[dict[str, Any]],
                   heaps: dict[str, int | None],
                   tool_heaps: Mapping[str, Mapping[str, int | None]] | None = None,
                   ) -> dict[str, Any]:
    """The ``results.json`` document (see the module docstring)."""
    for rec in records:
        rec.setdefault("kind", "timed")
    summary, ratios = summarize(records, heaps, tool_heaps)
    image = dict(facts)
    image["builder"] = _jsonable(image_info) if image_info is not None else None
    return {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "settings": {"image": image_ref, "runs": runs, "tools": tools, "phases": phases,
                     "tmpfs": tmpfs},
        "machine": machine,
        "versions": versions,
        "image": image,
        "runs": records,
        "summary": summary,
        "ratios": ratios,
    }


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


def table_text(doc: dict[str, Any]) -> str:
    """The summary as aligned plain text (for the terminal)."""
    lines = [_image_line(doc)]
    for phase in doc["settings"]["phases"]:
        rows = table_rows(doc, phase)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines.append(f"{phase}:")
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _shell(cmd: Sequence[str], work: str) -> str:
    text = " ".join(cmd)
    return text.replace(work, "WORK") if work else text


def markdown(doc: dict[str, Any]) -> str:
    """``results.md``."""
    v = doc["versions"]
    out = ["# unlade benchmark", "", _image_line(doc), "",
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
    out += ["## Commands", ""]
    work = str(doc["machine"].get("work_dir", ""))
    seen: set[tuple[str, str]] = set()
    for rec in doc["runs"]:
        key = (rec["phase"], rec["tool"])
        if key in seen or not rec.get("commands"):
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
