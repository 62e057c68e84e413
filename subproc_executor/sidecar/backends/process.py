"""The stdlib backend: a ``concurrent.futures.ProcessPoolExecutor`` inside the sidecar.

Uses only the pool's public API (see ``_executor_pool`` for what it shares
with the loky backend).
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
        pool.shutdown(wait=False, cancel_futures=True)
