"""Job functions for the tests. A light module (stdlib only) so every worker,
whatever its start method, imports it quickly by reference."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

POLL_SECONDS = 0.005


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0) -> int:
    return a + b


def identity(x: object) -> object:
    return x


def getpid(_: object = None) -> int:
    return os.getpid()


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise KeyError(x)
    return x


def wait_for_path(path: str | os.PathLike[str], timeout: float = 30.0) -> bool:
    """Block until ``path`` exists; False after ``timeout``."""
    deadline = time.monotonic() + timeout
    p = Path(path)
    while not p.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def block_until(started: str, gate: str, value: object = None) -> object:
    """Announce the start by creating ``started``, then wait for ``gate``."""
    Path(started).touch()
    if not wait_for_path(gate, 60):
        raise TimeoutError(f"gate {gate} never opened")
    return value


def append_line(path: str, text: str) -> str:
    with open(path, "a") as f:
        f.write(text + "\n")
    return text


def make_bytes(n: int) -> bytes:
    return b"x" * n


def length(data: bytes) -> int:
    return len(data)


_initialized: object = None


def set_global(value: object) -> None:
    global _initialized
    _initialized = value


def get_global(_: object = None) -> object:
    return _initialized


def failing_initializer() -> None:
    raise RuntimeError("initializer exploded")


def proxy_append(proxy: object, value: object) -> int:
    proxy.append(value)  # type: ignore[attr-defined]
    return len(proxy)  # type: ignore[arg-type]


def kill_self(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)


def sleep_return(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value
