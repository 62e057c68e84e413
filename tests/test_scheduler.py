"""The sidecar's job bookkeeping (subproc_executor.sidecar.scheduler), on its own.

No processes: batches are handed out and reported by hand, crashes are
simulated with exit codes, and the judgement of each job (requeued, failed,
quarantined) is checked against the rules in the module's docstring.
"""

from __future__ import annotations

import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subproc_executor.sidecar.scheduler import MAX_BATCH_BYTES, MAX_CRASH_RETRIES, Scheduler, culprit
from subproc_executor.wire.messages import JobError, JobErrorKind, JobLimits

KILLED = -signal.SIGKILL
TERMINATED = -signal.SIGTERM


def _scheduler(workers: int = 2, jobs: int = 0, max_batch_jobs: int = 64) -> Scheduler:
    s = Scheduler(workers, max_batch_jobs=max_batch_jobs)
    for i in range(1, jobs + 1):
        s.add(i, b"x")
    return s


def test_keeps_at_most_max_workers_plus_one_batches_in_the_backend() -> None:
    s = _scheduler(workers=2, jobs=2)
    batches = s.next_batches()
    assert [b.job_ids for b in batches] == [[1], [2]]
    s.add(3, b"x")
    s.add(4, b"x")
    (third,) = s.next_batches()
    assert third.job_ids == [3, 4]  # one free place, two waiting: grouped
    s.add(5, b"x")
    assert s.next_batches() == []  # depth 3 reached
    s.done(batches[0])
    assert [b.job_ids for b in s.next_batches()] == [[5]]


@given(st.integers(1, 8), st.integers(1, 500), st.integers(1, 64))
def test_batches_cover_every_job_once_in_order(workers: int, jobs: int, max_batch: int) -> None:
    s = _scheduler(workers, jobs, max_batch)
    seen: list[int] = []
    while True:
        batches = s.next_batches()
        if not batches:
            break
        for b in batches:
            assert 1 <= len(b.jobs) <= max_batch
            seen += b.job_ids
            s.done(b)
    assert seen == list(range(1, jobs + 1))
    assert s.idle


def test_big_payloads_are_not_grouped_past_the_byte_limit() -> None:
    s = Scheduler(1, max_batch_jobs=64)
    for i in range(1, 11):
        s.add(i, b"x" * (MAX_BATCH_BYTES // 2))
    for b in s.next_batches():
        assert sum(len(p) for p in b.payloads) <= MAX_BATCH_BYTES + MAX_BATCH_BYTES // 2


def test_cancel_drops_only_a_waiting_job() -> None:
    s = _scheduler(workers=1, jobs=1)
    assert len(s.next_batches()) == 1
    s.add(2, b"x")
    assert not s.cancel(1)  # already in the backend
    assert s.cancel(2)
    assert not s.cancel(2)


def test_culprit_is_the_one_worker_that_died_of_its_own_accord() -> None:
    assert culprit({1: KILLED, 2: TERMINATED, 3: None}) == (1, KILLED)
    assert culprit({1: KILLED, 2: KILLED}) is None  # two: cannot tell
    assert culprit({1: 0, 2: TERMINATED}) is None  # retired and terminated: nobody
    assert culprit({}) is None


def test_the_running_job_of_the_culprit_fails_and_the_rest_are_requeued() -> None:
    s = Scheduler(0, max_batch_jobs=3)  # depth 1: one batch takes every waiting job
    for i in (1, 2, 3):
        s.add(i, b"x")
    (batch,) = s.next_batches()
    assert batch.job_ids == [1, 2, 3]
    s.started(1, 100, 0.0)
    s.started(2, 100, 1.0)  # job 1 finished, job 2 ran when the worker died
    failures = s.failed(batch, {100: KILLED}, "boom")
    assert [f.job_id for f in failures] == [2]
    assert failures[0].error.kind is JobErrorKind.WORKER_DIED
    assert failures[0].error.pid == 100 and failures[0].error.exitcode == KILLED
    # 1 (whose result was lost) and 3 (never started) run again, first.
    s.new_generation()
    s.add(4, b"x")
    (again,) = s.next_batches()
    assert again.job_ids == [1, 3, 4]


def test_collateral_jobs_are_requeued_and_a_suspect_runs_alone() -> None:
    s = _scheduler(workers=2, jobs=2)
    a, b = s.next_batches()
    s.started(1, 100, 0.0)
    s.started(2, 200, 0.0)
    # The pool broke and both workers are gone with SIGKILL: nobody can tell.
    codes = {100: KILLED, 200: KILLED}
    assert s.failed(a, codes, "broke") == []
    assert s.failed(b, codes, "broke") == []
    s.new_generation()
    s.add(3, b"x")
    (first,) = s.next_batches()  # a suspect runs alone, with nothing beside it
    assert first.quarantine and first.job_ids in ([1], [2])
    assert s.next_batches() == []
    (suspect,) = first.job_ids
    s.started(suspect, 300, 0.0)
    (failure,) = s.failed(first, {300: KILLED}, "again")
    assert failure.job_id == suspect and "ran alone" in failure.error.message


def test_a_job_that_keeps_killing_workers_fails_after_the_retry_limit() -> None:
    s = _scheduler(workers=2, jobs=1)
    for attempt in range(MAX_CRASH_RETRIES + 1):
        (batch,) = s.next_batches()
        s.started(1, 1000 + attempt, 0.0)
        # Two workers died each time, so the culprit is never named outright.
        failures = s.failed(batch, {1000 + attempt: KILLED, 2000 + attempt: KILLED}, "boom")
        s.new_generation()
        if batch.quarantine:
            assert [f.job_id for f in failures] == [1]
            return
    pytest.fail("the job was never failed")


def test_a_crash_without_start_records_is_not_retried_forever() -> None:
    """A backend that does not pass ``config.notify`` gives the sidecar no start
    records. A job that keeps killing its worker must still fail after a bounded
    number of tries, as it does with records, instead of looping."""
    scheduler = Scheduler(max_workers=1, max_batch_jobs=64)
    scheduler.add(1, b"job bytes")
    for _ in range(MAX_CRASH_RETRIES + 2):
        (batch,) = scheduler.next_batches()
        if scheduler.failed(batch, {4242: KILLED}, "RuntimeError: worker died"):
            return
        scheduler.new_generation()
    pytest.fail(f"job 1 was requeued {MAX_CRASH_RETRIES + 2} times and never failed")


def test_overdue_reports_each_interval_once() -> None:
    s = _scheduler(workers=1, jobs=1)
    s.next_batches()
    s.started(1, 77, 10.0)
    assert s.overdue(10.5, 1.0) == []
    assert s.overdue(11.2, 1.0) == [(1, pytest.approx(1.2), 77)]
    assert s.overdue(11.9, 1.0) == []
    assert [r[0] for r in s.overdue(12.1, 1.0)] == [1]
    assert s.running_pids() == {1: 77}


def test_a_job_reported_early_leaves_its_batch_and_is_never_rerun() -> None:
    """job_done takes a job out of its batch: a later failure of the batch judges only
    the rest, and the job is not in the backend any more."""
    sched = Scheduler(1, max_batch_jobs=8)
    for job_id in (1, 2, 3):
        sched.add(job_id, b"x")
    sched.depth = 1
    (batch,) = sched.next_batches()
    assert batch.job_ids == [1, 2, 3]
    sched.started(1, 100, 0.0)
    assert sched.job_done(batch, 1)
    assert not sched.job_done(batch, 1)
    assert batch.job_ids == [2, 3]
    sched.started(2, 100, 1.0)
    assert sched.running_pids() == {2: 100}
    failures = sched.failed(batch, {100: -9}, "WorkerDiedError: pid 100")
    assert [f.job_id for f in failures] == [2]
    requeued = sched.next_batches()
    assert [b.job_ids for b in requeued] == [[3]]


# -- stopping jobs on purpose (sidecar.limits drives these) -----------------------------


def _cancel(job_id: int) -> JobError:
    return JobError(JobErrorKind.CANCELLED, f"job {job_id} was cancelled")


def test_a_waiting_job_stopped_is_dropped() -> None:
    s = _scheduler(workers=1, jobs=2)
    s.next_batches()  # jobs 1 and 2 go to the backend
    s.add(3, b"x")
    assert s.kill(3, _cancel(3)) == ("dropped", None)
    assert s.has_waiting() is False


def test_a_running_job_stopped_fails_with_its_error_and_its_batch_mates_rerun_without_blame() -> None:
    s = Scheduler(1, max_batch_jobs=64)
    for i in range(1, 7):
        s.add(i, b"x", JobLimits(timeout=1.0))
    batch, _ = s.next_batches()  # two places in the backend: [1, 2, 3] and [4, 5, 6]
    assert batch.job_ids == [1, 2, 3]
    assert s.started(1, 100, 0.0) is None
    assert s.job_done(batch, 1)
    assert s.started(2, 100, 5.0) is None
    ((job_id, error),) = s.expired(6.5)
    assert job_id == 2 and error.kind is JobErrorKind.TIMEOUT and error.pid == 100 and error.limit == 1.0
    assert s.kill(job_id, error) == ("running", 100)
    assert s.expired(7.0) == []  # decided once
    (failure,) = s.failed(batch, {100: KILLED}, "WorkerDiedError", died_pid=100)
    assert failure.job_id == 2 and failure.error.kind is JobErrorKind.TIMEOUT
    assert failure.error.exitcode == KILLED
    (again,) = s.next_batches()
    assert again.job_ids == [3] and not again.quarantine
    assert again.jobs[0].crash_retries == 0 and again.jobs[0].kill is None


def test_a_job_stopped_before_it_started_names_its_worker_when_it_starts() -> None:
    s = Scheduler(1, max_batch_jobs=64)
    for i in range(1, 5):
        s.add(i, b"x")
    batch, _ = s.next_batches()  # [1, 2] and [3, 4]
    assert s.kill(2, _cancel(2)) == ("pending", None)
    assert s.started(1, 100, 0.0) is None
    assert s.job_done(batch, 1)
    assert s.started(2, 100, 1.0) == 100  # kill it now
    (failure,) = s.failed(batch, {100: KILLED}, "WorkerDiedError", died_pid=100)
    assert failure.job_id == 2 and failure.error.kind is JobErrorKind.CANCELLED and failure.error.pid == 100


def test_a_finished_job_cannot_be_stopped() -> None:
    s = _scheduler(workers=1, jobs=1)
    (batch,) = s.next_batches()
    s.done(batch)
    assert s.kill(1, _cancel(1)) == ("gone", None)


def test_deadlines_and_memory_watch_cover_only_running_limited_jobs() -> None:
    s = Scheduler(2, max_batch_jobs=1)
    s.add(1, b"x", JobLimits(timeout=2.0))
    s.add(2, b"x", JobLimits(memory_limit=1 << 20))
    s.add(3, b"x")
    s.next_batches()
    assert s.next_deadline() == float("inf") and s.memory_watch() == []  # none started yet
    s.started(1, 101, 10.0)
    s.started(2, 102, 10.0)
    s.started(3, 103, 10.0)
    assert s.next_deadline() == 12.0
    assert s.memory_watch() == [(2, 102, 1 << 20)]
    assert s.expired(11.9) == []
    assert [job_id for job_id, _ in s.expired(12.0)] == [1]
