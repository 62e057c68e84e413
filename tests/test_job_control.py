"""Per-job control: time limits, memory limits, cancelling a running job,
pool-wide kills, and lazy ``map`` (issue 13).

On the pipes backend every option stops one job and nothing else: the test
jobs around the stopped one run on other workers (or later on a new one) and
must finish untouched and run once. Waits are on files a job writes, never on
the clock, except where the passing of time is what is tested (a time limit),
and there the margins are seconds wide.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jobs
import pytest
from executor_fixtures import ANSWER_WITHIN, FAIL_WITHIN, POLL_SECONDS, MakeExecutor, pid_alive, wait_gone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hardening import _interrupt_at_line

from subproc_executor import JobTimeoutError, SubprocExecutor, WorkerDiedError, WorkerMemoryError

PIPES = pytest.mark.parametrize("variant", [("pipes", None)], ids=["pipes"], indirect=True)


def _gate(tmp_path: Path, name: str) -> tuple[str, str]:
    return str(tmp_path / f"{name}.started"), str(tmp_path / f"{name}.gate")


@PIPES
@pytest.mark.timeout(60)
def test_a_job_past_its_timeout_fails_alone(make_executor: MakeExecutor, tmp_path: Path) -> None:
    """The sibling started before the timed-out job and finishes after it: untouched, same worker."""
    ex = make_executor(2)
    sibling_pid_path, gate = str(tmp_path / "sibling.pid"), str(tmp_path / "gate")
    sibling = ex.submit(jobs.block_with_pid, sibling_pid_path, gate, "sibling done")
    sibling_pid = jobs.read_pid(sibling_pid_path)
    slow = ex.options(timeout=0.5).submit(jobs.getpid_then_sleep, str(tmp_path / "slow.pid"), 60)
    with pytest.raises(JobTimeoutError) as info:
        slow.result(ANSWER_WITHIN)
    err = info.value
    slow_pid = jobs.read_pid(tmp_path / "slow.pid")
    assert isinstance(err, TimeoutError)
    assert err.limit == 0.5 and err.pid == slow_pid and err.job_id is not None
    assert f"job {err.job_id}" in str(err) and "0.5s" in str(err) and str(slow_pid) in str(err)
    assert wait_gone({slow_pid}) == set()
    assert not sibling.done() and pid_alive(sibling_pid)
    Path(gate).touch()
    assert sibling.result(ANSWER_WITHIN) == "sibling done"
    # The pool is whole: a new worker took the dead one's place.
    assert sorted(ex.map(jobs.square, range(6))) == [0, 1, 4, 9, 16, 25]
    deadline = time.monotonic() + ANSWER_WITHIN
    while len(ex.statistics().worker_pids) != 2 and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)  # the sidecar reports its workers after replacing one
    assert len(ex.statistics().worker_pids) == 2 and slow_pid not in ex.statistics().worker_pids


@PIPES
@pytest.mark.timeout(60)
def test_the_timeout_counts_from_the_start_not_the_submit(make_executor: MakeExecutor) -> None:
    """Queued behind a 1.5 s job on the only worker, a 0.05 s job with a 1 s limit succeeds."""
    ex = make_executor(1, job_timeout=1.0)
    first = ex.options(timeout=None).submit(jobs.sleep_return, 1.5, "first")
    second = ex.submit(jobs.sleep_return, 0.05, "second")
    assert first.result(ANSWER_WITHIN) == "first"
    assert second.result(ANSWER_WITHIN) == "second"


@PIPES
@pytest.mark.timeout(120)
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    plan=st.lists(
        st.tuples(st.sampled_from([0.0, 3.0]), st.sampled_from([None, 1.0])), min_size=2, max_size=6
    )
)
def test_random_mixes_of_timeouts_fail_exactly_the_late_jobs_once(
    make_executor: MakeExecutor,
    tmp_path_factory: pytest.TempPathFactory,
    plan: list[tuple[float, float | None]],
) -> None:
    """Jobs either far under or far over their limit: each late one fails with
    JobTimeoutError, every other one returns, and each ran exactly once."""
    ledger = str(tmp_path_factory.mktemp("ledger") / "runs")
    ex = make_executor(2)
    futures = [
        ex.options(timeout=limit).submit(jobs.append_then_sleep, ledger, str(i), seconds)
        for i, (seconds, limit) in enumerate(plan)
    ]
    for i, ((seconds, limit), fut) in enumerate(zip(plan, futures, strict=True)):
        if limit is not None and seconds > limit:
            with pytest.raises(JobTimeoutError):
                fut.result(ANSWER_WITHIN)
        else:
            assert fut.result(ANSWER_WITHIN) == str(i)
    runs = Path(ledger).read_text().split()
    assert sorted(runs, key=int) == [str(i) for i in range(len(plan))], "a job ran twice or never"


@PIPES
@pytest.mark.timeout(60)
def test_cancel_running_stops_the_job_and_only_it(make_executor: MakeExecutor, tmp_path: Path) -> None:
    ex = make_executor(2, cancel_running=True)
    other_pid_path, other_gate = str(tmp_path / "other.pid"), str(tmp_path / "other.gate")
    other = ex.submit(jobs.block_with_pid, other_pid_path, other_gate, "other done")
    pid_path, gate = str(tmp_path / "victim.pid"), str(tmp_path / "victim.gate")
    victim = ex.submit(jobs.block_with_pid, pid_path, gate, "never")
    victim_pid = jobs.read_pid(pid_path)
    jobs.read_pid(other_pid_path)
    seen: list[cf.Future[object]] = []
    victim.add_done_callback(seen.append)
    assert victim.cancel() is True
    assert victim.cancelled() and victim.done() and seen == [victim]
    with pytest.raises(cf.CancelledError):
        victim.result(0)
    assert victim.cancel() is True  # again: still cancelled
    assert wait_gone({victim_pid}) == set(), "the cancelled job's worker still runs"
    Path(other_gate).touch()
    assert other.result(ANSWER_WITHIN) == "other done"
    assert ex.submit(jobs.square, 7).result(ANSWER_WITHIN) == 49
    assert ex.statistics().cancelled == 1


def _cancel_interrupted_at_every_line(
    new_future: Callable[[int], cf.Future[object]], check: Callable[[int], None]
) -> int:
    """Ctrl-C at the 1st, 2nd, ... line (ours or the stdlib's) that ``cancel()`` runs,
    on a new future each time, until a cancel runs to its end untouched. After each:
    either the future was not cancelled (a second cancel must do it) or it was, and
    its callbacks ran (an asyncio awaiter waits on one); then ``check(k)``. Returns
    how many cancels were interrupted."""

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("Ctrl-C during cancel()")

    interrupted = 0
    old = signal.signal(signal.SIGUSR1, on_signal)
    try:
        for k in range(1, 1000):
            fut = new_future(k)
            called: list[object] = []
            fut.add_done_callback(called.append)
            tracer = _interrupt_at_line(k, also=("concurrent/futures",))
            sys.settrace(tracer)
            try:
                fut.cancel()
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                sys.settrace(None)
            if not fut.cancelled():
                assert fut.cancel() is True
            assert called == [fut], f"interrupted at line {k} of cancel(), its callbacks never ran"
            check(k)
            if tracer.count[0] < k:  # type: ignore[attr-defined]
                return interrupted  # the whole cancel ran before line k: every line was tried
    finally:
        signal.signal(signal.SIGUSR1, old)
    raise AssertionError("cancel() never ran to its end untouched")


@PIPES
@pytest.mark.timeout(120)
def test_an_interrupt_at_every_line_of_cancel_never_leaves_a_cancelled_job_running(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    """A running job's cancel interrupted at each line: once cancelled, its job is
    stopped. On one worker the next job then runs; a cancelled job left running would
    hold the worker until its gate (never opened) times out."""
    ex = make_executor(1, cancel_running=True)

    def running(k: int) -> cf.Future[object]:
        pid_path = tmp_path / f"{k}.pid"
        fut = ex.submit(jobs.block_with_pid, str(pid_path), str(tmp_path / "never"), None)
        jobs.read_pid(pid_path)
        return fut

    def next_job_runs(k: int) -> None:
        assert ex.submit(jobs.square, k).result(FAIL_WITHIN) == k * k, (
            f"interrupted at line {k} of cancel(), the cancelled job still holds the only worker"
        )

    interrupted = _cancel_interrupted_at_every_line(running, next_job_runs)
    assert interrupted > 5, f"only {interrupted} cancels were interrupted: nothing much was tested"


@PIPES
@pytest.mark.timeout(120)
def test_an_interrupt_at_every_line_of_cancel_of_a_queued_job_still_runs_its_callbacks(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    """The same for a job still queued (behind one that holds the only worker): the
    stdlib's cancel marks the future, then runs its callbacks; Ctrl-C in between
    left a cancelled future whose callbacks never ran."""
    ex = make_executor(1, cancel_running=True)
    gate = tmp_path / "gate"
    blocker = ex.submit(jobs.block_with_pid, str(tmp_path / "blocker.pid"), str(gate), "done")
    jobs.read_pid(tmp_path / "blocker.pid")
    try:
        interrupted = _cancel_interrupted_at_every_line(lambda k: ex.submit(jobs.square, k), lambda k: None)
    finally:
        gate.touch()
    assert blocker.result(ANSWER_WITHIN) == "done"
    assert interrupted > 2, f"only {interrupted} cancels were interrupted: nothing much was tested"


@PIPES
@pytest.mark.timeout(60)
def test_without_cancel_running_cancel_keeps_the_stdlib_meaning(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_executor(1)
    pid_path, gate = str(tmp_path / "job.pid"), str(tmp_path / "gate")
    fut = ex.submit(jobs.block_with_pid, pid_path, gate, "done")
    jobs.read_pid(pid_path)
    assert fut.cancel() is False
    Path(gate).touch()
    assert fut.result(ANSWER_WITHIN) == "done"


@PIPES
@pytest.mark.timeout(60)
def test_cancelling_a_finished_job_returns_false(make_executor: MakeExecutor) -> None:
    ex = make_executor(1, cancel_running=True)
    fut = ex.submit(jobs.square, 3)
    assert fut.result(ANSWER_WITHIN) == 9
    assert fut.cancel() is False and not fut.cancelled()


@PIPES
@pytest.mark.timeout(60)
def test_wait_and_as_completed_see_a_running_job_cancelled(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_executor(1, cancel_running=True)
    pid_path, gate = str(tmp_path / "job.pid"), str(tmp_path / "gate")
    fut = ex.submit(jobs.block_with_pid, pid_path, gate)
    jobs.read_pid(pid_path)
    waiter = cf.ThreadPoolExecutor(1)
    try:
        waiting = waiter.submit(cf.wait, [fut], ANSWER_WITHIN, cf.FIRST_COMPLETED)
        completed = waiter.submit(lambda: list(cf.as_completed([fut], ANSWER_WITHIN)))
        assert fut.cancel()
        done, _ = waiting.result(ANSWER_WITHIN)
        assert done == {fut}
        assert completed.result(ANSWER_WITHIN) == [fut]
    finally:
        waiter.shutdown()


@PIPES
@pytest.mark.timeout(60)
def test_asyncio_cancellation_stops_the_running_job(make_executor: MakeExecutor, tmp_path: Path) -> None:
    ex = make_executor(1)
    view = ex.options(cancel_running=True)
    pid_path, gate = str(tmp_path / "job.pid"), str(tmp_path / "gate")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(loop.run_in_executor(view, jobs.block_with_pid, pid_path, gate))
        pid = await loop.run_in_executor(None, jobs.read_pid, pid_path)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gone = await loop.run_in_executor(None, wait_gone, {pid})
        assert gone == set(), "asyncio cancelled the task but the job still runs"

    asyncio.run(main())
    assert ex.submit(jobs.square, 5).result(ANSWER_WITHIN) == 25


@PIPES
@pytest.mark.timeout(60)
def test_a_job_past_its_memory_limit_fails_alone(make_executor: MakeExecutor, tmp_path: Path) -> None:
    ex = make_executor(2)
    other_pid_path, gate = str(tmp_path / "other.pid"), str(tmp_path / "gate")
    other = ex.submit(jobs.block_with_pid, other_pid_path, gate, "other done")
    other_pid = jobs.read_pid(other_pid_path)
    limit = 150 << 20
    hog = ex.options(memory_limit=limit).submit(jobs.hold_memory, 400 << 20, str(tmp_path / "hog.pid"))
    with pytest.raises(WorkerMemoryError) as info:
        hog.result(ANSWER_WITHIN)
    err = info.value
    assert isinstance(err, WorkerDiedError)
    assert err.limit == limit and err.peak is not None and err.peak > limit
    assert f"{limit:,}" in str(err) and str(err.pid) in str(err)
    assert pid_alive(other_pid)
    Path(gate).touch()
    assert other.result(ANSWER_WITHIN) == "other done"
    assert ex.submit(jobs.square, 4).result(ANSWER_WITHIN) == 16


@PIPES
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["kill_workers", "terminate_workers"])
def test_pool_wide_kill_leaves_no_process_and_ends_every_future(
    make_executor: MakeExecutor, tmp_path: Path, how: str
) -> None:
    ex = make_executor(2)
    running = [
        ex.submit(jobs.block_with_pid, str(tmp_path / f"r{i}.pid"), str(tmp_path / "gate")) for i in range(2)
    ]
    pids = {jobs.read_pid(tmp_path / f"r{i}.pid") for i in range(2)}
    queued = [ex.submit(jobs.square, i) for i in range(5)]
    sidecar = ex.statistics().sidecar_pid
    getattr(ex, how)()
    _, not_done = cf.wait(running + queued, FAIL_WITHIN)
    assert not not_done, "a future never ended after " + how
    for fut in running:
        assert isinstance(fut.exception(0), cf.process.BrokenProcessPool)
    assert all(f.cancelled() or f.exception(0) is not None or f.result(0) is not None for f in queued)
    assert wait_gone(pids | {sidecar}) == set()
    with pytest.raises(RuntimeError):
        ex.submit(jobs.square, 1)


@pytest.mark.parametrize("backend", ["process", "loky"])
@pytest.mark.parametrize(
    "option", [{"job_timeout": 1.0}, {"memory_limit": 1 << 30}, {"cancel_running": True}]
)
def test_backends_that_cannot_stop_one_job_refuse_the_options(
    backend: str, option: dict[str, object]
) -> None:
    if backend == "loky":
        pytest.importorskip("loky")
    with pytest.raises(ValueError, match="backend='pipes'"):
        SubprocExecutor(1, backend=backend, **option)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_options_on_a_process_pool_are_refused() -> None:
    with SubprocExecutor(1, backend="process") as ex:
        with pytest.raises(ValueError, match="backend='pipes'"):
            ex.options(timeout=1)
        assert ex.options(timeout=None).submit(jobs.square, 2).result(ANSWER_WITHIN) == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": "1"},
        {"memory_limit": 0},
        {"memory_limit": 1.5},
        {"cancel_running": 1},
    ],
)
def test_bad_options_are_refused_with_a_clear_error(kwargs: dict[str, object]) -> None:
    with SubprocExecutor(1) as ex, pytest.raises((ValueError, TypeError)):
        ex.options(**kwargs)  # type: ignore[arg-type]


@PIPES
@pytest.mark.timeout(60)
def test_an_options_view_is_an_executor_whose_shutdown_leaves_the_pool(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_executor(2)
    view = ex.options(timeout=30)
    assert isinstance(view, cf.Executor)
    with view:
        assert list(view.map(jobs.square, range(4))) == [0, 1, 4, 9]
        fut = view.submit(jobs.sleep_return, 0.2, "late")
    assert fut.done() and fut.result() == "late"  # the with block waited for it
    with pytest.raises(RuntimeError):
        view.submit(jobs.square, 1)
    assert ex.submit(jobs.square, 3).result(ANSWER_WITHIN) == 9  # the pool lives on


@PIPES
@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_with_buffersize_reads_an_endless_input_lazily(
    make_executor: MakeExecutor, tmp_path: Path, chunksize: int
) -> None:
    ex = make_executor(2)
    consumed = str(tmp_path / "consumed")
    results = ex.map(jobs.square, jobs.count_into(consumed), chunksize=chunksize, buffersize=2)
    first = list(itertools.islice(results, 5))
    assert first == [0, 1, 4, 9, 16]
    taken = len(Path(consumed).read_text().split())
    # The chunks the consumer took from, and at most 2 more: never 3 (gh-131466).
    chunks_taken = -(-5 // chunksize)
    assert taken <= (chunks_taken + 2) * chunksize
    results.close()  # cancels what is in flight


@PIPES
@pytest.mark.timeout(60)
def test_map_buffersize_is_validated(make_executor: MakeExecutor) -> None:
    ex = make_executor(1)
    with pytest.raises(ValueError):
        ex.map(jobs.square, range(3), buffersize=0)
    with pytest.raises(TypeError):
        ex.map(jobs.square, range(3), buffersize=1.5)  # type: ignore[arg-type]
    assert list(ex.map(jobs.square, range(7), buffersize=3, chunksize=2)) == [i * i for i in range(7)]


def test_job_timeout_error_pickles_with_its_fields() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(JobTimeoutError("late", job_id=3, limit=0.5, pid=42)))
    assert (str(err), err.job_id, err.limit, err.pid) == ("late", 3, 0.5, 42)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["shutdown", "kill_workers"])
def test_waiters_see_queued_jobs_cancelled_by_a_shutdown(tmp_path: Path, how: str) -> None:
    """ProcessPoolExecutor leaves futures cancelled by shutdown(cancel_futures=True)
    unnotified: wait() and as_completed() on them wait for ever. Here they end."""
    with SubprocExecutor(1) as ex:
        pid_path, gate = str(tmp_path / "job.pid"), str(tmp_path / "gate")
        first = ex.submit(jobs.block_with_pid, pid_path, gate)
        jobs.read_pid(pid_path)
        try:
            # The first two fill the window (max_workers + 1 in flight); the rest wait here.
            queued = [ex.submit(jobs.square, i) for i in range(5)]
            if how == "shutdown":
                ex.shutdown(wait=False, cancel_futures=True)
            else:
                ex.kill_workers()
            cancelled = [f for f in queued if f.cancelled()]
            assert len(cancelled) >= 3
            _, not_done = cf.wait(cancelled, FAIL_WITHIN)
            assert not not_done
            assert set(cf.as_completed(cancelled, FAIL_WITHIN)) == set(cancelled)
        finally:
            Path(gate).touch()
        cf.wait([first, *queued], FAIL_WITHIN)


@PIPES
@pytest.mark.timeout(60)
def test_a_worker_grown_past_a_limit_by_an_earlier_job_is_replaced_before_the_limited_job(
    make_executor: MakeExecutor,
) -> None:
    """The limited job is not blamed for memory an earlier job left behind: it runs, once,
    on a fresh worker."""
    ex = make_executor(1)
    bloated = ex.submit(jobs.keep_memory, 300 << 20).result(ANSWER_WITHIN)
    pid = ex.options(memory_limit=150 << 20).submit(jobs.getpid).result(ANSWER_WITHIN)
    assert pid != bloated
    assert wait_gone({bloated}) == set()


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_an_endless_timeout_is_refused(bad: float) -> None:
    """A non-finite limit cannot be sent to the sidecar (JSON has no inf): refused here."""
    with pytest.raises(ValueError, match="finite"):
        SubprocExecutor(1, job_timeout=bad)


@PIPES
@pytest.mark.timeout(60)
def test_a_view_shutdown_waits_for_and_cancels_only_its_own_jobs(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    """The view's shutdown covers map() jobs too, holds no weak references (jobs
    whose futures the caller dropped are still waited for), and cancel_futures
    cancels only the view's queued jobs, at once for waiters."""
    ex = make_executor(1)
    pid_path, gate = str(tmp_path / "blocker.pid"), str(tmp_path / "gate")
    blocker = ex.submit(jobs.block_with_pid, pid_path, gate, "blocker")
    jobs.read_pid(pid_path)
    outside = [ex.submit(jobs.square, 2) for _ in range(3)]
    view = ex.options(timeout=30)
    mapped = view.map(jobs.square, range(3))
    view.submit(jobs.square, 4)  # future dropped by the caller
    view.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(RuntimeError):
        view.submit(jobs.square, 1)
    with pytest.raises(cf.CancelledError):
        list(mapped)
    Path(gate).touch()
    assert blocker.result(ANSWER_WITHIN) == "blocker"
    assert [f.result(ANSWER_WITHIN) for f in outside] == [4, 4, 4]  # the pool's own jobs ran
