"""The loky backend: ``loky.ProcessPoolExecutor`` inside the sidecar.

The only module of the package that imports loky. loky starts workers with
fork+exec by default (its "loky" start method), so they inherit nothing from
the sidecar but what it passes on purpose. loky has no ``max_tasks_per_child``
and its plain "fork" is unsafe next to its threads: the parent refuses both
at construction (see ``BACKEND_LIMITS``), so nothing is silently ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future
from typing import Any

from loky import ProcessPoolExecutor as LokyPool
from loky.backend.context import get_context

from .. import _job
from . import BackendConfig, OnDone
from ._reap import WorkerTracker, terminate_children

__all__ = ["LokyBackend"]

logger = logging.getLogger(__name__)


class LokyBackend:
    """Backend over loky's ``ProcessPoolExecutor``."""

    name = "loky"

    def __init__(self, config: BackendConfig) -> None:
        if config.max_tasks_per_child is not None:
            raise ValueError("backend 'loky' has no max_tasks_per_child; use backend='process'")
        method = config.start_method or "loky"
        if method == "fork":
            raise ValueError("backend 'loky' does not support the 'fork' start method; use the default")
        self._config = config
        self._context = get_context(method)
        self._pool: Any = None
        self._tracker = WorkerTracker()

    def start(self) -> None:
        if self._pool is not None:
            return
        cfg = self._config
        self._pool = LokyPool(
            cfg.max_workers,
            context=self._context,
            initializer=_job.worker_init,
            initargs=(cfg.pickler, (), cfg.initializer, cfg.notify),
        )
        for _ in range(cfg.max_workers):
            self._pool.submit(_job.run_batch, cfg.pickler, (), ())
        self._tracker.live_pids()

    def submit(self, job_ids: Sequence[int], payloads: Sequence[bytes], on_done: OnDone) -> None:
        if self._pool is None:
            self.start()
        fut = self._pool.submit(_job.run_batch, self._config.pickler, list(job_ids), list(payloads))

        def done(f: Future[list[bytes]]) -> None:
            if f.cancelled():
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
            pool.shutdown(wait=False, kill_workers=True)
            terminate_children()
            pool.shutdown(wait=True)
        self._tracker.forget_dead()
        self.start()

    def shutdown(self, *, kill: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            pool.shutdown(wait=False, kill_workers=True)
            terminate_children()
        pool.shutdown(wait=True)
