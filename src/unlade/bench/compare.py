"""``unlade bench compare OLD.json NEW.json``: two benchmark results side by side.

For every (phase, tool) in both files: the old and new medians of wall time, peak RSS (the
whole process tree), CPU seconds and, where present (unlade), the peak Python heap, with
new ÷ old. Then unlade ÷ each other tool (containerd, umoci, skopeo, the ``unpigz | tar``
limit, ...) in each file, side by side: those ratios come from runs interleaved on one
machine, so they hold up better than absolute times when the two runs were made on different
or differently busy machines.

A change beyond ``threshold`` (new ÷ old above 1 + t or below 1 − t) gets a word (slower,
faster, more memory, less memory, more CPU, less CPU). It is a report, not a test: timings
never change the exit code. Exit 1 only when a file cannot be read, is not an
``unlade-bench/1`` document, or the two runs are of different images (manifest digest or
sizes; ``force`` compares them anyway); a different machine is only a warning.

The ``--json`` document (schema ``unlade-bench-compare/1``)::

    {
      "schema": "unlade-bench-compare/1",
      "threshold": 0.1,
      "old": {"path", "started", "runs", "machine", "versions"},   # and "new" alike
      "new": {...},
      "image": {"manifest_digest", "compressed_bytes", "uncompressed_bytes",
                "file_bytes", "entries"},          # the old file's
      "same_image": bool, "same_machine": bool,
      "warnings": [str],                           # as printed on stderr
      "tools": {PHASE: {TOOL: {
        "valid_runs": {"old": int, "new": int},
        "metrics": {METRIC: {"old": float | null, "new": float | null,
                             "ratio": float | null, "change": str | null}}}}},
      "peers": {PHASE: {PEER: {METRIC: {"old": float | null, "new": float | null,
                                        "ratio": float | null, "change": str | null}}}},
                                                   # old/new: median(unlade) ÷ median(PEER)
      "startup": {"old": float | null, "new": float | null, "ratio": float | null,
                  "change": str | null} | null,    # `unlade --help` median seconds; null
                                                   # when neither file has it
      "only_old": [[PHASE, TOOL]], "only_new": [[PHASE, TOOL]]
    }

METRIC is ``wall_s``, ``peak_rss_bytes``, ``cpu_s`` or ``peak_python_heap_bytes`` (seconds and
bytes, as in ``results.json``); ``change`` is the word, or null within the threshold.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .report import SCHEMA, TOOL_ORDER

COMPARE_SCHEMA = "unlade-bench-compare/1"
MiB = 1 << 20

#: (key in the summary, label, scale, digits, word if more, word if less)
METRICS = (
    ("wall_s", "wall s", 1.0, 3, "slower", "faster"),
    ("peak_rss_bytes", "peak RSS MiB", MiB, 1, "more memory", "less memory"),
    ("cpu_s", "CPU s", 1.0, 2, "more CPU", "less CPU"),
    ("peak_python_heap_bytes", "Python heap MiB", MiB, 1, "more memory", "less memory"),
)
#: Metrics compared as unlade ÷ peer (the heap is unlade's alone).
PEER_METRICS = ("wall_s", "peak_rss_bytes", "cpu_s")
IMAGE_KEYS = ("manifest_digest", "compressed_bytes", "uncompressed_bytes", "file_bytes",
              "entries")
#: Machine facts that make two runs' figures comparable (not work_dir, which is per run).
MACHINE_KEYS = ("cpu_model", "cores", "memory_bytes", "kernel", "os", "fs_type")


class CompareError(Exception):
    """A file that cannot be compared; the message is one line."""


# ----------------------------------------------------------------------------------------------
# Loading


def load(path: str | Path) -> dict[str, Any]:
    """A ``results.json`` document, checked enough for :func:`compare` to trust its shape."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise CompareError(f"cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise CompareError(f"{path}: not a text file") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise CompareError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(doc, dict) or "schema" not in doc:
        raise CompareError(f"{path}: not an unlade benchmark results.json (no schema)")
    if doc["schema"] != SCHEMA:
        raise CompareError(f"{path}: schema {doc['schema']!r}, not {SCHEMA!r}")
    for key in ("image", "machine", "summary"):
        if not isinstance(doc.get(key), dict):
            raise CompareError(f"{path}: malformed results.json: no {key!r} object")
    for phase, by_tool in doc["summary"].items():
        if not isinstance(by_tool, dict) or not all(isinstance(v, dict)
                                                    for v in by_tool.values()):
            raise CompareError(f"{path}: malformed results.json: summary of {phase!r}")
    return doc


def _median(entry: dict[str, Any], metric: str, path: str) -> float | None:
    value = entry.get(metric)
    if isinstance(value, dict):
        value = value.get("median")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CompareError(f"{path}: malformed results.json: {metric} is {value!r}")
    return float(value)


# ----------------------------------------------------------------------------------------------
# Comparing


def _tool_key(tool: str) -> tuple[int, str]:
    return (TOOL_ORDER.index(tool) if tool in TOOL_ORDER else len(TOOL_ORDER), tool)


def _ratio(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return new / old


def _change(ratio: float | None, threshold: float, more: str, less: str) -> str | None:
    if ratio is None:
        return None
    if ratio > 1 + threshold:
        return more
    if ratio < 1 - threshold:
        return less
    return None


def _cell(old: float | None, new: float | None, threshold: float, more: str, less: str
          ) -> dict[str, Any]:
    ratio = _ratio(new, old)
    return {"old": old, "new": new, "ratio": None if ratio is None else round(ratio, 4),
            "change": _change(ratio, threshold, more, less)}


def _short_digest(digest: Any) -> str:
    text = str(digest)
    algo, _, hexpart = text.partition(":")
    return f"{algo}:{hexpart[:12]}" if hexpart else text[:19]


def _image_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """One phrase saying how the two images differ, or None when they are the same."""
    parts = []
    if old.get("manifest_digest") != new.get("manifest_digest"):
        parts.append(f"manifest {_short_digest(old.get('manifest_digest'))} vs "
                     f"{_short_digest(new.get('manifest_digest'))}")
    for key, label in (("compressed_bytes", "compressed"), ("file_bytes", "in files")):
        a, b = old.get(key), new.get(key)
        if a != b:
            a_s = f"{a / MiB:.1f}" if isinstance(a, int | float) else str(a)
            b_s = f"{b / MiB:.1f}" if isinstance(b, int | float) else str(b)
            parts.append(f"{a_s} vs {b_s} MiB {label}")
    if old.get("entries") != new.get("entries"):
        parts.append(f"{old.get('entries')} vs {new.get('entries')} entries")
    if not parts and old.get("uncompressed_bytes") != new.get("uncompressed_bytes"):
        parts.append(f"{old.get('uncompressed_bytes')} vs {new.get('uncompressed_bytes')} "
                     "bytes of tar")
    return "; ".join(parts) or None


def _machine_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    parts = []
    for key in MACHINE_KEYS:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "memory_bytes" and isinstance(a, int) and isinstance(b, int):
            parts.append(f"memory {a / 2**30:.1f} vs {b / 2**30:.1f} GiB")
        else:
            parts.append(f"{key.removesuffix('_model')} {a} vs {b}")
    return ", ".join(parts) or None


def _settings(doc: dict[str, Any]) -> dict[str, Any]:
    settings = doc.get("settings")
    return settings if isinstance(settings, dict) else {}


def _side(doc: dict[str, Any], path: str) -> dict[str, Any]:
    return {"path": path, "started": doc.get("started"), "runs": _settings(doc).get("runs"),
            "machine": {k: doc["machine"].get(k) for k in MACHINE_KEYS},
            "versions": doc.get("versions")}


def _phases(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for doc in (old, new):
        listed = _settings(doc).get("phases")
        for phase in [*(listed if isinstance(listed, list) else []), *doc["summary"]]:
            if isinstance(phase, str) and phase in doc["summary"] and phase not in out:
                out.append(phase)
    return out


def _startup_median(doc: dict[str, Any]) -> float | None:
    """The median of ``unlade --help`` in seconds (files before it was measured: None)."""
    startup = doc.get("startup")
    wall = startup.get("wall_s") if isinstance(startup, dict) else None
    value = wall.get("median") if isinstance(wall, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def compare(old: dict[str, Any], new: dict[str, Any], *, threshold: float = 0.10,
            force: bool = False, old_path: str = "OLD", new_path: str = "NEW"
            ) -> dict[str, Any]:
    """The comparison document (see the module docstring) of two loaded ``results.json``.

    Raises :class:`CompareError` when the images differ and not ``force``."""
    warnings: list[str] = []
    image_diff = _image_difference(old["image"], new["image"])
    if image_diff and not force:
        raise CompareError(f"different images ({image_diff}); --force compares them anyway")
    if image_diff:
        warnings.append(f"different images ({image_diff}); compared anyway")
    machine_diff = _machine_difference(old["machine"], new["machine"])
    if machine_diff:
        warnings.append(f"the machines differ ({machine_diff}); "
                        "the unlade/peer ratios compare better than the times")
    tools: dict[str, Any] = {}
    peers: dict[str, Any] = {}
    only_old: list[list[str]] = []
    only_new: list[list[str]] = []
    for phase in _phases(old, new):
        o_phase, n_phase = old["summary"].get(phase, {}), new["summary"].get(phase, {})
        only_old += [[phase, t] for t in sorted(o_phase, key=_tool_key) if t not in n_phase]
        only_new += [[phase, t] for t in sorted(n_phase, key=_tool_key) if t not in o_phase]
        common = sorted((t for t in o_phase if t in n_phase), key=_tool_key)
        for tool in common:
            o, n = o_phase[tool], n_phase[tool]
            metrics = {}
            for key, _label, _scale, _digits, more, less in METRICS:
                a, b = _median(o, key, old_path), _median(n, key, new_path)
                if a is None and b is None and key == "peak_python_heap_bytes":
                    continue
                metrics[key] = _cell(a, b, threshold, more, less)
            tools.setdefault(phase, {})[tool] = {
                "valid_runs": {"old": o.get("valid_runs"), "new": n.get("valid_runs")},
                "metrics": metrics}
        if "unlade" not in common:
            continue
        for peer in common:
            if peer == "unlade":
                continue
            cells = {}
            for key, _label, _scale, _digits, more, less in METRICS:
                if key not in PEER_METRICS:
                    continue
                a = _ratio(_median(o_phase["unlade"], key, old_path),
                           _median(o_phase[peer], key, old_path))
                b = _ratio(_median(n_phase["unlade"], key, new_path),
                           _median(n_phase[peer], key, new_path))
                cell = _cell(a, b, threshold, more, less)
                cell["old"] = None if a is None else round(a, 4)
                cell["new"] = None if b is None else round(b, 4)
                cells[key] = cell
            peers.setdefault(phase, {})[peer] = cells
    startup = None
    o_start, n_start = _startup_median(old), _startup_median(new)
    if o_start is not None or n_start is not None:
        startup = _cell(o_start, n_start, threshold, "slower", "faster")
    return {
        "schema": COMPARE_SCHEMA,
        "threshold": threshold,
        "old": _side(old, old_path),
        "new": _side(new, new_path),
        "image": {k: old["image"].get(k) for k in IMAGE_KEYS},
        "same_image": image_diff is None,
        "same_machine": machine_diff is None,
        "warnings": warnings,
        "tools": tools,
        "peers": peers,
        "startup": startup,
        "only_old": only_old,
        "only_new": only_new,
    }


# ----------------------------------------------------------------------------------------------
# Text


def _num(value: float | None, scale: float, digits: int) -> str:
    return "–" if value is None else f"{value / scale:.{digits}f}"


def _times(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def _align(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {3, 4, 5}  # numbers
    out = []
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def text(result: dict[str, Any]) -> str:
    """The comparison as an aligned plain-text table."""
    old, new, image = result["old"], result["new"], result["image"]
    pct = f"{result['threshold'] * 100:g}%"
    lines = [f"old: {old['path']} ({old['started']}, {old['runs']} run(s))",
             f"new: {new['path']} ({new['started']}, {new['runs']} run(s))"]
    if isinstance(image.get("compressed_bytes"), int | float):
        lines.append(f"image {_short_digest(image['manifest_digest'])}: "
                     f"{image['compressed_bytes'] / MiB:.1f} MiB compressed, "
                     f"{image['entries']} entries; changes beyond ±{pct} are marked")
    labels = {key: (label, scale, digits) for key, label, scale, digits, _m, _l in METRICS}
    rows = [["phase", "tool", "metric", "old", "new", "new/old", ""]]
    for phase, by_tool in result["tools"].items():
        first_in_phase = True
        for tool, entry in by_tool.items():
            first_of_tool = True
            for key, cell in entry["metrics"].items():
                label, scale, digits = labels[key]
                rows.append([phase if first_in_phase else "",
                             tool if first_of_tool else "", label,
                             _num(cell["old"], scale, digits), _num(cell["new"], scale, digits),
                             _times(cell["ratio"]), cell["change"] or ""])
                first_in_phase = first_of_tool = False
            runs = entry["valid_runs"]
            if not runs["old"] or not runs["new"]:
                rows[-1][-1] = (rows[-1][-1] + " " if rows[-1][-1] else "") + \
                    f"(valid runs: {runs['old']} old, {runs['new']} new)"
    lines.append("")
    lines += _align(rows, "")
    if result["peers"]:
        rows = [["phase", "ratio", "metric", "old", "new", "new/old", ""]]
        for phase, by_peer in result["peers"].items():
            first_in_phase = True
            for peer, cells in by_peer.items():
                first_of_peer = True
                for key, cell in cells.items():
                    rows.append([phase if first_in_phase else "",
                                 f"unlade/{peer}" if first_of_peer else "",
                                 labels[key][0].removesuffix(" MiB").removesuffix(" s"),
                                 _times(cell["old"]), _times(cell["new"]),
                                 _times(cell["ratio"]), cell["change"] or ""])
                    first_in_phase = first_of_peer = False
        lines.append("")
        lines += _align(rows, "")
    start = result.get("startup")
    if start:
        lines.append("")
        lines.append(f"start-up (unlade --help): old {_num(start['old'], 0.001, 1)} ms, "
                     f"new {_num(start['new'], 0.001, 1)} ms, {_times(start['ratio'])}"
                     + (f" {start['change']}" if start["change"] else ""))
    for key, what in (("only_old", "only in old"), ("only_new", "only in new")):
        if result[key]:
            lines.append("")
            lines.append(f"{what}: " + ", ".join(f"{p} {t}" for p, t in result[key]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Command


def _threshold(value: str) -> float:
    try:
        t = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not math.isfinite(t) or t < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {value!r}")
    return t


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD.json", help="the earlier results.json (baseline)")
    parser.add_argument("new", metavar="NEW.json", help="the later results.json")
    parser.add_argument("--threshold", type=_threshold, default=0.10, metavar="T",
                        help="mark changes where new/old is beyond 1 ± T "
                             "(default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    parser.add_argument("--force", action="store_true",
                        help="compare even when the runs are of different images")


def compare_command(args: argparse.Namespace) -> int:
    """Run ``unlade bench compare`` with parsed ``args``; returns the exit code."""
    try:
        old, new = load(args.old), load(args.new)
        result = compare(old, new, threshold=args.threshold, force=args.force,
                         old_path=args.old, new_path=args.new)
    except CompareError as err:
        print(f"unlade bench: error: {err}", file=sys.stderr)
        return 1
    for warning in result["warnings"]:
        print(f"unlade bench: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=1, ensure_ascii=False))
    else:
        print(text(result))
    return 0
