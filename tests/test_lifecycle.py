"""Lifecycle: warm start, quiesce and wake up,
idle timeout, slow-job reports, statistics, the sidecar's output, nesting.

Each test waits on state it can observe (``statistics()``, files a job
writes, log records, captured output) with a deadline, never on the clock.
Tests whose behaviour lives in the sidecar's main loop or in the parent, and
not in a backend, run on one or two variants only, to keep the module quick
on a 2-core machine; each says why.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import jobs
import psutil
import pytest
from executor_fixtures import (
    ANSWER_WITHIN,
    ONLY_PROCESS_FORK,
    POLL_SECONDS,
    TWO_VARIANTS,
    MakeExecutor,
    pid_alive,
    wait_gone,
)

from subproc_executor import ExecutorStatistics, SlowJobReport, SubprocExecutor, WorkerDiedError

T = TypeVar("T")

# A hung test fails well before the global 120 s: nothing here should take
# more than a few seconds.
pytestmark = pytest.mark.timeout(60)



def wait_for(predicate: Callable[[], T], what: str, timeout: float = ANSWER_WITHIN) -> T:
    """Poll ``predicate`` until it returns something truthy; return that. Fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_SECONDS)


def wait_stats(
    ex: SubprocExecutor, predicate: Callable[[ExecutorStatistics], bool], what: str
) -> ExecutorStatistics:
    """Poll ``ex.statistics()`` until ``predicate`` holds; return that snapshot."""

    def check() -> ExecutorStatistics | None:
        stats = ex.statistics()
        return stats if predicate(stats) else None

    return wait_for(check, what)


def wait_warm(ex: SubprocExecutor, n: int) -> tuple[int, ...]:
    """The worker pids, once the sidecar has reported ``n`` of them and is not quiesced."""
    stats = wait_stats(
        ex, lambda s: len(s.worker_pids) == n and not s.quiesced, f"{n} workers to be reported"
    )
    return stats.worker_pids


def wait_quiesced(ex: SubprocExecutor) -> ExecutorStatistics:
    return wait_stats(ex, lambda s: s.quiesced, "the executor to report it is quiesced")


def sidecar_descendants(ex: SubprocExecutor) -> set[int]:
    pid = ex.statistics().sidecar_pid
    assert pid is not None
    return {p.pid for p in psutil.Process(pid).children(recursive=True)}


# -- warm start ---------------------------------------------------------------------


def test_workers_start_before_the_first_job(make_executor: MakeExecutor) -> None:
    # The constructor starts the sidecar and returns; the sidecar then starts
    # the workers on its own (warm start) and reports their pids in HELLO. No
    # assertion on how long the constructor took: that is a timing claim.
    ex = make_executor(2)
    pids = wait_warm(ex, 2)
    stats = ex.statistics()
    assert stats.submitted == 0
    assert all(pid_alive(pid) for pid in pids)
    # They are the sidecar's workers, not some other process's.
    assert set(pids) <= sidecar_descendants(ex)
    # The first job runs on one of them: none had to be started for it.
    assert ex.submit(jobs.getpid).result(timeout=60) in pids


# -- quiesce and wake up ------------------------------------------------------------


def test_quiesce_releases_the_workers_and_the_next_job_starts_new_ones(make_executor: MakeExecutor) -> None:
    ex = make_executor(2)
    old = wait_warm(ex, 2)
    assert ex.submit(jobs.square, 3).result(timeout=60) == 9
    sidecar = ex.statistics().sidecar_pid

    ex.quiesce()
    stats = wait_quiesced(ex)
    assert stats.worker_pids == ()
    assert not wait_gone(set(old)), "quiesce left workers running"
    assert stats.sidecar_pid == sidecar and pid_alive(sidecar), "quiesce keeps the sidecar"

    pid = ex.submit(jobs.getpid).result(timeout=60)
    assert pid not in old
    stats = wait_stats(ex, lambda s: not s.quiesced and len(s.worker_pids) == 2, "the pool to be back")
    assert pid in stats.worker_pids
    assert stats.sidecar_pid == sidecar
    assert stats.sidecar_starts == 1


def test_wakeup_after_quiesce_starts_workers_without_a_job(make_executor: MakeExecutor) -> None:
    ex = make_executor(2)
    old = wait_warm(ex, 2)
    ex.quiesce()
    wait_quiesced(ex)
    assert not wait_gone(set(old))

    ex.wakeup()
    new = wait_warm(ex, 2)
    assert not set(new) & set(old)
    assert all(pid_alive(pid) for pid in new)
    assert ex.statistics().submitted == 0
    assert ex.submit(jobs.getpid).result(timeout=60) in new


# WAKEUP handling is the sidecar's, the same for every backend.
@ONLY_PROCESS_FORK
def test_wakeup_when_awake_is_harmless(make_executor: MakeExecutor) -> None:
    ex = make_executor(2)
    pids = wait_warm(ex, 2)
    ex.wakeup()
    assert ex.submit(jobs.getpid).result(timeout=60) in pids
    assert ex.statistics().worker_pids == pids


# The idle timer runs in the sidecar's main loop, the same for every backend;
# the backend's quiesce and start are covered on all variants above.
@TWO_VARIANTS
def test_idle_timeout_quiesces_by_itself_and_the_next_job_wakes_it(make_executor: MakeExecutor) -> None:
    ex = make_executor(2, idle_timeout=0.5)
    assert ex.submit(jobs.square, 4).result(timeout=60) == 16
    # No call from us: idling alone releases the workers.
    stats = wait_quiesced(ex)
    assert stats.worker_pids == ()
    sidecar = stats.sidecar_pid

    pid = ex.submit(jobs.getpid).result(timeout=60)
    assert ex.submit(jobs.square, 5).result(timeout=60) == 25
    # It idles again, and quiesces again, on the same sidecar.
    stats = wait_quiesced(ex)
    assert not wait_gone({pid})
    assert stats.sidecar_pid == sidecar
    assert stats.sidecar_starts == 1


def test_jobs_submitted_while_quiescing_are_not_lost(make_executor: MakeExecutor) -> None:
    ex = make_executor(2)
    wait_warm(ex, 2)
    ex.quiesce()
    futures = [ex.submit(jobs.square, i) for i in range(20)]
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(20)]
    stats = ex.statistics()
    assert (stats.done, stats.failed, stats.running, stats.queued) == (20, 0, 0, 0)


# A regression test for the kind of bug PyTorch's SubprocPool had
# (pytorch/pytorch#176968, #183884): a pool that works after one quiesce but
# loses jobs or hangs after several.
def test_repeated_quiesce_wakeup_cycles_keep_serving(make_executor: MakeExecutor) -> None:
    ex = make_executor(2)
    seen = set(wait_warm(ex, 2))
    for cycle in range(5):
        ex.quiesce()
        wait_quiesced(ex)
        ex.wakeup()
        pids = wait_warm(ex, 2)
        assert not set(pids) & seen, f"cycle {cycle}: a worker survived its quiesce"
        seen |= set(pids)
        assert ex.submit(jobs.add, cycle, 100).result(timeout=60) == cycle + 100
    stats = ex.statistics()
    assert stats.sidecar_starts == 1
    assert (stats.done, stats.failed) == (5, 0)


def test_quiesce_wakeup_and_submit_back_to_back(make_executor: MakeExecutor) -> None:
    # The same, without waiting for either transition: the sidecar sees the
    # frames in one burst and must still end up serving.
    ex = make_executor(2)
    wait_warm(ex, 2)
    for cycle in range(5):
        ex.quiesce()
        ex.wakeup()
        assert ex.submit(jobs.add, cycle, 1).result(timeout=60) == cycle + 1
    ex.quiesce()
    fut = ex.submit(jobs.square, 7)
    assert fut.result(timeout=60) == 49


# The check is the parent's, the same for every backend.
@ONLY_PROCESS_FORK
def test_quiesce_and_wakeup_after_shutdown_raise(make_executor: MakeExecutor) -> None:
    ex = make_executor(1)
    ex.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.quiesce()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.wakeup()


# -- slow-job reports -------------------------------------------------------------------


def test_a_slow_job_is_reported_and_its_future_is_unaffected(
    make_executor: MakeExecutor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="subproc_executor")
    reports: list[SlowJobReport] = []
    ex = make_executor(2, status_interval=0.2, on_status=reports.append)
    gate = tmp_path / "gate"
    fut = ex.submit(jobs.block_with_pid, str(tmp_path / "pid"), str(gate), "slow")
    pid = jobs.read_pid(tmp_path / "pid", ANSWER_WITHIN)

    report = wait_for(lambda: next((r for r in list(reports) if r.pid == pid), None), "a slow-job report")
    assert isinstance(report, SlowJobReport)
    assert report.elapsed >= 0.2
    assert not fut.done(), "a report must not touch the future"
    wait_for(
        lambda: any(
            r.levelno == logging.WARNING
            and r.name.startswith("subproc_executor")
            and str(pid) in r.getMessage()
            for r in list(caplog.records)
        ),
        "a WARNING naming the worker pid",
    )
    gate.touch()
    assert fut.result(timeout=60) == "slow"
    stats = ex.statistics()
    assert (stats.done, stats.failed) == (1, 0)


# Reports come from the sidecar's timer, whatever the backend: one variant.
@ONLY_PROCESS_FORK
def test_fast_jobs_are_not_reported(make_executor: MakeExecutor, tmp_path: Path) -> None:
    reports: list[SlowJobReport] = []
    # An interval far above what a no-op takes, so only a real bug reports one.
    ex = make_executor(2, status_interval=1.0, on_status=reports.append)
    assert [f.result(timeout=60) for f in [ex.submit(jobs.identity, i) for i in range(50)]] == list(range(50))
    # A sentinel: STATUS frames come in the order the sidecar's timer makes
    # them, so once the sentinel's report is here, any report about the fast
    # jobs would be here too.
    gate = tmp_path / "gate"
    fut = ex.submit(jobs.block_with_pid, str(tmp_path / "pid"), str(gate), "sentinel")
    pid = jobs.read_pid(tmp_path / "pid", ANSWER_WITHIN)
    wait_for(lambda: any(r.pid == pid for r in list(reports)), "the sentinel's report")
    gate.touch()
    assert fut.result(timeout=60) == "sentinel"
    assert len({r.job_id for r in reports}) == 1, f"fast jobs were reported: {reports}"


# -- statistics ---------------------------------------------------------------------------


# The counters are the parent's bookkeeping, the same for every backend.
@ONLY_PROCESS_FORK
def test_statistics_count_a_mix_of_jobs(make_executor: MakeExecutor, tmp_path: Path) -> None:
    ex = make_executor(1)
    stats = ex.statistics()
    assert stats.state == "running"
    assert stats.sidecar_starts == 1
    assert stats.sidecar_pid is not None and pid_alive(stats.sidecar_pid)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.done = 5  # type: ignore[misc]

    gate = tmp_path / "gate"
    blocker = ex.submit(jobs.block_with_pid, str(tmp_path / "pid"), str(gate), "blocker")
    jobs.read_pid(tmp_path / "pid", ANSWER_WITHIN)
    # Fill the window exactly (it adapts, but only when jobs finish, and none
    # can while the blocker holds the only worker): what follows stays queued
    # in the parent, where cancel() works.
    window = ex._core.table.window
    fill = [ex.submit(jobs.square, 10) for _ in range(window - 1)]
    good = [ex.submit(jobs.square, i) for i in range(5)]
    bad = [ex.submit(jobs.raise_value_error, f"bad {i}") for i in range(2)]
    queued = [ex.submit(jobs.square, 99) for _ in range(3)]
    assert not any(f.running() for f in good + bad + queued)
    assert all(f.cancel() for f in queued)

    stats = ex.statistics()
    assert stats.submitted == window + 10
    assert stats.running == window
    assert stats.queued == 7
    assert stats.cancelled == 3

    gate.touch()
    assert blocker.result(timeout=60) == "blocker"
    assert [f.result(timeout=60) for f in good] == [0, 1, 4, 9, 16]
    for f in bad:
        with pytest.raises(ValueError):
            f.result(timeout=60)
    assert [f.result(timeout=60) for f in fill] == [100] * len(fill)

    stats = ex.statistics()
    assert stats.submitted == window + 10
    assert stats.done == 1 + 5 + len(fill)
    assert stats.failed == 2
    assert stats.cancelled == 3
    assert (stats.queued, stats.running) == (0, 0)
    assert stats.sidecar_starts == 1 and stats.sidecar_restarts == 0
    assert stats.state == "running"

    ex.shutdown(wait=True)
    stats = ex.statistics()
    assert stats.state == "closed"
    assert stats.sidecar_pid is None
    assert stats.done == 1 + 5 + len(fill)


# -- the sidecar's output ---------------------------------------------------------------


def test_worker_output_reaches_the_parents_stderr(
    make_executor: MakeExecutor, capfd: pytest.CaptureFixture[str]
) -> None:
    marker = f"lifecycle-marker-{uuid.uuid4().hex}"
    ex = make_executor(1)
    assert ex.submit(jobs.print_to_stderr, marker).result(timeout=60) == marker
    # The parent's reader thread copies the sidecar's output to fd 2, in its
    # own time: poll what was captured.
    seen: list[str] = []

    def marker_seen() -> bool:
        seen.append(capfd.readouterr().err)
        return marker in "".join(seen)

    wait_for(marker_seen, "the job's stderr line in the parent's stderr")


def test_log_path_takes_the_output_instead_of_stderr(
    make_executor: MakeExecutor, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    marker = f"lifecycle-marker-{uuid.uuid4().hex}"
    log = tmp_path / "x.log"
    ex = make_executor(1, log_path=log)
    assert ex.submit(jobs.print_to_stderr, marker).result(timeout=60) == marker
    wait_for(lambda: log.exists() and marker in log.read_text(errors="replace"), "the marker in the log file")
    ex.shutdown(wait=True)
    assert marker not in capfd.readouterr().err


# -- nesting ---------------------------------------------------------------------------


# Every variant: each start method hands the sidecar's environment (the
# guard variable included) to its workers differently.
def test_a_job_can_use_its_own_executor(make_executor: MakeExecutor) -> None:
    ex = make_executor(1)
    assert ex.submit(jobs.nested_square, 12).result(timeout=120) == 144
    # The outer executor is unharmed.
    assert ex.submit(jobs.square, 3).result(timeout=60) == 9


def test_an_executor_cannot_be_built_inside_the_sidecar(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the sidecar's environment looks like from the sidecar itself.
    monkeypatch.setenv("SUBPROC_EXECUTOR_SIDECAR_PID", str(os.getpid()))
    with pytest.raises(RuntimeError, match="sidecar"):
        SubprocExecutor(1)


# -- fork safety ----------------------------------------------------------------------------


needs_fork_warning = pytest.mark.skipif(
    sys.version_info < (3, 12),
    reason="CPython warns about fork() in a multi-threaded process only from 3.12",
)
FORK_WARNING = "is multi-threaded, use of fork() may lead to deadlocks"


def _fork_executor_with_warnings(
    make_executor: MakeExecutor, monkeypatch: pytest.MonkeyPatch, log: Path
) -> SubprocExecutor:
    # DeprecationWarning is hidden by default outside __main__: show it in the
    # sidecar and the workers (they take the environment at construction).
    monkeypatch.setenv("PYTHONWARNINGS", "always::DeprecationWarning")
    return make_executor(2, log_path=log)


def _assert_warnings_reach_the_log(ex: SubprocExecutor, log: Path) -> None:
    """Control: a DeprecationWarning raised in a worker shows up in the log,
    so the absence of the fork warning means something."""
    marker = f"lifecycle-deprecation-{uuid.uuid4().hex}"
    assert ex.submit(jobs.warn_deprecation, marker).result(timeout=60) == marker
    wait_for(lambda: marker in log.read_text(errors="replace"), "the control warning in the log")


def _assert_forked_single_threaded(ex: SubprocExecutor, log: Path, pids: tuple[int, ...]) -> None:
    """The pool serves from ``pids``, warnings do reach the log, and none of
    them is CPython's warning about forking a multi-threaded process."""
    assert ex.submit(jobs.getpid).result(timeout=60) in pids
    _assert_warnings_reach_the_log(ex, log)
    ex.shutdown(wait=True)
    text = log.read_text(errors="replace")
    assert FORK_WARNING not in text, text


@needs_fork_warning
@ONLY_PROCESS_FORK
def test_sidecar_forks_its_first_workers_single_threaded(
    make_executor: MakeExecutor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = tmp_path / "sidecar.log"
    ex = _fork_executor_with_warnings(make_executor, monkeypatch, log)
    _assert_forked_single_threaded(ex, log, wait_warm(ex, 2))


# Found while writing the test above: the sidecar used to fork the woken
# pool while its writer's helper thread was alive.
@needs_fork_warning
@ONLY_PROCESS_FORK
def test_sidecar_forks_woken_workers_single_threaded(
    make_executor: MakeExecutor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = tmp_path / "sidecar.log"
    ex = _fork_executor_with_warnings(make_executor, monkeypatch, log)
    wait_warm(ex, 2)
    ex.quiesce()
    wait_quiesced(ex)
    ex.wakeup()
    _assert_forked_single_threaded(ex, log, wait_warm(ex, 2))


# The other way a new pool is forked: a reset after a worker crash, while
# the old pool's threads and the writer's helper thread may be alive.
@needs_fork_warning
@ONLY_PROCESS_FORK
def test_sidecar_forks_the_pool_that_replaces_a_broken_one_single_threaded(
    make_executor: MakeExecutor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = tmp_path / "sidecar.log"
    ex = _fork_executor_with_warnings(make_executor, monkeypatch, log)
    old = set(wait_warm(ex, 2))
    with pytest.raises(WorkerDiedError):
        ex.submit(jobs.kill_self).result(timeout=60)
    wait_for(lambda: not set(ex.statistics().worker_pids) & old, "the replacement pool")
    _assert_forked_single_threaded(ex, log, wait_warm(ex, 2))
