"""Bandwidth by payload size: the bandwidth family's echo, from 1 KiB to 256 MiB.

Small payloads measure the round trip, big ones the copying; where a contender
switches from pipes to shared memory shows as a change of slope. Each size
runs enough round trips (at least ``_MIN_ROUNDS``, about ``_BYTES_PER_REPEAT``
bytes) that a repeat is not one noisy sample; the bandwidth is
``2 * size * rounds / elapsed``.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from benchmarks import _jobs
from benchmarks._core import MIB, Family, Metric, Plan, Profile, Trial, TrialOutput, TrialSpec

if TYPE_CHECKING:
    from benchmarks._child import Context

_MIN_ROUNDS = 3
_MAX_ROUNDS = 200
_BYTES_PER_REPEAT = 64 * MIB


def size_label(kib: int) -> str:
    return f"{kib // 1024} MiB" if kib >= 1024 else f"{kib} KiB"


def metric_key(kib: int) -> str:
    return f"mib_s_{kib}k"


def _metrics(profile: Profile) -> tuple[Metric, ...]:
    return tuple(
        Metric(metric_key(kib), size_label(kib), "MiB/s", "higher", "{:,.0f}") for kib in profile.sweep_kib
    )


def _plan(profile: Profile, mem_available: int) -> Plan:
    keys = tuple(metric_key(kib) for kib in profile.sweep_kib)
    # The payload, its pickles and the copies in flight: about 8 copies at the biggest size.
    biggest = max(profile.sweep_kib) * 1024
    if 8 * biggest > mem_available:
        return Plan((), {k: f"needs {8 * biggest / MIB:,.0f} MiB free" for k in keys})
    return Plan((TrialSpec({}, keys, 120.0),))


FAMILY = Family(
    name="bandwidth-sweep",
    title="bandwidth by payload size: bytes in and out, 2*size/round trip (MiB/s, higher is better)",
    module="bandsweep",
    metrics=_metrics,
    plan=_plan,
)


def run_trial(ctx: Context, trial: Trial) -> TrialOutput:
    executor = ctx.executor()
    executor.submit(_jobs.identity, b"x" * 1024).result()  # start the workers, untimed
    output = TrialOutput(extra={"sizes_kib": list(ctx.profile.sweep_kib)})
    payloads = {kib: os.urandom(kib * 1024) for kib in ctx.profile.sweep_kib}
    for _ in range(ctx.profile.repeats):
        repeat: dict[str, float | int | bool] = {}
        for kib, payload in payloads.items():
            size = len(payload)
            rounds = max(_MIN_ROUNDS, min(_MAX_ROUNDS, _BYTES_PER_REPEAT // size))
            executor.submit(_jobs.identity, payload).result()  # this size's first trip, untimed
            t0 = time.perf_counter()
            for _ in range(rounds):
                returned = executor.submit(_jobs.identity, payload).result()
                if len(returned) != size:
                    raise RuntimeError(f"payload came back altered: {len(returned)} bytes for {size}")
                del returned
            elapsed = time.perf_counter() - t0
            repeat[metric_key(kib)] = 2 * size * rounds / MIB / elapsed
        output.repeats.append(repeat)
    return output
