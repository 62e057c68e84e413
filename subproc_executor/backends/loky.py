"""The loky backend: ``loky.ProcessPoolExecutor`` inside the sidecar.

The only module of the package that imports loky. loky starts workers with
fork+exec by default (its "loky" start method), so they inherit nothing from
the sidecar but what it passes on purpose. loky has no ``max_tasks_per_child``
and its plain "fork" is unsafe next to its threads: the parent refuses both
at construction (see ``BACKEND_LIMITS``), so nothing is silently ignored.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import cast

from loky import ProcessPoolExecutor as LokyPool
from loky.backend.context import get_context

from .. import _job
from . import BackendConfig
from ._executor_pool import ExecutorPoolBackend

__all__ = ["LokyBackend"]


class LokyBackend(ExecutorPoolBackend):
    """Backend over loky's ``ProcessPoolExecutor``."""

    name = "loky"

    def __init__(self, config: BackendConfig) -> None:
        if config.max_tasks_per_child is not None:
            raise ValueError("backend 'loky' has no max_tasks_per_child; use backend='process'")
        method = config.start_method or "loky"
        if method == "fork":
            raise ValueError("backend 'loky' does not support the 'fork' start method; use the default")
        super().__init__(config)
        self._context = get_context(method)

    def _make_pool(self) -> Executor:
        cfg = self._config
        pool = LokyPool(
            cfg.max_workers,
            context=self._context,
            initializer=_job.worker_init,
            initargs=(cfg.pickler, (), cfg.initializer, cfg.notify),
        )
        return cast(Executor, pool)

    def _abandon(self, pool: Executor) -> None:
        # loky's shutdown kills its workers itself with kill_workers=True.
        pool.shutdown(wait=False, kill_workers=True)  # type: ignore[call-arg]
