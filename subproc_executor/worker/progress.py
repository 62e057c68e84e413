"""``report_progress``: a job tells the parent how far it got.

    job: report_progress(i, total=n)   (main thread of the worker)
      now >= next send: write a record at once (non-blocking)
      else:             keep it as the latest; a flusher thread sends it
                        when the interval is over, unless a newer one was sent
    job ends: the latest unsent report goes out, then reports are ignored
      until the next job starts

Reports are coalesced per job: at most one record per ``INTERVAL`` seconds
leaves the worker, always the latest, so a job may call this a million times
and the pipe sees a few records a second. The call never blocks: the record
goes to the notify pipe through a descriptor of its own opened non-blocking
(``/proc/self/fd``), and a full pipe keeps the report for the next try. It
never fails the job for want of a sidecar either; only bad arguments raise,
inside a job or not, so a job that runs in a plain loop or a test is
checked the same way.

Outside a job (the parent, a plain loop, a child process the job forked) it
does nothing.
"""

from __future__ import annotations

import os
import struct
import threading
import time

from ..wire.progress import encode_progress

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = ["INTERVAL", "attach", "begin", "end", "report_progress"]

# Seconds between two records of one job: ten updates a second is as much as
# a progress bar shows, and costs the job nothing it would notice.
INTERVAL: Final = 0.1
_CONN_HEADER: Final = struct.Struct("!i")  # multiprocessing.Connection's length prefix
_monotonic: Final = time.monotonic

_job_id: int | None = None  # the running job; None outside a job
_started = 0.0
_pid = 0
_fd = -1  # our own non-blocking descriptor of the notify pipe
_conn: Any = None  # the Connection itself, where /proc cannot give us one
_seq = 0  # numbers every report of this process
_sent_seq = 0  # the newest report written
# The latest report not written yet: (number, done, total, message, when).
_pending: tuple[int, float, float | None, str | None, float] | None = None
_next_send = 0.0
_lock = threading.Lock()
_wake: threading.Event | None = None  # the flusher's; None until a report waits
written = 0  # records written by this process (read by tests)


def attach(notify: Any, pid: int) -> None:
    """Where records go: the notify pipe's write end (a Connection). Called
    by ``job.worker_init`` in every worker."""
    global _fd, _conn, _pid
    _pid = pid
    _conn = None
    _fd = -1
    if notify is None:
        return
    try:
        # A new open file description of the same pipe: O_NONBLOCK on it does
        # not touch the one start records are written through.
        _fd = os.open(f"/proc/self/fd/{notify.fileno()}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError, AttributeError):
        _conn = notify  # blocking writes; the sidecar drains the pipe at least twice a second


def begin(job_id: int, started: float) -> None:
    """A job starts in this worker; reports are now about it."""
    global _job_id, _started, _next_send
    _started = started
    _next_send = 0.0
    _job_id = job_id


def end() -> None:
    """The job's call returned: send its latest unsent report, then ignore reports."""
    global _job_id, _pending
    if _pending is not None:
        with _lock:
            report = _pending
            if report is not None and report[0] > _sent_seq and _job_id is not None:
                _write(_job_id, report)
            _pending = None
    _job_id = None


def report_progress(done: float, total: float | None = None, message: str | None = None) -> None:
    """Report how much of the current job is done: ``done`` out of ``total``
    (numbers, in any unit; ``total`` may be None when unknown), with an
    optional short ``message`` (at most 1,000 characters are sent).

    Cheap enough to call on every iteration of a loop: reports are coalesced
    (the latest wins, about ten a second reach the parent). Never blocks and
    never fails the job; outside a job it does nothing. The parent sees the
    reports through ``on_progress`` and ``map(..., progress=True)``.
    """
    global _seq, _pending
    if type(done) is not int and type(done) is not float:
        done = _number(done, "done")
    if total is not None and type(total) is not int and type(total) is not float:
        total = _number(total, "total")
    if message is not None and type(message) is not str:
        if not isinstance(message, str):
            raise TypeError(
                f"report_progress: message must be a str or None, got {type(message).__name__}; "
                "pass a short text such as message=f'step {i}'"
            )
        message = str.__str__(message)
    job_id = _job_id
    if job_id is None:
        return
    now = _monotonic()
    _seq += 1
    if now < _next_send:
        # The fast path: a report within the interval is only kept.
        if _pending is None:
            _pending = (_seq, done, total, message, now)
            _kick()
        else:
            _pending = (_seq, done, total, message, now)
        return
    with _lock:
        if _job_id == job_id:
            _write(job_id, (_seq, done, total, message, now))


def _write(job_id: int, report: tuple[int, float, float | None, str | None, float]) -> None:
    """Write one record (lock held). A full pipe keeps it pending; a gone
    sidecar drops it. Never raises."""
    global _sent_seq, _next_send, _pending, written
    seq, done, total, message, when = report
    _next_send = time.monotonic() + INTERVAL
    try:
        record = encode_progress(job_id, _pid, done, total, message, when - _started)
        if _fd >= 0:
            os.write(_fd, _CONN_HEADER.pack(len(record)) + record)
        elif _conn is not None:
            _conn.send_bytes(record)
        else:
            return
    except BlockingIOError:
        if _pending is None or _pending[0] < seq:
            _pending = report  # the sidecar is behind: try again next interval
            _kick()
        return
    except (OSError, ValueError):
        return  # the sidecar is gone: the job goes on
    written += 1
    _sent_seq = seq
    if _pending is not None and _pending[0] <= seq:
        _pending = None


def _kick() -> None:
    """Have the flusher send the pending report when its interval is over."""
    global _wake
    wake = _wake
    if wake is None:
        wake = _wake = threading.Event()
        try:
            threading.Thread(
                target=_flush_loop, args=(wake,), name="subproc_executor-progress", daemon=True
            ).start()
        except RuntimeError:  # no thread left: the next report or the job's end sends it
            _wake = None
            return
    wake.set()


def _flush_loop(wake: threading.Event) -> None:
    """The flusher: sends a job's latest report once its interval is over, so
    a job that stops reporting is not shown where it was a moment before."""
    global _pending
    while True:
        wake.wait()
        wake.clear()
        while True:
            delay = _next_send - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with _lock:
                report, job_id = _pending, _job_id
                if report is None or job_id is None:
                    break
                if report[0] <= _sent_seq:
                    _pending = None
                    break
                if time.monotonic() >= _next_send:
                    _write(job_id, report)


def _number(value: object, name: str) -> float:
    """``done``/``total`` of another numeric type (bool, numpy), as int or float."""
    if isinstance(value, bool):
        return int(value)
    index = getattr(type(value), "__index__", None)
    if index is not None:
        return int(index(value))
    import numbers

    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(
        f"report_progress: {name} must be a number (int or float), got {type(value).__name__}; "
        "pass how much is done and of how much, e.g. report_progress(i, total=n)"
    )


def _after_fork_in_child() -> None:
    """A process the job forked is not the job: its reports are ignored, and
    the flusher thread and lock of the parent do not exist here."""
    global _job_id, _pending, _lock, _wake
    _job_id = None
    _pending = None
    _lock = threading.Lock()
    _wake = None


os.register_at_fork(after_in_child=_after_fork_in_child)
