"""The package's layering, checked two ways.

1. A fresh interpreter imports ``subproc_executor`` and runs executors with
   every built-in backend: the parent must not have imported any sidecar
   module, backend implementation or loky. The sidecar imports those.
2. Every module's imports, read with ``ast``, against ``LAYERS`` below: the
   table of who may import whom. Each folder is a process (``parent``,
   ``sidecar``, ``worker``) or what they all speak (``wire``); dependencies
   point one way, towards ``wire``, and neither ``parent`` nor ``sidecar``
   ever imports the other. A new module needs a row here, which is the
   point: adding one means deciding which process runs it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = "subproc_executor"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

# -- 1. what the parent process imports ------------------------------------------------------

# Modules that belong to the sidecar side and must never load in the parent.
PARENT_NEVER_IMPORTS = (
    "distributed",
    "loky",
    "subproc_executor.sidecar",
)

_PARENT_SCRIPT = textwrap.dedent(
    """
    import json, sys

    NEVER = {never!r}

    def loaded():
        return sorted(m for m in sys.modules if any(m == n or m.startswith(n + ".") for n in NEVER))

    report = {{}}
    import subproc_executor
    report["after import"] = loaded()
    for backend in ("loky", "process", "pipes"):
        with subproc_executor.SubprocExecutor(1, backend=backend) as ex:
            assert ex.submit(pow, 3, 2).result(60) == 9
        report[f"after running backend={{backend}}"] = loaded()
    print(json.dumps(report))
    """
)


@pytest.mark.timeout(60)
def test_parent_never_imports_a_backend_or_the_sidecar() -> None:
    pytest.importorskip("loky")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _PARENT_SCRIPT.format(never=PARENT_NEVER_IMPORTS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report == {
        "after import": [],
        "after running backend=loky": [],
        "after running backend=process": [],
        "after running backend=pipes": [],
    }, f"the parent imported sidecar-side modules: {report}"


# What costs start-up time and memory in every process and no process needs
# for our own code: dataclasses compiles source per class, and pulls in the
# modules below (wire.record says why, with numbers); typing costs 4 ms and
# 0.5 MiB, for names that only annotations use.
NEVER_AT_START = ("dataclasses", "inspect", "ast", "dis", "typing")

_START_SCRIPT = textwrap.dedent(
    """
    import json, sys

    from jobs import loaded_modules

    def loaded(modules):
        return sorted(m for m in {never!r} if m in modules)

    from subproc_executor import SubprocExecutor
    with SubprocExecutor(1, backend="pipes") as ex:
        report = {{
            "parent, after SubprocExecutor ran a job": loaded(sys.modules),
            # A pipes worker is forked from the sidecar once its start-up is
            # done: it has every module the sidecar had then.
            "sidecar and worker, after a job": ex.submit(loaded_modules, {never!r}).result(60),
        }}
    print(json.dumps(report))
    """
)


@pytest.mark.timeout(60)
def test_no_process_imports_dataclasses_or_typing_to_run_a_job() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PACKAGE_DIR.parent), str(Path(__file__).parent), env.get("PYTHONPATH")])
    )
    script = _START_SCRIPT.format(never=NEVER_AT_START)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=50)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report == {
        "parent, after SubprocExecutor ran a job": [],
        "sidecar and worker, after a job": [],
    }, f"modules loaded at start-up that no process needs: {report}"


# -- 2. the import table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One module's row: what of ours it may import, and what it must not."""

    # Modules of the package it may import (names relative to the package;
    # "backends" is the registry, backends/__init__.py).
    may_import: frozenset[str]
    # Outside modules it must not import (a name covers its submodules).
    never_external: frozenset[str] = frozenset()
    why: str = ""


def _layer(may_import: str = "", never_external: str = "", why: str = "") -> Layer:
    return Layer(frozenset(may_import.split()), frozenset(never_external.split()), why)


# Only backends/loky.py imports loky (the optional pool stays optional).
_NO_LOKY = "loky"

_WIRE = (
    "wire wire.protocol wire.messages wire.progress wire.transport wire.fdtools wire.shm wire.shm_sweep "
    "wire.record wire.sigdefer"
)
_WORKER = "worker worker.job worker.pickling worker.progress"

LAYERS: dict[str, Layer] = {
    # -- wire: spoken by every process; imports nothing else of ours ---------------------
    "wire": _layer(never_external=_NO_LOKY, why="the folder: what every process speaks"),
    "wire.record": _layer(
        never_external=f"dataclasses inspect os threading pickle {_NO_LOKY}",
        why="typed records without dataclasses' import and per-class compile cost; pure",
    ),
    "wire.protocol": _layer(
        "wire.record",
        never_external=f"os threading pickle subprocess {_NO_LOKY}",
        why="the frame codec; pure functions, no I/O, nothing of ours but records",
    ),
    "wire.messages": _layer(
        "wire.protocol wire.record",
        f"os threading subprocess {_NO_LOKY}",
        why="typed payloads of every control frame, start records and outcome bytes; pure",
    ),
    "wire.sigdefer": _layer(
        never_external=f"pickle subprocess {_NO_LOKY}",
        why="Python signal handlers held back over the main thread's critical sections "
        "(os: only to put them back in a forked child)",
    ),
    "wire.transport": _layer(
        "wire.protocol wire.sigdefer",
        f"pickle concurrent.futures {_NO_LOKY}",
        why="frames over descriptors; knows frames, not jobs",
    ),
    "wire.progress": _layer(
        "wire.protocol",
        f"os threading subprocess pickle {_NO_LOKY}",
        why="progress records and the outcome's timing head; pure",
    ),
    "wire.fdtools": _layer(
        never_external=_NO_LOKY, why="drain, wake pipe, signal, pidfd: one copy for every process"
    ),
    "wire.shm": _layer(
        "wire.sigdefer",
        f"pickle threading subprocess {_NO_LOKY}",
        why="big payloads as /dev/shm segments whose names cross the pipes; never unpickles",
    ),
    "wire.shm_sweep": _layer(
        "wire.shm",
        f"pickle threading subprocess {_NO_LOKY}",
        why="who removes segments nobody else will: the sweeps and the owner lock",
    ),
    # -- the public records -----------------------------------------------------------------
    "errors": _layer("wire.protocol", _NO_LOKY, why="the hierarchy; re-exports ProtocolError"),
    "stats": _layer(never_external=_NO_LOKY, why="frozen statistics records, a leaf"),
    # -- worker: runs in the workers ---------------------------------------------------------
    "worker": _layer(never_external=_NO_LOKY, why="the folder: code that runs in the workers"),
    "worker.pickling": _layer(
        never_external=_NO_LOKY,
        why="picklers by qualified name; also used by the parent to pickle jobs",
    ),
    "worker.pipes_main": _layer(
        "worker.job", _NO_LOKY, why="a pipes worker's main: READY, then batches until STOP"
    ),
    "worker.progress": _layer(
        "wire.progress",
        f"subprocess selectors {_NO_LOKY}",
        why="report_progress: coalesced, never-blocking records from a running job",
    ),
    "worker.remote": _layer(
        "worker.job wire.progress",
        f"distributed dask subprocess {_NO_LOKY}",
        why="a Dask worker's entry: the initializer once per process, then job.run_batch",
    ),
    "worker.job": _layer(
        "worker.pickling worker.progress wire.messages wire.fdtools wire.progress wire.shm",
        _NO_LOKY,
        why="runs one job and encodes its outcome; knows the wire's record layouts",
    ),
    # -- parent: runs in the user's process --------------------------------------------------
    "parent": _layer(never_external=_NO_LOKY, why="the folder: code that runs in the user's process"),
    "parent.settings": _layer(
        "stats wire.messages wire.shm worker.pickling wire.record parent.progress",
        _NO_LOKY,
        why="validates the constructor once; the table of built-in backends, as strings",
    ),
    "parent.jobtable": _layer(
        "wire.shm wire.record wire.messages parent.progress",
        f"os subprocess selectors {_NO_LOKY}",
        why="queued / in flight / window / counters; no I/O",
    ),
    "parent.spawn": _layer(
        "wire.messages", _NO_LOKY, why="the sidecar's command line, environment and log file"
    ),
    "parent.launcher": _layer(
        "errors wire.fdtools wire.messages wire.protocol wire.transport parent.spawn wire.record",
        _NO_LOKY,
        why="starts and watches one sidecar process",
    ),
    "parent.outcome": _layer(
        "errors wire.messages wire.progress wire.protocol wire.shm worker.pickling wire.record",
        _NO_LOKY,
        why="decodes outcome bytes and JOB_ERROR records into values or exceptions",
    ),
    "parent.stoppable": _layer(
        "wire.sigdefer",
        f"os subprocess selectors {_NO_LOKY}",
        why="a Future whose cancel() stops a running job (cancel_running)",
    ),
    "parent.progress": _layer(
        "wire.progress wire.protocol wire.record",
        f"os subprocess selectors {_NO_LOKY}",
        why="PROGRESS frames into ProgressReports for the jobs that listen",
    ),
    "parent.timings": _layer(
        "stats wire.progress",
        f"os subprocess selectors threading {_NO_LOKY}",
        why="queue wait and run time of recent jobs, for statistics()",
    ),
    "parent.mapbar": _layer(
        "parent.progress",
        f"os subprocess selectors {_NO_LOKY}",
        why="map(progress=True): the tqdm bar and what feeds it",
    ),
    "parent.mapping": _layer(
        "parent.mapbar parent.settings parent.progress worker.job worker.pickling",
        f"os subprocess selectors {_NO_LOKY}",
        why="map's chunks, buffersize, result order and progress bar",
    ),
    "parent.delivery": _layer(
        never_external=f"os subprocess selectors {_NO_LOKY}",
        why="resolves futures with done-callbacks on threads that never read a pipe",
    ),
    "parent.supervisor": _layer(
        "errors stats wire.messages wire.protocol wire.shm wire.shm_sweep wire.sigdefer wire.transport "
        "parent.outcome parent.jobtable parent.launcher parent.settings parent.delivery parent.stoppable "
        "parent.progress parent.timings",
        _NO_LOKY,
        why="the job table, the current sidecar and the frames between them",
    ),
    "parent.executor": _layer(
        "stats wire.messages wire.protocol wire.sigdefer worker.job worker.pickling parent.spawn "
        "parent.settings parent.supervisor parent.mapping parent.progress",
        _NO_LOKY,
        why="the public API; names the backend as a string, never imports one",
    ),
    "__init__": _layer(
        "errors parent.executor parent.progress stats worker.progress", _NO_LOKY, why="public names only"
    ),
    # -- sidecar: runs in the sidecar process ------------------------------------------------
    "sidecar": _layer(never_external=_NO_LOKY, why="the folder: code that runs in the sidecar"),
    "sidecar.__main__": _layer("sidecar.main", _NO_LOKY, why="python -m subproc_executor.sidecar"),
    "sidecar.main": _layer(
        "wire.fdtools wire.messages wire.protocol wire.shm wire.shm_sweep wire.transport sidecar.backends "
        "sidecar.loop sidecar.scheduler",
        _NO_LOKY,
        why="start-up: reads INIT, builds the backend, says HELLO",
    ),
    "sidecar.loop": _layer(
        "errors wire.fdtools wire.messages wire.progress wire.protocol wire.shm wire.shm_sweep "
        "wire.transport sidecar.backends sidecar.scheduler sidecar.limits",
        _NO_LOKY,
        why="the main loop; loads backend implementations by name at run time",
    ),
    "sidecar.limits": _layer(
        "sidecar.scheduler wire.fdtools wire.messages",
        _NO_LOKY,
        why="stops one job on purpose: KILL, time limits, memory limits",
    ),
    "sidecar.scheduler": _layer(
        "errors wire.messages wire.record",
        _NO_LOKY,
        why="the sidecar's job bookkeeping; no I/O, no backend calls",
    ),
    "sidecar.backends": _layer(
        "wire.record",
        never_external=f"multiprocessing concurrent.futures {_NO_LOKY}",
        why="the Backend protocol and load_backend; no heavy imports",
    ),
    "sidecar.backends._reap": _layer(
        "wire.fdtools",
        _NO_LOKY,
        why="worker tracking and bounded termination shared by the backends",
    ),
    "sidecar.backends._executor_pool": _layer(
        "sidecar.backends sidecar.backends._reap worker.job",
        _NO_LOKY,
        why="what the process and loky backends share (a concurrent.futures pool)",
    ),
    "sidecar.backends.process": _layer(
        "sidecar.backends sidecar.backends._executor_pool worker.job", _NO_LOKY, why="the stdlib pool"
    ),
    "sidecar.backends.loky": _layer(
        "sidecar.backends sidecar.backends._executor_pool worker.job",
        why="the only module that imports loky",
    ),
    "sidecar.backends.pipes": _layer(
        "sidecar.backends sidecar.backends._reap worker.job worker.pipes_main errors wire.fdtools "
        "wire.record",
        _NO_LOKY,
        why="a lean pool of our own: two pipes per worker, one reader thread",
    ),
    "sidecar.backends.dask": _layer(
        "sidecar.backends worker.remote errors wire.messages wire.progress",
        _NO_LOKY,
        why="the sidecar as a Dask client; the only module that imports distributed",
    ),
}

# Which folder (process) a module belongs to, and the floors of the house:
# a module imports only from its own floor or below. parent and sidecar
# share a floor and never import each other.
FLOORS = {"wire": 0, "errors": 1, "stats": 1, "worker": 1, "parent": 2, "sidecar": 2, "__init__": 3}

# What no backend implementation may import, whatever its row says.
BACKENDS_NEVER_PREFIXES = ("parent", "sidecar.loop", "sidecar.main", "wire.transport")


def _folder(module: str) -> str:
    return module.split(".")[0]


def _module_name(path: Path) -> str:
    """'backends.process' for backends/process.py, '__init__' for the package."""
    rel = path.relative_to(PACKAGE_DIR).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _is_package(name: str) -> bool:
    return name == "__init__" or (PACKAGE_DIR / name.replace(".", "/") / "__init__.py").exists()


def _exists(name: str) -> bool:
    return _is_package(name) or (PACKAGE_DIR / (name.replace(".", "/") + ".py")).exists()


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules of ours, outside modules) that ``path`` imports anywhere in it,
    function bodies included. Ours are named relative to the package."""
    name = _module_name(path)
    # The package a relative import starts from.
    here = [] if name == "__init__" else name.split(".")
    if not _is_package(name):
        here = here[:-1]
    ours: set[str] = set()
    outside: set[str] = set()

    def add_ours(parts: list[str]) -> None:
        ours.add(".".join(parts) if parts else "__init__")

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, _, rest = alias.name.partition(".")
                if top == PACKAGE:
                    add_ours(rest.split(".") if rest else [])
                else:
                    outside.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else list(here)
                base += node.module.split(".") if node.module else []
            elif node.module and node.module.split(".")[0] == PACKAGE:
                base = node.module.split(".")[1:]
            else:
                module = node.module or ""
                outside.add(module)
                outside.update(f"{module}.{alias.name}" for alias in node.names)
                continue
            for alias in node.names:
                # `from . import _job` imports a module; `from . import OnDone` a name.
                sub = [*base, alias.name]
                add_ours(sub if _exists(".".join(sub)) else base)
    return ours, outside


MODULES = sorted(_module_name(p) for p in PACKAGE_DIR.rglob("*.py"))
IMPORTS = {_module_name(p): _imports(p) for p in PACKAGE_DIR.rglob("*.py")}


def test_every_module_has_a_row_and_every_row_a_module() -> None:
    assert set(MODULES) == set(LAYERS), (
        f"modules without a row in LAYERS: {sorted(set(MODULES) - set(LAYERS))}; "
        f"rows without a module: {sorted(set(LAYERS) - set(MODULES))}. "
        "Decide which process runs a new module and add its row."
    )


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_only_what_its_layer_allows(module: str) -> None:
    layer = LAYERS.get(module)
    if layer is None:
        pytest.fail(f"{module} has no row in LAYERS")
    ours, outside = IMPORTS[module]
    ours.discard(module)
    assert ours <= layer.may_import, (
        f"{module} imports {sorted(ours - layer.may_import)}, outside its layer "
        f"({layer.why}; allowed: {sorted(layer.may_import) or 'nothing of ours'})"
    )
    banned = sorted(m for m in outside for b in layer.never_external if m == b or m.startswith(b + "."))
    assert not banned, f"{module} must not import {banned} ({layer.why})"
    if module.startswith("sidecar.backends."):
        bad = sorted(m for m in ours if m.startswith(BACKENDS_NEVER_PREFIXES))
        assert not bad, f"backend {module} imports {bad}"


def test_the_table_itself_keeps_the_rules() -> None:
    # The rules the table must not drift from, whatever rows are added.
    assert not LAYERS["wire.record"].may_import
    assert LAYERS["wire.protocol"].may_import <= {"wire.record"}
    for name, layer in LAYERS.items():
        if name.startswith("sidecar.backends."):
            assert not any(m.startswith(BACKENDS_NEVER_PREFIXES) for m in layer.may_import), name
        if name != "sidecar.backends.loky":
            assert _NO_LOKY in layer.never_external, f"{name} must be kept from importing loky"
    assert LAYERS["errors"].may_import <= {"wire.protocol"}
    assert not LAYERS["worker.pickling"].may_import


@pytest.mark.parametrize("module", MODULES)
def test_every_import_points_down_the_house(module: str) -> None:
    """A module imports from its own folder or a lower floor; parent and sidecar never meet."""
    here = _folder(module)
    for target in IMPORTS[module][0] - {module}:
        there = _folder(target)
        assert FLOORS[there] < FLOORS[here] or there == here, (
            f"{module} ({here}, floor {FLOORS[here]}) imports {target} ({there}, floor {FLOORS[there]}): "
            "imports must point down, towards wire"
        )


def test_imports_point_one_way() -> None:
    graph = {module: IMPORTS[module][0] - {module} for module in MODULES}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle between modules of the package: {exc.args[1]}")


def test_only_the_dask_backend_imports_distributed() -> None:
    # The optional cluster client stays optional: no other module, in any process, loads it.
    importers = sorted(
        module
        for module, (_, outside) in IMPORTS.items()
        if any(m == top or m.startswith(top + ".") for m in outside for top in ("distributed", "dask"))
    )
    assert importers == ["sidecar.backends.dask"]
