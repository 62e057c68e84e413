"""The sidecar's job bookkeeping: what waits, what runs where, what to rerun.

No I/O and no backend calls, so the policy can be tested on its own. The
sidecar's main loop and the backend's callback threads share one
``Scheduler``; every method takes its lock.

Life of a job in the sidecar:

    waiting (backlog) --next_batches--> in a batch --started--> running on pid P
        ^                                   |                        |
        |                                   +-- batch done ----------+--> reported, forgotten
        +---- requeued <-- batch failed (the pool broke) ------------+

When a pool breaks, every batch it held fails at once, so a failed batch
does not say which job killed its worker. Each job of it is one of:

* not started: it did nothing; requeued as it was.
* finished earlier in the batch: its result was lost with the batch; requeued.
* running when the pool broke, on worker P:
    - P died of its own accord (``culprit`` names it, or the job ran alone in
      quarantine): this job killed its worker. It fails with P's exit status.
    - another worker is the culprit: collateral damage; requeued.
    - nobody can tell: requeued into *quarantine*, where suspect jobs run one
      at a time with nothing beside them, so a second crash names the job.
  A job is requeued after a crash at most ``MAX_CRASH_RETRIES`` times, so one
  that keeps killing workers fails instead of looping.

Jobs the sidecar stops on purpose (``kill``: a KILL from the parent, a time
or memory limit passed) carry the error they fail with. The loop kills the
worker running one; when that worker's batch fails, the job fails with its
error and never reruns, and the other jobs of the batch (never started, or
started after the kill was decided) are requeued without counting a crash.

One module, over 450 lines: waiting jobs, batches, start records, crash
judgement and stops on purpose all change the same job records under one
lock, and a failed batch is judged against all of them at once. To split
next: the kill/deadline/memory state into the JobWatch side (limits.py).
"""

from __future__ import annotations

import heapq
import itertools
import math
import signal
import threading
from collections import deque

from ..errors import describe_exitcode
from ..wire.messages import JobError, JobErrorKind, JobLimits
from ..wire.record import Record

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["Batch", "Failure", "Scheduler", "culprit"]

# Times a job that was running when its pool broke is run again before it
# fails. Higher tolerates more bad luck next to a crashing job; lower
# wastes less time on a job that crashes its worker every time.
MAX_CRASH_RETRIES: Final = 2
# A time limit shorter than this needs its job's start record read at once
# (the sidecar's loop then wakes for start records); a longer one is served
# by the loop's half-second idle poll, which costs no wakeup per job.
URGENT_TIMEOUT_SECONDS: Final = 1.0
# Jobs whose payloads add up to more than this are not grouped further.
MAX_BATCH_BYTES: Final = 1 << 20


class _Job(Record, frozen=False):
    job_id: int
    payload: bytes
    crash_retries: int = 0
    quarantine: bool = False
    # (worker pid, monotonic start) once a worker announced it.
    start: tuple[int, float] | None = None
    # Last elapsed-interval count reported as slow, so each interval reports once.
    reported: int = 0
    limits: JobLimits | None = None
    # Set once the sidecar decided to stop this job: what it fails with.
    kill: JobError | None = None

    def __init__(self, job_id: int, payload: bytes, limits: JobLimits | None = None) -> None:
        # Spelled out, as for every record made per job: Record's general
        # __init__ fills defaults in a Python loop (profiled: 12% of the
        # sidecar's time with 3 records a job).
        self.job_id = job_id
        self.payload = payload
        self.crash_retries = 0
        self.quarantine = False
        self.start = None
        self.reported = 0
        self.limits = limits
        self.kill = None


class Batch(Record, frozen=False):
    """Jobs handed to the backend together; one worker runs them in order."""

    jobs: list[_Job]
    generation: int
    quarantine: bool = False

    def __init__(self, jobs: list[_Job], generation: int, quarantine: bool = False) -> None:
        self.jobs = jobs
        self.generation = generation
        self.quarantine = quarantine

    @property
    def job_ids(self) -> list[int]:
        return [j.job_id for j in self.jobs]

    @property
    def payloads(self) -> list[bytes]:
        return [j.payload for j in self.jobs]


class Failure(Record):
    """A job that fails for good, and what to tell the parent about it."""

    job_id: int
    error: JobError


def culprit(exitcodes: dict[int, int | None]) -> tuple[int, int] | None:
    """The one worker that died of its own accord, if exactly one did.

    A pool that loses a worker terminates the rest (SIGTERM), and workers
    retired by max_tasks_per_child exit with 0, so a dead worker whose exit
    is neither names the crash. None when zero or several qualify.
    """
    found = [
        (pid, code)
        for pid, code in exitcodes.items()
        if code is not None and code not in (0, -signal.SIGTERM)
    ]
    return found[0] if len(found) == 1 else None


class Scheduler:
    """Jobs between the parent's SUBMIT and the backend's outcome."""

    def __init__(self, max_workers: int, *, max_batch_jobs: int) -> None:
        # Batches kept in the backend, as the stdlib keeps max_workers + 1
        # calls in its call queue: enough that a worker finishing one finds
        # the next already there.
        self.depth = max_workers + 1
        # 1 when a pool counts tasks per worker (max_tasks_per_child): it
        # counts a batch as one task, and the user counts jobs.
        self.max_batch_jobs = max_batch_jobs
        self._lock = threading.Lock()
        self._waiting: deque[_Job] = deque()
        # {job_id: job} of jobs handed to the backend, not yet reported.
        self._in_backend: dict[int, _Job] = {}
        self._batches = 0
        self._quarantine_running = False
        self.generation = 0
        # Exit codes seen when a generation broke: later failures of the same
        # generation are judged against the same facts.
        self._broken: dict[int, dict[int, int | None]] = {}
        # {pid: job_id} of workers killed on purpose, to stop that job.
        self._killed: dict[int, int] = {}
        # Jobs in the backend with a time or memory limit, and those of them
        # with a memory limit; (deadline, job_id) of running jobs with a time
        # limit, earliest first (entries of jobs since gone or restarted are
        # dropped when they come up). The loop asks for deadlines on every
        # turn: a heap keeps that O(1) however many jobs are in flight.
        self._limited: dict[int, _Job] = {}
        self._memory_limited: dict[int, _Job] = {}
        self._deadlines: list[tuple[float, int]] = []
        # A job with a memory limit was seen: workers' memory is worth watching.
        self.uses_memory_limits = False
        # Jobs to stop as soon as their start record names their worker.
        self._pending_kills: set[int] = set()
        # Limited jobs in the backend whose start record must be read at once:
        # a memory limit (watched from the start), or a time limit shorter
        # than URGENT_TIMEOUT_SECONDS. For a longer one the loop's idle poll
        # reads the record in time: its deadline counts from the worker's own
        # clock reading, not from when the record is read.
        self._urgent: set[int] = set()
        # Whether the backend's workers announce jobs at all (see messages.StartRecord).
        self._seen_records = False

    # -- queries -------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._waiting and not self._batches

    def has_waiting(self) -> bool:
        with self._lock:
            return bool(self._waiting)

    # -- main loop ---------------------------------------------------------------------

    def add(self, job_id: int, payload: bytes, limits: JobLimits | None = None) -> None:
        with self._lock:
            self._waiting.append(_Job(job_id, payload, limits))
            if limits is not None and limits.memory_limit is not None:
                self.uses_memory_limits = True

    def smallest_memory_limit(self) -> int | None:
        """The smallest memory limit of the jobs waiting or in the backend, if any."""
        with self._lock:
            limits = [
                job.limits.memory_limit
                for job in itertools.chain(self._waiting, self._memory_limited.values())
                if job.limits is not None and job.limits.memory_limit is not None
            ]
        return min(limits, default=None)

    def pid_of(self, job_id: int) -> int | None:
        """The worker a job in the backend announced it runs on, if it did."""
        with self._lock:
            job = self._in_backend.get(job_id)
            return None if job is None or job.start is None else job.start[0]

    def cancel(self, job_id: int) -> bool:
        """Drop a waiting job; False if it already went to the backend."""
        with self._lock:
            for i, job in enumerate(self._waiting):
                if job.job_id == job_id:
                    del self._waiting[i]
                    return True
        return False

    def next_batches(self) -> list[Batch]:
        """Batches to hand to the backend now, grouped when many jobs wait."""
        out: list[Batch] = []
        with self._lock:
            while self._waiting and self._batches < self.depth and not self._quarantine_running:
                if self._waiting[0].quarantine:
                    if self._batches:
                        break  # a suspect runs only with nothing beside it
                    job = self._waiting.popleft()
                    batch = Batch([job], self.generation, quarantine=True)
                    self._quarantine_running = True
                else:
                    free = self.depth - self._batches
                    n = min(self.max_batch_jobs, max(1, math.ceil(len(self._waiting) / free)))
                    jobs: list[_Job] = []
                    size = 0
                    while True:  # not `while cond:` in a with (tests/test_loop_edges.py)
                        if (
                            not self._waiting
                            or len(jobs) >= n
                            or self._waiting[0].quarantine
                            or (jobs and size >= MAX_BATCH_BYTES)
                        ):
                            break
                        job = self._waiting.popleft()
                        jobs.append(job)
                        size += len(job.payload)
                    batch = Batch(jobs, self.generation)
                self._batches += 1
                for job in batch.jobs:
                    self._in_backend[job.job_id] = job
                    if job.limits is not None:
                        self._limited[job.job_id] = job
                        if job.limits.memory_limit is not None:
                            self._memory_limited[job.job_id] = job
                        timeout = job.limits.timeout
                        if job.limits.memory_limit is not None or (
                            timeout is not None and timeout < URGENT_TIMEOUT_SECONDS
                        ):
                            self._urgent.add(job.job_id)
                out.append(batch)
        return out

    def unsent(self, batch: Batch) -> None:
        """The backend refused ``batch``: forget it was handed over (its jobs fail)."""
        with self._lock:
            self._release_locked(batch)

    def requeue(self, batch: Batch) -> None:
        """``batch`` never reached a worker: its jobs wait again, first, as they were."""
        with self._lock:
            self._release_locked(batch)
            for job in reversed(batch.jobs):
                self._waiting.appendleft(job)

    def started(self, job_id: int, pid: int, when: float) -> int | None:
        """A worker announced it runs ``job_id``; ignored once the job was
        reported. Returns ``pid`` if the job is to be stopped (a kill decided
        before it started): the caller kills that worker."""
        with self._lock:
            self._seen_records = True
            job = self._in_backend.get(job_id)
            if job is not None:
                job.start = (pid, when)
                if job.limits is not None and job.limits.timeout is not None:
                    heapq.heappush(self._deadlines, (when + job.limits.timeout, job_id))
                if job.kill is not None:
                    if job.kill.pid is None:
                        job.kill = job.kill.replace(pid=pid)
                    self._killed[pid] = job_id
                    self._pending_kills.discard(job_id)
                    return pid
        return None

    # -- stopping jobs on purpose (main loop) ------------------------------------------

    def kill(self, job_id: int, error: JobError) -> tuple[str, int | None]:
        """Stop ``job_id``, failing it with ``error``. Returns what to do:
        ("dropped", None): it was waiting and is gone, send its error now;
        ("running", pid): kill that worker; ("pending", None): it is in a batch
        but not started, and ``started`` will name its worker; ("gone", None):
        already finished or stopped."""
        with self._lock:
            for i, waiting in enumerate(self._waiting):
                if waiting.job_id == job_id:
                    del self._waiting[i]
                    return ("dropped", None)
            job = self._in_backend.get(job_id)
            if job is None or job.kill is not None:
                return ("gone", None)
            job.kill = error
            if job.start is None:
                self._pending_kills.add(job_id)
                return ("pending", None)
            pid = job.start[0]
            if error.pid is None:
                job.kill = error.replace(pid=pid)
            self._killed[pid] = job_id
            return ("running", pid)

    def retire(self, pid: int) -> None:
        """Worker ``pid`` is about to be killed through no fault of its jobs
        (it was already past a memory limit when one started): when its batch
        fails, every job of it is requeued without counting a crash."""
        with self._lock:
            self._killed[pid] = -1

    @property
    def needs_start_records(self) -> bool:
        """Whether a start record may have to be acted on at once: a job with
        a memory limit or a short time limit in the backend, or a stop waiting
        for its job to start."""
        return bool(self._urgent) or bool(self._pending_kills)

    def expired(self, now: float) -> list[tuple[int, JobError]]:
        """Jobs running past their time limit, each with the error it fails with."""
        out = []
        with self._lock:
            while True:  # not `while cond:` in a with (tests/test_loop_edges.py)
                if not self._deadlines or self._deadlines[0][0] > now:
                    break
                deadline, job_id = heapq.heappop(self._deadlines)
                job = self._current_deadline_job_locked(deadline, job_id)
                if job is not None and job.start is not None and job.limits is not None:
                    pid, t0 = job.start
                    limit = job.limits.timeout or 0.0
                    out.append((job_id, _timed_out(job_id, pid, limit, now - t0)))
        return out

    def next_deadline(self) -> float:
        """When the next running job reaches its time limit (monotonic), or inf."""
        with self._lock:
            while True:  # not `while cond:` in a with (tests/test_loop_edges.py)
                if not self._deadlines:
                    break
                deadline, job_id = self._deadlines[0]
                if self._current_deadline_job_locked(deadline, job_id) is not None:
                    return deadline
                heapq.heappop(self._deadlines)
        return math.inf

    def _current_deadline_job_locked(self, deadline: float, job_id: int) -> _Job | None:
        """The job a heap entry is for, if that entry still holds: the job runs,
        is not being stopped, and started when the entry says."""
        job = self._limited.get(job_id)
        if job is None or job.kill is not None or job.start is None or job.limits is None:
            return None
        timeout = job.limits.timeout
        return job if timeout is not None and job.start[1] + timeout == deadline else None

    def memory_watch(self) -> list[tuple[int, int, int]]:
        """(job_id, pid, limit) of running jobs with a memory limit."""
        with self._lock:
            return [
                (job.job_id, job.start[0], job.limits.memory_limit)
                for job in self._memory_limited.values()
                if job.kill is None
                and job.start is not None
                and job.limits is not None
                and job.limits.memory_limit is not None
            ]

    def overdue(self, now: float, interval: float) -> list[tuple[int, float, int]]:
        """(job_id, elapsed seconds, pid) of each job running past another ``interval``."""
        out = []
        with self._lock:
            for job in self._in_backend.values():
                if job.start is None:
                    continue
                pid, t0 = job.start
                count = int((now - t0) // interval)
                if count > job.reported:
                    job.reported = count
                    out.append((job.job_id, now - t0, pid))
        return out

    def running_pids(self) -> dict[int, int]:
        """{job_id: pid} of the jobs workers announced and have not finished."""
        with self._lock:
            return {j.job_id: j.start[0] for j in self._in_backend.values() if j.start is not None}

    # -- outcomes (any thread) ---------------------------------------------------------

    def job_done(self, batch: Batch, job_id: int) -> bool:
        """One job of ``batch`` finished ahead of the rest (its outcome goes to
        the parent now): it leaves the batch, so a later failure of the batch
        neither reruns nor fails it. False if it was not in the batch."""
        with self._lock:
            for i, job in enumerate(batch.jobs):
                if job.job_id == job_id:
                    del batch.jobs[i]
                    self._in_backend.pop(job_id, None)
                    self._limited.pop(job_id, None)
                    self._memory_limited.pop(job_id, None)
                    self._urgent.discard(job_id)
                    return True
        return False

    def done(self, batch: Batch) -> None:
        """The batch's outcomes went to the parent."""
        with self._lock:
            self._release_locked(batch)

    def failed(
        self,
        batch: Batch,
        exitcodes: dict[int, int | None],
        error: str,
        died_pid: int | None = None,
        died_name: str | None = None,
    ) -> list[Failure]:
        """The batch could not finish because its pool broke. Requeue what
        deserves another run; return the jobs that fail for good.

        ``died_pid`` is the worker the backend itself saw die running this
        batch, when it knows; otherwise the culprit is inferred from exit codes.
        ``died_name``: how the backend names that worker in messages (a Dask
        worker's address), when a pid alone would not say where it ran.
        """
        with self._lock:
            self._release_locked(batch)
            facts = self._broken.setdefault(batch.generation, dict(exitcodes))
            for old in [g for g in self._broken if g < batch.generation - 8]:
                del self._broken[old]
            for pid, code in exitcodes.items():
                if facts.get(pid) is None:
                    facts[pid] = code
            who = (died_pid, facts.get(died_pid)) if died_pid is not None else culprit(facts)
            started = [j for j in batch.jobs if j.start is not None]
            running = started[-1] if started else None
            failures: list[Failure] = []
            requeue: list[_Job] = []
            # Killed on purpose: the stopped job fails with its own error,
            # every other job of the batch goes back as it was.
            stopped = [j for j in batch.jobs if j.kill is not None]
            killed_pid = running.start[0] if running is not None and running.start is not None else died_pid
            if stopped or (killed_pid is not None and killed_pid in self._killed):
                for job in batch.jobs:
                    if job.kill is not None:
                        failures.append(Failure(job.job_id, _with_exit(job.kill, facts)))
                    else:
                        requeue.append(job)
                for pid in [p for p, jid in self._killed.items() if jid in batch.job_ids or p == died_pid]:
                    del self._killed[pid]
                self._requeue_locked(requeue)
                return failures
            if running is None and (batch.quarantine or not self._seen_records):
                # No start record (a backend without announcements, or one
                # lost with the worker): the batch's first job is the only
                # one that can have run, so it is the suspect. Without this a
                # job that kills its worker would be retried forever.
                running = batch.jobs[0]
            for job in batch.jobs:
                if job is not running:
                    requeue.append(job)  # never started, or finished but its result was lost
                    continue
                pid = job.start[0] if job.start is not None else 0
                # A backend whose workers announce nothing (Dask) saw the
                # worker of a one-job batch die: that job ran there, and the
                # backend's own retries, if any, are spent.
                named = (
                    died_pid is not None
                    and job.start is None
                    and len(batch.jobs) == 1
                    and not self._seen_records
                )
                if named:
                    pid = died_pid or 0
                code = facts.get(pid)
                if batch.quarantine or named or (who is not None and who[0] == pid):
                    failures.append(
                        Failure(job.job_id, _died(job.job_id, pid, code, error, batch.quarantine, died_name))
                    )
                    continue
                job.crash_retries += 1
                if job.crash_retries > MAX_CRASH_RETRIES:
                    died = _died(job.job_id, pid, code, error, False)
                    message = (
                        f"job {job.job_id} was running each of the {job.crash_retries} times a worker died; "
                        f"giving up on it (last worker pid {pid}, {died.status})"
                    )
                    failures.append(Failure(job.job_id, died.replace(message=message)))
                    continue
                # Collateral if the culprit is known to be another worker;
                # otherwise a suspect, rerun alone to find out. Without a
                # start record the dead worker's name does not say which job
                # of the batch it ran: a suspect too.
                job.quarantine = who is None or job.start is None
                requeue.append(job)
            self._requeue_locked(requeue)
            return failures

    def _requeue_locked(self, jobs: list[_Job]) -> None:
        for job in reversed(jobs):
            job.start = None
            job.reported = 0
            self._waiting.appendleft(job)

    def new_generation(self) -> None:
        """The pool was reset: later failures belong to the new pool."""
        with self._lock:
            self.generation += 1

    def _release_locked(self, batch: Batch) -> None:
        self._batches -= 1
        if batch.quarantine:
            self._quarantine_running = False
        for job in batch.jobs:
            self._in_backend.pop(job.job_id, None)
            self._limited.pop(job.job_id, None)
            self._memory_limited.pop(job.job_id, None)
            self._urgent.discard(job.job_id)
            self._pending_kills.discard(job.job_id)


def _timed_out(job_id: int, pid: int, limit: float, elapsed: float) -> JobError:
    return JobError(
        kind=JobErrorKind.TIMEOUT,
        message=(
            f"job {job_id} ran past its time limit of {limit:g}s (stopped after {elapsed:.3f}s): "
            f"its worker pid {pid} was killed and replaced"
        ),
        pid=pid,
        limit=limit,
    )


def _with_exit(error: JobError, facts: dict[int, int | None]) -> JobError:
    """A kill's error, with the worker's exit status once known."""
    if error.pid is None:
        return error
    code = facts.get(error.pid)
    return error.replace(exitcode=code, status=describe_exitcode(code))


def _died(
    job_id: int, pid: int, code: int | None, error: str, alone: bool, name: str | None = None
) -> JobError:
    status = describe_exitcode(code)
    how = " (it ran alone, after an earlier crash left the cause unclear)" if alone else ""
    worker = name or (f"worker pid {pid}" if pid else "a worker (pid unknown)")
    return JobError(
        kind=JobErrorKind.WORKER_DIED,
        message=f"{worker} died with {status} while running job {job_id}{how}",
        pid=pid or None,
        exitcode=code,
        status=status,
        detail=error,
    )
