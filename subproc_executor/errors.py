"""The exceptions the executor raises. Each refines a stdlib one, so code that
catches what ``ProcessPoolExecutor`` raises keeps working.

    BrokenProcessPool (stdlib)
      BrokenSubprocExecutor        the pool could not run a job; .job_id
        WorkerDiedError            a worker died running the job; .pid, .exitcode
          WorkerMemoryError        killed when it passed the job's memory_limit; .limit, .peak
        SidecarDiedError           the sidecar exited; .pid, .returncode, .output_tail
        InitializerFailedError     the initializer raised in a worker; the executor is broken
    TimeoutError (builtin)
      JobTimeoutError              killed when it ran past its timeout; .job_id, .limit, .pid
    RemoteError (Exception)        a job's exception that could not cross back intact
    ProtocolError (Exception)      the byte stream between parent and sidecar is corrupt

``docs/errors.md`` says when each is raised and what to do about it.
"""

from __future__ import annotations

import signal
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback

from .wire.protocol import ProtocolError

__all__ = [
    "BrokenSubprocExecutor",
    "InitializerFailedError",
    "JobTimeoutError",
    "ProtocolError",
    "RemoteError",
    "RemoteTraceback",
    "SidecarDiedError",
    "WorkerDiedError",
    "WorkerMemoryError",
    "describe_exitcode",
    "remote_traceback",
]


def describe_exitcode(exitcode: int | None) -> str:
    """'signal SIGKILL (-9)' or 'exit code 3': how a process ended, for messages."""
    if exitcode is None:
        return "an unknown exit status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"signal {name} ({exitcode})"
    return f"exit code {exitcode}"


class BrokenSubprocExecutor(BrokenProcessPool):
    """The executor could not run a job to completion for a reason outside the job.

    Subclasses ``BrokenProcessPool`` so existing ``except`` clauses keep working.
    Unlike the stdlib, the executor itself usually keeps serving: see the subclass.
    """

    def __init__(self, message: str, *, job_id: int | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class WorkerDiedError(BrokenSubprocExecutor):
    """The worker running this job died (signal, ``os._exit``, crash, OOM killer).

    Only the job that was running on it fails; the executor replaces the
    worker and keeps serving.
    """

    def __init__(
        self, message: str, *, job_id: int | None = None, pid: int | None = None, exitcode: int | None = None
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.pid = pid
        self.exitcode = exitcode


class WorkerMemoryError(WorkerDiedError):
    """The job's worker passed the job's ``memory_limit`` (bytes resident) and
    was killed. Only this job fails; a new worker takes the dead one's place."""

    def __init__(
        self,
        message: str,
        *,
        job_id: int | None = None,
        pid: int | None = None,
        exitcode: int | None = None,
        limit: int | None = None,
        peak: int | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id, pid=pid, exitcode=exitcode)
        self.limit = limit
        self.peak = peak


class JobTimeoutError(TimeoutError):
    """The job ran longer than its ``timeout`` (counted from when it started)
    and its worker was killed. Only this job fails; a new worker takes the
    dead one's place. Not a wait's timeout: ``future.result(timeout)`` still
    raises ``concurrent.futures.TimeoutError`` and leaves the job running."""

    def __init__(
        self, message: str, *, job_id: int | None = None, limit: float | None = None, pid: int | None = None
    ) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.limit = limit
        self.pid = pid

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_timeout, (self.args[0] if self.args else "", self.job_id, self.limit, self.pid))


def _rebuild_timeout(
    message: str, job_id: int | None, limit: float | None, pid: int | None
) -> JobTimeoutError:
    return JobTimeoutError(message, job_id=job_id, limit=limit, pid=pid)


class SidecarDiedError(BrokenSubprocExecutor):
    """The sidecar process exited while the job was pending or running."""

    def __init__(
        self,
        message: str,
        *,
        job_id: int | None = None,
        pid: int | None = None,
        returncode: int | None = None,
        output_tail: str = "",
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.pid = pid
        self.returncode = returncode
        self.output_tail = output_tail


class InitializerFailedError(BrokenSubprocExecutor):
    """The ``initializer`` raised in a worker. As with the stdlib, the executor
    is broken from then on: fix the initializer and create a new executor."""


# The formatted traceback of a job's exception, chained as its ``__cause__``
# so that it prints below the local one. The stdlib's own class, so code (and
# CPython's tests) that checks ``type(exc.__cause__) is _RemoteTraceback``
# sees what ProcessPoolExecutor gives: ``.tb`` is the text, quoted as there.
RemoteTraceback = _RemoteTraceback


def remote_traceback(tb: str) -> BaseException:
    """The ``__cause__`` for a job's exception whose traceback text is ``tb``."""
    return RemoteTraceback(f'\n"""\n{tb}"""')  # type: ignore[arg-type]  # typeshed says TracebackType; it is the text


class RemoteError(Exception):
    """A job raised an exception that could not be sent back as itself (it
    failed to pickle in the worker or to unpickle here). Carries what could be
    saved: its type's qualified name, its message and its traceback."""

    def __init__(self, type_name: str, message: str, traceback_text: str = "", reason: str = "") -> None:
        text = f"{type_name}: {message}"
        if reason:
            text += f" (the exception itself could not be sent back: {reason})"
        super().__init__(text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        self.reason = reason

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str, str]]:
        return (type(self), (self.type_name, self.message, self.traceback_text, self.reason))
