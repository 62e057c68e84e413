"""Crash: one of 8 jobs kills its own worker with SIGKILL.

Counts how many of the other 7 succeed, how many are still pending when the
wait gives up, and whether the executor then serves a new job. The jobs take
a short while (``pause``), and the killer is the fourth, so when it dies some
neighbours are done, one is running and the rest are queued: each executor's
policy for each of those shows. The stdlib marks the whole pool broken;
``SubprocExecutor`` aims to fail only the job that crashed.
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import TYPE_CHECKING

from benchmarks import _jobs
from benchmarks._core import Family, Metric, Trial, TrialOutput, short_error, single_trial

if TYPE_CHECKING:
    from concurrent.futures import Future

    from benchmarks._child import Context

# Long enough that the killer's neighbours are still running or queued when it
# dies; short enough to keep the family under a few seconds.
_JOB_SECONDS = 0.1
# How long a new job may take after the crash before the answer is "no".
_NEW_JOB_TIMEOUT_S = 20.0

_METRICS = (
    Metric("others_ok", "others ok", "jobs", None, "{:.0f}"),
    Metric("others_pending", "still pending", "jobs", None, "{:.0f}"),
    Metric("serves_new_job", "serves new job", "", None, kind="flag"),
)

FAMILY = Family(
    name="crash",
    title="crash: 1 of 8 jobs SIGKILLs its worker; the other 7, then one new job",
    module="crash",
    metrics=lambda profile: _METRICS,
    plan=single_trial([m.key for m in _METRICS], 60.0),
)


def _outcome(future: Future[object]) -> str:
    """Say "ok", "pending", "cancelled" or the short error; never blocks."""
    if not future.done():
        return "pending"
    if future.cancelled():
        return "cancelled"
    exc = future.exception()
    return "ok" if exc is None else short_error(exc)


def run_trial(ctx: Context, trial: Trial) -> TrialOutput:
    executor = ctx.executor()
    jobs = ctx.profile.crash_jobs
    killer = jobs // 2 - 1
    futures: list[Future[object]] = [
        executor.submit(_jobs.kill_self) if i == killer else executor.submit(_jobs.pause, _JOB_SECONDS)
        for i in range(jobs)
    ]
    others = [f for i, f in enumerate(futures) if i != killer]
    concurrent.futures.wait(futures, timeout=ctx.profile.crash_wait_seconds)
    outcomes = [_outcome(f) for f in others]
    ok = outcomes.count("ok")
    pending = outcomes.count("pending")
    failures = collections.Counter(o.split(":")[0] for o in outcomes if o not in ("ok", "pending"))
    try:
        executor.submit(_jobs.noop).result(timeout=_NEW_JOB_TIMEOUT_S)
        serves, new_job = True, "ok"
    except Exception as exc:
        serves, new_job = False, short_error(exc)
    return TrialOutput(
        repeats=[{"others_ok": ok, "others_pending": pending, "serves_new_job": serves}],
        extra={
            "other_failures": dict(failures),
            "killer_outcome": _outcome(futures[killer]),
            "new_job": new_job,
        },
    )
