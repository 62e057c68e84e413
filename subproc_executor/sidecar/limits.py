"""Stopping one job on purpose: time limits, memory limits, and KILL from the parent.

    parent --KILL(job)------------> stop(job, error)
    timer: a job past its limit --> stop(job, TIMEOUT error)
    timer: a worker's RSS too big -> stop(job, MEMORY error)
                                       |
        scheduler.kill(job, error) ----+--> waiting: dropped, its JOB_ERROR sent now
                                       +--> running on pid P: SIGKILL P
                                       +--> in a batch, not started: SIGKILL P when
                                            its start record names P (on_started)

The worker's death then fails its batch like any crash, and the scheduler
fails the stopped job with its error and requeues the rest of the batch
without counting a crash (see ``scheduler``). So only a backend whose pool
survives the loss of one worker keeps its other jobs running: the parent
refuses these limits for the others.

Runs on the sidecar's main thread, from the loop's timers and frame handler.
"""

from __future__ import annotations

import logging
import math
import os
import signal

from ..wire.fdtools import signal_pid
from ..wire.messages import JobError, JobErrorKind
from .scheduler import Scheduler

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final

__all__ = ["JobWatch"]

logger = logging.getLogger(__name__)

# How often the resident memory of workers running memory-limited jobs is
# read. Shorter catches a fast-growing job sooner; each look is one small
# read of /proc per such worker.
MEMORY_POLL_SECONDS: Final = 0.05
_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class JobWatch:
    """Stops jobs: on request, at their time limit, past their memory limit."""

    def __init__(
        self,
        scheduler: Scheduler,
        send_job_error: Callable[[int, JobError], None],
        *,
        expect_kill: Callable[[int], None] | None = None,
        idle_workers: Callable[[], list[int]] | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._send_job_error = send_job_error
        # The backend's optional hooks: it reports the death as expected, not
        # as a crash; it says which workers hold no batch (none may be killed
        # to be replaced without that).
        self._expect_kill = expect_kill
        self._idle_workers = idle_workers

        self._next_memory_poll = math.inf

    def stop(self, job_id: int, error: JobError) -> None:
        """Stop ``job_id`` wherever it is; it fails with ``error``."""
        what, pid = self._scheduler.kill(job_id, error)
        if what == "dropped":
            self._send_job_error(job_id, error)
        elif what == "running" and pid is not None:
            self._kill(pid, job_id, error)

    def on_started(self, job_id: int, kill_pid: int | None) -> None:
        """A start record came in; ``kill_pid`` is the worker to kill if the
        job was to stop before it started (``Scheduler.started``)."""
        if kill_pid is not None:
            self._kill(kill_pid, job_id, None)

    # A worker an earlier job left grown past a memory limit is not left to
    # fail the next job with that limit: it is replaced first. The sidecar
    # cannot look at a worker between two of its jobs (the backend hands the
    # next batch over at once), so it looks when a memory-limited job arrives
    # (the idle workers) and when any job ends while such jobs wait or run.

    def check_idle(self, limit: int) -> None:
        """A job with a memory limit arrived: replace idle workers already past it."""
        for pid in self._idle():
            self._check(pid, limit)

    def job_finished(self, pid: int) -> None:
        """A job ended on worker ``pid`` (a backend thread): replace the worker
        if it holds more than a waiting or running job's memory limit and has
        no batch of its own yet."""
        limit = self._scheduler.smallest_memory_limit()
        if limit is not None and pid in self._idle():
            self._check(pid, limit)

    def _idle(self) -> list[int]:
        if self._idle_workers is None:
            return []  # a backend that cannot say: never killed to be replaced
        try:
            return list(self._idle_workers())
        except Exception:
            logger.exception("the backend's idle_worker_pids() failed")
            return []

    def _check(self, pid: int, limit: int) -> None:
        rss = resident_bytes(pid)
        if rss is not None and rss > limit:
            logger.info(
                "worker pid %d holds %d bytes, past the memory limit %d of jobs to come; replacing it",
                pid,
                rss,
                limit,
            )
            # Should a job start on it meanwhile, it runs again elsewhere, unblamed.
            self._scheduler.retire(pid)
            self._kill(pid, -1, None)

    def next_timer(self, now: float) -> float:
        """When ``run`` has something to do next (monotonic), or inf."""
        deadline = self._scheduler.next_deadline()
        if self._scheduler.memory_watch():
            if self._next_memory_poll == math.inf:
                self._next_memory_poll = now + MEMORY_POLL_SECONDS
            deadline = min(deadline, self._next_memory_poll)
        else:
            self._next_memory_poll = math.inf
        return deadline

    def run(self, now: float) -> None:
        """Stop the jobs past their time limit, and those whose worker grew
        past their memory limit."""
        for job_id, error in self._scheduler.expired(now):
            self.stop(job_id, error)
        if now >= self._next_memory_poll:
            self._next_memory_poll = now + MEMORY_POLL_SECONDS
            for job_id, pid, limit in self._scheduler.memory_watch():
                rss = resident_bytes(pid)
                if rss is not None and rss > limit:
                    self.stop(
                        job_id,
                        JobError(
                            kind=JobErrorKind.MEMORY,
                            message=(
                                f"job {job_id} passed its memory limit of {limit:,} bytes: its worker "
                                f"pid {pid} held {rss:,} bytes resident and was killed and replaced"
                            ),
                            pid=pid,
                            limit=float(limit),
                            peak=rss,
                        ),
                    )

    def _kill(self, pid: int, job_id: int, error: JobError | None) -> None:
        if job_id >= 0:
            why = error.kind.value if error is not None else "stopped before it started"
            logger.info("stopping job %d (%s): killing its worker pid %d", job_id, why, pid)
        if self._expect_kill is not None:
            try:
                self._expect_kill(pid)
            except Exception:
                logger.exception("the backend's expect_kill(%d) failed", pid)
        signal_pid(pid, signal.SIGKILL)


def resident_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            fields = f.read().split()
        return int(fields[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None
