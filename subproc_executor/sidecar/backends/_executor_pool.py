"""What the process and loky backends share: a ``concurrent.futures`` pool
inside the sidecar, driven through its public API.

A subclass says how to build its pool (``_make_pool``) and how to abandon
it at once (``_abandon``); this class does the rest: warm start, batches as
pool calls, worker pids and exit codes, quiesce, reset and shutdown.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import CancelledError, Executor, Future
from typing import Final

from ...worker import job
from . import BackendConfig, OnDone
from ._reap import WorkerTracker, live_children, terminate_children

__all__ = ["ExecutorPoolBackend"]

logger = logging.getLogger(__name__)

# How long the old pool's manager thread gets to finish on its own, once its
# workers are gone, before it is taken for stuck (see ``_join_pool``).
_MANAGER_JOIN_SECONDS: Final = 1.0


class ExecutorPoolBackend:
    """Base of the backends that wrap a ``concurrent.futures`` process pool."""

    def __init__(self, config: BackendConfig) -> None:
        self._config = config
        self._pool: Executor | None = None
        self._tracker = WorkerTracker()
        # {pid: exitcode} of the workers the last reset() stopped (see stopped_exitcodes).
        self._stopped_codes: dict[int, int | None] = {}

    def _make_pool(self) -> Executor:
        """A new pool whose workers run ``job.worker_init`` first."""
        raise NotImplementedError

    def _abandon(self, pool: Executor) -> None:
        """Stop ``pool`` taking work and drop what it has not started, without waiting."""
        raise NotImplementedError

    def _stop_taking_work(self, pool: Executor) -> None:
        """Stop ``pool`` taking work; what it has runs to the end. Without waiting."""
        pool.shutdown(wait=False)

    def start(self) -> None:
        if self._pool is not None:
            return
        self._pool = self._make_pool()
        if self._config.max_tasks_per_child is None:
            # Warm start: one empty batch per worker makes the pool start them
            # all now (fork on 3.11+ starts every worker at the first submit;
            # otherwise each submit that finds no idle worker starts one).
            # Not with max_tasks_per_child: the pool would count the warm-up
            # as each worker's first task.
            for _ in range(self._config.max_workers):
                self._pool.submit(job.run_batch, self._config.pickler, (), ())
        self._tracker.live_pids(self._pool)

    def submit(self, job_ids: Sequence[int], payloads: Sequence[bytes], on_done: OnDone) -> None:
        if self._pool is None:
            self.start()
        assert self._pool is not None
        fut = self._pool.submit(job.run_batch, self._config.pickler, list(job_ids), list(payloads))

        def done(f: Future[list[bytes]]) -> None:
            if f.cancelled():  # a reset cancelled it before it started
                on_done(CancelledError("the pool was reset before this batch started"))
                return
            exc = f.exception()
            on_done(exc if exc is not None else f.result())

        fut.add_done_callback(done)

    def worker_pids(self) -> list[int]:
        return self._tracker.live_pids(self._pool) if self._pool is not None else []

    def worker_exitcodes(self) -> dict[int, int | None]:
        return self._tracker.exitcodes(self._pool)

    def dead_worker_pids(self) -> list[int]:
        """Workers seen dead, their exit code known or not: a worker's death
        shows before its pool's thread has reaped it (see ``_reap``)."""
        return self._tracker.dead_pids(self._pool)

    def quiesce(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            self._stop_pool(pool, kill=False)
        # Workers stopped on purpose are not crashes to report.
        self._tracker.forget_dead()

    def reset(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            # Its threads are joined: the new pool may fork, which must
            # happen with no other thread alive.
            self._stop_pool(pool, kill=True)
        # With its threads joined, no other thread reaps its workers: their
        # exit codes can all be read now.
        self._stopped_codes = self._tracker.exitcodes()
        self._tracker.forget_dead()
        self.start()

    def stopped_exitcodes(self) -> dict[int, int | None]:
        """{pid: exitcode} of the workers the last ``reset()`` stopped, read
        once the old pool's threads were joined. The sidecar asks before the
        reset too; a worker whose pool's thread had not reaped it then (one
        stuck, see ``_unwedge``) has its exit code only now."""
        return dict(self._stopped_codes)

    def shutdown(self, *, kill: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        self._stop_pool(pool, kill=kill)

    def _stop_pool(self, pool: Executor, *, kill: bool) -> None:
        """Shut ``pool`` down and join its threads; with ``kill``, abandon its
        work and terminate its workers first. Bounded even when its manager
        thread is stuck (see ``_unwedge``)."""
        # Read before shutdown() drops them.
        manager = getattr(pool, "_executor_manager_thread", None)
        result_queue = getattr(pool, "_result_queue", None)
        if kill:
            self._abandon(pool)
            terminate_children()
        else:
            self._stop_taking_work(pool)  # the manager thread finishes the work, then exits
        if isinstance(manager, threading.Thread):
            _unwedge(manager, result_queue)
            manager.join()
            close = getattr(result_queue, "close", None)
            if callable(close):
                close()  # what shutdown(wait=True) would have done, had it still known the queue
        pool.shutdown(wait=True)


def _unwedge(manager: threading.Thread, result_queue: object) -> None:
    """Free a pool's manager thread stuck reading half a result, once its workers are gone.

    A worker killed while it writes a result leaves half a message in the
    result pipe. The stdlib's (and loky's) manager thread then waits for the
    rest forever: no worker writes it, and this process holds a write end of
    that pipe, so no EOF comes either (ProcessPoolExecutor itself hangs the
    same way). Once the workers are gone, closing our write end turns the
    wait into EOF: the manager thread marks the pool broken, fails its
    futures (their batches are reported) and exits. This reaches into two
    private attributes, present in CPython 3.10 to 3.13 and in loky; without
    them the join that follows is unbounded, as before. Whether a worker
    lives is read from the sentinels: the manager thread may be reaping them.
    """
    manager.join(_MANAGER_JOIN_SECONDS)
    if not manager.is_alive() or live_children():
        return  # done, or workers still finishing their jobs (quiesce): nothing is stuck
    writer = getattr(result_queue, "_writer", None)
    if writer is not None:
        logger.warning("the old pool's manager thread is stuck reading a half-sent result; closing its pipe")
        try:
            writer.close()
        except OSError:
            pass
