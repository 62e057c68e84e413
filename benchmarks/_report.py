"""The plain-text report: a header describing the run, then one table per family.

It reads the JSON-shaped results (``_harness``), not live objects, so a saved
``results.json`` can be re-rendered. Within a table the rows are contenders
and every speed column is followed by its ratio to the baseline; counts and
flags get no ratio. A cell that failed prints its reason across the row;
a single metric that failed prints ``error`` and a note below the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks._core import GIB

# Widest a whole-row error message may print; the JSON keeps the full text.
_ROW_ERROR_CHARS = 100


def format_meta(results: Mapping[str, Any]) -> str:
    """One paragraph: what ran, where, on which commit."""
    meta = results["meta"]
    commit = meta.get("git_commit") or "no commit"
    if meta.get("git_dirty"):
        commit += " (uncommitted changes)"
    total = meta.get("mem_total_bytes")
    available = meta.get("mem_available_bytes")
    memory = (
        f"{total / GIB:.1f} GiB RAM ({available / GIB:.1f} GiB available)" if total and available else "?"
    )
    return "\n".join(
        [
            f"Python {meta['python']} ({meta['implementation']}) on {meta['platform']}",
            f"CPU: {meta['cpu']}, {meta['cpu_count']} cores ({meta['usable_cores']} usable); {memory}",
            f"git {commit}; {meta['date']}; load average at start {_load(meta)}",
            f"profile {meta['profile']}, {meta['workers']} workers per executor; "
            f"ratio = value / {results['baseline']} value, measured in this run",
        ]
    )


def _load(meta: Mapping[str, Any]) -> str:
    load = meta.get("load_average")
    return " ".join(f"{x:.2f}" for x in load) if load else "unknown"


def format_tables(results: Mapping[str, Any]) -> str:
    """Every family's table, separated by blank lines."""
    return "\n\n".join(
        _format_family(family, results["baseline"]) for family in results["measurements"].values()
    )


def _format_family(family: Mapping[str, Any], baseline: str) -> str:
    metrics: Sequence[Mapping[str, Any]] = family["metrics"]
    cells: Mapping[str, Mapping[str, Any]] = family["cells"]
    skipped: Mapping[str, str] = family["skipped"]
    header = ["contender"]
    for metric in metrics:
        header.append(f"{metric['label']} ({metric['unit']})" if metric["unit"] else metric["label"])
        if metric["has_ratio"]:
            header.append("ratio")
    # A list per measured row; (name, reason) for a row that failed as a whole.
    rows: list[list[str] | tuple[str, str]] = []
    notes: list[str] = []
    # Per-metric failures, one note per (contender, reason) however many metrics share it.
    metric_errors: dict[tuple[str, str], list[str]] = {}
    for name, cell in cells.items():
        if cell["error"] is not None:
            rows.append((name, _clip(cell["error"])))
            continue
        row = [name]
        for metric in metrics:
            key = metric["key"]
            if key in cell["values"]:
                row.append(_format_value(metric, cell["values"][key]))
            elif key in cell["errors"]:
                row.append("timeout" if cell["errors"][key].startswith("timeout") else "error")
                metric_errors.setdefault((name, cell["errors"][key]), []).append(metric["label"])
            elif key in skipped:
                row.append("skipped")
            else:
                row.append("-")
            if metric["has_ratio"]:
                ratio = cell["ratios"].get(key)
                row.append(f"{ratio:.2f}x" if ratio is not None else "-")
        rows.append(row)
        notes.extend(f"{name}: {note}" for note in cell["notes"])
    notes.extend(f"{name} {', '.join(labels)}: {why}" for (name, why), labels in metric_errors.items())
    if baseline not in cells:
        notes.append(f"no ratios: the baseline {baseline} was not run")
    notes.extend(skipped.values())
    widths = [len(h) for h in header]
    for line in rows:
        if isinstance(line, list):
            widths = [max(w, len(v)) for w, v in zip(widths, line, strict=True)]
        else:
            widths[0] = max(widths[0], len(line[0]))
    lines = [family["title"], _join(header, widths), _join(["-" * w for w in widths], widths)]
    for line in rows:
        if isinstance(line, tuple):
            lines.append(f"{line[0].ljust(widths[0])}  {line[1]}")
        else:
            lines.append(_join(line, widths))
    lines.extend(f"  note: {note}" for note in notes)
    return "\n".join(lines)


def _format_value(metric: Mapping[str, Any], value: float | bool) -> str:
    if metric["kind"] == "flag":
        return "yes" if value else "no"
    return str(metric["fmt"]).format(value)


def _join(values: Sequence[str], widths: Sequence[int]) -> str:
    """First column left-aligned (names), the rest right-aligned (numbers)."""
    first, *rest = values
    return "  ".join(
        [first.ljust(widths[0]), *(v.rjust(w) for v, w in zip(rest, widths[1:], strict=True))]
    ).rstrip()


def _clip(text: str) -> str:
    return text if len(text) <= _ROW_ERROR_CHARS else text[: _ROW_ERROR_CHARS - 3] + "..."
