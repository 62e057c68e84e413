"""Observability records: plain frozen snapshots, kept out of the logic."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ExecutorStatistics", "SlowJobReport", "TimingSummary"]


@dataclass(frozen=True, slots=True)
class SlowJobReport:
    """A job has been running longer than ``status_interval`` (once per interval).

    Passed to the ``on_status`` callback and logged at WARNING on the
    ``subproc_executor`` logger. It never affects the job's future.
    """

    job_id: int
    elapsed: float  # seconds since the worker started the job
    pid: int  # the worker running it


@dataclass(frozen=True, slots=True)
class TimingSummary:
    """Percentiles of a duration over the last ``count`` jobs (at most 10,000), in seconds.

    ``count`` 0: no job has finished yet, and every value is 0.0.
    """

    count: int
    p50: float
    p95: float
    p99: float
    max: float


@dataclass(frozen=True, slots=True)
class ExecutorStatistics:
    """A snapshot of ``SubprocExecutor.statistics()``.

    Attributes:
        submitted: jobs accepted by ``submit`` (``map`` submits one per chunk).
        queued: jobs waiting in the parent; their futures can still be cancelled.
        running: jobs sent to the sidecar and not yet finished.
        done: jobs that returned a value.
        failed: jobs that ended with an exception (their own or the pool's).
        cancelled: jobs cancelled before they were sent.
        sidecar_pid: the current sidecar, or None between sidecars.
        worker_pids: the pool's workers as last reported by the sidecar.
        quiesced: the workers are released (``quiesce()`` or ``idle_timeout``).
        sidecar_starts: sidecars started so far; more than 1 means restarts.
        state: "running", "closing", "closed" or "broken".
        queue_wait: submit -> start in a worker, over recent jobs that ran
            (the parent's queue, the pipes and the sidecar's queue).
        run_time: start in a worker -> the job's call returned or raised.
        jobs_per_worker: ``(pid, jobs it ran)`` pairs, oldest worker first
            (``dict(...)`` of it maps pid to count): every worker since the
            executor started, replaced ones included (the last 1,024).
    """

    submitted: int
    queued: int
    running: int
    done: int
    failed: int
    cancelled: int
    sidecar_pid: int | None
    worker_pids: tuple[int, ...]
    quiesced: bool
    sidecar_starts: int
    state: str
    queue_wait: TimingSummary
    run_time: TimingSummary
    jobs_per_worker: tuple[tuple[int, int], ...]

    @property
    def sidecar_restarts(self) -> int:
        return max(0, self.sidecar_starts - 1)
