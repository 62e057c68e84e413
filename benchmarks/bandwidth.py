"""Payload bandwidth: a large bytes object in and out (the job returns it).

Bandwidth counts the bytes moved both ways: ``2 * size / round trip``. The
payload is random so that a compressing pickler gains nothing it would not
gain on real data; the result is checked, so a short answer cannot pass.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from benchmarks import _jobs
from benchmarks._core import MIB, Family, Metric, Trial, TrialOutput, single_trial

if TYPE_CHECKING:
    from benchmarks._child import Context

_METRICS = (
    Metric("mib_s", "in+out", "MiB/s", "higher", "{:,.0f}"),
    Metric("roundtrip_ms", "round trip", "ms", "lower"),
)

FAMILY = Family(
    name="bandwidth",
    title="payload bandwidth: bytes in and out, 2*size/round trip (MiB/s, higher is better)",
    module="bandwidth",
    metrics=lambda profile: _METRICS,
    plan=single_trial([m.key for m in _METRICS], 60.0),
)


def run_trial(ctx: Context, trial: Trial) -> TrialOutput:
    executor = ctx.executor()
    size = ctx.profile.bandwidth_mib * MIB
    payload = os.urandom(size)
    # Warm-up on a small payload: start the workers without timing them.
    executor.submit(_jobs.identity, b"x" * 1024).result()
    output = TrialOutput(extra={"payload_mib": ctx.profile.bandwidth_mib})
    for _ in range(ctx.profile.repeats):
        t0 = time.perf_counter()
        returned = executor.submit(_jobs.identity, payload).result()
        elapsed = time.perf_counter() - t0
        if returned != payload:
            raise RuntimeError(f"payload came back altered: {len(returned)} bytes for {size}")
        del returned
        output.repeats.append({"mib_s": 2 * size / MIB / elapsed, "roundtrip_ms": elapsed * 1e3})
    return output
