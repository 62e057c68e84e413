"""What runs inside a worker: decode a job, call it, encode the outcome.

The functions here run in the backend's worker processes. They are the only
place where user payloads are unpickled besides the parent. Each returns
bytes and never raises: an exception escaping into the backend would be
reported against a whole batch, or break the pool, instead of failing one job.

Outcome bytes (opaque to the sidecar, decoded by ``parent.outcome``) are an
``OutcomeTiming`` (``wire.progress``: the job's start and end here, the
worker's pid), a ``messages.OutcomeTag`` byte and then the pickled value, or an
``ErrorRecord``: the exception pickled by the user's pickler when possible,
its ``args`` pickled apart, and plain strings that always survive. The parent
loads the exception; if that fails (an ``__init__`` whose signature does not
match its ``args``, the classic way an exception breaks unpickling) it
rebuilds the original type from ``args`` without calling ``__init__``;
failing that, it raises a ``RemoteError`` stand-in carrying the strings.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence

from ..wire import shm
from ..wire.fdtools import open_pidfd
from ..wire.messages import (
    SAFE_PATH_ADDED_ENV,
    SHM_ENV,
    SIDECAR_PID_ENV,
    ErrorRecord,
    OutcomeTag,
    StartRecord,
    encode_error_outcome,
)
from ..wire.progress import OUTCOME_TIMING_SIZE, pack_timing
from . import progress
from .pickling import DEFAULT_PICKLER, dump_into, resolve_pickler

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["announce", "call_chunk", "run_batch", "run_initializer", "run_one", "worker_init"]

_VALUE_TAG = bytes([OutcomeTag.VALUE])
_SPILLED_TAG = bytes([OutcomeTag.SPILLED])
# Picklers whose loads() takes any buffer, so a job in shared memory is
# loaded from its mapping without a copy; others get bytes.
_BUFFER_PICKLERS = frozenset({DEFAULT_PICKLER, "pickle", "cloudpickle"})

# Set once per worker by worker_init when the user's initializer raised: every
# job on this worker then answers with it instead of running (the stdlib
# instead kills the worker, which we cannot pin on a job).
_init_failure: bytes | None = None
# Write end of the sidecar's start-record pipe (a multiprocessing
# Connection), set by worker_init. Each job announces itself on it before it
# runs (a messages.StartRecord, plus the Connection's 4-byte length prefix,
# far below PIPE_BUF, so concurrent workers' writes never interleave).
_notify: Any = None
# From SHM_ENV, set by worker_init: outcomes of at least _shm_threshold bytes
# go back through a segment named _shm_prefix + ... (wire.shm); None: pipes only.
_shm_threshold: int | None = None
_shm_prefix = ""


def _error_bytes(tag: OutcomeTag, pickler_name: str, exc: BaseException, stage: str) -> bytes:
    """Encode ``exc``; never raises."""
    try:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:
        tb = "<traceback could not be formatted>\n"
    try:
        message = str(exc)
    except BaseException:
        message = "<str() of the exception raised>"
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    exc_bytes: bytes | None
    args_bytes: bytes | None
    try:
        # The traceback object does not pickle; the text above replaces it.
        exc.__traceback__ = None
        exc_bytes = resolve_pickler(pickler_name).dumps(exc)
    except BaseException:
        exc_bytes = None
    try:
        args_bytes = resolve_pickler(pickler_name).dumps(exc.args)
    except BaseException:
        args_bytes = None
    try:
        return encode_error_outcome(tag, ErrorRecord(exc_bytes, type_name, message, tb, stage, args_bytes))
    except BaseException:  # a str subclass whose __str__ raises, say
        return encode_error_outcome(tag, ErrorRecord(None, type_name, "<unprintable>", tb, stage, None))


def run_one(pickler_name: str, payload: bytes, job_id: int = 0, started: float = 0.0, pid: int = 0) -> bytes:
    """Run one job; return its outcome bytes. Never raises.

    ``started``: when the job was announced (``announce``'s return), else now;
    ``pid``: this worker's, else looked up."""
    if not started:
        started = time.monotonic()
    if not pid:
        pid = os.getpid()
    if _init_failure is not None:
        return pack_timing(started, started, pid) + _init_failure
    try:
        pickler = resolve_pickler(pickler_name)
        job: Any = _load_job(pickler_name, payload)
        fn, args, kwargs = job
    except BaseException as exc:
        head = pack_timing(started, time.monotonic(), pid)
        return head + _error_bytes(
            OutcomeTag.JOB_UNREADABLE, pickler_name, exc, "unpickling the job in the worker"
        )
    progress.begin(job_id, started)
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:
        # BaseException too: a job's SystemExit or KeyboardInterrupt fails the
        # job, not the worker (the stdlib would lose the worker and the pool).
        progress.end()
        head = pack_timing(started, time.monotonic(), pid)
        return _spill(job_id, head + _error_bytes(OutcomeTag.ERROR, pickler_name, exc, "running the job"))
    progress.end()
    head = pack_timing(started, time.monotonic(), pid)
    del job, fn, args, kwargs  # a big argument need not outlive the call
    try:
        if _shm_threshold is None:
            return head + _VALUE_TAG + pickler.dumps(value)
        prefix = f"{_shm_prefix}r{job_id}-{pid}-"
        sink = dump_into(pickler, value, lambda: shm.Sink(_shm_threshold, prefix, head + _VALUE_TAG))
        outcome, segment = sink.close()
    except BaseException as exc:
        return head + _error_bytes(OutcomeTag.ERROR, pickler_name, exc, "pickling the result in the worker")
    if segment is None:
        return outcome
    segment.detach()  # the parent unlinks it once it has read it
    return head + _SPILLED_TAG + segment.name.encode("ascii")


def _load_job(pickler_name: str, payload: bytes) -> object:
    """The job's (fn, args, kwargs), from its bytes or from the segment they name."""
    name = shm.job_ref_name(payload)
    if name is None:
        return resolve_pickler(pickler_name).loads(payload)
    try:
        mapped = shm.map_segment(name)
    except OSError as exc:
        raise RuntimeError(
            f"the job's bytes were sent through shared memory ({shm.SHM_DIR}/{name}), which is gone: {exc}"
        ) from None
    try:
        if pickler_name not in _BUFFER_PICKLERS:
            return resolve_pickler(pickler_name).loads(bytes(mapped))
        with memoryview(mapped) as view:
            return resolve_pickler(pickler_name).loads(view)  # type: ignore[arg-type]
    finally:
        shm.close_mapping(mapped)


def _spill(job_id: int, outcome: bytes) -> bytes:
    """``outcome`` (timing head included), or its head and a reference to a
    segment holding it whole if it is big."""
    if _shm_threshold is None or len(outcome) < _shm_threshold:
        return outcome
    sink = shm.Sink(_shm_threshold, f"{_shm_prefix}r{job_id}-{os.getpid()}-")
    sink.write(outcome)
    data, segment = sink.close()
    if segment is None:
        return data
    segment.detach()  # the parent unlinks it once it has read it
    return outcome[:OUTCOME_TIMING_SIZE] + _SPILLED_TAG + segment.name.encode("ascii")


def announce(job_id: int, pid: int) -> float:
    """Tell the sidecar this worker starts ``job_id`` now (a StartRecord);
    returns the time it gave. Never raises."""
    now = time.monotonic()
    if _notify is not None:
        try:
            _notify.send_bytes(StartRecord(job_id, pid, now).encode())
        except (OSError, ValueError):
            pass  # the sidecar is going away; the job still runs
    return now


def run_batch(pickler_name: str, job_ids: Sequence[int], payloads: Sequence[bytes]) -> list[bytes]:
    """Run jobs one after another in this worker; one outcome each. Never raises."""
    out = []
    pid = os.getpid()
    for job_id, payload in zip(job_ids, payloads, strict=True):
        started = announce(job_id, pid)
        out.append(run_one(pickler_name, payload, job_id, started, pid))
    return out


def call_chunk(fn: Callable[..., object], chunk: Sequence[tuple[object, ...]]) -> list[object]:
    """``map``'s unit of work: ``fn`` over a chunk of argument tuples.

    As with the stdlib, the first exception fails the whole chunk.
    """
    return [fn(*args) for args in chunk]


def worker_init(
    pickler_name: str, close_fds: Sequence[int], initializer: bytes | None, notify: Any = None
) -> None:
    """First thing every worker runs. Never raises (a raise would break the pool).

    Closes the sidecar's pipe ends that a forked worker inherits: if a worker
    held the sidecar->parent write end, the parent would never see EOF when the
    sidecar dies (PyTorch's SubprocPool hang, PR #189290). Ignores SIGINT:
    Ctrl-C belongs to the parent, which decides what to do with the pool.
    Then runs the user's initializer, recording a failure for run_one to report.
    """
    global _init_failure, _notify, _shm_threshold, _shm_prefix
    _notify = notify
    progress.attach(notify, os.getpid())
    threshold, _, prefix = os.environ.pop(SHM_ENV, "").partition(":")
    if threshold.isdigit() and prefix:
        _shm_threshold, _shm_prefix = max(1, int(threshold)), prefix
    if os.environ.pop(SAFE_PATH_ADDED_ENV, None) is not None:
        os.environ.pop("PYTHONSAFEPATH", None)  # the jobs' subprocesses see the user's environment
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):  # not the main thread: nothing to do
        pass
    _set_parent_death_signal()
    _watch_sidecar()
    _init_failure = run_initializer(pickler_name, initializer)


def run_initializer(pickler_name: str, initializer: bytes | None) -> bytes | None:
    """Run the user's (initializer, initargs); the outcome bytes (without a
    timing head) every job of this worker answers with if it raised, else
    None. Never raises. Apart from ``worker_init`` for workers that are not
    our children (``worker.remote``)."""
    if initializer is None:
        return None
    try:
        init: Any = resolve_pickler(pickler_name).loads(initializer)
        fn, args = init
        fn(*args)
    except BaseException as exc:
        return _error_bytes(OutcomeTag.INIT_FAILED, pickler_name, exc, "running the initializer")
    return None


def _watch_sidecar() -> None:
    """Exit when the sidecar dies, where the parent-death signal cannot see it.

    A worker forked by a forkserver is the forkserver's child, not the
    sidecar's, and the forkserver outlives a killed sidecar for as long as
    its workers hold its pipes. So such a worker watches the sidecar itself:
    a daemon thread blocks on a pidfd (Linux 5.3+) and ends the worker when
    the sidecar is gone. Elsewhere only the sidecar's own cleanup applies.
    """
    try:
        sidecar_pid = int(os.environ.get(SIDECAR_PID_ENV, ""))
    except ValueError:
        return  # not run by our sidecar (a backend tested on its own)
    if sidecar_pid == os.getppid():
        return  # the parent-death signal covers a direct child
    pidfd = open_pidfd(sidecar_pid)
    if pidfd is None:
        if getattr(os, "pidfd_open", None) is not None:
            os._exit(1)  # it is already gone
        return  # no pidfd here: only the sidecar's own cleanup applies

    def watch() -> None:
        select.select([pidfd], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="subproc_executor-sidecar-watch", daemon=True).start()


def _set_parent_death_signal() -> None:
    """Linux: be sent SIGKILL when our parent (the sidecar, or its forkserver)
    dies, whatever killed it. A backstop to the sidecar's own cleanup;
    unavailable on other platforms, where only that cleanup applies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    # The parent may have died before prctl: then we were reparented already.
    if os.getppid() == 1:
        os._exit(1)
