"""Per-job time limits: how soon after its deadline a timed-out job's future fails.

A job with ``timeout=LIMIT`` notes its start (``time.monotonic()``, one clock
for every process on Linux) and sleeps far past the limit; the parent waits
for the future to fail with ``JobTimeoutError``. The overshoot is the time
from the deadline (start + LIMIT) to the moment ``result()`` raised: the
sidecar's timer, the kill, the worker's death seen, the JOB_ERROR frame and
the future's wake-up. One job at a time, after warm-up; ``timeout_trials``
of them. Only contenders with per-job timeouts take part (the others' cells
say so). What a time limit that never fires costs is the
``subproc-pipes-limits`` contender's row in the latency and throughput tables.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import TYPE_CHECKING

from benchmarks import _jobs
from benchmarks._core import Family, Metric, Trial, TrialOutput, median, short_error, single_trial
from benchmarks.latency import warm_up

if TYPE_CHECKING:
    from benchmarks._child import Context

# The limit each trial's job gets; the job sleeps this many times longer.
LIMIT_SECONDS = 0.05
_OVERSLEEP = 100

# No ratios: the baseline cannot stop a job, so there is nothing to divide by.
_METRICS = (
    Metric("overshoot_median_ms", "median", "ms", None, "{:,.1f}"),
    Metric("overshoot_max_ms", "worst", "ms", None, "{:,.1f}"),
    Metric("trials", "trials", "", None, "{:.0f}"),
)

FAMILY = Family(
    name="job-timeouts",
    title="per-job timeout: deadline -> the timed-out job's future fails (ms, lower is better)",
    module="jobcontrol",
    metrics=lambda profile: _METRICS,
    plan=single_trial([m.key for m in _METRICS], 120.0),
)


def run_trial(ctx: Context, trial: Trial) -> TrialOutput:
    executor = ctx.executor()
    output = TrialOutput()
    options = getattr(executor, "options", None)
    try:
        if options is None:
            raise TypeError("no per-job timeout")
        limited = options(timeout=LIMIT_SECONDS)
    except (TypeError, ValueError) as exc:  # the stdlib, or a backend that refuses timeouts
        for m in _METRICS:
            output.errors[m.key] = short_error(exc)
        return output
    from subproc_executor import JobTimeoutError

    warm_up(executor, ctx.workers, 10)
    overshoots: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(ctx.profile.timeout_trials):
            path = os.path.join(tmp, f"start{i}")
            fut = limited.submit(_jobs.note_start_then_sleep, path, LIMIT_SECONDS * _OVERSLEEP)
            try:
                fut.result()
            except JobTimeoutError:
                failed_at = time.monotonic()
            else:
                raise RuntimeError("a job far past its time limit was not stopped")
            with open(path) as f:
                start = float(f.read())
            overshoots.append((failed_at - (start + LIMIT_SECONDS)) * 1e3)
    output.repeats.append(
        {
            "overshoot_median_ms": median(overshoots),
            "overshoot_max_ms": max(overshoots),
            "trials": float(len(overshoots)),
        }
    )
    return output
