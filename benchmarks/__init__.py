"""Benchmarks for ``subproc_executor``: ``python -m benchmarks --help``.

``SubprocExecutor`` is compared with the executors it replaces (stdlib
``ProcessPoolExecutor`` under fork, forkserver and spawn, and loky) on the same
machine in the same run. Every measurement of every contender runs in its own
child interpreter under a time limit, so one misbehaving executor yields an
error cell rather than a hang or a skewed neighbour. ``docs/benchmarks.md``
describes the measurements and how to reproduce the published numbers.

Module map:

- ``__main__``: command line, terminal table, JSON and plots.
- ``_harness``: plans the runs, starts the children, turns outcomes into cells.
- ``_runner``: one child under a time limit, killed by process group on expiry.
- ``_child``: the child's entry point; runs one trial and writes a result file.
- ``_core``: shared vocabulary (profiles, metrics, families); stdlib only.
- ``contenders``: the executors being compared.
- ``_jobs``: the functions jobs run; importable, so spawn workers find them.
- one module per measurement family: ``coldstart``, ``latency``,
  ``throughput``, ``bandwidth``, ``bandsweep``, ``bigparent``, ``crash``,
  ``idlemem``, ``jobcontrol``, ``queuewait``.
- ``_report``, ``_plots``, ``_env``: table, PNGs, machine description.
- ``_progress``: a progress bar per family on stderr (tqdm, optional).

This package is deliberately light at import: the children import it before
they time anything.
"""
