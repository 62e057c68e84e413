"""Plan the run, start one child per trial, and fold the outcomes into cells.

Families run one after another and, within a family, contenders one after
another, the baseline first: on a small machine two measurements at once
would measure each other. Each family gets a progress bar of its trials
(``_progress``), drawn only on a terminal. A cell's value per metric is the median over all
its repeats; a flag is "yes" only if every repeat said yes. Ratios are
value / baseline value for speed metrics, computed once the family is done.

The result is a JSON-ready dict (``schema`` 1)::

    {"schema": 1, "meta": {...machine, profile, options...}, "baseline": "stdlib-fork",
     "contenders": {name: description},
     "measurements": {family: {"title", "metrics": [...], "skipped": {key: why},
                               "cells": {contender: cell}}}}

where a cell is a ``Cell`` as a dict.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks._core import Family, Metric, Plan, Profile, Repeat, TrialSpec, median
from benchmarks._progress import BarFactory, family_bar
from benchmarks._runner import run_child
from benchmarks.contenders import BASELINE, Contender

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RunConfig:
    """What to run; built by ``__main__`` from the command line."""

    profile: Profile
    families: Sequence[Family]
    contenders: Sequence[Contender]
    workers: int
    mem_available: int
    # Scratch space for the children's result files and output.
    workdir: Path
    # Opens each family's progress bar; ``--quiet`` and the tests pass their own.
    progress: BarFactory = family_bar


@dataclass
class Cell:
    """One family measured for one contender: a row of the table."""

    # ok: every metric measured. partial: some measured. error/timeout: none.
    # skipped: not run (interrupted).
    status: str
    # Why nothing was measured (error/timeout/skipped); None otherwise.
    error: str | None = None
    # Metric key -> median over repeats (a flag: bool).
    values: dict[str, float | bool] = dataclasses.field(default_factory=dict)
    # Metric key -> why that metric has no value.
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    # Metric key -> value / baseline value, speeds only.
    ratios: dict[str, float] = dataclasses.field(default_factory=dict)
    repeats: list[Repeat] = dataclasses.field(default_factory=list)
    # Each trial's extra facts (failure kinds, allocation time, ...).
    extra: list[object] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    wall_s: float = 0.0
    # {"trial", "error", "stderr_tail"} per failed trial.
    trial_failures: list[dict[str, object]] = dataclasses.field(default_factory=list)


def metric_dicts(metrics: Sequence[Metric]) -> list[dict[str, object]]:
    return [dataclasses.asdict(m) | {"has_ratio": m.has_ratio} for m in metrics]


def run_all(config: RunConfig, meta: dict[str, object]) -> dict[str, object]:
    """Measure every family for every contender. On Ctrl-C the running child is
    killed, the remaining cells are marked skipped, and the partial results return."""
    measurements: dict[str, dict[str, object]] = {}
    results: dict[str, object] = {
        "schema": SCHEMA_VERSION,
        "meta": meta,
        "baseline": BASELINE,
        "contenders": {c.name: c.description for c in config.contenders},
        "measurements": measurements,
    }
    total = len(config.families) * len(config.contenders)
    done = 0
    interrupted = False
    t_start = time.perf_counter()
    for family in config.families:
        metrics = family.metrics(config.profile)
        plan = family.plan(config.profile, config.mem_available)
        cells: dict[str, Cell] = {}
        for reason in plan.skipped.values():
            logger.info("%s: %s", family.name, reason)
        # One step per trial run; cells skipped or interrupted add none, so
        # such a bar ends short of its total, as the family did.
        with config.progress(family.name, len(plan.trials) * len(config.contenders)) as bar:
            for contender in config.contenders:
                done += 1
                if interrupted:
                    cells[contender.name] = Cell("skipped", "interrupted")
                    continue
                bar.set_postfix_str(contender.name)
                if contender.families is not None and family.name not in contender.families:
                    cells[contender.name] = Cell("skipped", f"not measured for {contender.name}")
                    continue
                if contender.needs is not None and importlib.util.find_spec(contender.needs) is None:
                    cells[contender.name] = Cell("skipped", f"{contender.needs} is not installed")
                    continue
                try:
                    cell = _run_cell(config, family, metrics, plan, contender, bar.update)
                except KeyboardInterrupt:
                    logger.warning("interrupted: the running child was killed; writing partial results")
                    interrupted = True
                    cells[contender.name] = Cell("skipped", "interrupted")
                    continue
                cells[contender.name] = cell
                logger.info(
                    "[%d/%d] %-12s %-18s %-8s %5.1f s%s",
                    done,
                    total,
                    family.name,
                    contender.name,
                    cell.status,
                    cell.wall_s,
                    f"  {cell.error}" if cell.error else "",
                )
        _add_ratios(cells, metrics)
        measurements[family.name] = {
            "title": family.title,
            "metrics": metric_dicts(metrics),
            "skipped": dict(plan.skipped),
            "cells": {name: dataclasses.asdict(cell) for name, cell in cells.items()},
        }
    meta["wall_s"] = round(time.perf_counter() - t_start, 1)
    meta["interrupted"] = interrupted
    return results


def _run_cell(
    config: RunConfig,
    family: Family,
    metrics: Sequence[Metric],
    plan: Plan,
    contender: Contender,
    on_trial: Callable[[], object],
) -> Cell:
    """Run every trial of one cell and summarise, calling ``on_trial`` after each
    (the progress bar). Raises only KeyboardInterrupt."""
    if not plan.trials:
        return Cell("skipped", "; ".join(plan.skipped.values()) or "nothing to run")
    repeats: list[Repeat] = []
    errors: dict[str, str] = {}
    extra: list[object] = []
    notes: list[str] = []
    failures: list[dict[str, object]] = []
    wall_s = 0.0
    for index, trial in enumerate(plan.trials):
        timeout_s = trial.base_timeout_s * config.profile.timeout_scale
        outcome = run_child(
            _spec(config, family, contender, trial),
            timeout_s=timeout_s,
            workdir=config.workdir,
            tag=f"{family.name}.{contender.name}.{index}",
        )
        wall_s += outcome.wall_s
        on_trial()
        failure = outcome.failure(timeout_s)
        if failure is None and outcome.result is not None:
            repeats.extend(outcome.result["repeats"])
            errors.update(outcome.result["errors"])
            extra.append(outcome.result["extra"])
            if outcome.timed_out:
                notes.append(f"results saved, then shutdown did not return within {timeout_s:.0f} s: killed")
            continue
        logger.debug(
            "%s/%s trial %d failed: %s\n%s", family.name, contender.name, index, failure, outcome.stderr_tail
        )
        failures.append({"trial": trial.params, "error": failure, "stderr_tail": outcome.stderr_tail})
        for key in trial.keys:
            errors.setdefault(key, failure or "error")
    values = _summarise(metrics, repeats)
    errors = {key: why for key, why in errors.items() if key not in values}
    if failures and values:
        notes.append(f"{len(failures)} of {len(plan.trials)} trials failed: {failures[0]['error']}")
    cell = Cell("ok", None, values, errors, {}, repeats, extra, notes, round(wall_s, 2), failures)
    if not values and (failures or errors):
        cell.error = str(failures[0]["error"] if failures else next(iter(errors.values())))
        cell.status = "timeout" if cell.error.startswith("timeout") else "error"
    elif errors or failures:
        cell.status = "partial"
    return cell


def _spec(config: RunConfig, family: Family, contender: Contender, trial: TrialSpec) -> dict[str, object]:
    return {
        "module": family.module,
        "contender": contender.name,
        "workers": config.workers,
        "profile": config.profile.name,
        "trial": trial.params,
    }


def _summarise(metrics: Sequence[Metric], repeats: Sequence[Repeat]) -> dict[str, float | bool]:
    """Median per metric over the repeats that have it; a flag needs every repeat."""
    values: dict[str, float | bool] = {}
    for metric in metrics:
        seen = [r[metric.key] for r in repeats if metric.key in r]
        if not seen:
            continue
        values[metric.key] = all(seen) if metric.kind == "flag" else median([float(v) for v in seen])
    return values


def _add_ratios(cells: dict[str, Cell], metrics: Sequence[Metric]) -> None:
    """Fill each cell's ratios against the baseline cell, where both have a number."""
    baseline = cells.get(BASELINE)
    if baseline is None:
        return
    for cell in cells.values():
        cell.ratios = {
            m.key: float(cell.values[m.key]) / float(baseline.values[m.ratio_to or m.key])
            for m in metrics
            if m.has_ratio and m.key in cell.values and baseline.values.get(m.ratio_to or m.key)
        }
