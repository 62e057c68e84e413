"""The stdlib backend: a ``concurrent.futures.ProcessPoolExecutor`` inside the sidecar.

Uses the pool's public API, but for the first half of its shutdown (see
``_begin_shutdown``); ``_executor_pool`` has what it shares with the loky backend.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

from ...worker import job
from . import BackendConfig
from ._executor_pool import ExecutorPoolBackend

__all__ = ["ProcessBackend"]


class ProcessBackend(ExecutorPoolBackend):
    """Backend over the stdlib ``ProcessPoolExecutor``."""

    name = "process"

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        method = config.start_method or ("forkserver" if config.max_tasks_per_child else "fork")
        if method == "fork" and config.max_tasks_per_child is not None:
            raise ValueError("max_tasks_per_child is incompatible with the 'fork' start method")
        self._context = multiprocessing.get_context(method)
        if method == "forkserver":
            # Workers forked by the forkserver start with our job module loaded.
            self._context.set_forkserver_preload(["subproc_executor.worker.job"])
        # Only a forked worker inherits the sidecar's pipes; in a spawned one
        # the same numbers may name the pool's own descriptors.
        self._close_fds = config.close_fds if method == "fork" else ()

    def _make_pool(self) -> Executor:
        cfg = self._config
        kwargs: dict[str, Any] = {}
        if cfg.max_tasks_per_child is not None:
            kwargs["max_tasks_per_child"] = cfg.max_tasks_per_child
        return ProcessPoolExecutor(
            cfg.max_workers,
            mp_context=self._context,
            initializer=job.worker_init,
            initargs=(cfg.pickler, self._close_fds, cfg.initializer, cfg.notify),
            **kwargs,
        )

    def _abandon(self, pool: Executor) -> None:
        _begin_shutdown(pool, cancel_futures=True)

    def _stop_taking_work(self, pool: Executor) -> None:
        _begin_shutdown(pool, cancel_futures=False)


def _begin_shutdown(pool: Executor, *, cancel_futures: bool) -> None:
    """``pool.shutdown(wait=False)``, but the pool keeps its references until
    the ``shutdown(wait=True)`` that follows the join of its manager thread.

    The stdlib's drops ``_processes`` at once, while its manager thread may
    still replace a worker that retired (``max_tasks_per_child``): that thread
    then dies of ``TypeError: object of type 'NoneType' has no len()`` in
    ``_adjust_process_count`` (CPython 3.11 to 3.13) with a traceback on our
    stderr, joins none of its workers, and the sidecar's shutdown waited out
    its bound of 15 s (2 of 8 shutdowns of a forkserver pool with
    ``max_tasks_per_child=1``). Here only the first half of that shutdown is
    done: its flags, under its lock, and the manager thread's wake-up. A pool
    whose ``shutdown`` is not the stdlib's gets the public call.
    """
    p: Any = pool
    if type(pool).shutdown is not ProcessPoolExecutor.shutdown or not all(
        hasattr(p, name) for name in ("_shutdown_lock", "_shutdown_thread", "_executor_manager_thread_wakeup")
    ):
        pool.shutdown(wait=False, cancel_futures=cancel_futures)
        return
    with p._shutdown_lock:
        p._cancel_pending_futures = cancel_futures
        p._shutdown_thread = True
        if p._executor_manager_thread_wakeup is not None:
            p._executor_manager_thread_wakeup.wakeup()
