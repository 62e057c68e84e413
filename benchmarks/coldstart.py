"""Cold start: from the constructor to the first result, in a fresh interpreter.

Each trial is its own child interpreter, so nothing is warm: no forkserver
already running, no module already imported, no worker already started. The
contender's modules are imported before the clock starts and reported apart
(``import``), because an application pays that once however many executors it
makes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from benchmarks import _jobs
from benchmarks._core import Family, Metric, Plan, Profile, Trial, TrialOutput, TrialSpec

if TYPE_CHECKING:
    from benchmarks._child import Context

_METRICS = (
    Metric("first_result_ms", "first result", "ms", "lower"),
    Metric("import_ms", "import", "ms", "lower"),
)


def _plan(profile: Profile, mem_available: int) -> Plan:
    keys = tuple(m.key for m in _METRICS)
    return Plan(tuple(TrialSpec({}, keys, 60.0) for _ in range(profile.cold_start_trials)))


FAMILY = Family(
    name="cold-start",
    title="cold start: constructor to first result, fresh interpreter per trial (ms, lower is better)",
    module="coldstart",
    metrics=lambda profile: _METRICS,
    plan=_plan,
)


def run_trial(ctx: Context, trial: Trial) -> TrialOutput:
    t0 = time.perf_counter()
    construct = ctx.load()
    t1 = time.perf_counter()
    executor = ctx.track(construct())
    executor.submit(_jobs.noop).result()
    t2 = time.perf_counter()
    return TrialOutput(repeats=[{"first_result_ms": (t2 - t1) * 1e3, "import_ms": (t1 - t0) * 1e3}])
