"""``sidecar.backends._reap``: workers read without polling them.

A forkserver child's exit status can be read once; a pool's own thread reads
it (reaps the worker), so ``WorkerTracker`` must leave it alone while that
thread lives, and ``terminate_children`` must not take it either. The race
itself is searched for in tests/test_backends.py
(``test_sigkilled_forkserver_worker_reports_minus_9_never_255``).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

import pytest
from executor_fixtures import ANSWER_WITHIN

from subproc_executor.sidecar.backends._reap import WorkerTracker, terminate_children


class _Pool:
    """The two private attributes of a stdlib or loky pool the tracker reads."""

    def __init__(self, processes: list[BaseProcess], manager: threading.Thread | None) -> None:
        self._processes = {p.pid: p for p in processes}
        self._executor_manager_thread = manager


class _Owner(threading.Thread):
    """A pool's manager thread, as far as the tracker can tell: it lives until
    released, and reaps the workers first when ``reap`` is set."""

    def __init__(self, processes: list[BaseProcess], *, reap: bool) -> None:
        super().__init__(name="test-owner", daemon=True)
        self.processes = processes
        self.reap = reap
        self.reaped = threading.Event()
        self.release = threading.Event()

    def run(self) -> None:
        if self.reap:
            for p in self.processes:
                p.join(ANSWER_WITHIN)
            self.reaped.set()
        self.release.wait(ANSWER_WITHIN)


MakeWorker = Callable[[str], BaseProcess]


@pytest.fixture
def make_worker() -> Iterator[MakeWorker]:
    """Start a worker that sleeps until killed; kill and reap whatever is left at teardown."""
    started: list[BaseProcess] = []

    def make(method: str) -> BaseProcess:
        p = multiprocessing.get_context(method).Process(target=time.sleep, args=(ANSWER_WITHIN,))
        p.start()
        started.append(p)
        return p

    yield make
    for p in started:
        if p.pid is not None and p._popen is not None and p._popen.returncode is None:
            os.kill(p.pid, signal.SIGKILL)
            p.join(ANSWER_WITHIN)


def _kill(p: BaseProcess, sig: int = signal.SIGKILL) -> None:
    """Signal ``p`` and wait for its sentinel, which reads nothing."""
    assert p.pid is not None
    os.kill(p.pid, sig)
    assert wait([p.sentinel], ANSWER_WITHIN)


def _stored(p: BaseProcess) -> int | None:
    """The exit code stored in ``p``, read without polling."""
    return getattr(p._popen, "returncode", None)


def test_a_dead_worker_whose_owner_lives_and_has_not_reaped_it_is_not_settled(
    make_worker: MakeWorker,
) -> None:
    p = make_worker("forkserver")
    owner = _Owner([p], reap=False)
    owner.start()
    pool, tracker = _Pool([p], owner), WorkerTracker()
    assert tracker.live_pids(pool) == [p.pid]
    assert tracker.exitcodes(pool) == {p.pid: None}
    _kill(p)
    assert tracker.live_pids(pool) == []
    assert tracker.dead_pids(pool) == [p.pid]
    assert tracker.exitcodes(pool) == {p.pid: None}
    assert _stored(p) is None, "the tracker polled a worker its owner may be polling"
    # Its owner gone without reaping it, no one else can be polling it: the tracker does.
    owner.release.set()
    owner.join(ANSWER_WITHIN)
    assert tracker.exitcodes(pool) == {p.pid: -signal.SIGKILL}


def test_a_dead_worker_reaped_by_its_owner_reports_the_code_the_owner_stored(make_worker: MakeWorker) -> None:
    p = make_worker("forkserver")
    owner = _Owner([p], reap=True)
    pool, tracker = _Pool([p], owner), WorkerTracker()
    assert tracker.exitcodes(pool) == {p.pid: None}
    owner.start()
    _kill(p)
    assert owner.reaped.wait(ANSWER_WITHIN)
    assert owner.is_alive()
    assert tracker.exitcodes(pool) == {p.pid: -signal.SIGKILL}
    # Remembered after the pool dropped it, and after a look with no pool.
    pool._processes.clear()
    assert tracker.exitcodes(pool) == tracker.exitcodes() == {p.pid: -signal.SIGKILL}
    tracker.forget_dead()
    assert tracker.exitcodes() == {}
    owner.release.set()
    owner.join(ANSWER_WITHIN)


def test_a_dead_worker_reaped_by_waitpid_is_read_even_while_its_owner_lives(make_worker: MakeWorker) -> None:
    """A spawn (or fork, or loky) worker's status is a waitpid: a concurrent
    poll that loses stores nothing, so the tracker need not wait for an owner
    that may be stuck."""
    p = make_worker("spawn")
    owner = _Owner([p], reap=False)
    owner.start()
    pool, tracker = _Pool([p], owner), WorkerTracker()
    _kill(p)
    # Its sentinel closes a moment before waitpid can see it exit: wait for
    # that without reaping it (WNOWAIT).
    assert p.pid is not None
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    assert tracker.exitcodes(pool) == {p.pid: -signal.SIGKILL}
    owner.release.set()
    owner.join(ANSWER_WITHIN)


def test_a_pool_without_its_owner_thread_is_polled_by_the_tracker(make_worker: MakeWorker) -> None:
    p = make_worker("forkserver")
    pool, tracker = _Pool([p], None), WorkerTracker()
    assert tracker.live_pids(pool) == [p.pid]
    _kill(p)
    assert tracker.exitcodes(pool) == {p.pid: -signal.SIGKILL}


def test_terminate_children_leaves_a_forkserver_workers_status_to_its_owner(make_worker: MakeWorker) -> None:
    p, q = make_worker("forkserver"), make_worker("forkserver")
    _kill(q)  # dead already: not signalled again
    terminate_children(grace=ANSWER_WITHIN, processes=[p, q])
    assert wait([p.sentinel], 0)
    assert _stored(p) is None and _stored(q) is None
    p.join(ANSWER_WITHIN)
    q.join(ANSWER_WITHIN)
    assert (p.exitcode, q.exitcode) == (-signal.SIGTERM, -signal.SIGKILL)
