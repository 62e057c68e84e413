"""Smoke test of the benchmark harness (``python -m benchmarks --tiny``).

It proves that every measurement runs end to end for the baseline and for
``SubprocExecutor``, and that the report and JSON are written; it measures
nothing. The baseline must produce a number in every cell. SubprocExecutor's
cells may be errors: the harness's job is to report a failing executor, and
this test must not fail because the executor under development does.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FAMILIES = (
    "cold-start",
    "latency",
    "throughput",
    "bandwidth",
    "bandwidth-sweep",
    "big-parent",
    "crash",
    "idle-memory",
    "job-timeouts",
)
# Families the baseline cannot take part in (it has no per-job timeout): its
# cells say so instead of holding numbers.
BASELINE_ABSENT = {"job-timeouts"}
CONTENDERS = ("stdlib-fork", "subproc-process")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tiny_run_reports_every_measurement(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--tiny",
            "--out",
            str(tmp_path),
            "--contenders",
            ",".join(CONTENDERS),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["measurements"]) == list(FAMILIES)
    for name, family in results["measurements"].items():
        assert set(family["cells"]) == set(CONTENDERS), name
        baseline = family["cells"]["stdlib-fork"]
        if name in BASELINE_ABSENT:
            assert not baseline["values"] and baseline["errors"], name
            continue
        assert baseline["status"] == "ok", (name, baseline["error"], baseline["errors"])
        assert baseline["values"], name
        for key, value in baseline["values"].items():
            # bool is an int: the crash family's "serves a new job" flag counts as a number.
            assert isinstance(value, (int, float)), (name, key, value)
        if any(m["has_ratio"] for m in family["metrics"]):
            assert set(baseline["ratios"].values()) == {1.0}, name
        cell = family["cells"]["subproc-process"]
        assert cell["status"] in {"ok", "partial", "error", "timeout"}, (name, cell["status"])
        assert cell["values"] or cell["error"], name
    meta = results["meta"]
    for field in ("python", "cpu_count", "mem_total_bytes", "platform", "date", "git_commit", "workers"):
        assert field in meta, field

    for family in results["measurements"].values():
        assert family["title"] in done.stdout
    assert "stdlib-fork" in done.stdout
    assert (tmp_path / "table.txt").read_text().strip() in done.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        for plot in ("latency.png", "throughput.png", "big-parent.png"):
            assert (tmp_path / plot).stat().st_size > 0, plot
