"""The parent's job table (subproc_executor.parent.jobtable), on its own.

A stateful machine drives it with submits, cancels, sends, answers and a lost
sidecar, against a model: every job is in exactly one place, the window is
never overrun, a cancelled job is never sent, and the counters add up.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from subproc_executor.parent.jobtable import MAX_EXTRA_PER_WORKER, RATE_PERIOD_SECONDS, Job, JobTable


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _job(table: JobTable) -> Job:
    fut: Future[Any] = Future()
    return Job(table.new_id(), fut, b"payload")


def test_window_starts_at_the_stdlib_size_and_only_what_fits_is_sent() -> None:
    table = JobTable(2)
    jobs = [_job(table) for _ in range(5)]
    for j in jobs:
        table.enqueue(j)
    sent = table.take_sendable()
    assert [j.job_id for j in sent] == [1, 2, 3]
    assert all(j.future.running() for j in sent)
    assert all(not j.future.running() for j in jobs[3:])
    assert table.take_sendable() == []
    assert table.finish(2) is jobs[1]
    assert table.finish(2) is None  # answered once
    assert [j.job_id for j in table.take_sendable()] == [4]


def test_a_job_cancelled_while_queued_is_never_sent_and_is_counted() -> None:
    table = JobTable(1)
    a, b, c = (_job(table) for _ in range(3))
    for j in (a, b, c):
        table.enqueue(j)
    assert b.future.cancel()
    assert table.queued_live() == 2
    sent = [j.job_id for j in table.take_sendable()]
    table.finish(1)
    sent += [j.job_id for j in table.take_sendable()]
    assert sent == [1, 3]
    assert table.cancelled == 1


def test_the_window_grows_with_a_fast_completion_rate_and_stays_bounded() -> None:
    clock = FakeClock()
    table = JobTable(2, clock=clock)
    for _ in range(5_000):
        table.enqueue(_job(table))
    while table.queued:
        for job in table.take_sendable():
            clock.now += 2e-5  # 50,000 jobs a second: 2 ms of them is 100 jobs
            table.finish(job.job_id)
    assert table.window == 2 * (1 + MAX_EXTRA_PER_WORKER)


def test_the_window_stays_at_the_stdlib_size_for_slow_jobs() -> None:
    clock = FakeClock()
    table = JobTable(4, clock=clock)
    for _ in range(50):
        table.enqueue(_job(table))
    for _ in range(10):
        for job in table.take_sendable():
            clock.now += RATE_PERIOD_SECONDS * 10  # 100 ms jobs
            table.finish(job.job_id)
    assert table.window == 5


@pytest.mark.parametrize("target_seconds", [0.002, 0.05])
def test_a_backend_with_a_long_round_trip_keeps_more_in_flight(target_seconds: float) -> None:
    """At the same completion rate (a job every 5 ms, each answered a round trip
    later), the window holds about ``target_seconds`` of work: a cluster
    backend's 50 ms keeps ten more jobs in flight than the local 2 ms."""
    clock = FakeClock()
    table = JobTable(2, clock=clock, target_seconds=target_seconds)
    for _ in range(400):
        table.enqueue(_job(table))
    while table.queued:
        for job in table.take_sendable():
            clock.now += 0.005
            table.finish(job.job_id)
    assert table.window == 3 + int(200 * target_seconds)


def test_cancel_futures_keeps_jobs_resent_after_a_sidecar_died_before_starting() -> None:
    """Their futures are RUNNING: cancelling them would leave them pending for ever."""
    table = JobTable(1)
    a, b, c = (_job(table) for _ in range(3))
    for j in (a, b, c):
        table.enqueue(j)
    assert [j.job_id for j in table.take_sendable()] == [1, 2]
    assert table.requeue_unstarted() == []  # the sidecar died before HELLO
    assert [j.job_id for j in table.queued] == [1, 2, 3]
    cancelled = table.cancel_queued()
    assert [j.job_id for j in cancelled] == [3]
    assert [j.job_id for j in table.queued] == [1, 2]
    assert a.future.running() and b.future.running()
    assert [j.job_id for j in table.take_sendable()] == [1, 2]  # sent again, not set running twice


class JobTableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.table = JobTable(2, clock=self.clock)
        self.all: dict[int, Job] = {}
        self.sent: set[int] = set()
        self.finished: set[int] = set()
        self.lost: set[int] = set()
        self.cancelled: set[int] = set()

    @rule()
    def submit(self) -> None:
        job = _job(self.table)
        self.all[job.job_id] = job
        self.table.enqueue(job)

    @rule(data=st.data())
    def cancel_a_queued_job(self, data: st.DataObject) -> None:
        queued = [j for j in self.table.queued if not j.future.cancelled()]
        if queued:
            job = data.draw(st.sampled_from(queued))
            assert job.future.cancel()
            self.cancelled.add(job.job_id)

    @rule()
    def send(self) -> None:
        for job in self.table.take_sendable():
            assert job.job_id not in self.cancelled
            assert job.job_id not in self.sent
            self.sent.add(job.job_id)

    @precondition(lambda self: bool(self.table.inflight))
    @rule(data=st.data(), ok=st.booleans(), dt=st.floats(0, 0.05))
    def answer(self, data: st.DataObject, ok: bool, dt: float) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.table.inflight)))
        self.clock.now += dt
        assert self.table.finish(job_id) is self.all[job_id]
        self.table.count(ok=ok)
        self.finished.add(job_id)

    @rule()
    def sidecar_lost(self) -> None:
        jobs = self.table.take_inflight()
        self.lost.update(j.job_id for j in jobs)
        self.table.failed += len(jobs)

    @invariant()
    def every_job_is_in_one_place(self) -> None:
        queued = {j.job_id for j in self.table.queued}
        inflight = set(self.table.inflight)
        assert not queued & inflight
        assert inflight == self.sent - self.finished - self.lost
        assert queued | inflight | self.finished | self.lost | (self.cancelled - queued) == set(self.all)

    @invariant()
    def the_window_holds(self) -> None:
        assert len(self.table.inflight) <= self.table.window <= 2 * (1 + MAX_EXTRA_PER_WORKER)

    @invariant()
    def counters_add_up(self) -> None:
        t = self.table
        assert t.submitted == len(self.all)
        assert t.done + t.failed == len(self.finished) + len(self.lost)
        cancelled_in_queue = sum(1 for j in t.queued if j.future.cancelled())
        assert t.cancelled + cancelled_in_queue == len(self.cancelled)


TestJobTableMachine = JobTableMachine.TestCase
