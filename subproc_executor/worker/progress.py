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
# A flusher with nothing to send for this long exits.
_FLUSHER_IDLE_SECONDS: Final = 2.0
# end() gives up sending the last report after this: the outcome must not wait.
_END_LOCK_SECONDS: Final = 0.5

_job_id: int | None = None  # the running job; None outside a job (or with nowhere to send)
_started = 0.0
_pid = 0
_fd = -1  # our own non-blocking descriptor of the notify pipe
_conn: Any = None  # the Connection itself, where /proc cannot give us one
_seq = 0  # numbers every report of this process
_sent_seq = 0  # the newest report written
# The latest report not written yet: (number, job id, done, total, message, when).
_pending: tuple[int, int, float, float | None, str | None, float] | None = None
_next_send = 0.0
_lock = threading.Lock()
_wake: threading.Event | None = None  # the flusher's; None while no flusher runs
written = 0  # records written by this process (read by tests)


def attach(notify: Any, pid: int) -> None:
    """Where records go: the notify pipe's write end (a Connection), or None
    for nowhere. Called by ``job.worker_init`` in every worker."""
    global _fd, _conn, _pid
    _pid = pid
    _conn = None
    if _fd >= 0:
        try:
            os.close(_fd)
        except OSError:
            pass
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
    """A job starts in this worker; reports are now about it (if they can go anywhere)."""
    global _job_id, _started, _next_send, _pending
    _started = started
    _next_send = 0.0
    _pending = None  # a report a thread of the last job made late is not this job's
    _job_id = job_id if (_fd >= 0 or _conn is not None) else None


def end() -> None:
    """The job's call returned: send its latest unsent report, then ignore
    reports. Never raises."""
    global _job_id, _pending
    job_id, _job_id = _job_id, None
    report = _pending
    if report is None or job_id is None:
        return
    if not _lock.acquire(timeout=_END_LOCK_SECONDS):
        return  # the flusher is stuck in a blocking write: the job's outcome must not wait
    try:
        report = _pending
        if report is not None and report[0] > _sent_seq and report[1] == job_id:
            _write(report)
        _pending = None
    finally:
        _lock.release()


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
    report = (_seq, job_id, done, total, message, now)
    if now < _next_send:
        # The fast path: a report within the interval is only kept.
        waiting = _pending is not None
        _pending = report
        if not waiting:
            _kick()
        return
    # Not blocking: a signal handler that reports while this thread writes
    # (or the flusher holding the lock) leaves the report pending instead.
    if not _lock.acquire(blocking=False):
        _pending = report
        _kick()
        return
    try:
        if _job_id == job_id:
            _write(report)
    finally:
        _lock.release()


def _write(report: tuple[int, int, float, float | None, str | None, float]) -> None:
    """Write one record (lock held). A full pipe keeps it pending; a gone
    sidecar drops it. Never raises: a report is worth less than the job."""
    global _sent_seq, _next_send, _pending, written
    seq, job_id, done, total, message, when = report
    _next_send = _monotonic() + INTERVAL
    try:
        record = encode_progress(job_id, _pid, done, total, message, when - _started)
        if _fd >= 0:
            os.write(_fd, _CONN_HEADER.pack(len(record)) + record)
        elif _conn is not None:
            _conn.send_bytes(record)
        else:
            return
    except BlockingIOError:
        pending = _pending
        if pending is None or pending[0] < seq:
            _pending = report  # the sidecar is behind: try again next interval
            _kick()
        return
    except Exception:
        return  # the sidecar is gone, or a number no float holds: the job goes on
    written += 1
    _sent_seq = seq
    pending = _pending
    if pending is not None and pending[0] <= seq and _pending is pending:
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
    a job that stops reporting is not shown where it was a moment before.
    Exits once no job has reported for a while (a thread left in a worker
    would make a later ``os.fork()`` in a job warn)."""
    global _wake
    while True:
        if not wake.wait(_FLUSHER_IDLE_SECONDS):
            with _lock:
                if _pending is None and not wake.is_set():
                    _wake = None
                    return
            # else a report waits that came without a kick: send it below
        wake.clear()
        while True:
            delay = _next_send - _monotonic()
            if delay > 0:
                time.sleep(delay)
            if not _flush_due():
                break


def _flush_due() -> bool:
    """Send the pending report if its interval is over; whether one still waits."""
    global _pending
    with _lock:
        report = _pending
        if report is None:
            return False
        if report[1] != _job_id or report[0] <= _sent_seq:
            if _pending is report:  # not a newer one stored meanwhile
                _pending = None
            return False
        if _monotonic() >= _next_send:
            _write(report)
        return _pending is not None


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
