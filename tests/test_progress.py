"""Seeing inside the pool (issue 14): ``report_progress`` in jobs, ``on_progress``
in the parent, ``map(..., progress=...)``'s bar, and timing in ``statistics()``.

Three layers, each tested where it is cheapest: the records' bytes (pure, by
Hypothesis), the worker's coalescing (in this process, over a real pipe), and
the executor end to end. Waits are on events and files; where time matters
(a report is sent at once only once per ``INTERVAL``) bounds are derived
from time measured in the same run, never fixed.
"""

from __future__ import annotations

import functools
import gc
import io
import logging
import math
import multiprocessing
import os
import struct
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar

import jobs
import pytest
from executor_fixtures import ANSWER_WITHIN, FAIL_WITHIN, MakeExecutor
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from subproc_executor import ProgressReport, SubprocExecutor, WorkerDiedError, report_progress
from subproc_executor.wire.progress import (
    MAX_MESSAGE_CHARS,
    PROGRESS_HEAD_SIZE,
    OutcomeTiming,
    ProgressRecord,
    decode_progress,
    encode_progress,
    progress_job_id,
)
from subproc_executor.wire.protocol import ProtocolError
from subproc_executor.worker import progress as worker_progress

PIPES = pytest.mark.parametrize("variant", [("pipes", None)], ids=["pipes"], indirect=True)
ALL_KINDS = pytest.mark.parametrize(
    "variant",
    [("pipes", None), ("process", "fork"), ("loky", None)],
    ids=["pipes", "process-fork", "loky"],
    indirect=True,
)
_CONN_HEADER = struct.Struct("!i")


# -- the records' bytes ----------------------------------------------------------------------

numbers = st.one_of(
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False),
)


@given(
    job_id=st.integers(min_value=0, max_value=2**64 - 1),
    pid=st.integers(min_value=1, max_value=2**32 - 1),
    done=numbers,
    total=st.none() | numbers,
    message=st.none() | st.text(max_size=1200),
    elapsed=st.floats(min_value=0, max_value=1e9),
)
def test_progress_records_round_trip(
    job_id: int, pid: int, done: float, total: float | None, message: str | None, elapsed: float
) -> None:
    data = encode_progress(job_id, pid, done, total, message, elapsed)
    # A record never splits across writes: under the smallest PIPE_BUF.
    assert len(data) + _CONN_HEADER.size <= 4096
    assert progress_job_id(data) == job_id
    (record,) = decode_progress(data)
    assert record.job_id == job_id and record.pid == pid and record.elapsed == elapsed
    assert record.done == done and type(record.done) is type(done)
    assert record.total == total and type(record.total) is type(total)
    if message is None or len(message) <= MAX_MESSAGE_CHARS:
        # (lone surrogates do not encode: replaced, as anything undecodable would be)
        assert record.message == (None if message is None else message.encode("utf-8", "replace").decode())
    else:
        assert record.message is not None and record.message.endswith("...")
        assert len(record.message) == MAX_MESSAGE_CHARS


@given(st.lists(st.tuples(st.integers(0, 2**32), st.integers(0, 100), st.none() | st.text(max_size=20))))
def test_a_frame_of_records_decodes_in_order(items: list[tuple[int, int, str | None]]) -> None:
    payload = b"".join(encode_progress(job, 7, done, None, msg, 0.5) for job, done, msg in items)
    assert [(r.job_id, r.done, r.message) for r in decode_progress(payload)] == items


@pytest.mark.parametrize(
    "payload",
    [
        b"x" * PROGRESS_HEAD_SIZE,  # wrong tag
        encode_progress(1, 2, 3, None, "hello", 0.0)[:-2],  # message cut short
        encode_progress(1, 2, 3, None, None, 0.0)[:-1],  # head cut short
    ],
)
def test_malformed_progress_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        list(decode_progress(payload))


def test_start_records_are_never_taken_for_progress() -> None:
    from subproc_executor.wire.messages import START_RECORD_SIZE, StartRecord

    assert PROGRESS_HEAD_SIZE != START_RECORD_SIZE
    assert progress_job_id(StartRecord(5, 6, 1.0).encode()) is None


@given(st.floats(0, 1e9), st.floats(0, 1e9), st.integers(1, 2**32 - 1))
def test_outcome_timing_round_trips(started: float, ended: float, pid: int) -> None:
    assert OutcomeTiming.decode(OutcomeTiming(started, ended, pid).encode()) == (started, ended, pid)


# -- the worker's side, in this process ------------------------------------------------------


@pytest.fixture
def notify_pipe() -> Iterator[Any]:
    """A notify pipe as a worker has it: report_progress attached to its write end."""
    reader, writer = multiprocessing.Pipe(duplex=False)
    worker_progress.attach(writer, os.getpid())
    yield reader
    worker_progress.end()
    worker_progress.attach(None, 0)
    reader.close()
    writer.close()


def _records(reader: Any, timeout: float = 0.0) -> list[ProgressRecord]:
    """Every record waiting on the pipe (waiting up to ``timeout`` for the first)."""
    out: list[ProgressRecord] = []
    while reader.poll(timeout):
        (out_record,) = decode_progress(reader.recv_bytes())
        out.append(out_record)
        timeout = 0.0
    return out


def test_outside_a_job_it_does_nothing_but_check(notify_pipe: Any) -> None:
    report_progress(1, total=10, message="not in a job")
    assert _records(notify_pipe) == []
    with pytest.raises(TypeError, match="done must be a number"):
        report_progress("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="total must be a number"):
        report_progress(1, total="10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="message must be a str"):
        report_progress(1, message=3)  # type: ignore[arg-type]


def test_other_numbers_are_taken(notify_pipe: Any) -> None:
    from fractions import Fraction

    worker_progress.begin(11, time.monotonic())
    report_progress(True, total=Fraction(3, 2))
    worker_progress.end()
    (record,) = _records(notify_pipe, ANSWER_WITHIN)
    assert record.job_id == 11 and record.done == 1 and record.total == 1.5
    # An int past any float is a fine count (a search space): it arrives as infinity.
    worker_progress.begin(12, time.monotonic())
    report_progress(10**400, total=-(10**400))
    worker_progress.end()
    (record,) = _records(notify_pipe, ANSWER_WITHIN)
    assert (record.done, record.total) == (math.inf, -math.inf)


def test_reports_are_coalesced_and_the_latest_wins(notify_pipe: Any) -> None:
    """A tight loop of reports writes about one record per interval, and the
    last record is the last report (sent when the job ends)."""
    n = 200_000
    worker_progress.begin(42, time.monotonic())
    written = worker_progress.written
    start = time.monotonic()
    for i in range(n):
        report_progress(i, total=n)
    elapsed = time.monotonic() - start
    worker_progress.end()
    records = _records(notify_pipe, ANSWER_WITHIN)
    sent = worker_progress.written - written
    assert len(records) == sent
    # One at once, at most one per interval after it (the flusher's
    # included), and the one the job's end sends.
    assert sent <= 2 + elapsed / worker_progress.INTERVAL + 1
    assert [r.done for r in records] == sorted(r.done for r in records)
    assert records[0].done == 0 and records[-1].done == n - 1
    assert all(r.job_id == 42 and r.pid == os.getpid() and r.total == n for r in records)
    report_progress(5)  # the job has ended: nothing more
    assert _records(notify_pipe) == []


def test_a_job_that_stops_reporting_still_shows_its_latest(notify_pipe: Any) -> None:
    """The flusher sends the pending report once its interval is over, while
    the job runs on without reporting."""
    worker_progress.begin(7, time.monotonic())
    report_progress(1, total=3)
    report_progress(2, total=3)  # within the interval: pending
    records = _records(notify_pipe, ANSWER_WITHIN)
    while len(records) < 2:
        more = _records(notify_pipe, ANSWER_WITHIN)
        assert more, "the pending report never went out"
        records += more
    assert [r.done for r in records] == [1, 2]
    worker_progress.end()
    assert _records(notify_pipe) == []  # already sent: the end sends nothing again


def test_a_full_pipe_never_blocks_the_job(notify_pipe: Any) -> None:
    """With nobody reading, reports are dropped to the latest, and it goes out
    once there is room."""
    fd = worker_progress._fd
    if fd < 0:
        pytest.skip("no /proc here: reports use the blocking Connection")
    # Fill the pipe through a non-blocking descriptor of our own.
    filler = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
    try:
        junk = _CONN_HEADER.pack(8) + b"\0" * 8  # length 8: neither start record nor progress
        while True:
            try:
                os.write(filler, junk)
            except BlockingIOError:
                break
    finally:
        os.close(filler)
    worker_progress.begin(9, time.monotonic())
    done = threading.Event()

    def job() -> None:
        for i in range(1000):
            report_progress(i, total=1000)
            time.sleep(0.0005)
        done.set()

    t = threading.Thread(target=job)
    t.start()
    assert done.wait(ANSWER_WITHIN), "report_progress blocked on a full pipe"
    t.join(ANSWER_WITHIN)
    # Drain: the junk, then the pending report when the flusher retries.
    got: list[ProgressRecord] = []
    deadline = time.monotonic() + ANSWER_WITHIN
    while time.monotonic() < deadline and (not got or got[-1].done != 999):
        if notify_pipe.poll(0.05):
            data = notify_pipe.recv_bytes()
            if len(data) != 8:
                got += decode_progress(data)
    assert got and got[-1].done == 999
    worker_progress.end()


# -- the executor ----------------------------------------------------------------------------


class Listener:
    """An on_progress that records each report with its future's state at the time."""

    def __init__(self) -> None:
        self.reports: list[ProgressReport] = []
        self.future_was_done: list[bool] = []
        self.cond = threading.Condition()

    def __call__(self, report: ProgressReport) -> None:
        with self.cond:
            self.reports.append(report)
            self.future_was_done.append(report.future.done())
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = ANSWER_WITHIN) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.reports) >= n, timeout)


@ALL_KINDS
@pytest.mark.timeout(90)
def test_reports_arrive_in_order_and_stop_when_the_job_ends(make_executor: MakeExecutor) -> None:
    listener = Listener()
    ex = make_executor(2, on_progress=listener)
    fut = ex.submit(jobs.report_steps, 5)
    assert fut.result(ANSWER_WITHIN) == 5
    # Another job's result has come back through the same pipes since: any
    # report of the first job the sidecar still held has been read by now.
    assert ex.submit(jobs.square, 3).result(ANSWER_WITHIN) == 9
    count = len(listener.reports)
    reports = listener.reports
    assert 1 <= count <= 5
    assert all(r.future is fut and r.total == 5 for r in reports)
    dones = [r.done for r in reports]
    assert dones == sorted(set(dones)), dones  # in order, none twice
    assert [r.message for r in reports] == [f"step {d}" for d in dones]
    assert not any(listener.future_was_done)  # none after the outcome
    assert all(r.pid in dict(ex.statistics().jobs_per_worker) for r in reports)
    elapsed = [r.elapsed for r in reports]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    second = ex.submit(jobs.report_steps, 1)
    assert second.result(ANSWER_WITHIN) == 1
    assert ex.submit(jobs.square, 4).result(ANSWER_WITHIN) == 16
    assert {r.future for r in listener.reports[count:]} <= {second}
    assert not any(listener.future_was_done)


@PIPES
@pytest.mark.timeout(60)
def test_a_report_from_a_job_that_then_crashes_is_delivered(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    listener = Listener()
    ex = make_executor(1, on_progress=listener)
    fut = ex.submit(jobs.report_then_die, str(tmp_path / "started"))
    with pytest.raises(WorkerDiedError):
        fut.result(FAIL_WITHIN)
    assert [(r.done, r.total, r.message) for r in listener.reports] == [(1, 2, "about to crash")]
    assert listener.reports[0].future is fut and listener.future_was_done == [False]
    assert ex.submit(jobs.square, 4).result(ANSWER_WITHIN) == 16


@PIPES
@pytest.mark.timeout(90)
def test_a_flood_of_reports_is_coalesced_in_the_worker(make_executor: MakeExecutor) -> None:
    """A million calls: a few records a second leave the worker, and the job's
    memory does not grow with the calls."""
    listener = Listener()
    ex = make_executor(1, on_progress=listener)
    written, elapsed, peak = ex.submit(jobs.flood_progress, 1_000_000).result(ANSWER_WITHIN)
    assert written <= 3 + elapsed / worker_progress.INTERVAL
    assert peak < 64 * 1024, f"report_progress allocated {peak} bytes that it kept"
    assert ex.submit(jobs.square, 2).result(ANSWER_WITHIN) == 4
    assert len(listener.reports) <= written + 1  # + the one the job's end sent
    assert not any(listener.future_was_done)


@PIPES
@pytest.mark.timeout(60)
def test_a_callback_that_raises_is_logged_and_changes_nothing(
    make_executor: MakeExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def bad(report: ProgressReport) -> None:
        calls.append(report.job_id)
        raise RuntimeError("callback bug")

    ex = make_executor(1)
    with caplog.at_level(logging.ERROR, logger="subproc_executor"):
        assert ex.options(on_progress=bad).submit(jobs.report_steps, 3).result(ANSWER_WITHIN) == 3
    assert calls, "the callback was never called"
    assert any("on_progress callback raised" in r.getMessage() for r in caplog.records)
    assert ex.submit(jobs.square, 5).result(ANSWER_WITHIN) == 25


@PIPES
@pytest.mark.timeout(60)
def test_a_listener_may_wait_for_another_job(make_executor: MakeExecutor) -> None:
    """Listeners run off the thread that reads results: one that waits for
    another job's result (or submits) does not stop the executor."""
    ex = make_executor(2)
    answers: list[int] = []

    def listener(report: ProgressReport) -> None:
        if not answers:
            answers.append(ex.submit(jobs.square, 7).result(ANSWER_WITHIN))

    assert ex.options(on_progress=listener).submit(jobs.report_steps, 3).result(ANSWER_WITHIN) == 3
    assert answers == [49]


@PIPES
@pytest.mark.timeout(60)
def test_options_choose_who_listens(make_executor: MakeExecutor) -> None:
    base, view = Listener(), Listener()
    ex = make_executor(2, on_progress=base)
    a = ex.submit(jobs.report_steps, 2)
    b = ex.options(on_progress=view).submit(jobs.report_steps, 2)
    c = ex.options(on_progress=None).submit(jobs.report_steps, 2)
    assert [f.result(ANSWER_WITHIN) for f in (a, b, c)] == [2, 2, 2]
    assert ex.submit(jobs.square, 1).result(ANSWER_WITHIN) == 1
    assert base.reports and {r.future for r in base.reports} == {a}
    assert view.reports and {r.future for r in view.reports} == {b}
    with pytest.raises(TypeError, match="on_progress must be a callable"):
        ex.options(on_progress="print")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_progress must be a callable"):
        SubprocExecutor(1, on_progress=3)  # type: ignore[arg-type]


# -- statistics() timing ----------------------------------------------------------------------


@ALL_KINDS
@pytest.mark.timeout(90)
def test_timing_percentiles_follow_a_known_sleep_pattern(make_executor: MakeExecutor) -> None:
    """One worker, five short and five long sleeps submitted at once: each job
    waits at least as long as the sleeps queued before it."""
    ex = make_executor(1)
    sleeps = [0.02] * 5 + [0.1] * 5
    submitted = []
    futures: list[Future[tuple[float, float]]] = []
    for s in sleeps:
        submitted.append(time.monotonic())
        futures.append(ex.submit(jobs.timed_sleep, s))
    all_submitted = time.monotonic()
    spans = [f.result(ANSWER_WITHIN) for f in futures]
    stats = ex.statistics()
    assert stats.run_time.count == stats.queue_wait.count == 10
    ((pid, count),) = stats.jobs_per_worker
    assert count == 10 and pid > 0
    run, wait = stats.run_time, stats.queue_wait
    assert run.p50 <= run.p95 <= run.p99 <= run.max and wait.p50 <= wait.p95 <= wait.p99 <= wait.max
    # Nearest rank over 10: p50 is the 5th smallest; p95 and p99 the largest.
    assert run.p50 >= 0.02 and run.p95 >= 0.1 and run.max >= 0.1
    # Each run covers the job's own call; each wait ends before it began.
    calls = sorted(end - start for start, end in spans)
    assert run.max >= calls[-1]
    waits_upper = sorted(start - sub for (start, _), sub in zip(spans, submitted, strict=True))
    assert wait.max <= waits_upper[-1] + 1e-6
    # The last job waited for the nine sleeps before it, less the time the submits took.
    assert wait.max >= sum(sleeps[:-1]) - (all_submitted - submitted[0])


def test_percentiles_are_nearest_rank() -> None:
    from collections import deque

    from subproc_executor.parent.timings import summarize

    assert summarize(deque()).count == 0
    s = summarize(deque(float(i) for i in range(1, 101)))
    assert (s.count, s.p50, s.p95, s.p99, s.max) == (100, 50.0, 95.0, 99.0, 100.0)
    one = summarize(deque([3.0]))
    assert (one.p50, one.p99, one.max) == (3.0, 3.0, 3.0)


# -- map(..., progress=...) --------------------------------------------------------------------


class FakeBar:
    """A tqdm-compatible class that records what map does with it."""

    made: ClassVar[list[FakeBar]] = []

    def __init__(self, total: int | None = None, unit: str = "", desc: str = "") -> None:
        self.total, self.unit, self.desc = total, unit, desc
        self.n = 0
        self.postfixes: list[str] = []
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.violations: list[str] = []  # (MapBar logs what a bar raises, so record instead)
        FakeBar.made.append(self)

    def update(self, n: int) -> None:
        with self.lock:
            if self.closed.is_set():
                self.violations.append("update after close")
            self.n += n

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfixes.append(text)

    def close(self) -> None:
        with self.lock:
            if self.closed.is_set():
                self.violations.append("closed twice")
            self.closed.set()


@pytest.fixture
def fake_bar() -> Iterator[type[FakeBar]]:
    FakeBar.made = []
    yield FakeBar


@PIPES
@pytest.mark.timeout(60)
def test_the_map_bar_reaches_the_total_and_closes(
    make_executor: MakeExecutor, fake_bar: type[FakeBar]
) -> None:
    ex = make_executor(2)
    assert list(ex.map(jobs.square, range(50), chunksize=7, progress=fake_bar)) == [i * i for i in range(50)]
    (bar,) = fake_bar.made
    # Closed by the time the last value is taken, and every chunk counted.
    assert bar.closed.is_set() and bar.violations == []
    assert (bar.total, bar.n, bar.unit) == (50, 50, "item") and "square" in bar.desc


@PIPES
@pytest.mark.timeout(60)
def test_the_map_bar_shows_progress_inside_running_chunks(
    make_executor: MakeExecutor, fake_bar: type[FakeBar]
) -> None:
    user = Listener()
    ex = make_executor(2, on_progress=user)
    assert list(ex.map(jobs.report_steps, [3, 3], progress=fake_bar)) == [3, 3]
    (bar,) = fake_bar.made
    assert bar.closed.wait(ANSWER_WITHIN) and bar.n == 2
    assert any(p.startswith("running: ") and "%" in p for p in bar.postfixes), bar.postfixes
    assert user.reports, "the executor's own on_progress is still called under a bar"


@PIPES
@pytest.mark.timeout(60)
def test_the_map_bar_closes_on_an_exception_and_on_break(
    make_executor: MakeExecutor, fake_bar: type[FakeBar]
) -> None:
    ex = make_executor(2)
    it = ex.map(jobs.fail_on, range(10), [5] * 10, progress=fake_bar)
    with pytest.raises(KeyError):
        list(it)
    bar = fake_bar.made[-1]
    # Closed at the raise: the five values taken were counted, the failed chunk not.
    assert bar.closed.is_set() and 5 <= bar.n <= 9 and bar.violations == []

    it = ex.map(jobs.square, range(10), progress=fake_bar, buffersize=2)
    for value in it:
        if value == 4:
            break
    it.close()  # a break leaves the generator open; dropping it (or this) closes it
    assert fake_bar.made[-1].closed.is_set() and fake_bar.made[-1].violations == []


@PIPES
@pytest.mark.timeout(60)
def test_the_map_bar_of_an_iterator_dropped_unstarted_closes(
    make_executor: MakeExecutor, fake_bar: type[FakeBar], tmp_path: Path
) -> None:
    """Its chunk still runs: only the collection of the iterator can close the bar."""
    ex = make_executor(1)
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    it = ex.map(jobs.block_until, [started], [gate], progress=fake_bar)
    assert jobs.wait_for_path(started)
    bar = fake_bar.made[-1]
    assert not bar.closed.is_set()
    del it
    gc.collect()
    assert bar.closed.is_set() and bar.violations == []
    Path(gate).touch()


@PIPES
@pytest.mark.timeout(60)
def test_the_real_tqdm_bar_through_a_fake_file(make_executor: MakeExecutor) -> None:
    tqdm = pytest.importorskip("tqdm").tqdm
    out = io.StringIO()
    ex = make_executor(2)
    bar_class = functools.partial(tqdm, file=out, mininterval=0)
    results = list(ex.map(jobs.square, range(20), chunksize=3, progress=bar_class))
    assert results == [i * i for i in range(20)]
    text = out.getvalue()
    assert "20/20" in text and "100%" in text and "item" in text, text


@PIPES
@pytest.mark.timeout(60)
def test_progress_true_on_a_non_terminal_prints_nothing(
    make_executor: MakeExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tqdm")
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    ex = make_executor(1)
    assert list(ex.map(jobs.square, range(5), progress=True)) == [0, 1, 4, 9, 16]
    assert err.getvalue() == ""


@PIPES
def test_progress_true_without_tqdm_says_how_to_get_it(
    make_executor: MakeExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    ex = make_executor(1)
    with pytest.raises(ImportError, match=r"subproc-executor\[progress\]"):
        ex.map(jobs.square, range(3), progress=True)
    with pytest.raises(TypeError, match="progress must be True, False or a tqdm-compatible class"):
        ex.map(jobs.square, range(3), progress="yes")
    assert ex.statistics().submitted == 0  # nothing was submitted


def test_report_progress_in_a_plain_loop_is_a_no_op() -> None:
    """The same function runs unchanged outside an executor."""
    written = worker_progress.written
    for i in range(1000):
        report_progress(i, total=1000, message="loop")
    assert worker_progress.written == written and worker_progress._pending is None


# -- the coalescer, searched ---------------------------------------------------------------------


class CoalescerMachine(RuleBasedStateMachine):
    """Random reports, job starts and ends, clock steps, a full or drained
    pipe and flusher turns, on a fake clock with the flusher driven by hand.

    Invariants: a job's records are some of its reports, in order, never one
    twice; no record follows its job's end; a job that ended while the pipe
    had room shows its last report; fewer records than one per interval."""

    def __init__(self) -> None:
        super().__init__()
        self.reader, self.writer = multiprocessing.Pipe(duplex=False)
        self.now = 1000.0
        self.saved = (worker_progress._monotonic, worker_progress._kick)
        worker_progress._monotonic = lambda: self.now  # type: ignore[misc]
        worker_progress._kick = lambda: None  # the flusher is the rule below
        worker_progress.attach(self.writer, 4242)
        self.job: int | None = None
        self.next_job = 1
        self.reports: dict[int, list[int]] = {}  # job -> dones reported, in order
        self.records: list[ProgressRecord] = []
        self.ended: set[int] = set()
        self.final: dict[int, int] = {}  # job -> its records once it ended
        self.filler = -1
        self.started: dict[int, float] = {}

    def teardown(self) -> None:
        worker_progress.end()
        worker_progress._monotonic, worker_progress._kick = self.saved  # type: ignore[misc]
        worker_progress.attach(None, 0)
        if self.filler >= 0:
            os.close(self.filler)
        self.reader.close()
        self.writer.close()

    def _drain(self) -> None:
        while self.reader.poll(0):
            data = self.reader.recv_bytes()
            if len(data) != 8:  # the filler's junk
                self.records += decode_progress(data)

    @precondition(lambda self: self.job is None)
    @rule()
    def begin(self) -> None:
        self.job, self.next_job = self.next_job, self.next_job + 1
        self.reports[self.job] = []
        self.started[self.job] = self.now
        worker_progress.begin(self.job, self.now)

    @precondition(lambda self: self.job is not None)
    @rule(n=st.integers(1, 30))
    def report(self, n: int) -> None:
        assert self.job is not None
        for _ in range(n):
            done = len(self.reports[self.job])
            self.reports[self.job].append(done)
            report_progress(done, total=1000)

    @precondition(lambda self: self.job is None)
    @rule()
    def report_outside_a_job(self) -> None:
        report_progress(1)

    @rule(dt=st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.3]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def flusher_turn(self) -> None:
        worker_progress._flush_due()

    @precondition(lambda self: self.job is not None)
    @rule()
    def end(self) -> None:
        assert self.job is not None
        job, self.job = self.job, None
        pipe_had_room = self.filler < 0
        worker_progress.end()
        self.ended.add(job)
        self._drain()
        mine = [r.done for r in self.records if r.job_id == job]
        self.final[job] = len(mine)
        if pipe_had_room and self.reports[job]:
            assert mine and mine[-1] == self.reports[job][-1], (mine, self.reports[job])

    @rule()
    def fill_pipe(self) -> None:
        fd = worker_progress._fd
        if fd < 0 or self.filler >= 0:
            return
        self.filler = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
        junk = _CONN_HEADER.pack(8) + b"\0" * 8
        while True:
            try:
                os.write(self.filler, junk)
            except BlockingIOError:
                break

    @rule()
    def drain(self) -> None:
        self._drain()
        if self.filler >= 0:
            os.close(self.filler)
            self.filler = -1

    @invariant()
    def records_are_reports_in_order(self) -> None:
        seen: dict[int, int] = {}
        for r in self.records:
            assert r.pid == 4242 and r.total == 1000
            assert r.done in self.reports[r.job_id]
            assert r.done > seen.get(r.job_id, -1), "a record went back or came twice"
            seen[r.job_id] = r.done
            assert r.elapsed >= 0

    @invariant()
    def nothing_after_a_job_ended(self) -> None:
        self._drain()
        for r in self.records:
            assert r.job_id in self.ended or r.job_id == self.job, "a record of a job that never ran"
        for job, count in self.final.items():
            assert sum(1 for r in self.records if r.job_id == job) == count, (
                f"job {job} reported after its end"
            )


TestCoalescer = CoalescerMachine.TestCase
TestCoalescer.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
