"""Throughput: many no-op jobs at once, then ``map`` with small and large chunks.

``submit``: submit every job, then wait for all; the clock covers both, since
an executor may do its work at submit time or later. ``map``: consume the whole
result iterator of ``map(identity, range(n), chunksize=c)``. Chunksize 1 shows
the per-job cost; a large chunksize shows what batching recovers.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import TYPE_CHECKING

from benchmarks import _jobs
from benchmarks._core import Family, Metric, Profile, Repeat, Trial, TrialOutput, single_trial
from benchmarks.latency import warm_up

if TYPE_CHECKING:
    from benchmarks._child import Context


def _metrics(profile: Profile) -> tuple[Metric, ...]:
    return (
        Metric("submit_jobs_s", "submit", "jobs/s", "higher", "{:,.0f}"),
        *(
            Metric(f"map_cs{c}_items_s", f"map cs={c}", "items/s", "higher", "{:,.0f}")
            for c in profile.map_chunksizes
        ),
    )


FAMILY = Family(
    name="throughput",
    title="throughput: no-op submits then wait all (jobs/s); map of identity (items/s); higher is better",
    module="throughput",
    metrics=_metrics,
    plan=lambda profile, mem: single_trial([m.key for m in _metrics(profile)], 120.0)(profile, mem),
)


def run_trial(ctx: Context, trial: Trial) -> TrialOutput:
    executor = ctx.executor()
    profile = ctx.profile
    warm_up(executor, ctx.workers, 10)
    output = TrialOutput()
    for _ in range(profile.repeats):
        repeat: Repeat = {}
        t0 = time.perf_counter()
        futures = [executor.submit(_jobs.noop) for _ in range(profile.throughput_submits)]
        concurrent.futures.wait(futures)
        repeat["submit_jobs_s"] = profile.throughput_submits / (time.perf_counter() - t0)
        # A job that failed fast must not pass for a fast job.
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(futures)} no-op jobs failed, first: {failed[0]!r}")
        del futures
        for chunksize in profile.map_chunksizes:
            t0 = time.perf_counter()
            for _ in executor.map(_jobs.identity, range(profile.map_items), chunksize=chunksize):
                pass
            repeat[f"map_cs{chunksize}_items_s"] = profile.map_items / (time.perf_counter() - t0)
        output.repeats.append(repeat)
    return output
