"""The exceptions the executor raises. Each refines a stdlib one, so code that
catches what ``ProcessPoolExecutor`` raises keeps working.

    BrokenProcessPool (stdlib)
      BrokenSubprocExecutor        the pool could not run a job; .job_id
        WorkerDiedError            a worker died running the job; .pid, .exitcode
        SidecarDiedError           the sidecar exited; .pid, .returncode, .output_tail
        InitializerFailedError     the initializer raised in a worker; the executor is broken
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
    "ProtocolError",
    "RemoteError",
    "RemoteTraceback",
    "SidecarDiedError",
    "WorkerDiedError",
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
