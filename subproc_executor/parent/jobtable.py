"""The parent's job table: queued jobs, the in-flight window, the counters.

No I/O, no threads, no lock of its own: the supervisor holds its lock around
every call, and does the sending and the resolving. So the policy here (what
may be sent now, how big the window is, what each counter means) is tested on
its own, like the sidecar's scheduler.

    submit --> queued (futures PENDING; cancel() works)
                 |  take_sendable(): while len(inflight) < window
                 v
               inflight (futures RUNNING) --finish(job_id)--> resolved by the caller
                 |  take_inflight(): the sidecar died
                 v
               failed by the caller

The window bounds jobs sent but unfinished, as the stdlib bounds its call
queue. A bigger one lets the sidecar batch more and keeps workers busy across
the round trip; a smaller one lets ``Future.cancel()`` succeed for more of
the queued jobs. So it adapts: it starts at ``max_workers + 1``, as the
stdlib's call queue, and grows to hold about ``WINDOW_TARGET_SECONDS`` of work
at the measured completion rate, at most ``MAX_EXTRA_PER_WORKER`` jobs per
worker more. Slow jobs (where cancelling matters) keep it at the stdlib's
size; a flood of tiny jobs (finished before anyone could cancel them) opens it.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from concurrent.futures import Future

from ..wire.record import Record
from ..wire.shm import Segment

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final

    from .progress import ProgressReport

__all__ = ["Job", "JobTable"]

WINDOW_TARGET_SECONDS: Final = 0.002
MAX_EXTRA_PER_WORKER: Final = 32
# How often the completion rate is measured.
RATE_PERIOD_SECONDS: Final = 0.01


class Job(Record, frozen=False):
    """One submitted call: its id on the wire, its future, its bytes until sent."""

    job_id: int
    future: Future[Any]
    payload: bytes
    # Sent once to a sidecar that died before starting any job: its future
    # is RUNNING already, and it is sent again as it is.
    resent: bool = False
    # The shared memory holding the job's bytes when ``payload`` names it:
    # unlinked when the job ends, or when this record is dropped.
    segment: Segment | None = None
    # The head of a SUBMIT_LIMITED payload (messages.LimitedJob.head): the
    # time and memory limits the sidecar enforces; None for a plain SUBMIT.
    limits: bytes | None = None
    # time.monotonic() at submit: the start of its queue wait (statistics()).
    submitted: float = 0.0
    # Called with each of its ProgressReports (on the reader thread), or None.
    on_progress: Callable[[ProgressReport], object] | None = None

    def __init__(
        self,
        job_id: int,
        future: Future[Any],
        payload: bytes,
        *,
        segment: Segment | None = None,
        limits: bytes | None = None,
        submitted: float = 0.0,
        on_progress: Callable[[ProgressReport], object] | None = None,
    ) -> None:
        # Spelled out: one is made per submit (Record's general __init__
        # fills defaults in a Python loop).
        self.job_id = job_id
        self.future = future
        self.payload = payload
        self.resent = False
        self.segment = segment
        self.limits = limits
        self.submitted = submitted
        self.on_progress = on_progress


class JobTable:
    """Jobs between ``submit`` and their future's resolution. Caller holds the lock."""

    def __init__(
        self, max_workers: int, *, clock: Any = time.monotonic, target_seconds: float = WINDOW_TARGET_SECONDS
    ) -> None:
        self._clock = clock
        # Work to keep in flight, in seconds at the measured rate: more for a
        # backend whose round trip is long (a cluster), so it is not idle
        # between answers (a window of N jobs gives at most N per round trip).
        self._target_seconds = target_seconds
        self._base_window = max_workers + 1
        self.window = self._base_window
        self._max_window = max_workers * (1 + MAX_EXTRA_PER_WORKER)
        self._rate_count = 0
        self._rate_since = clock()
        self._ids = itertools.count(1)
        # Waiting in the parent, oldest first; futures PENDING (or cancelled).
        self.queued: deque[Job] = deque()
        # Sent to the current sidecar and not yet answered; futures RUNNING.
        self.inflight: dict[int, Job] = {}
        # Counters for statistics(): counted where futures are resolved.
        self.submitted = 0
        self.done = 0
        self.failed = 0
        self.cancelled = 0

    # -- jobs in ---------------------------------------------------------------

    def new_id(self) -> int:
        """The next job id; every submit takes one, even one that fails at once."""
        self.submitted += 1
        return next(self._ids)

    def enqueue(self, job: Job) -> None:
        self.queued.append(job)

    # -- to the sidecar --------------------------------------------------------

    def take_sendable(self) -> list[Job]:
        """Move queued jobs into the window; their futures become RUNNING.
        A job cancelled while queued is dropped and counted: it never runs."""
        out: list[Job] = []
        while self.queued and len(self.inflight) < self.window:
            job = self.queued.popleft()
            if not job.resent and not job.future.set_running_or_notify_cancel():
                self.cancelled += 1
                continue
            self.inflight[job.job_id] = job
            out.append(job)
        return out

    def unsend(self, jobs: list[Job]) -> None:
        """Jobs taken for sending that never reached the pipe: forget they were sent.
        Their futures stay RUNNING; the caller fails them."""
        for job in jobs:
            self.inflight.pop(job.job_id, None)

    # -- back from the sidecar -------------------------------------------------

    def finish(self, job_id: int) -> Job | None:
        """The in-flight job answered (None if unknown: already failed elsewhere)."""
        job = self.inflight.pop(job_id, None)
        if job is not None:
            self._count_completion()
        return job

    def drop(self, job_id: int) -> Job | None:
        """An in-flight job its caller cancelled while it ran: forgotten here
        (whatever the sidecar says of it later is ignored) and counted."""
        job = self.inflight.pop(job_id, None)
        if job is None:
            # Queued again after its sidecar died before starting it: RUNNING already.
            for queued in self.queued:
                if queued.job_id == job_id:
                    self.queued.remove(queued)
                    job = queued
                    break
        if job is not None:
            self.cancelled += 1
        return job

    def take_inflight(self) -> list[Job]:
        """Every in-flight job (their sidecar is gone)."""
        jobs = list(self.inflight.values())
        self.inflight.clear()
        return jobs

    def requeue_unstarted(self) -> list[Job]:
        """The sidecar died before starting any job: in-flight jobs that still
        have their bytes go back to the front of the queue, in order, to be
        sent again; the others (none, normally) are returned to be failed."""
        jobs = sorted(self.inflight.values(), key=lambda j: j.job_id)
        self.inflight.clear()
        lost = [j for j in jobs if not j.payload]
        for job in reversed([j for j in jobs if j.payload]):
            job.resent = True
            self.queued.appendleft(job)
        return lost

    def take_queued(self) -> list[Job]:
        """Every queued job that was not cancelled (the executor broke)."""
        jobs = [j for j in self.queued if j.resent or not j.future.cancelled()]
        self.cancelled += len(self.queued) - len(jobs)
        self.queued.clear()
        return jobs

    def cancel_queued(self) -> list[Job]:
        """Take the queued jobs ``shutdown(cancel_futures=True)`` cancels; counted
        cancelled. A job queued again after its sidecar died before starting
        it stays: its future is RUNNING (cancel() would return False, and it
        would never end), so it runs, as a running job does in the stdlib."""
        jobs = [j for j in self.queued if not j.resent]
        self.cancelled += len(jobs)
        self.queued = deque(j for j in self.queued if j.resent)
        return jobs

    # -- outcomes ----------------------------------------------------------------

    def count(self, *, ok: bool) -> None:
        """One future resolved: with a result (ok) or an exception."""
        if ok:
            self.done += 1
        else:
            self.failed += 1

    # -- queries -------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        return not self.queued and not self.inflight

    def queued_live(self) -> int:
        """Queued jobs whose futures were not cancelled."""
        return sum(1 for j in self.queued if not j.future.cancelled())

    def _count_completion(self) -> None:
        """Size the window from the completion rate (see the module docstring)."""
        self._rate_count += 1
        now = self._clock()
        elapsed = now - self._rate_since
        if elapsed >= RATE_PERIOD_SECONDS:
            rate = self._rate_count / elapsed
            self.window = min(self._max_window, self._base_window + int(rate * self._target_seconds))
            self._rate_count = 0
            self._rate_since = now
