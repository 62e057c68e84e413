"""Idle memory: resident memory of the executor's processes when idle.

After one batch of jobs (one per worker, so on-demand pools have started every
worker) and ``idle_seconds`` of deliberate idleness, the RSS of every process
the executor added to this process's tree is summed. The tree is listed before
the executor exists, so only its processes count (workers, sidecar, forkserver,
resource trackers). RSS counts shared pages once per process, so it
overstates forked workers; PSS (proportional set size) splits shared pages
fairly and is reported alongside. Contenders with ``quiesce()`` are measured a
second time after quiescing and idling again; that ratio is against the
baseline's idle RSS, since the baseline cannot quiesce.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from benchmarks import _jobs
from benchmarks._core import MIB, Family, Metric, Repeat, Trial, TrialOutput, short_error, single_trial

if TYPE_CHECKING:
    import psutil

    from benchmarks._child import Context

_METRICS = (
    Metric("rss_mib", "RSS", "MiB", "lower"),
    Metric("pss_mib", "PSS", "MiB", "lower"),
    Metric("procs", "procs", "", None, "{:.0f}"),
    Metric("rss_quiesced_mib", "RSS quiesced", "MiB", "lower", ratio_to="rss_mib"),
    Metric("procs_quiesced", "procs quiesced", "", None, "{:.0f}"),
)
_ALWAYS = ("rss_mib", "pss_mib", "procs")

FAMILY = Family(
    name="idle-memory",
    title="idle memory: executor's processes after a job and an idle period (MiB, lower is better)",
    module="idlemem",
    metrics=lambda profile: _METRICS,
    plan=single_trial(list(_ALWAYS), 60.0),
)


def _tree(me: psutil.Process, exclude: set[int]) -> list[psutil.Process]:
    return [p for p in me.children(recursive=True) if p.pid not in exclude]


def _measure(me: psutil.Process, exclude: set[int], prefix: str, with_pss: bool) -> Repeat:
    """Sum memory over the executor's processes. A process that exits while
    being read is skipped: it holds no memory any more."""
    import psutil

    rss = pss = 0
    count = 0
    for proc in _tree(me, exclude):
        try:
            if with_pss:
                info = proc.memory_full_info()
                rss, pss = rss + info.rss, pss + info.pss
            else:
                rss += proc.memory_info().rss
            count += 1
        except psutil.NoSuchProcess:
            continue
    repeat: Repeat = {f"rss{prefix}_mib": rss / MIB, f"procs{prefix}": count}
    if with_pss:
        repeat[f"pss{prefix}_mib"] = pss / MIB
    return repeat


def run_trial(ctx: Context, trial: Trial) -> TrialOutput:
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    executor = ctx.executor()
    for future in [executor.submit(_jobs.pause, 0.05) for _ in range(ctx.workers)]:
        future.result()
    # The deliberate idle period: what an idle executor holds is the measurement.
    time.sleep(ctx.profile.idle_seconds)
    repeat = _measure(me, before, "", with_pss=True)
    output = TrialOutput(repeats=[repeat])
    if ctx.contender.lifecycle:
        try:
            executor.quiesce()  # type: ignore[attr-defined]
            time.sleep(ctx.profile.idle_seconds)
            repeat.update(_measure(me, before, "_quiesced", with_pss=False))
        except Exception as exc:
            for key in ("rss_quiesced_mib", "procs_quiesced"):
                output.errors[key] = short_error(exc)
    return output
