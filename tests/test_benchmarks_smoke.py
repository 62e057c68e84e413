"""Smoke test of the benchmark harness (``python -m benchmarks --tiny``).

It proves that every measurement runs end to end for the baseline and for
``SubprocExecutor``, and that the report and JSON are written; it measures
nothing. The baseline must produce a number in every cell. SubprocExecutor's
cells may be errors: the harness's job is to report a failing executor, and
this test must not fail because the executor under development does.

The progress bars and the queue-wait family's bookkeeping are also tested in
this process, with fake children and a thread pool: no process is started, and
nothing is timed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import importlib.util
import io
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# The harness is not installed: it runs from the repository root, as it does here.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import _harness, _jobs, coldstart, contenders, latency, queuewait  # noqa: E402
from benchmarks._child import Context  # noqa: E402
from benchmarks._core import PROFILES, Family  # noqa: E402
from benchmarks._progress import Bar, family_bar  # noqa: E402
from benchmarks._runner import ChildOutcome  # noqa: E402
from benchmarks.contenders import Contender  # noqa: E402

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
    "queue-wait",
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
    # stderr is a pipe here, not a terminal: the progress bars stay out of it.
    assert "trial/s" not in done.stderr and "\r" not in done.stderr

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
        for plot in ("latency.png", "throughput.png", "big-parent.png", "queue-wait.png"):
            assert (tmp_path / plot).stat().st_size > 0, plot


# --- queue wait -----------------------------------------------------------------


def _assert_queue_wait_values(values: dict[str, float], loads: tuple[int, ...]) -> None:
    """Every load has p50 <= p95 <= p99, none negative: the percentiles of one
    set of waits, each measured on one system-wide clock."""
    for load in loads:
        row = [values[queuewait.metric_key(pct, load)] for pct in queuewait.PERCENTILES]
        assert row == sorted(row), (load, row)
        assert row[0] >= 0, (load, row)


class _CountingThreadPool(concurrent.futures.ThreadPoolExecutor):
    """A thread pool that records the most jobs it ever had unfinished at once,
    and sets ``loaded`` the first time that reaches ``load``."""

    def __init__(self, max_workers: int, load: int) -> None:
        super().__init__(max_workers=max_workers)
        self._lock = threading.Lock()
        self._load = load
        self.loaded = threading.Event()
        self.unfinished = 0
        self.most_unfinished = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        with self._lock:
            self.unfinished += 1
            self.most_unfinished = max(self.most_unfinished, self.unfinished)
            if self.unfinished == self._load:
                self.loaded.set()
        future = super().submit(fn, *args, **kwargs)
        # Registered before the caller's callbacks, so it runs first: the count
        # drops before the caller may submit again.
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _: object) -> None:
        with self._lock:
            self.unfinished -= 1


@pytest.mark.timeout(60)
def test_queue_waits_keeps_the_load_in_flight_and_times_every_job(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = _CountingThreadPool(max_workers=2, load=4)

    def gated(seconds: float) -> float:
        """The job, held until the load is reached: so it is reached whatever the timing."""
        start = time.monotonic()
        if not pool.loaded.wait(timeout=30):  # a guard against a hang, not a timing
            raise RuntimeError("4 jobs were never in flight at once")
        return start

    monkeypatch.setattr(_jobs, "start_then_sleep", gated)
    with pool:
        waits = queuewait.queue_waits(pool, in_flight=4, jobs=30)
    assert len(waits) == 30
    assert all(w >= 0 for w in waits)
    # Closed loop: the load is reached (or the jobs above fail), and never exceeded.
    assert pool.most_unfinished == 4


@pytest.mark.timeout(60)
def test_queue_wait_trial_reports_every_percentile_at_every_load() -> None:
    profile = PROFILES["tiny"]
    threads = Contender(
        "threads",
        "ThreadPoolExecutor, so the family's bookkeeping runs without processes",
        lambda workers: functools.partial(concurrent.futures.ThreadPoolExecutor, max_workers=workers),
    )
    ctx = Context(threads, workers=2, profile=profile)
    try:
        output = queuewait.run_trial(ctx, {})
    finally:
        ctx.close()
    keys = {m.key for m in queuewait.FAMILY.metrics(profile)}
    assert len(output.repeats) == 1
    assert set(output.repeats[0]) == keys
    _assert_queue_wait_values(output.repeats[0], profile.queue_wait_loads)
    assert output.extra["in_flight"] == {f"{load}x": 2 * load for load in profile.queue_wait_loads}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_queue_wait_family_rows(tmp_path: Path) -> None:
    """The family alone, through the command line, for the baseline and the lean backend."""
    names = ("stdlib-fork", "subproc-pipes")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--tiny",
            "--only",
            "queue-wait",
            "--contenders",
            ",".join(names),
            "--out",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    family = json.loads((tmp_path / "results.json").read_text())["measurements"]["queue-wait"]
    loads = PROFILES["tiny"].queue_wait_loads
    assert [m["key"] for m in family["metrics"]] == [
        queuewait.metric_key(pct, load) for load in loads for pct in queuewait.PERCENTILES
    ]
    baseline = family["cells"]["stdlib-fork"]
    assert baseline["status"] == "ok", baseline["error"]
    assert set(baseline["ratios"].values()) == {1.0}
    _assert_queue_wait_values(baseline["values"], loads)
    cell = family["cells"]["subproc-pipes"]
    # The executor under development may fail; the harness must report it, not crash.
    assert cell["status"] in {"ok", "partial", "error", "timeout"}, cell["status"]
    if cell["status"] == "ok":
        _assert_queue_wait_values(cell["values"], loads)
    assert family["title"] in done.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "queue-wait.png").stat().st_size > 0


# --- progress bars ----------------------------------------------------------------


class _FakeTerminal(io.StringIO):
    """Where a bar is drawn when stderr is a terminal."""

    def isatty(self) -> bool:
        return True


def _fake_run_child(families: list[Family]) -> Any:
    """A stand-in for ``_runner.run_child``: every trial reports 1.0 for every
    metric of the families given, and no process is started."""
    keys = {m.key for family in families for m in family.metrics(PROFILES["quick"])}

    def run_child(spec: dict[str, object], *, timeout_s: float, workdir: Path, tag: str) -> ChildOutcome:
        result = {"ok": True, "repeats": [dict.fromkeys(keys, 1.0)], "errors": {}, "extra": {}}
        return ChildOutcome(result, 0, False, 0.01, "")

    return run_child


def _config(tmp_path: Path, families: list[Family], **progress: Any) -> _harness.RunConfig:
    two = [contenders.CONTENDERS["stdlib-fork"], contenders.CONTENDERS["subproc-pipes"]]
    config = _harness.RunConfig(PROFILES["quick"], families, two, 2, 1 << 34, tmp_path)
    return _harness.RunConfig(**{**config.__dict__, **progress})


@pytest.mark.timeout(30)
def test_bar_draws_on_a_terminal_and_closes_when_the_family_raises() -> None:
    pytest.importorskip("tqdm")
    terminal = _FakeTerminal()
    handlers = list(logging.getLogger().handlers)
    with pytest.raises(RuntimeError, match="failed"), family_bar("queue-wait", 4, file=terminal) as bar:
        bar.update()
        raise RuntimeError("family failed")
    assert getattr(bar, "disable", None) is True  # tqdm's mark of a closed bar
    drawn = terminal.getvalue()
    assert "queue-wait" in drawn and "1/4" in drawn
    assert drawn.endswith("\n")  # closed: the bar's line is finished
    assert logging.getLogger().handlers == handlers  # log lines no longer go through tqdm


@pytest.mark.timeout(30)
def test_bar_is_silent_off_a_terminal() -> None:
    pytest.importorskip("tqdm")
    pipe = io.StringIO()
    with family_bar("latency", 2, file=pipe) as bar:
        bar.set_postfix_str("stdlib-fork")
        bar.update()
    assert pipe.getvalue() == ""


@pytest.mark.timeout(30)
def test_bar_without_tqdm_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    terminal = _FakeTerminal()
    with pytest.raises(RuntimeError), family_bar("latency", 2, file=terminal, disable=False) as bar:
        bar.set_postfix_str("stdlib-fork")
        bar.update()
        raise RuntimeError("family failed")
    assert terminal.getvalue() == ""


@pytest.mark.timeout(30)
def test_harness_steps_each_family_bar_once_per_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tqdm")
    # Cold start runs one child per trial (2 in quick), the others one per cell.
    families = [coldstart.FAMILY, latency.FAMILY, queuewait.FAMILY]
    monkeypatch.setattr(_harness, "run_child", _fake_run_child(families))
    bars: dict[str, Any] = {}

    @contextlib.contextmanager
    def recording_bar(name: str, total: int) -> Iterator[Bar]:
        with family_bar(name, total, file=_FakeTerminal()) as bar:
            bars[name] = bar
            yield bar

    results = _harness.run_all(_config(tmp_path, families, progress=recording_bar), {})
    assert list(bars) == [f.name for f in families]
    for family in families:
        bar = bars[family.name]
        trials = len(family.plan(PROFILES["quick"], 1 << 34).trials)
        assert bar.total == bar.n == 2 * trials, family.name
        assert bar.disable is True, family.name  # closed
        cells = results["measurements"][family.name]["cells"]  # type: ignore[index]
        assert {cell["status"] for cell in cells.values()} == {"ok"}, family.name


@pytest.mark.timeout(30)
def test_harness_closes_the_bar_when_a_family_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm")

    def broken_run_child(spec: dict[str, object], **kwargs: object) -> ChildOutcome:
        raise OSError("no child today")

    monkeypatch.setattr(_harness, "run_child", broken_run_child)
    bars: list[Any] = []

    @contextlib.contextmanager
    def recording_bar(name: str, total: int) -> Iterator[Bar]:
        with family_bar(name, total, file=_FakeTerminal()) as bar:
            bars.append(bar)
            yield bar

    with pytest.raises(OSError, match="no child today"):
        _harness.run_all(_config(tmp_path, [latency.FAMILY], progress=recording_bar), {})
    assert len(bars) == 1 and bars[0].disable is True


@pytest.mark.timeout(30)
def test_harness_runs_without_tqdm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    families = [latency.FAMILY, queuewait.FAMILY]
    monkeypatch.setattr(_harness, "run_child", _fake_run_child(families))
    # The default bar factory, as a run from the command line uses it.
    results = _harness.run_all(_config(tmp_path, families), {})
    for family in families:
        cells = results["measurements"][family.name]["cells"]  # type: ignore[index]
        assert {cell["status"] for cell in cells.values()} == {"ok"}, family.name
