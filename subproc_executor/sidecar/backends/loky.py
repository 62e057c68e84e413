"""The loky backend: ``loky.ProcessPoolExecutor`` inside the sidecar.

The only module of the package that imports loky. loky starts workers with
fork+exec by default (its "loky" start method), so they inherit nothing from
the sidecar but what it passes on purpose. loky has no ``max_tasks_per_child``:
the parent refuses it at construction (see ``parent.settings``). Its plain
"fork" is unsafe next to its threads, and inside the sidecar no start method
inherits the user's state anyway, so "fork" means loky's own fork+exec.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import cast

from loky import ProcessPoolExecutor as LokyPool
from loky.backend.context import get_context

from ...worker import job
from . import BackendConfig
from ._executor_pool import ExecutorPoolBackend

__all__ = ["LokyBackend"]


class LokyBackend(ExecutorPoolBackend):
    """Backend over loky's ``ProcessPoolExecutor``."""

    name = "loky"

    def __init__(self, config: BackendConfig) -> None:
        if config.max_tasks_per_child is not None:
            raise ValueError("backend 'loky' has no max_tasks_per_child; use backend='pipes'")
        method = config.start_method or "loky"
        if method == "fork":
            method = "loky"  # fork+exec: what fork can safely mean beside loky's threads
        super().__init__(config)
        self._context = get_context(method)

    def _make_pool(self) -> Executor:
        cfg = self._config
        pool = LokyPool(
            cfg.max_workers,
            context=self._context,
            initializer=job.worker_init,
            initargs=(cfg.pickler, (), cfg.initializer, cfg.notify),
        )
        return cast(Executor, pool)

    def _abandon(self, pool: Executor) -> None:
        # loky's shutdown kills its workers itself with kill_workers=True.
        pool.shutdown(wait=False, kill_workers=True)  # type: ignore[call-arg]
