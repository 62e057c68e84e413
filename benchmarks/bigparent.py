"""Big parent: time to first result when the parent already holds N GiB.

This is the sidecar's reason to exist. Forking a parent costs in proportion to
its mapped memory (page tables are copied, then pages are copied on write),
while spawning a clean process does not. Each trial is a fresh interpreter
that allocates N GiB, writes one byte per page so the memory is really
resident, then starts the clock, constructs the executor and waits for the
first result.

N is capped at half of MemAvailable as read at harness start: a larger N is
skipped with a note rather than pushing the machine into swap or the OOM
killer, which would measure the machine, not the executor.
"""

from __future__ import annotations

import mmap
import time
from typing import TYPE_CHECKING

from benchmarks import _jobs
from benchmarks._core import GIB, Family, Metric, Plan, Profile, Trial, TrialOutput, TrialSpec

if TYPE_CHECKING:
    from benchmarks._child import Context

# Seconds of time limit per GiB on top of the base: allocating and touching
# memory takes time before the clock starts.
_TIMEOUT_S_PER_GIB = 15.0
_BASE_TIMEOUT_S = 60.0


def key(gib: int) -> str:
    return f"first_result_ms_{gib}gib"


def _metrics(profile: Profile) -> tuple[Metric, ...]:
    return tuple(Metric(key(n), f"N={n} GiB", "ms", "lower") for n in profile.big_parent_gib)


def _plan(profile: Profile, mem_available: int) -> Plan:
    trials: list[TrialSpec] = []
    skipped: dict[str, str] = {}
    for gib in profile.big_parent_gib:
        if gib * GIB > mem_available // 2:
            skipped[key(gib)] = (
                f"N={gib} GiB skipped: more than half of MemAvailable ({mem_available / GIB:.1f} GiB)"
            )
            continue
        timeout = _BASE_TIMEOUT_S + _TIMEOUT_S_PER_GIB * gib
        trials.extend(TrialSpec({"gib": gib}, (key(gib),), timeout) for _ in range(profile.big_parent_trials))
    return Plan(tuple(trials), skipped)


FAMILY = Family(
    name="big-parent",
    title="big parent: parent holds N GiB, then constructor to first result (ms, lower is better)",
    module="bigparent",
    metrics=_metrics,
    plan=_plan,
)


def run_trial(ctx: Context, trial: Trial) -> TrialOutput:
    gib = int(trial["gib"])
    construct = ctx.load()
    t0 = time.perf_counter()
    ballast = bytearray(gib * GIB)
    # bytearray's zeroed pages may be mapped lazily; a write per page makes them resident.
    pages = len(range(0, len(ballast), mmap.PAGESIZE))
    ballast[:: mmap.PAGESIZE] = b"\x01" * pages
    allocated_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    executor = ctx.track(construct())
    executor.submit(_jobs.noop).result()
    elapsed = time.perf_counter() - t1
    return TrialOutput(
        repeats=[{key(gib): elapsed * 1e3}],
        extra={"gib": gib, "allocate_and_touch_s": allocated_s},
    )
