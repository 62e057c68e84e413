"""Fixtures that build executors for every backend and start method.

One body of tests runs against each entry of ``VARIANTS`` (loky's layout,
done with fixtures instead of mixins). Every executor a test makes is shut
down after it, and the test fails if any process it started is left behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from subproc_executor import SubprocExecutor

# (backend, start method) pairs; None lets the backend choose.
VARIANTS: list[tuple[str, str | None]] = [
    ("process", "fork"),
    ("process", "forkserver"),
    ("process", "spawn"),
    ("loky", None),
    ("pipes", None),
]
VARIANT_IDS = [f"{b}-{m}" if m else b for b, m in VARIANTS]

MakeExecutor = Callable[..., SubprocExecutor]


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    """Pids from ``pids`` still alive after ``timeout`` (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    alive.discard(pid)
            except psutil.NoSuchProcess:
                alive.discard(pid)
        if alive:
            time.sleep(0.02)
    return alive


@pytest.fixture(params=VARIANTS, ids=VARIANT_IDS)
def variant(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    backend, method = request.param
    if backend == "loky":
        pytest.importorskip("loky")
    return backend, method


def _factory(variant: tuple[str, str | None]) -> tuple[MakeExecutor, list[SubprocExecutor]]:
    created: list[SubprocExecutor] = []
    backend, method = variant

    def make(max_workers: int = 2, **kwargs: Any) -> SubprocExecutor:
        kwargs.setdefault("backend", backend)
        if method is not None and "mp_context" not in kwargs:
            kwargs["mp_context"] = method
        ex = SubprocExecutor(max_workers, **kwargs)
        created.append(ex)
        return ex

    return make, created


@pytest.fixture
def make_executor(variant: tuple[str, str | None]) -> Iterator[MakeExecutor]:
    """Build executors of the current variant; shut them down and check for leaks after."""
    before = _children()
    make, created = _factory(variant)
    yield make
    for ex in created:
        ex.shutdown(wait=True, cancel_futures=True)
    leaked = wait_gone(_children() - before)
    assert not leaked, f"processes left behind: {sorted(leaked)}"


@pytest.fixture(scope="module", params=VARIANTS, ids=VARIANT_IDS)
def shared_executor(request: pytest.FixtureRequest) -> Iterator[SubprocExecutor]:
    """One executor per variant for a module's tests that do not change it."""
    backend, method = request.param
    if backend == "loky":
        pytest.importorskip("loky")
    before = _children()
    ex = SubprocExecutor(2, backend=backend, mp_context=method)
    yield ex
    ex.shutdown(wait=True)
    leaked = wait_gone(_children() - before)
    assert not leaked, f"processes left behind: {sorted(leaked)}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
