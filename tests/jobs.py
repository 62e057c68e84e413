"""Job functions for the tests. A light module (stdlib only) so every worker,
whatever its start method, imports it quickly by reference."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
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


# The write(2) syscall number, for reading /proc/<pid>/task/<tid>/syscall.
_WRITE_SYSCALL = {"x86_64": "1", "aarch64": "64"}.get(os.uname().machine)


def result_then_killed_mid_write(nbytes: int, into_shm: bool = False) -> bytes:
    """Return ``nbytes`` bytes, and SIGKILL this worker while it is writing
    them out: the reader is left with half a message.

    Through a pipe, a thread watches the worker's main thread and kills the
    process once it has sat in write(2) for two looks in a row (a big result
    fills the pipe, so the write blocks until the reader drains it). Without
    /proc (or on an unknown architecture) it kills after a short delay
    instead: the write of a big result is then still most likely in
    progress. ``into_shm``: it kills as soon as this worker's result segment
    appears in /dev/shm, that is, while the segment is being written.
    """
    import threading

    main_tid = threading.get_native_id()
    path = f"/proc/self/task/{main_tid}/syscall"

    def in_write() -> bool:
        try:
            with open(path) as f:
                return f.read().split(maxsplit=1)[0] == _WRITE_SYSCALL
        except (OSError, IndexError):
            return False

    def shm_killer() -> None:
        mark = f"-{os.getpid()}-"
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if any(n.startswith("spx-") and mark in n for n in os.listdir("/dev/shm")):
                break
            time.sleep(0.0002)
        os.kill(os.getpid(), signal.SIGKILL)

    def killer() -> None:
        deadline = time.monotonic() + 30.0
        seen = 0
        while time.monotonic() < deadline:
            seen = seen + 1 if _WRITE_SYSCALL is not None and in_write() else 0
            if seen >= 2:
                break
            time.sleep(0.0002)
            if _WRITE_SYSCALL is None and time.monotonic() > deadline - 29.99:
                break
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=shm_killer if into_shm else killer, daemon=True).start()
    return b"r" * nbytes


# -- faults (tests/test_failures.py) -------------------------------------------------


def segfault() -> None:
    """Die of SIGSEGV, quietly: no faulthandler dump, no core file."""
    import faulthandler

    faulthandler.disable()
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    sigsegv = getattr(faulthandler, "_sigsegv", None)
    if sigsegv is not None:
        sigsegv()
    os.kill(os.getpid(), signal.SIGSEGV)


def write_pid(path: str | os.PathLike[str]) -> int:
    """Write our pid to ``path`` atomically (a reader never sees half of it)."""
    pid = os.getpid()
    tmp = f"{os.fspath(path)}.{pid}.tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.replace(tmp, path)
    return pid


def read_pid(path: str | os.PathLike[str], timeout: float = 30.0) -> int:
    """Wait for ``path`` (written by write_pid) and return the pid in it."""
    if not wait_for_path(path, timeout):
        raise TimeoutError(f"{path} never appeared")
    return int(Path(path).read_text())


def die(pid_path: str, how: str) -> None:
    """Record our pid (appending a line to ``pid_path``.log each run) and
    write it to ``pid_path``, then kill this worker: "sigkill", "exit3" or "segv"."""
    append_line(f"{pid_path}.log", str(os.getpid()))
    write_pid(pid_path)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit3":
        os._exit(3)
    elif how == "segv":
        segfault()
    raise ValueError(f"unknown way to die: {how!r}")


def block_with_pid(pid_path: str, gate: str, value: object = None, timeout: float = 60.0) -> object:
    """Write our pid to ``pid_path`` (the start signal), then wait for ``gate``."""
    write_pid(pid_path)
    if not wait_for_path(gate, timeout):
        raise TimeoutError(f"gate {gate} never opened")
    return value


def ignore_sigterm_and_block(pid_path: str, gate: str, timeout: float = 60.0) -> int:
    """Ignore SIGTERM (only SIGKILL ends us), announce our pid, wait for ``gate``."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    block_with_pid(pid_path, gate, timeout=timeout)
    return os.getpid()


def print_and_block(marker: str, pid_path: str, gate: str) -> None:
    """Write ``marker`` to stderr (flushed: it must reach the log), then block."""
    import sys

    print(marker, file=sys.stderr, flush=True)
    block_with_pid(pid_path, gate)


def make_lock() -> object:
    """A result that cannot be pickled."""
    import threading

    return threading.Lock()


def instantiate(cls: type) -> object:
    """Return ``cls()``: a result built in the worker, for faults.*AtPickle/*AtUnpickle."""
    return cls()


def exit_job(message: str = "job called sys.exit") -> None:
    raise SystemExit(message)


class UnpicklableError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        import threading

        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable_error(message: str) -> None:
    raise UnpicklableError(message)


class TwoArgError(Exception):
    """Pickles, but cannot be unpickled: pickle calls TwoArgError("a-b")."""

    def __init__(self, a: object, b: object) -> None:
        super().__init__(f"{a}-{b}")


def raise_two_arg_error(a: object, b: object) -> None:
    raise TwoArgError(a, b)


class JobAbort(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt."""


def raise_base_exception(kind: str) -> None:
    if kind == "SystemExit":
        raise SystemExit(7)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt("job interrupted")
    raise JobAbort("job aborted")


# -- lifecycle (tests/test_lifecycle.py) -------------------------------------------------


def print_to_stderr(text: str) -> str:
    """Write ``text`` to this worker's stderr, flushed, and return it."""
    import sys

    print(text, file=sys.stderr, flush=True)
    return text


def warn_deprecation(text: str) -> str:
    """Issue a DeprecationWarning in the worker (shown only if its filters allow)."""
    import warnings

    warnings.warn(text, DeprecationWarning, stacklevel=1)
    return text


def nested_square(x: int) -> int:
    """From inside a job: build a SubprocExecutor of our own, square ``x`` on it, shut it down."""
    from subproc_executor import SubprocExecutor

    ex = SubprocExecutor(1)
    try:
        result: int = ex.submit(square, x).result(timeout=60)
    finally:
        ex.shutdown(wait=True)
    return result


def raise_holding(cls: type) -> None:
    """Raise a ValueError whose args hold ``cls()``, built in the worker (for
    faults.*AtUnpickle: the exception then misbehaves only in the parent)."""
    raise ValueError(cls())


# -- hardening (tests/test_hardening.py) ---------------------------------------------


def spew_stderr(nbytes: int) -> int:
    """Write ``nbytes`` bytes of text to this worker's stderr, flushed; return ``nbytes``."""
    import sys

    line = "e" * 1023 + "\n"
    for _ in range(nbytes // len(line)):
        sys.stderr.write(line)
    sys.stderr.write("e" * (nbytes % len(line)))
    sys.stderr.flush()
    return nbytes


# -- shared memory (tests/test_shm.py) ------------------------------------------------


def shm_names(prefix: str) -> list[str]:
    """Segments in /dev/shm whose names start with ``prefix`` (not a parent's
    owner file, held for its life: see subproc_executor.wire.shm)."""
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix) and not n.endswith("-owner"))


def shm_names_with_arg(prefix: str, data: bytes) -> tuple[list[str], int]:
    """What ``shm_names`` sees while this job's argument (``data``) is in use; and its length."""
    return shm_names(prefix), len(data)


def block_with_arg(pid_path: str, gate: str, data: bytes) -> int:
    """Write our pid to ``pid_path``, then hold a (big) argument until ``gate`` opens; its length."""
    write_pid(pid_path)
    if not wait_for_path(gate, 300):
        raise TimeoutError(f"gate {gate} never opened")
    return len(data)


def append_length(path: str, data: bytes) -> int:
    """Append ``len(data)`` as a line to ``path``: a big job's trace that outlives its future."""
    append_line(path, str(len(data)))
    return len(data)


class Buffered:
    """Pickles its data through a ``pickle.PickleBuffer`` (protocol 5), as NumPy arrays do:
    the pickler then hands a PickleBuffer, which has no len(), to its file's write()."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: object) -> tuple[object, ...]:
        import pickle

        return (Buffered._rebuild, (pickle.PickleBuffer(self.data),))

    @staticmethod
    def _rebuild(buf: bytes) -> Buffered:
        return Buffered(bytes(buf))


def buffered_length(obj: Buffered, n: int) -> Buffered:
    """Check a Buffered argument's length, and return a new one of ``n`` bytes."""
    assert isinstance(obj, Buffered), type(obj)
    return Buffered(bytes(obj.data[:1]) * n)


def loaded_modules(names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` this worker has imported."""
    return sorted(name for name in names if name in sys.modules)


def hold_memory(nbytes: int, pid_path: str, seconds: float = 30.0) -> int:
    """Touch ``nbytes`` of memory, write our pid (the signal that it is held),
    and keep it for ``seconds``."""
    block = bytearray(nbytes)
    for i in range(0, nbytes, 4096):
        block[i] = 1
    write_pid(pid_path)
    time.sleep(seconds)
    return len(block)


def count_into(path: str) -> Iterator[int]:
    """An endless generator that appends each number it yields to ``path``."""
    n = 0
    while True:
        append_line(path, str(n))
        yield n
        n += 1


def getpid_then_sleep(pid_path: str, seconds: float) -> int:
    """Write our pid to ``pid_path``, then sleep."""
    write_pid(pid_path)
    time.sleep(seconds)
    return os.getpid()


def append_then_sleep(path: str, text: str, seconds: float) -> str:
    """Record a run of this job in ``path``, then sleep: a ledger of runs."""
    append_line(path, text)
    time.sleep(seconds)
    return text


_kept: list[bytearray] = []


def keep_memory(nbytes: int) -> int:
    """Grow this worker by ``nbytes`` (touched) and keep it after the job; our pid."""
    block = bytearray(nbytes)
    for i in range(0, nbytes, 4096):
        block[i] = 1
    _kept.append(block)
    return os.getpid()


# -- progress (issue 14) ---------------------------------------------------------------------


def report_steps(n: int, gate: str | None = None) -> int:
    """Report 1..n, each after the previous one reached the parent (a report
    is sent at once only every ``INTERVAL``: wait it out between steps)."""
    from subproc_executor import report_progress
    from subproc_executor.worker import progress

    for i in range(1, n + 1):
        report_progress(i, total=n, message=f"step {i}")
        time.sleep(progress.INTERVAL)
    if gate is not None:
        wait_for_path(gate)
    return n


def report_then_die(started: str) -> None:
    """Report once (sent at once: the job's first report), then crash the worker."""
    from subproc_executor import report_progress

    report_progress(1, total=2, message="about to crash")
    write_pid(started)
    os._exit(3)


def flood_progress(n: int) -> tuple[int, float, int]:
    """Call report_progress ``n`` times: (records written, seconds taken, peak bytes allocated)."""
    import tracemalloc

    from subproc_executor import report_progress
    from subproc_executor.worker import progress

    before = progress.written
    tracemalloc.start()
    start = time.monotonic()
    for i in range(n):
        report_progress(i, n)
    elapsed = time.monotonic() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return progress.written - before, elapsed, peak


def timed_sleep(seconds: float) -> tuple[float, float]:
    """Sleep; (monotonic at the call's start, at its end)."""
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()
