"""Warm latency: sequential submit -> result of a no-op, after warm-up.

One job in flight at a time, so this is the executor's round trip: pickling,
the trip to a worker and back, and waking the caller. The warm-up first runs a
batch of ``workers * 4`` jobs at once (so on-demand pools start every worker),
then ``latency_warmup`` sequential ones.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from benchmarks import _jobs
from benchmarks._core import Family, Metric, Trial, TrialOutput, median, percentile, single_trial

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from benchmarks._child import Context

_METRICS = (
    Metric("median_us", "median", "µs", "lower"),
    Metric("p99_us", "p99", "µs", "lower"),
)

FAMILY = Family(
    name="latency",
    title="warm latency: sequential submit -> result of a no-op (µs, lower is better)",
    module="latency",
    metrics=lambda profile: _METRICS,
    plan=single_trial([m.key for m in _METRICS], 60.0),
)


def warm_up(executor: Executor, workers: int, sequential: int) -> None:
    """Start every worker and run the first-job paths, so the clock sees steady state."""
    list(executor.map(_jobs.identity, range(workers * 4)))
    for _ in range(sequential):
        executor.submit(_jobs.noop).result()


def run_trial(ctx: Context, trial: Trial) -> TrialOutput:
    executor = ctx.executor()
    warm_up(executor, ctx.workers, ctx.profile.latency_warmup)
    output = TrialOutput()
    for _ in range(ctx.profile.repeats):
        samples: list[float] = []
        for _ in range(ctx.profile.latency_rounds):
            t0 = time.perf_counter_ns()
            executor.submit(_jobs.noop).result()
            samples.append((time.perf_counter_ns() - t0) / 1e3)
        output.repeats.append({"median_us": median(samples), "p99_us": percentile(samples, 99)})
    return output
