"""The stdlib backend: a ``concurrent.futures.ProcessPoolExecutor`` inside the sidecar.

Uses only the pool's public API. Warm start is a no-op batch per worker:
with fork on 3.11+ the first submit starts every worker, and with the other
start methods each submit that finds no idle worker starts one.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor

from .. import _job
from . import BackendConfig, OnDone
from ._reap import WorkerTracker, terminate_children

__all__ = ["ProcessBackend"]

logger = logging.getLogger(__name__)


class ProcessBackend:
    """Backend over the stdlib ``ProcessPoolExecutor``."""

    name = "process"

    def __init__(self, config: BackendConfig) -> None:
        self._config = config
        method = config.start_method or ("forkserver" if config.max_tasks_per_child else "fork")
        if method == "fork" and config.max_tasks_per_child is not None:
            raise ValueError("max_tasks_per_child is incompatible with the 'fork' start method")
        self._context = multiprocessing.get_context(method)
        if method == "forkserver":
            # Workers forked by the forkserver start with our job module loaded.
            self._context.set_forkserver_preload(["subproc_executor._job"])
        # Only a forked worker inherits the sidecar's pipes; in a spawned one
        # the same numbers may name the pool's own descriptors.
        self._close_fds = config.close_fds if method == "fork" else ()
        self._pool: ProcessPoolExecutor | None = None
        self._tracker = WorkerTracker()

    def start(self) -> None:
        if self._pool is not None:
            return
        cfg = self._config
        kwargs = {}
        if cfg.max_tasks_per_child is not None:
            kwargs["max_tasks_per_child"] = cfg.max_tasks_per_child
        self._pool = ProcessPoolExecutor(
            cfg.max_workers,
            mp_context=self._context,
            initializer=_job.worker_init,
            initargs=(cfg.pickler, self._close_fds, cfg.initializer, cfg.notify),
            **kwargs,
        )
        if cfg.max_tasks_per_child is None:
            # Warm start. Not with max_tasks_per_child: the pool would count
            # the warm-up as each worker's first task.
            for _ in range(cfg.max_workers):
                self._pool.submit(_job.run_batch, cfg.pickler, (), ())
        self._tracker.live_pids()

    def submit(self, job_ids: Sequence[int], payloads: Sequence[bytes], on_done: OnDone) -> None:
        if self._pool is None:
            self.start()
        assert self._pool is not None
        fut = self._pool.submit(_job.run_batch, self._config.pickler, job_ids, payloads)

        def done(f: Future[list[bytes]]) -> None:
            if f.cancelled():  # a reset cancelled it before it started
                on_done(CancelledError("the pool was reset before this batch started"))
                return
            exc = f.exception()
            on_done(exc if exc is not None else f.result())

        fut.add_done_callback(done)

    def worker_pids(self) -> list[int]:
        return self._tracker.live_pids() if self._pool is not None else []

    def worker_exitcodes(self) -> dict[int, int | None]:
        return self._tracker.exitcodes()

    def quiesce(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def reset(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            terminate_children()
            # Join the old pool's threads: the new pool may fork, which must
            # happen with no other thread alive.
            pool.shutdown(wait=True)
        self._tracker.forget_dead()
        self.start()

    def shutdown(self, *, kill: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            pool.shutdown(wait=False, cancel_futures=True)
            terminate_children()
        pool.shutdown(wait=True)
