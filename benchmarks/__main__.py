"""``python -m benchmarks``: compare SubprocExecutor with the executors it replaces.

Run from the repository root. Prints a table, and writes ``results.json``,
``table.txt`` and PNG plots to ``--out`` (default ``benchmarks/results/``).
The default profile takes about two minutes on a 2-core machine; ``--full`` is
the one behind published numbers. See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks import (
    bandsweep,
    bandwidth,
    bigparent,
    coldstart,
    crash,
    idlemem,
    jobcontrol,
    latency,
    queuewait,
    throughput,
)
from benchmarks._core import GIB, PROFILES, Family
from benchmarks._env import REPO_ROOT, machine_info, mem_available
from benchmarks._harness import RunConfig, run_all
from benchmarks._plots import write_plots
from benchmarks._progress import family_bar
from benchmarks._report import format_meta, format_tables
from benchmarks.contenders import BASELINE, CONTENDERS

logger = logging.getLogger("benchmarks")

# In the order they run and print: cheapest first, so an interrupted run still
# has the headline numbers.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        coldstart.FAMILY,
        latency.FAMILY,
        throughput.FAMILY,
        bandwidth.FAMILY,
        bandsweep.FAMILY,
        bigparent.FAMILY,
        crash.FAMILY,
        idlemem.FAMILY,
        jobcontrol.FAMILY,
        queuewait.FAMILY,
    )
}


def _names(value: str, known: Sequence[str], what: str) -> list[str]:
    """Parse a comma-separated list, accepting ``_`` for ``-``, in the user's order."""
    names = [n.strip().replace("_", "-") for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from: {', '.join(known)}"
        )
    return list(dict.fromkeys(names))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Compare SubprocExecutor with the executors it replaces; see docs/benchmarks.md.",
        epilog=f"measurements: {', '.join(FAMILIES)}. contenders: {', '.join(CONTENDERS)}.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--full", action="store_true", help="the published sizes and repeats (about 10-15 minutes on 2 cores)"
    )
    size.add_argument("--tiny", action="store_true", help="very small sizes, one repeat: for the smoke test")
    parser.add_argument(
        "--only",
        type=lambda v: _names(v, list(FAMILIES), "measurement"),
        default=list(FAMILIES),
        metavar="NAMES",
        help="comma-separated measurements to run (default: all)",
    )
    parser.add_argument(
        "--contenders",
        type=lambda v: _names(v, list(CONTENDERS), "contender"),
        default=list(CONTENDERS),
        metavar="NAMES",
        help=f"comma-separated contenders (default: all); {BASELINE} is always added as the ratio baseline",
    )
    parser.add_argument("--workers", type=int, default=2, help="workers per executor (default: 2)")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results",
        help="directory for results.json, table.txt and the PNGs (default: benchmarks/results/)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines: only warnings and the table")
    parser.add_argument(
        "--verbose", action="store_true", help="debug logging, including failed children's stderr"
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    # Our progress, not matplotlib's font-cache chatter.
    logging.getLogger("matplotlib").setLevel(max(level, logging.WARNING))
    profile = PROFILES["full" if args.full else "tiny" if args.tiny else "quick"]
    contenders = [CONTENDERS[name] for name in args.contenders]
    if BASELINE not in args.contenders:
        logger.info("adding %s: every ratio is against it", BASELINE)
    contenders.sort(key=lambda c: c.name != BASELINE)  # baseline first, the rest in the order given
    if contenders[0].name != BASELINE:
        contenders.insert(0, CONTENDERS[BASELINE])
    families = [FAMILIES[name] for name in args.only]
    meta = machine_info()
    meta.update(profile=profile.name, workers=args.workers, argv=sys.argv[1:] if argv is None else list(argv))
    available = mem_available()
    load = meta.get("load_average")
    cores = meta.get("usable_cores")
    if isinstance(load, list) and isinstance(cores, int) and load[0] > cores / 2:
        logger.warning(
            "the machine is busy (1-minute load %.2f on %d cores): expect noisy numbers", load[0], cores
        )
    logger.info(
        "profile %s: %d measurements x %d contenders, %d workers each; %.1f GiB available",
        profile.name,
        len(families),
        len(contenders),
        args.workers,
        available / GIB,
    )
    with tempfile.TemporaryDirectory(prefix="subproc-bench-") as workdir:
        # A bar per family on stderr when it is a terminal; --quiet means no progress at all.
        bars = functools.partial(family_bar, disable=True) if args.quiet else family_bar
        config = RunConfig(profile, families, contenders, args.workers, available, Path(workdir), bars)
        results = run_all(config, meta)
    report = f"{format_meta(results)}\n\n{format_tables(results)}"
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "table.txt").write_text(report + "\n")
    plots = write_plots(results, args.out)
    logger.info(
        "wrote %s", ", ".join(str(p) for p in [args.out / "results.json", args.out / "table.txt", *plots])
    )
    return 130 if meta["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
