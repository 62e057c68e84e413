"""Job functions for tests/test_stress_model.py.

Light (stdlib only), like ``jobs``, so that every worker imports it quickly by
reference. Every job first appends its id to a ledger file (one line per run,
a single ``write`` on a descriptor opened with ``O_APPEND``), so that the test
can count how many times each job ran, then does what its kind says. A job's
value is derived from its token, so a result that reaches the wrong future
cannot go unnoticed.
"""

from __future__ import annotations

import os
import signal
import time
import zlib


class StressJobError(Exception):
    """What a job of kind "raise" raises; picklable (its args are its state)."""


def record_run(ledger: str, job_id: int) -> None:
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{job_id}\n".encode())
    finally:
        os.close(fd)


def expected_value(kind: str, token: str, size: int = 0) -> object:
    """What a job of ``kind`` returns, computed the same way in the parent."""
    if kind == "value":
        return f"value:{token}"
    if kind == "sleep":
        return f"slept:{token}"
    if kind == "big_arg":
        return f"arg:{token}:{size}:{zlib.crc32(big_bytes(token, size))}"
    if kind == "big_result":
        return big_bytes(token, size)
    if kind == "map":
        return f"item:{token}"
    raise ValueError(f"kind {kind!r} returns no value")


def big_bytes(token: str, size: int) -> bytes:
    unit = token.encode() + b"|"
    return (unit * (size // len(unit) + 1))[:size]


def run(ledger: str, job_id: int, kind: str, token: str, param: object = None) -> object:
    """One job of the model; ``param`` depends on ``kind``."""
    record_run(ledger, job_id)
    if kind == "value":
        return f"value:{token}"
    if kind == "raise":
        raise StressJobError(token)
    if kind == "exit":
        os._exit(7)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # not reached
    if kind == "sleep":
        assert isinstance(param, float)
        time.sleep(param)
        return f"slept:{token}"
    if kind == "big_arg":
        assert isinstance(param, bytes)
        return f"arg:{token}:{len(param)}:{zlib.crc32(param)}"
    if kind == "big_result":
        assert isinstance(param, int)
        return big_bytes(token, param)
    raise ValueError(f"unknown job kind {kind!r}")


def map_item(ledger: str, job_id: int, token: str, seconds: float) -> str:
    """One item of a ``map``: recorded like a job, sleeps, returns its token."""
    record_run(ledger, job_id)
    if seconds:
        time.sleep(seconds)
    return f"item:{token}"
