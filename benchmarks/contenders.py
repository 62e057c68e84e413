"""The executors being compared, by name.

Each contender is *loaded* (its modules imported, a constructor returned) apart
from being *constructed*, so the cold-start family can time the constructor
alone and report the import separately. Imports happen inside ``load`` and by
name (``importlib``), so a contender whose package is missing or broken fails
its own cells in its own child, never the harness.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

if TYPE_CHECKING:
    from concurrent.futures import Executor

# Ratios in every table are against this contender, measured in the same run.
BASELINE: Final = "stdlib-fork"


@dataclass(frozen=True)
class Contender:
    """One executor configuration."""

    name: str
    description: str
    # workers -> zero-argument constructor. Imports happen here, not at construction.
    load: Callable[[int], Callable[[], Executor]]
    # Has quiesce()/wakeup(): the idle-memory family also measures after quiesce().
    lifecycle: bool = False
    # The families it is measured in (None: all); the others show a skipped cell.
    families: frozenset[str] | None = None
    # A package it needs; without it its cells are skipped, not failed.
    needs: str | None = None


def _stdlib(method: str) -> Callable[[int], Callable[[], Executor]]:
    def load(workers: int) -> Callable[[], Executor]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context(method)
        return functools.partial(ProcessPoolExecutor, max_workers=workers, mp_context=context)

    return load


def _loky(workers: int) -> Callable[[], Executor]:
    module = importlib.import_module("loky")
    return cast("Callable[[], Executor]", functools.partial(module.ProcessPoolExecutor, max_workers=workers))


def _subproc(backend: str, **options: object) -> Callable[[int], Callable[[], Executor]]:
    def load(workers: int) -> Callable[[], Executor]:
        # By name: the package is being written alongside the harness, and an
        # ImportError must become this contender's error cell.
        module = importlib.import_module("subproc_executor")
        factory = functools.partial(module.SubprocExecutor, max_workers=workers, backend=backend, **options)
        return cast("Callable[[], Executor]", factory)

    return load


CONTENDERS: Final[dict[str, Contender]] = {
    c.name: c
    for c in (
        Contender("stdlib-fork", "concurrent.futures.ProcessPoolExecutor, mp_context fork", _stdlib("fork")),
        Contender(
            "stdlib-forkserver",
            "concurrent.futures.ProcessPoolExecutor, mp_context forkserver",
            _stdlib("forkserver"),
        ),
        Contender(
            "stdlib-spawn", "concurrent.futures.ProcessPoolExecutor, mp_context spawn", _stdlib("spawn")
        ),
        Contender("loky", "loky.ProcessPoolExecutor (its default context)", _loky),
        Contender(
            "subproc-process",
            'SubprocExecutor(backend="process"): stdlib pool inside the sidecar',
            _subproc("process"),
            lifecycle=True,
        ),
        Contender(
            "subproc-loky",
            'SubprocExecutor(backend="loky"): loky pool inside the sidecar',
            _subproc("loky"),
            lifecycle=True,
        ),
        Contender(
            "subproc-pipes",
            'SubprocExecutor(backend="pipes"): our lean pool inside the sidecar',
            _subproc("pipes"),
            lifecycle=True,
        ),
        Contender(
            "subproc-pipes-limits",
            'SubprocExecutor(backend="pipes", job_timeout=3600, cancel_running=True): every job under '
            "a time limit that never fires, so its row shows what per-job control costs",
            _subproc("pipes", job_timeout=3600.0, cancel_running=True),
            lifecycle=True,
        ),
        Contender(
            "subproc-dask",
            'SubprocExecutor(backend="dask"): the sidecar as client of a loopback LocalCluster '
            "(one single-threaded worker process each): what a Dask hop costs",
            _subproc("dask"),
            families=frozenset({"cold-start", "latency", "throughput", "crash"}),
            needs="distributed",
        ),
    )
}
