"""Fixtures that build executors for every backend and start method, and the
waits every test module shares.

One body of tests runs against each entry of ``VARIANTS`` (loky's layout,
done with fixtures instead of mixins). Every executor a test makes is shut
down after it, and the test fails if any process it started is left behind.
The bounds below are for things that must happen "soon": reaching one means
a hang, not slowness. No test asserts on elapsed time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from subproc_executor import SubprocExecutor

# A healthy job's answer, including a new sidecar's start, or anything else
# that should happen "soon" (a pool starting, a quiesce finishing, a report).
ANSWER_WITHIN = 30.0
# Futures of a broken process must fail within this; a healthy job answers
# far sooner. Generous, for loaded CI machines, but bounded.
FAIL_WITHIN = 10.0
# Processes that must die with their parent must be gone within this. The
# sidecar escalates SIGTERM -> SIGKILL after a 2 s grace; the rest is margin.
GONE_WITHIN = 5.0
# How often a wait looks again at state it cannot be woken by.
POLL_SECONDS = 0.01

# (backend, start method) pairs; None lets the backend choose.
VARIANTS: list[tuple[str, str | None]] = [
    ("process", "fork"),
    ("process", "forkserver"),
    ("process", "spawn"),
    ("loky", None),
    ("pipes", None),
]
VARIANT_IDS = [f"{b}-{m}" if m else b for b, m in VARIANTS]

# For tests of the sidecar's loop or the parent's bookkeeping, where the
# backend plays a small part (or that are too heavy to run on all five): the
# stdlib fork pool and loky, whose pool is built differently.
TWO_VARIANTS = pytest.mark.parametrize(
    "variant", [("process", "fork"), ("loky", None)], ids=["process-fork", "loky"], indirect=True
)
# For heavy tests where our own pool and the stdlib's behave differently.
PROCESS_AND_PIPES = pytest.mark.parametrize(
    "variant", [("process", "fork"), ("pipes", None)], ids=["process-fork", "pipes"], indirect=True
)
ONLY_PROCESS_FORK = pytest.mark.parametrize(
    "variant", [("process", "fork")], ids=["process-fork"], indirect=True
)

MakeExecutor = Callable[..., SubprocExecutor]


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def wait_gone(pids: set[int], timeout: float = 2 * GONE_WITHIN) -> set[int]:
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
            time.sleep(POLL_SECONDS)
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
