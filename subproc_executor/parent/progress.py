"""Progress reports in the parent: PROGRESS frames into ``ProgressReport``s for
the jobs that listen (``on_progress``, ``map(..., progress=True)``).

    reader thread: PROGRESS frame
      supervisor (lock held): reports_for(payload, inflight jobs)
        a report for each record whose job is still in flight and has a listener
      (lock released) the Deliverer's queue: deliver(), each listener in order,
        queued before the outcomes of the same frames; a job with a listener has
        its outcome delivered through the same queue, so none follows its end

A report about a job that has ended is dropped: reports travel through the
sidecar's main loop and outcomes through the backend's threads, so the last
report may lose that race, but none is ever seen after the job's future is done.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future

from ..wire.progress import decode_progress
from ..wire.protocol import ProtocolError
from ..wire.record import Record

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, Protocol

    class _Listening(Protocol):
        """A job as the table keeps it (``jobtable.Job``), as far as reports go."""

        future: Future[Any]
        on_progress: Callable[[ProgressReport], object] | None


__all__ = ["ProgressReport", "deliver", "reports_for"]

logger = logging.getLogger("subproc_executor")


class ProgressReport(Record):
    """What a running job said with ``report_progress``, as ``on_progress`` gets it.

    Attributes:
        future: the job's future (running when the report was delivered; a
            cancel on another thread may end it while the listener runs).
        job_id: the job's id, as in error messages.
        pid: the worker running it.
        done, total: the numbers the job passed (``total`` None if it gave none).
        message: its text, or None (cut to 1,000 characters).
        elapsed: seconds from the job's start in the worker to this report.
    """

    future: Future[Any]
    job_id: int
    pid: int
    done: float
    total: float | None
    message: str | None
    elapsed: float

    @property
    def fraction(self) -> float | None:
        """``done / total`` when the job gave a positive total, else None."""
        total = self.total
        if total is None or not total > 0:
            return None
        return self.done / total


def reports_for(
    payload: bytes, inflight: Mapping[int, _Listening]
) -> list[tuple[Callable[[ProgressReport], object], ProgressReport]]:
    """The listeners to call for a PROGRESS frame's records (the caller holds
    the lock ``inflight`` is read under). Never raises."""
    calls = []
    try:
        for record in decode_progress(payload):
            job = inflight.get(record.job_id)
            if job is None or job.on_progress is None:
                continue
            # The record's fields, in the same order, after the future.
            calls.append((job.on_progress, ProgressReport(job.future, *record)))
    except ProtocolError as exc:
        logger.warning("ignoring the rest of a malformed PROGRESS frame: %s", exc)
    return calls


def deliver(calls: list[tuple[Callable[[ProgressReport], object], ProgressReport]]) -> None:
    """Call each listener (on a delivery thread); one that raises is logged
    and changes nothing else."""
    for listener, report in calls:
        if report.future.done():
            continue  # cancelled meanwhile (cancel_running), or resolved by another delivery thread
        try:
            listener(report)
        except BaseException:  # even SystemExit: a listener must not take a delivery thread down
            logger.exception(
                "the on_progress callback raised for job %d (worker pid %d); the job goes on",
                report.job_id,
                report.pid,
            )
