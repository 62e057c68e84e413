"""Typed payloads: every message body that is not opaque job bytes. Pure.

The frame codec (``protocol``) moves bytes; this module says what the bytes
of each control frame mean. Each record is a frozen ``record.Record`` with
``encode() -> bytes`` and ``decode(bytes)``; a payload that does not match
its schema raises ``ProtocolError`` naming the record and the field, so a
version skew or a corrupt stream is reported, never half-read.

    frame kind   direction            record            body
    INIT         parent -> sidecar    Init              JSON line, b"\\n", initializer bytes
    HELLO        sidecar -> parent    Hello             JSON
    WORKERS      sidecar -> parent    Workers           JSON
    JOB_ERROR    sidecar -> parent    JobError          JSON
    STATUS       sidecar -> parent    Status            JSON
    SHUTDOWN     parent -> sidecar    Shutdown          JSON
    FATAL        sidecar -> parent    Fatal             JSON

Besides frames, two byte layouts cross between processes and live here so
that no process module has to import another's code to read them:

* ``StartRecord``: a worker -> sidecar announcement "job J started on pid P
  at time T", a fixed 20-byte struct (far below PIPE_BUF, so concurrent
  workers' writes never interleave).
* Outcome bytes: what a worker makes of a job and the parent decodes (the
  sidecar only forwards them): the job's timing (``wire.progress.OutcomeTiming``,
  20 bytes), a tag byte (``OutcomeTag``), then the pickled value, or a
  pickled ``ErrorRecord``.

``docs/protocol.md`` documents every schema.

One module, over 450 lines: a table of records that share their JSON
validators (``_JsonRecord`` and the field checkers); what varies is the
schema. To split next: the per-job control records (JobLimits, LimitedJob,
Kill) into wire/limits.py.
"""

from __future__ import annotations

import collections
import enum
import json
import math
import pickle
import struct
from collections.abc import Callable

from .protocol import ProtocolError
from .record import Record, field

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar, Final, NamedTuple

__all__ = [
    "SAFE_PATH_ADDED_ENV",
    "SHM_ENV",
    "SIDECAR_PID_ENV",
    "START_RECORD_SIZE",
    "ErrorRecord",
    "Fatal",
    "Hello",
    "Init",
    "JobError",
    "JobErrorKind",
    "JobLimits",
    "Kill",
    "LimitedJob",
    "OutcomeTag",
    "Shutdown",
    "SidecarSettings",
    "StartRecord",
    "Status",
    "Workers",
    "decode_error_outcome",
    "encode_error_outcome",
]

# Set by the sidecar in its own environment, which its workers inherit: a
# worker watches that pid, and an executor refuses to be built in its sidecar.
SIDECAR_PID_ENV: Final = "SUBPROC_EXECUTOR_SIDECAR_PID"
# Set by the parent when it added PYTHONSAFEPATH=1 to the sidecar's
# environment (so that every Python the sidecar starts, loky's workers too,
# keeps the working directory off its import path); a worker then removes
# both, so the jobs' own subprocesses see the user's environment.
SAFE_PATH_ADDED_ENV: Final = "SUBPROC_EXECUTOR_SAFE_PATH_ADDED"
# Set by the sidecar for its workers (each removes it at start-up):
# "<threshold>:<prefix>", outcomes of at least threshold bytes go back
# through a shared memory segment named prefix + ... (see wire.shm).
SHM_ENV: Final = "SUBPROC_EXECUTOR_SHM"

if TYPE_CHECKING:  # a TypeVar with a string bound costs 2 ms at import (its first compile())
    from typing_extensions import Self

# -- field validators: JSON value -> Python value, or TypeError --------------------------


def _int(v: object) -> int:
    if type(v) is not int:
        raise TypeError(f"expected an integer, got {type(v).__name__}")
    return v


def _nonneg_int(v: object) -> int:
    n = _int(v)
    if n < 0:
        raise TypeError(f"expected an integer >= 0, got {n}")
    return n


def _float(v: object) -> float:
    if type(v) not in (int, float):
        raise TypeError(f"expected a number, got {type(v).__name__}")
    f = float(v)  # type: ignore[arg-type]
    if not math.isfinite(f):
        raise TypeError(f"expected a finite number, got {f}")
    return f


def _bool(v: object) -> bool:
    if type(v) is not bool:
        raise TypeError(f"expected true or false, got {type(v).__name__}")
    return v


def _str(v: object) -> str:
    if type(v) is not str:
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _hex_bytes(v: object) -> bytes:
    try:
        return bytes.fromhex(_str(v))
    except ValueError as exc:
        raise TypeError(f"expected hex digits: {exc}") from None


def _tuple_of(item: Callable[[object], Any]) -> Callable[[object], tuple[Any, ...]]:
    def check(v: object) -> tuple[Any, ...]:
        if type(v) is not list:
            raise TypeError(f"expected a list, got {type(v).__name__}")
        return tuple(item(x) for x in v)

    return check


def _json_object(v: object) -> dict[str, Any]:
    if type(v) is not dict:
        raise TypeError(f"expected a JSON object, got {type(v).__name__}")
    if not all(type(k) is str for k in v):
        raise TypeError("expected string keys")
    return v


def _optional(item: Callable[[object], Any]) -> Callable[[object], Any]:
    def check(v: object) -> Any:
        return None if v is None else item(v)

    return check


def _to_json(v: object) -> object:
    if isinstance(v, tuple):
        return [_to_json(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, enum.Enum):
        return v.value
    return v


class _JsonRecord(Record):
    """A record whose body is one JSON object with a field per record field."""

    # field name -> validator; every field of the dataclass has one.
    SCHEMA: ClassVar[dict[str, Callable[[object], Any]]]

    def encode(self) -> bytes:
        body = {name: _to_json(getattr(self, name)) for name in self.FIELDS}
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Self:
        try:
            body = json.loads(bytes(payload))
        except ValueError as exc:  # UnicodeDecodeError included
            raise ProtocolError(f"{cls.__name__}: payload is not JSON: {exc}") from None
        return cls._from_body(body)

    @classmethod
    def _from_body(cls, body: object) -> Self:
        if type(body) is not dict:
            raise ProtocolError(f"{cls.__name__}: payload is not a JSON object")
        values: dict[str, object] = {}
        for name, check in cls.SCHEMA.items():
            if name not in body:
                raise ProtocolError(f"{cls.__name__}: field {name!r} is missing")
            try:
                values[name] = check(body[name])
            except (TypeError, ValueError) as exc:
                raise ProtocolError(f"{cls.__name__}: field {name!r}: {exc}") from None
        unknown = set(body) - set(cls.SCHEMA)
        if unknown:
            raise ProtocolError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        return cls(**values)


def _split_line(record: str, what: str, payload: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
    """(the JSON line, the opaque bytes after it) of a payload laid out as both."""
    header, newline, rest = bytes(payload).partition(b"\n")
    if not newline:
        raise ProtocolError(f"{record}: no newline after the {what} line")
    return header, rest


# -- INIT ----------------------------------------------------------------------------------


class SidecarSettings(_JsonRecord):
    """What the sidecar needs to build and run its pool, decided in the parent."""

    # The name the user gave (for messages) and the "module:attr" factory it resolved to.
    backend: str
    backend_target: str
    max_workers: int
    # Resolved in the parent for built-in backends; None lets a third-party backend choose.
    start_method: str | None
    max_tasks_per_child: int | None
    # Most jobs the sidecar groups into one backend call (1 when the pool
    # counts a batch as one task and max_tasks_per_child is set).
    max_batch_jobs: int
    # Qualified name of the pickler the workers use.
    pickler: str
    idle_timeout: float | None
    status_interval: float | None
    # multiprocessing's authkey, so Manager proxies made by the parent work in jobs.
    authkey: bytes
    # The parent's import path, installed by the sidecar after its own imports
    # so that workers find the user's modules in the parent's order.
    sys_path: tuple[str, ...]
    log_level: str
    # Outcomes of at least this many bytes come back through shared memory
    # (wire.shm); None: always through the pipes.
    shm_threshold: int | None
    # backend_options=: JSON values, checked in the parent against a built-in
    # backend's accepted keys, passed unchecked to a third-party one.
    backend_options: dict[str, Any] = field(default_factory=dict)

    SCHEMA: ClassVar[dict[str, Callable[[object], Any]]] = {
        "backend": _str,
        "backend_target": _str,
        "max_workers": _nonneg_int,
        "start_method": _optional(_str),
        "max_tasks_per_child": _optional(_nonneg_int),
        "max_batch_jobs": _nonneg_int,
        "pickler": _str,
        "idle_timeout": _optional(_float),
        "status_interval": _optional(_float),
        "authkey": _hex_bytes,
        "sys_path": _tuple_of(_str),
        "log_level": _str,
        "shm_threshold": _optional(_nonneg_int),
        "backend_options": _json_object,
    }


class Init(Record):
    """The INIT frame: settings, then the opaque pickled (initializer, initargs)."""

    settings: SidecarSettings
    initializer: bytes | None = None

    def encode(self) -> bytes:
        return self.settings.encode() + b"\n" + (self.initializer or b"")

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Init:
        header, initializer = _split_line(cls.__name__, "settings", payload)
        return cls(SidecarSettings.decode(header), initializer or None)


# -- sidecar -> parent ---------------------------------------------------------------------


class Hello(_JsonRecord):
    """The sidecar is ready: its pool is built and its workers started."""

    pid: int
    backend: str
    python: str
    worker_pids: tuple[int, ...]

    SCHEMA: ClassVar[dict[str, Callable[[object], Any]]] = {
        "pid": _nonneg_int,
        "backend": _str,
        "python": _str,
        "worker_pids": _tuple_of(_nonneg_int),
    }


class Workers(_JsonRecord):
    """The pool changed: its live workers now, and whether it is quiesced."""

    worker_pids: tuple[int, ...]
    quiesced: bool

    SCHEMA: ClassVar[dict[str, Callable[[object], Any]]] = {
        "worker_pids": _tuple_of(_nonneg_int),
        "quiesced": _bool,
    }


class JobErrorKind(str, enum.Enum):
    """Why a job failed outside its own code."""

    # Dropped before it started (a CANCEL, or the pool was reset before it ran).
    CANCELLED = "cancelled"
    # Its worker died while running it.
    WORKER_DIED = "worker_died"
    # The backend could not take it, or failed it without running it.
    BACKEND = "backend"
    # Killed when it ran past its time limit (``limit``, seconds).
    TIMEOUT = "timeout"
    # Killed when its worker's resident memory passed ``limit`` bytes (``peak`` seen).
    MEMORY = "memory"


def _kind(v: object) -> JobErrorKind:
    try:
        return JobErrorKind(_str(v))
    except ValueError:
        raise TypeError(f"unknown job error kind {v!r}") from None


class JobError(_JsonRecord):
    """A job failed outside user code; the parent turns this into its exception."""

    kind: JobErrorKind
    message: str
    # For WORKER_DIED: the worker, its exit code and that code in words.
    pid: int | None = None
    exitcode: int | None = None
    status: str | None = None
    # The backend's own account, when it gave one.
    detail: str | None = None
    # For TIMEOUT: the limit in seconds; for MEMORY: the limit in bytes.
    limit: float | None = None
    # For MEMORY: the most resident memory seen, in bytes.
    peak: int | None = None

    SCHEMA: ClassVar[dict[str, Callable[[object], Any]]] = {
        "kind": _kind,
        "message": _str,
        "pid": _optional(_nonneg_int),
        "exitcode": _optional(_int),
        "status": _optional(_str),
        "detail": _optional(_str),
        "limit": _optional(_float),
        "peak": _optional(_nonneg_int),
    }


class Status(_JsonRecord):
    """The job named by the frame has been running ``elapsed`` seconds on ``pid``."""

    elapsed: float
    pid: int

    SCHEMA: ClassVar[dict[str, Callable[[object], Any]]] = {"elapsed": _float, "pid": _nonneg_int}


class Fatal(_JsonRecord):
    """The sidecar cannot go on, and why; it exits after sending this."""

    message: str

    SCHEMA: ClassVar[dict[str, Callable[[object], Any]]] = {"message": _str}


# -- parent -> sidecar ---------------------------------------------------------------------


class Shutdown(_JsonRecord):
    """Stop: ``kill=False`` finishes the jobs already sent, ``kill=True`` ends them now.

    ``signal``: with ``kill``, the signal sent to every worker at once
    (``terminate_workers``: SIGTERM, ``kill_workers``: SIGKILL); 0 lets the
    backend stop them its own way (SIGTERM, then SIGKILL after a grace period).
    """

    kill: bool
    signal: int = 0

    SCHEMA: ClassVar[dict[str, Callable[[object], Any]]] = {"kill": _bool, "signal": _nonneg_int}


class JobLimits(_JsonRecord):
    """What may stop a job: ``timeout`` seconds after it started, or its
    worker's resident memory past ``memory_limit`` bytes while it runs."""

    timeout: float | None = None
    memory_limit: int | None = None

    SCHEMA: ClassVar[dict[str, Callable[[object], Any]]] = {
        "timeout": _optional(_float),
        "memory_limit": _optional(_nonneg_int),
    }


class LimitedJob(Record):
    """The SUBMIT_LIMITED frame: the limits as a JSON line, then the opaque job bytes."""

    limits: JobLimits
    payload: bytes

    def encode(self) -> bytes:
        return self.head(self.limits) + self.payload

    @staticmethod
    def head(limits: JobLimits) -> bytes:
        """What precedes the job bytes: the same for every job with these limits."""
        return limits.encode() + b"\n"

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> LimitedJob:
        header, job = _split_line(cls.__name__, "limits", payload)
        return cls(JobLimits.decode(header), job)


class Kill(_JsonRecord):
    """The KILL frame: stop the job now and fail it with ``error``'s kind and message."""

    kind: JobErrorKind
    message: str

    SCHEMA: ClassVar[dict[str, Callable[[object], Any]]] = {"kind": _kind, "message": _str}


# -- worker -> sidecar ---------------------------------------------------------------------

_START: Final = struct.Struct("<Qid")
START_RECORD_SIZE: Final = _START.size  # 20 bytes


# The two tuple records below are typing.NamedTuple for mypy and
# collections.namedtuple at run time: the same class, without importing typing.
if TYPE_CHECKING:

    class _StartFields(NamedTuple):
        job_id: int
        pid: int
        when: float

    class _ErrorFields(NamedTuple):
        exc_bytes: bytes | None
        type_name: str
        message: str
        traceback: str
        # What the worker was doing: "running the job", "unpickling the job in the worker", ...
        stage: str
        args_bytes: bytes | None

else:
    _StartFields = collections.namedtuple("_StartFields", "job_id pid when")
    _ErrorFields = collections.namedtuple(
        "_ErrorFields", "exc_bytes type_name message traceback stage args_bytes"
    )


class StartRecord(_StartFields):
    """A worker announces a job it starts: the sidecar learns which job a dead
    worker was running, and for how long a slow job has been running.
    ``when`` is ``time.monotonic()`` in the worker (system-wide on Linux)."""

    __slots__ = ()

    def encode(self) -> bytes:
        return _START.pack(self.job_id, self.pid, self.when)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview, offset: int = 0) -> StartRecord:
        try:
            return cls(*_START.unpack_from(data, offset))
        except struct.error as exc:
            raise ProtocolError(f"StartRecord: {exc}") from None


# -- worker -> parent: outcome bytes -------------------------------------------------------


class OutcomeTag(enum.IntEnum):
    """The byte of a job's outcome bytes after their timing head (``wire.progress``)."""

    VALUE = 0  # then pickler.dumps(value)
    ERROR = 1  # then an ErrorRecord: the job (or decoding it) raised
    INIT_FAILED = 2  # then an ErrorRecord: the worker's initializer had raised
    JOB_UNREADABLE = 3  # then an ErrorRecord: the job's bytes could not be loaded in the worker
    SPILLED = 4  # then the name of a shared memory segment holding the whole outcome (wire.shm)


class ErrorRecord(_ErrorFields):
    """A job's exception as it crosses back: the exception pickled by the user's
    pickler when possible, its ``args`` pickled apart, and strings that always
    survive, so the parent can rebuild as much of it as can be."""

    __slots__ = ()


def encode_error_outcome(tag: OutcomeTag, record: ErrorRecord) -> bytes:
    """Outcome bytes for an error. The record holds only bytes, str and None,
    so plain pickle always works on it (a hostile str subclass is made plain)."""
    plain = ErrorRecord(
        record.exc_bytes if record.exc_bytes is None else bytes(record.exc_bytes),
        str.__str__(record.type_name),
        str.__str__(record.message),
        str.__str__(record.traceback),
        str.__str__(record.stage),
        record.args_bytes if record.args_bytes is None else bytes(record.args_bytes),
    )
    return bytes([tag]) + pickle.dumps(tuple(plain), pickle.HIGHEST_PROTOCOL)


def decode_error_outcome(payload: bytes | memoryview) -> ErrorRecord:
    """The ErrorRecord after the tag byte. Raises ProtocolError if it is not one."""
    try:
        fields_ = pickle.loads(memoryview(payload)[1:])
        record = ErrorRecord(*fields_)
    except Exception as exc:
        raise ProtocolError(f"ErrorRecord: cannot decode: {exc!r}") from None
    if not (isinstance(record.type_name, str) and isinstance(record.traceback, str)):
        raise ProtocolError("ErrorRecord: type_name and traceback must be strings")
    return record
