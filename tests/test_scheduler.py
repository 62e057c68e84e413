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
from subproc_executor.wire.messages import JobErrorKind

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
