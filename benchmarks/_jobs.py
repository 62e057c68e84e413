"""The functions benchmark jobs run.

They live in an importable module, never in ``__main__`` or a closure, so every
contender can send them by reference, spawn and forkserver included: a spawned
worker unpickles ``benchmarks._jobs.noop`` by importing this module, which it
finds because the harness puts the repository root on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal
import time
from typing import NoReturn, TypeVar

T = TypeVar("T")


def noop() -> None:
    """Do nothing: what is left to time is the executor's own round trip."""


def identity(x: T) -> T:
    """Return the argument, so a payload crosses the executor in both directions."""
    return x


def pause(seconds: float) -> float:
    """Stand in for a job that takes a while (work, not synchronisation), so a
    crashing neighbour finds it running or queued."""
    time.sleep(seconds)
    return seconds


def kill_self() -> NoReturn:
    """Die the way a segfault or the OOM killer would: no exception, no cleanup."""
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: SIGKILL cannot be caught")


def note_start_then_sleep(path: str, seconds: float) -> float:
    """Write when the job started (``time.monotonic()``, system-wide on Linux)
    to ``path``, then sleep: a job a time limit stops, whose start the parent
    reads afterwards to time the stop against its deadline."""
    start = time.monotonic()
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(repr(start))
    os.replace(tmp, path)
    time.sleep(seconds)
    return start


def start_then_sleep(seconds: float) -> float:
    """Return when the job started (``time.monotonic()``, system-wide on Linux)
    after sleeping ``seconds``: a job of known length, which the parent times
    against its own clock reading just before submit to get the queue wait.
    It sleeps rather than spins so the workers leave the CPU to the parent and
    the sidecar, whose dispatching is what the wait measures."""
    start = time.monotonic()
    time.sleep(seconds)
    return start
