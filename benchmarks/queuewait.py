"""Queue wait under load: how long a job waits between ``submit`` and its start in a worker.

At each load level the parent keeps ``load * workers`` jobs in flight (a
closed loop: a job's completion lets the next one be submitted) until
``queue_wait_jobs`` jobs have run. Every job sleeps ``JOB_SECONDS`` and returns
``time.monotonic()`` read as it started; its queue wait is that minus the
parent's ``time.monotonic()`` just before ``submit``. CLOCK_MONOTONIC is one
clock for every process on Linux, so the figure means the same for every
contender without any help from the executor.

A pool with no overhead would start a job at once at 1x (as many jobs as
workers) and, from there up, after ``(load - 1) * JOB_SECONDS``: the jobs
ahead of it on its worker. What a contender adds on top is its dispatching:
the trip to a worker at 1x, and how promptly a freed worker gets the next job
under load. The jobs sleep rather than spin, so the workers leave the CPU to
the parent and the sidecar, whose work is what is being measured.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import TYPE_CHECKING, Final

from benchmarks import _jobs
from benchmarks._core import Family, Metric, Profile, Repeat, Trial, TrialOutput, percentile, single_trial
from benchmarks.latency import warm_up

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

    from benchmarks._child import Context

# How long each job runs: short enough that hundreds of jobs per level take a
# fraction of a second, long enough that from 2x up the jobs queue.
JOB_SECONDS: Final = 0.002
PERCENTILES: Final = (50, 95, 99)


def metric_key(pct: int, load: int) -> str:
    """``p95_ms_4x``: the plot reads the percentile and the load back from it."""
    return f"p{pct}_ms_{load}x"


def _metrics(profile: Profile) -> tuple[Metric, ...]:
    return tuple(
        Metric(metric_key(pct, load), f"{load}x p{pct}", "ms", "lower", "{:,.2f}")
        for load in profile.queue_wait_loads
        for pct in PERCENTILES
    )


FAMILY = Family(
    name="queue-wait",
    title="queue wait: submit -> job starts in a worker, with load x workers jobs in flight "
    "(ms, lower is better)",
    module="queuewait",
    metrics=_metrics,
    plan=lambda profile, mem: single_trial([m.key for m in _metrics(profile)], 60.0)(profile, mem),
)


def queue_waits(executor: Executor, in_flight: int, jobs: int) -> list[float]:
    """Run ``jobs`` jobs with at most ``in_flight`` unfinished at a time; each one's wait in ms."""
    slots = threading.Semaphore(in_flight)
    submitted: list[tuple[float, Future[float]]] = []
    for _ in range(jobs):
        slots.acquire()
        t0 = time.monotonic()
        future = executor.submit(_jobs.start_then_sleep, JOB_SECONDS)
        future.add_done_callback(lambda _: slots.release())
        submitted.append((t0, future))
    concurrent.futures.wait([f for _, f in submitted])
    # A job that failed fast must not pass for a job that did not wait.
    failed = [f.exception() for _, f in submitted if f.exception() is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} of {jobs} jobs failed, first: {failed[0]!r}")
    return [(f.result() - t0) * 1e3 for t0, f in submitted]


def run_trial(ctx: Context, trial: Trial) -> TrialOutput:
    executor = ctx.executor()
    profile = ctx.profile
    warm_up(executor, ctx.workers, 10)
    repeat: Repeat = {}
    worst: dict[str, float] = {}
    for load in profile.queue_wait_loads:
        waits = queue_waits(executor, load * ctx.workers, profile.queue_wait_jobs)
        for pct in PERCENTILES:
            repeat[metric_key(pct, load)] = percentile(waits, pct)
        worst[f"{load}x"] = max(waits)
    extra = {
        "job_ms": JOB_SECONDS * 1e3,
        "jobs_per_load": profile.queue_wait_jobs,
        "in_flight": {f"{load}x": load * ctx.workers for load in profile.queue_wait_loads},
        "max_ms": worst,
    }
    return TrialOutput(repeats=[repeat], extra=extra)
