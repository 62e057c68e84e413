"""Turning what comes back for a job into a value or an exception, in the parent.

A RESULT frame carries the outcome bytes a worker made (the job's timing, a
``messages.OutcomeTag`` and a value, or an ``ErrorRecord`` describing the
job's exception). A
JOB_ERROR frame carries the sidecar's ``messages.JobError``: a failure outside
the job (a dead worker, a refused batch, a cancellation). Nothing here
raises: every failure to decode becomes the exception the job's future gets.
"""

from __future__ import annotations

import importlib
import mmap
import sys
from concurrent.futures import CancelledError

from ..errors import (
    BrokenSubprocExecutor,
    InitializerFailedError,
    JobTimeoutError,
    RemoteError,
    WorkerDiedError,
    WorkerMemoryError,
    remote_traceback,
)
from ..wire import shm
from ..wire.messages import (
    ErrorRecord,
    JobError,
    JobErrorKind,
    OutcomeTag,
    decode_error_outcome,
    encode_error_outcome,
)
from ..wire.progress import OUTCOME_TIMING_SIZE
from ..wire.protocol import ProtocolError
from ..wire.record import Record
from ..worker.pickling import Pickler

__all__ = ["Payload", "Value", "add_note", "claim", "decode_result", "job_error"]

_SPILLED_TAG = bytes([OutcomeTag.SPILLED])
# Where the OutcomeTag sits: after the job's timing (wire.progress).
_TAG_AT = OUTCOME_TIMING_SIZE


# A RESULT payload as the reader hands it on: the frame's bytes, or the
# mapping of the shared memory segment they named.
Payload = bytes | mmap.mmap


def claim(job_id: int, payload: bytes) -> Payload:
    """A RESULT payload with its outcome taken out of shared memory if it names
    a segment (mapped and unlinked here, whether or not the job still waits).
    Never raises: a segment that cannot be read becomes an outcome saying so."""
    if payload[_TAG_AT : _TAG_AT + 1] != _SPILLED_TAG:
        return payload
    name = bytes(payload[_TAG_AT + 1 :]).decode("ascii", "replace")
    try:
        return shm.claim(name)
    except OSError as exc:
        message = (
            f"job {job_id} ran, but its result was lost: the shared memory segment "
            f"{shm.SHM_DIR}/{name} holding it could not be read ({exc}). Something removed it, "
            "or /dev/shm is not shared with the workers; pass shm_threshold=None to use the pipes"
        )
        return payload[:_TAG_AT] + encode_error_outcome(
            OutcomeTag.ERROR,
            ErrorRecord(None, "subproc_executor.errors.RemoteError", message, "", "reading the result", None),
        )


class Value(Record):
    """A job's return value (a box, since the value may itself be an exception)."""

    value: object


def decode_result(job_id: int, payload: Payload, pickler: Pickler) -> Value | BaseException:
    """A RESULT frame's payload: the job's value, or the exception its future gets.

    An ``InitializerFailedError`` means the worker's initializer had raised;
    the caller breaks the executor, as the stdlib does.
    """
    tag = payload[_TAG_AT] if len(payload) > _TAG_AT else -1
    if tag == OutcomeTag.VALUE:
        try:
            # Views released on the way out: a traceback that keeps the
            # loader's frame must not keep the mapping exported (unclosable).
            with memoryview(payload) as whole, whole[_TAG_AT + 1 :] as body:
                return Value(pickler.loads(body))  # type: ignore[arg-type]
        except BaseException as exc:  # even SystemExit from a __reduce__: it fails this job only
            err = BrokenSubprocExecutor(
                f"job {job_id} ran, but its result could not be unpickled in the parent: "
                f"{type(exc).__name__}: {exc}. As ProcessPoolExecutor does, this raises "
                "BrokenProcessPool; unlike it, only this job failed and the executor keeps serving. "
                "Return objects the parent can unpickle",
                job_id=job_id,
            )
            err.__cause__ = exc
            return err
    payload = bytes(payload[_TAG_AT:])  # not a value: small, or an error worth a copy
    if tag == OutcomeTag.ERROR:
        return rebuild_exception(payload, pickler)
    if tag == OutcomeTag.JOB_UNREADABLE:
        cause = rebuild_exception(payload, pickler)
        unreadable = BrokenSubprocExecutor(
            f"job {job_id} could not be unpickled in the worker, so it did not run: "
            f"{type(cause).__name__}: {cause}. As ProcessPoolExecutor does, this raises "
            "BrokenProcessPool; unlike it, only this job failed and the executor keeps serving. "
            "Make the function and its arguments importable in the workers",
            job_id=job_id,
        )
        unreadable.__cause__ = cause
        return unreadable
    if tag == OutcomeTag.INIT_FAILED:
        cause = rebuild_exception(payload, pickler)
        broken = InitializerFailedError(
            f"the initializer raised in a worker ({cause!r}); as with ProcessPoolExecutor the "
            "executor is now broken: fix the initializer and create a new executor",
            job_id=job_id,
        )
        broken.__cause__ = cause
        return broken
    return RemoteError("ProtocolError", f"job {job_id}: outcome with unknown tag {tag}")


def rebuild_exception(payload: bytes, pickler: Pickler) -> BaseException:
    """The job's exception from an ErrorRecord: itself, else its type rebuilt
    from its args, else a RemoteError carrying its text."""
    try:
        exc_bytes, type_name, message, tb, stage, args_bytes = decode_error_outcome(payload)
    except ProtocolError as bad:
        return RemoteError("ProtocolError", str(bad))
    exc: BaseException | None = None
    reason = "it could not be pickled in the worker"
    if exc_bytes is not None:
        try:
            loaded = pickler.loads(exc_bytes)
        except BaseException as load_exc:  # even SystemExit: it must fail only this job
            reason = f"unpickling it in the parent raised {load_exc!r}"
            exc = _rebuild_from_args(type_name, args_bytes, pickler)
        else:
            if isinstance(loaded, BaseException):
                exc = loaded
    if exc is None:
        exc = RemoteError(type_name, message, tb, reason)
    if stage != "running the job":
        add_note(exc, f"raised while {stage}")
    exc.__cause__ = remote_traceback(tb)
    return exc


def job_error(job_id: int, payload: bytes) -> BaseException:
    """A JOB_ERROR frame's payload: the error for a job that failed outside its own code."""
    try:
        info = JobError.decode(payload)
    except ProtocolError as exc:
        err = BrokenSubprocExecutor(
            f"job {job_id} failed, and the sidecar's account of why is unreadable: {exc}"
        )
        err.__cause__ = exc
        return err
    if info.kind is JobErrorKind.CANCELLED:
        return CancelledError(info.message)
    if info.kind is JobErrorKind.TIMEOUT:
        return JobTimeoutError(
            f"{info.message}. Other jobs were not touched; raise the limit with "
            "options(timeout=...) or job_timeout= if the job needs longer",
            job_id=job_id,
            limit=info.limit,
            pid=info.pid,
        )
    if info.kind is JobErrorKind.MEMORY:
        return WorkerMemoryError(
            f"{info.message}. Other jobs were not touched; raise memory_limit if the job needs more",
            job_id=job_id,
            pid=info.pid,
            exitcode=info.exitcode,
            limit=None if info.limit is None else int(info.limit),
            peak=info.peak,
        )
    if info.kind is JobErrorKind.WORKER_DIED:
        return WorkerDiedError(
            f"{info.message}. The job may have crashed its worker (a segfault, os._exit, a signal, or "
            "the OOM killer); the executor replaced the worker and keeps serving",
            job_id=job_id,
            pid=info.pid,
            exitcode=info.exitcode,
        )
    return BrokenSubprocExecutor(f"job {job_id} could not run: {info.message}", job_id=job_id)


def _rebuild_from_args(type_name: str, args_bytes: bytes | None, pickler: Pickler) -> BaseException | None:
    """An exception of the original type with the original args, made without
    calling ``__init__`` (whose signature is what broke unpickling). None if
    the type cannot be found or the args cannot be loaded."""
    if args_bytes is None:
        return None
    try:
        cls = _import_qualified(type_name)
        args = pickler.loads(args_bytes)
        if not (isinstance(cls, type) and issubclass(cls, BaseException) and isinstance(args, tuple)):
            return None
        exc = cls.__new__(cls, *args)
        exc.args = args
    except BaseException:
        return None
    return exc


def _import_qualified(name: str) -> object:
    """Import "pkg.mod.Outer.Inner": the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj: object = sys.modules.get(module_name) or importlib.import_module(module_name)
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {name}")


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; on 3.10, which lacks it, the same ``__notes__``
    list by hand (readable by code, though 3.10's tracebacks do not print it)."""
    try:
        add = getattr(exc, "add_note", None)  # 3.11+
        if add is not None:
            add(note)
            return
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list):
            notes.append(note)
        else:
            exc.__notes__ = [note]  # type: ignore[attr-defined]
    except Exception:
        pass  # an exception type that refuses attributes keeps its message only
