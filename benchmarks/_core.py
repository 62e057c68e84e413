"""Shared vocabulary of the harness: profiles (sizes), metrics, families, trial output.

Both the harness process and every measurement child import this module, so it
uses the standard library only and imports nothing heavy: a child imports it
before it starts any clock.

Words used throughout the package:

- a *family* is one kind of measurement (``latency``, ``crash``, ...), one
  module each;
- a *contender* is one executor configuration being compared;
- a *cell* is one family measured for one contender: one row of the table;
- a *trial* is one child interpreter run for a cell. Most families need one
  trial per cell and repeat inside it; the fresh-interpreter families
  (cold start, big parent) need one trial per repeat;
- a *repeat* is one set of numbers; a cell reports the median over repeats.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

# Parameters of one trial, as JSON numbers (e.g. {"gib": 2} for big parent).
Trial = dict[str, float]
# One repeat's numbers, by metric key. A flag metric is stored as a bool.
Repeat = dict[str, float | int | bool]

MIB: Final = 1 << 20
GIB: Final = 1 << 30


@dataclass(frozen=True)
class Profile:
    """How big and how often: one of ``PROFILES``, chosen on the command line."""

    name: str
    # Repeats inside one child for latency, throughput and bandwidth. More repeats
    # steady the median and cost wall time linearly.
    repeats: int
    cold_start_trials: int
    latency_warmup: int
    latency_rounds: int
    throughput_submits: int
    map_items: int
    map_chunksizes: tuple[int, ...]
    bandwidth_mib: int
    # Payload sizes of the bandwidth-by-size family, in KiB.
    sweep_kib: tuple[int, ...]
    big_parent_gib: tuple[int, ...]
    big_parent_trials: int
    # The deliberate idle period of the idle-memory family, and the only sleep
    # in the harness that is not a job's simulated work.
    idle_seconds: float
    crash_jobs: int
    # How long the crash family waits for the 8 jobs before counting the
    # unfinished ones as pending (a hang is a result, not a harness failure).
    crash_wait_seconds: float
    # Multiplies every family's base time limit: a full run moves more data.
    timeout_scale: float
    # Jobs stopped by their time limit in the job-timeouts family.
    timeout_trials: int = 20
    # Queue-wait family: jobs kept in flight, as multiples of the worker count,
    # and jobs timed per load level (one repeat: a p99 wants every sample in
    # one distribution rather than a median of small-sample p99s).
    queue_wait_loads: tuple[int, ...] = (1, 2, 4, 8)
    queue_wait_jobs: int = 200


PROFILES: Final[Mapping[str, Profile]] = {
    # For the smoke test: proves every path runs, measures nothing worth reading.
    "tiny": Profile(
        name="tiny",
        repeats=1,
        cold_start_trials=1,
        latency_warmup=10,
        latency_rounds=50,
        throughput_submits=300,
        map_items=1000,
        map_chunksizes=(1, 100),
        bandwidth_mib=1,
        sweep_kib=(1, 1024),
        big_parent_gib=(0,),
        big_parent_trials=1,
        idle_seconds=0.5,
        crash_jobs=8,
        crash_wait_seconds=20.0,
        timeout_scale=1.0,
        timeout_trials=3,
        queue_wait_loads=(1, 4),
        queue_wait_jobs=20,
    ),
    # The default: about two minutes on a 2-core machine.
    "quick": Profile(
        name="quick",
        repeats=2,
        cold_start_trials=2,
        latency_warmup=50,
        latency_rounds=300,
        throughput_submits=5000,
        map_items=20_000,
        map_chunksizes=(1, 1000),
        bandwidth_mib=64,
        sweep_kib=(1, 16, 256, 4096, 65536),
        big_parent_gib=(0, 2),
        big_parent_trials=1,
        idle_seconds=2.0,
        crash_jobs=8,
        crash_wait_seconds=30.0,
        timeout_scale=1.0,
    ),
    # The published numbers (--full).
    "full": Profile(
        name="full",
        repeats=5,
        cold_start_trials=5,
        latency_warmup=200,
        latency_rounds=2000,
        throughput_submits=20_000,
        map_items=100_000,
        map_chunksizes=(1, 1000),
        bandwidth_mib=64,
        sweep_kib=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144),
        big_parent_gib=(0, 2, 8),
        big_parent_trials=3,
        idle_seconds=5.0,
        crash_jobs=8,
        crash_wait_seconds=60.0,
        timeout_scale=4.0,
        timeout_trials=100,
        queue_wait_jobs=2000,
    ),
}


@dataclass(frozen=True)
class Metric:
    """One column of a family's table."""

    key: str
    label: str
    unit: str
    # "lower"/"higher": which way is better. None: not a speed (a count, a flag).
    better: Literal["lower", "higher"] | None
    # Format of a value in the table; flags print as yes/no.
    fmt: str = "{:,.1f}"
    kind: Literal["number", "flag"] = "number"
    # The baseline metric the ratio divides by, when the baseline has no metric
    # of this key (only SubprocExecutor can quiesce; compare with fork idle).
    ratio_to: str | None = None

    @property
    def has_ratio(self) -> bool:
        """Only speeds get a ratio against the baseline; a ratio of counts misleads."""
        return self.better is not None

    def format(self, value: float | bool) -> str:
        if self.kind == "flag":
            return "yes" if value else "no"
        return self.fmt.format(value)


@dataclass(frozen=True)
class TrialSpec:
    """One child interpreter to run for a cell."""

    params: Trial
    # The metrics this trial produces: if it fails, these are the cells' errors.
    keys: tuple[str, ...]
    base_timeout_s: float


@dataclass(frozen=True)
class Plan:
    """What to run for one cell, and why some of it was left out."""

    trials: tuple[TrialSpec, ...]
    # Metric key -> reason it was not measured (e.g. not enough memory).
    skipped: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """One kind of measurement. Its module also defines ``run_trial(ctx, trial)``."""

    name: str
    title: str
    # Module under ``benchmarks`` that the child imports to run a trial.
    module: str
    metrics: Callable[[Profile], tuple[Metric, ...]]
    # (profile, bytes of MemAvailable at harness start) -> plan for one contender.
    plan: Callable[[Profile, int], Plan]


@dataclass
class TrialOutput:
    """What one trial reports: repeats of numbers, errors by metric key, and
    extra facts for the JSON that are not table columns."""

    repeats: list[Repeat] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)


def single_trial(keys: Sequence[str], base_timeout_s: float) -> Callable[[Profile, int], Plan]:
    """The plan of a family that repeats inside one child."""

    def plan(profile: Profile, mem_available: int) -> Plan:
        return Plan((TrialSpec({}, tuple(keys), base_timeout_s),))

    return plan


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], pct: int) -> float:
    """The pct-th percentile, interpolated between samples (numpy's default)."""
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[pct - 1])


def short_error(exc: BaseException, limit: int = 120) -> str:
    """``Type: message`` on one line, cut to ``limit``: fits a table cell."""
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
