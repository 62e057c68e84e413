"""Progress records and job timing: what crosses from a worker to the parent about a job besides its outcome.

    worker: report_progress()  --ProgressRecord (notify pipe)-->  sidecar: coalesce, PROGRESS frame
                                                                   --> parent: ProgressReport, on_progress
    worker: run_one()          --OutcomeTiming (outcome head)---> parent: statistics() percentiles

A progress record is one ``multiprocessing.Connection`` message on the
workers' notify pipe, next to the 20-byte start records: a fixed head of
``PROGRESS_HEAD_SIZE`` bytes (never 20, so the two never mix) and the message
in UTF-8. A whole record fits in ``PIPE_BUF``, so workers writing at once
never interleave. The sidecar only looks at the tag and the job id; the
parent decodes the rest.

Every outcome starts with an ``OutcomeTiming``: when the worker started the
job and when its call ended (``time.monotonic()``, system-wide on Linux), and
the worker's pid. The parent takes queue wait and run time from it.

Pure: no I/O, nothing of ours but ``protocol``.
"""

from __future__ import annotations

import collections
import math
import select
import struct

from .protocol import ProtocolError

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Final, NamedTuple

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_MESSAGE_CHARS",
    "OUTCOME_TIMING_SIZE",
    "PROGRESS_HEAD_SIZE",
    "PROGRESS_TAG",
    "OutcomeTiming",
    "ProgressRecord",
    "decode_progress",
    "encode_progress",
    "pack_timing",
    "progress_job_id",
    "unpack_timing",
]

# The first byte of a progress record ("P").
PROGRESS_TAG: Final = 0x50
# tag, flags, message bytes, pid, job id, done, total, seconds since the job started
_HEAD: Final = struct.Struct("<BBHIQddd")
PROGRESS_HEAD_SIZE: Final = _HEAD.size  # 40 bytes
# A longer message is cut (with "..."). A record and its 4-byte length prefix
# must fit in PIPE_BUF, so that records of workers writing at once never
# interleave: 4,096 on Linux (1,000 characters of up to 4 bytes fit), 512 on
# macOS and the BSDs (POSIX's minimum), where the message is cut shorter.
MAX_MESSAGE_CHARS: Final = 1000
MAX_MESSAGE_BYTES: Final = min(getattr(select, "PIPE_BUF", 512), 4096) - 4 - 40
_JOB_ID: Final = struct.Struct("<Q")
_JOB_ID_OFFSET: Final = 8

_TOTAL = 1  # total is not None
_DONE_INT = 2  # done was an int
_TOTAL_INT = 4  # total was an int
_MESSAGE = 8  # message is not None

_TIMING: Final = struct.Struct("<ddI")
OUTCOME_TIMING_SIZE: Final = _TIMING.size  # 20 bytes

if TYPE_CHECKING:

    class _ProgressFields(NamedTuple):
        job_id: int
        pid: int
        done: float
        total: float | None
        message: str | None
        elapsed: float

    class _TimingFields(NamedTuple):
        started: float
        ended: float
        pid: int

else:
    _ProgressFields = collections.namedtuple("_ProgressFields", "job_id pid done total message elapsed")
    _TimingFields = collections.namedtuple("_TimingFields", "started ended pid")


class ProgressRecord(_ProgressFields):
    """One ``report_progress`` call, as it crosses to the parent."""

    __slots__ = ()


def encode_progress(
    job_id: int, pid: int, done: float, total: float | None, message: str | None, elapsed: float
) -> bytes:
    """The record's bytes (without the Connection's length prefix). ``done``
    and ``total`` are ints or floats, checked by the caller; ints come back as
    ints (exactly up to 2**53)."""
    flags = 0
    if type(done) is int:
        flags |= _DONE_INT
    if total is not None:
        flags |= _TOTAL
        if type(total) is int:
            flags |= _TOTAL_INT
    text = b""
    if message is not None:
        flags |= _MESSAGE
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        text = message.encode("utf-8", "replace")
        if len(text) > MAX_MESSAGE_BYTES:
            # Cut on a character boundary; only where PIPE_BUF is small (512 on macOS).
            text = text[: MAX_MESSAGE_BYTES - 3].decode("utf-8", "ignore").encode() + b"..."
    return (
        _HEAD.pack(
            PROGRESS_TAG,
            flags,
            len(text),
            pid,
            job_id,
            _as_float(done),
            0.0 if total is None else _as_float(total),
            elapsed,
        )
        + text
    )


def _as_float(value: float) -> float:
    """``float(value)``; an int past the largest float becomes an infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def progress_job_id(record: bytes | memoryview, offset: int = 0) -> int | None:
    """The job a record at ``offset`` is about, or None if it is no progress record."""
    if len(record) - offset < PROGRESS_HEAD_SIZE or record[offset] != PROGRESS_TAG:
        return None
    (job_id,) = _JOB_ID.unpack_from(record, offset + _JOB_ID_OFFSET)
    return int(job_id)


def decode_progress(data: bytes | memoryview) -> Iterator[ProgressRecord]:
    """The records of a PROGRESS frame's payload (records one after another).
    Raises ProtocolError on bytes that are not records."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        try:
            tag, flags, n, pid, job_id, done, total, elapsed = _HEAD.unpack_from(view, pos)
        except struct.error as exc:
            raise ProtocolError(f"progress record at byte {pos}: {exc}") from None
        if tag != PROGRESS_TAG:
            raise ProtocolError(f"progress record at byte {pos}: tag {tag:#x}, expected {PROGRESS_TAG:#x}")
        start = pos + PROGRESS_HEAD_SIZE
        pos = start + n
        if pos > len(view):
            raise ProtocolError(f"progress record at byte {start - PROGRESS_HEAD_SIZE}: message cut short")
        message = bytes(view[start:pos]).decode("utf-8", "replace") if flags & _MESSAGE else None
        yield ProgressRecord(
            job_id,
            pid,
            _number(done, flags & _DONE_INT),
            _number(total, flags & _TOTAL_INT) if flags & _TOTAL else None,
            message,
            elapsed,
        )


def _number(value: float, was_int: int) -> float:
    return int(value) if was_int and math.isfinite(value) else value


class OutcomeTiming(_TimingFields):
    """The head of every outcome: the job's start and end in the worker, and its pid."""

    __slots__ = ()

    def encode(self) -> bytes:
        return _TIMING.pack(self.started, self.ended, self.pid)

    @classmethod
    def decode(cls, outcome: bytes | memoryview) -> OutcomeTiming:
        try:
            return cls(*_TIMING.unpack_from(outcome))
        except struct.error as exc:
            raise ProtocolError(f"OutcomeTiming: {exc}") from None


def pack_timing(started: float, ended: float, pid: int) -> bytes:
    """``OutcomeTiming(started, ended, pid).encode()`` without the tuple."""
    return _TIMING.pack(started, ended, pid)


# (started, ended, pid) from outcome bytes, without the tuple class: once per
# job on the parent's reader thread. Raises struct.error if they are too short.
unpack_timing: Final[Callable[[bytes], tuple[float, float, int]]] = _TIMING.unpack_from
