"""Queue wait and run time of recent jobs, for ``statistics()``.

Each outcome starts with the job's ``OutcomeTiming`` (``wire.progress``): when
its worker started it and when its call ended, and the worker's pid. With the
submit time the parent kept, that gives the job's queue wait (submit -> start
in a worker: the parent's queue, the pipes, the sidecar's queue) and its run
time (start -> end of the call). Kept for the last ``WINDOW`` jobs; the
percentiles are computed only when ``statistics()`` asks, so a job costs two
appends and a count here. No lock of its own: the supervisor's is held.
"""

from __future__ import annotations

import math
from collections import deque

from ..wire.progress import OUTCOME_TIMING_SIZE, unpack_timing

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Final

    from ..stats import TimingSummary

__all__ = ["MAX_WORKERS_COUNTED", "WINDOW", "Timings", "summarize"]

# Jobs the percentiles are taken over: recent enough to follow a change of
# load, enough for a p99 to mean something.
WINDOW: Final = 10_000
# Workers whose job counts are kept: the newest ones (the oldest forgotten).
MAX_WORKERS_COUNTED: Final = 1024


class Timings:
    """The recent jobs' queue waits and run times, and jobs per worker."""

    def __init__(self) -> None:
        self.queue_waits: deque[float] = deque(maxlen=WINDOW)
        self.run_times: deque[float] = deque(maxlen=WINDOW)
        # {worker pid: jobs it returned an outcome for}, since the executor
        # started, for the last MAX_WORKERS_COUNTED workers seen.
        self.jobs_per_worker: dict[int, int] = {}

    def record(self, submitted: float, outcome: bytes) -> None:
        """A RESULT frame's outcome bytes (their timing head) for a job
        submitted at ``submitted`` (``time.monotonic()``)."""
        if len(outcome) < OUTCOME_TIMING_SIZE:
            return
        started, ended, pid = unpack_timing(outcome)
        self.queue_waits.append(started - submitted)
        self.run_times.append(ended - started)
        counts = self.jobs_per_worker
        if pid in counts:
            counts[pid] += 1
        else:
            if len(counts) >= MAX_WORKERS_COUNTED:  # workers replaced without end (max_tasks_per_child)
                del counts[next(iter(counts))]
            counts[pid] = 1

    def snapshot(self) -> tuple[list[float], list[float], tuple[tuple[int, int], ...]]:
        """Copies to summarize outside the lock: waits, run times, (pid, jobs) pairs."""
        return list(self.queue_waits), list(self.run_times), tuple(self.jobs_per_worker.items())


def summarize(values: Iterable[float]) -> TimingSummary:
    """p50 / p95 / p99 / max of ``values`` (nearest rank); zeros when empty."""
    from ..stats import TimingSummary

    # Clamped here, not per job: a clock read on another CPU may be a hair behind.
    ordered = sorted(max(0.0, v) for v in values)
    n = len(ordered)
    if not n:
        return TimingSummary(count=0, p50=0.0, p95=0.0, p99=0.0, max=0.0)

    def rank(q: float) -> float:
        # Nearest rank: the smallest value with at least q of the values at or below it.
        return ordered[max(0, math.ceil(q * n) - 1)]

    return TimingSummary(count=n, p50=rank(0.50), p95=rank(0.95), p99=rank(0.99), max=ordered[-1])
