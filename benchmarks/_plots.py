"""PNG plots of a run: latency, throughput, bandwidth by size, the big-parent curve, queue wait.

Matplotlib is optional (the ``bench`` extra): without it the plots are skipped
with a warning and the table and JSON are still written. The Agg backend is
selected before pyplot is imported, so no display is needed. Like the table,
the plots read the JSON-shaped results; contenders without a number are left
out and named in the subtitle.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def write_plots(results: Mapping[str, Any], out: Path) -> list[Path]:
    """Write every plot whose family was measured; return the paths written."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("matplotlib is not installed: skipping plots (pip install -e '.[bench]')")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measurements = results["measurements"]
    meta = results["meta"]
    caption = (
        f"Python {meta['python']}, {meta['usable_cores']} cores, {meta['workers']} workers, {meta['date']}"
    )
    written: list[Path] = []
    plots = (
        ("latency", _bars),
        ("throughput", _bars),
        ("bandwidth-sweep", _sweep),
        ("big-parent", _curve),
        ("queue-wait", _queue_wait),
    )
    for family, plot in plots:
        if family not in measurements:
            continue
        fig = plot(plt, measurements[family], caption)
        if fig is None:
            continue
        path = out / f"{family}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _measured(family: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Names of contenders with at least one number, and of those without."""
    cells = family["cells"]
    good = [name for name, cell in cells.items() if cell["values"]]
    return good, [name for name in cells if name not in good]


def _subtitle(caption: str, missing: Sequence[str]) -> str:
    return caption + (f"\nnot measured: {', '.join(missing)}" if missing else "")


def _bars(plt: Any, family: Mapping[str, Any], caption: str) -> Any:
    """One panel per speed metric, one bar per contender: the metrics differ in scale."""
    metrics = [m for m in family["metrics"] if m["has_ratio"]]
    names, missing = _measured(family)
    if not names or not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        values = [family["cells"][n]["values"].get(metric["key"], 0.0) for n in names]
        bars = ax.bar(range(len(names)), values, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, labels=[str(metric["fmt"]).format(v) if v else "" for v in values], fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        better = "lower" if metric["better"] == "lower" else "higher"
        ax.set_title(f"{metric['label']} ({better} is better)", fontsize=10)
        ax.set_ylabel(metric["unit"])
    fig.suptitle(f"{family['title']}\n{_subtitle(caption, missing)}", fontsize=9)
    fig.tight_layout()
    return fig


def _lines(plt: Any, family: Mapping[str, Any], suffix: str, figsize: tuple[float, float]) -> Any:
    """One line per contender of a family whose metric keys end in ``_<x><suffix>``:
    (figure, axes, [(x, key)], names not measured), or None if nothing was measured."""
    names, missing = _measured(family)
    if not names:
        return None
    xs = [(int(m["key"].rsplit("_", 1)[1].removesuffix(suffix)), m["key"]) for m in family["metrics"]]
    fig, ax = plt.subplots(figsize=figsize)
    for name in names:
        values = family["cells"][name]["values"]
        points = [(x, values[key]) for x, key in xs if key in values]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.legend(fontsize=8)
    return fig, ax, xs, missing


def _curve(plt: Any, family: Mapping[str, Any], caption: str) -> Any:
    """Time to first result against the parent's size, one line per contender."""
    drawn = _lines(plt, family, "gib", (7, 4.5))
    if drawn is None:
        return None
    fig, ax, sizes, missing = drawn
    ax.set_xlabel("parent's resident memory before the executor starts (GiB)")
    ax.set_ylabel("constructor to first result (ms)")
    ax.set_xticks([gib for gib, _ in sizes])
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(f"big parent: time to first result\n{_subtitle(caption, missing)}", fontsize=9)
    fig.tight_layout()
    return fig


def _sweep(plt: Any, family: Mapping[str, Any], caption: str) -> Any:
    """Bandwidth against payload size, both on log scales, one line per contender."""
    drawn = _lines(plt, family, "k", (8, 5))
    if drawn is None:
        return None
    fig, ax, sizes, missing = drawn
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([kib for kib, _ in sizes], [m["label"] for m in family["metrics"]], rotation=30, fontsize=8)
    ax.set_xlabel("payload size (each way)")
    ax.set_ylabel("bytes in + out per second (MiB/s)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"bandwidth by payload size\n{_subtitle(caption, missing)}", fontsize=9)
    fig.tight_layout()
    return fig


# The queue-wait family's metric keys: ``p95_ms_4x`` is the 95th percentile at 4x load.
_QUEUE_WAIT_KEY = re.compile(r"p(\d+)_ms_(\d+)x")


def _queue_wait(plt: Any, family: Mapping[str, Any], caption: str) -> Any:
    """One panel per percentile, wait against load, one line per contender; log scales,
    since the wait at 1x is a fraction of a millisecond and grows with the queue."""
    names, missing = _measured(family)
    if not names:
        return None
    # percentile -> [(load, key)], in the order the family lists them.
    panels: dict[int, list[tuple[int, str]]] = {}
    for metric in family["metrics"]:
        match = _QUEUE_WAIT_KEY.fullmatch(metric["key"])
        if match:
            panels.setdefault(int(match[1]), []).append((int(match[2]), metric["key"]))
    if not panels:
        return None
    job_ms = _job_ms(family)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.6), sharey=True, squeeze=False)
    for ax, (pct, loads) in zip(axes[0], panels.items(), strict=True):
        for i, name in enumerate(names):
            values = family["cells"][name]["values"]
            points = [(load, values[key]) for load, key in loads if key in values]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=f"C{i}", label=name)
        queued = [load for load, _ in loads if load > 1]
        if job_ms and queued:
            ideal = [(load - 1) * job_ms for load in queued]
            ax.plot(queued, ideal, "k--", linewidth=1, label="no-overhead pool")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([load for load, _ in loads], [f"{load}x" for load, _ in loads])
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("jobs in flight (x workers)")
        ax.set_title(f"p{pct}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("submit -> job starts (ms)")
    # Beside the panels, not over the lines of one of them.
    fig.legend(
        *axes[0][0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7
    )
    fig.suptitle(f"queue wait under load\n{_subtitle(caption, missing)}", fontsize=9)
    fig.tight_layout()
    return fig


def _job_ms(family: Mapping[str, Any]) -> float | None:
    """The jobs' own length, from the first trial that recorded it: the reference line needs it."""
    for cell in family["cells"].values():
        for extra in cell["extra"]:
            if isinstance(extra, Mapping) and extra.get("job_ms"):
                return float(extra["job_ms"])
    return None
