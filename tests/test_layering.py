"""The package's layering (STYLE.md section 2), checked two ways.

1. A fresh interpreter imports ``subproc_executor`` and runs executors with
   the loky and process backends: the parent must not have imported any
   backend implementation, loky, or the sidecar. The sidecar imports those.
2. Every module's imports, read with ``ast``, against ``LAYERS`` below: the
   table of who may import whom. Dependencies point one way, towards
   ``protocol``. A new module needs a row here, which is the point: adding one
   means deciding where it sits.
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
    "loky",
    "subproc_executor.backends.loky",
    "subproc_executor.backends.process",
    "subproc_executor.backends.pipes",
    "subproc_executor.backends._reap",
    "subproc_executor.backends._executor_pool",
    "subproc_executor.sidecar",
    "subproc_executor._scheduler",
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

LAYERS: dict[str, Layer] = {
    # -- leaves ------------------------------------------------------------------------
    "protocol": _layer(
        never_external=f"os threading pickle subprocess {_NO_LOKY}",
        why="STYLE: the codec; pure functions, no I/O, nothing of ours",
    ),
    "errors": _layer("protocol", _NO_LOKY, why="STYLE: the hierarchy; re-exports ProtocolError"),
    "_compat": _layer(never_external=_NO_LOKY, why="STYLE: version gates only"),
    "_pickling": _layer(
        never_external=_NO_LOKY,
        why="not in STYLE: picklers by qualified name; a leaf used by both sides",
    ),
    "_job": _layer(
        "_pickling",
        _NO_LOKY,
        why="STYLE: what runs in a worker; needs the pickler, nothing else of ours",
    ),
    "stats": _layer(never_external=_NO_LOKY, why="not in STYLE: frozen statistics records, a leaf"),
    # -- the parent side ------------------------------------------------------------------
    "transport": _layer(
        "protocol errors",
        f"pickle concurrent.futures {_NO_LOKY}",
        why="STYLE: frames over descriptors; knows frames, not jobs",
    ),
    "_launcher": _layer(
        "transport protocol errors",
        _NO_LOKY,
        why="not in STYLE: starts and watches one sidecar process for the executor",
    ),
    "_outcome": _layer(
        "_job _pickling errors",
        _NO_LOKY,
        why="not in STYLE: decodes outcome bytes and JOB_ERROR frames into values or exceptions",
    ),
    "executor": _layer(
        # STYLE lists transport, protocol, errors, _compat; the rest are the
        # leaves and parent-side helpers that did not exist when it was written.
        # "backends" is the name registry (imported lazily for names and
        # option checks), never an implementation.
        "transport protocol errors _compat _launcher _outcome _pickling _job stats backends",
        _NO_LOKY,
        why="STYLE: the public API; names the backend as a string, never imports one",
    ),
    "__init__": _layer("errors executor stats", _NO_LOKY, why="STYLE: public names only"),
    # -- the sidecar side -----------------------------------------------------------------
    "_scheduler": _layer(
        "errors protocol",
        _NO_LOKY,
        why="not in STYLE: the sidecar's job bookkeeping; no I/O, no backend calls",
    ),
    "sidecar": _layer(
        # STYLE lists transport, protocol, errors, backends. _job for the
        # start-record layout workers write; _scheduler is its bookkeeping.
        "transport protocol errors backends _job _scheduler",
        _NO_LOKY,
        why="STYLE: the sidecar loop; loads backend implementations by name at run time",
    ),
    "backends": _layer(
        never_external=f"multiprocessing concurrent.futures {_NO_LOKY}",
        why="STYLE: the Backend protocol and a registry of strings; no heavy imports",
    ),
    "backends._reap": _layer(
        never_external=_NO_LOKY,
        why="not in STYLE: worker tracking and bounded termination shared by the backends",
    ),
    "backends._executor_pool": _layer(
        "backends backends._reap _job",
        _NO_LOKY,
        why="not in STYLE: what the process and loky backends share (a concurrent.futures pool)",
    ),
    "backends.process": _layer(
        "backends backends._executor_pool _job", _NO_LOKY, why="STYLE: the stdlib pool"
    ),
    "backends.loky": _layer(
        "backends backends._executor_pool _job", why="STYLE: the only module that imports loky"
    ),
    "backends.pipes": _layer(
        "backends backends._reap _job errors",
        _NO_LOKY,
        why="a lean pool of our own: two pipes per worker, one reader thread; errors for WorkerDiedError",
    ),
}

# What no backend implementation may import, whatever its row says (STYLE).
BACKENDS_NEVER = frozenset({"executor", "transport", "sidecar", "_launcher"})


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
        "Decide where a new module sits and add its row (and STYLE.md's table)."
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
    if module.startswith("backends."):
        assert not ours & BACKENDS_NEVER, f"backend {module} imports {sorted(ours & BACKENDS_NEVER)}"


def test_the_table_itself_keeps_the_rules_of_style() -> None:
    # The rules the table must not drift from, whatever rows are added.
    assert not LAYERS["protocol"].may_import
    assert LAYERS["transport"].may_import <= {"protocol", "errors"}
    assert not LAYERS["executor"].may_import & {"sidecar", "_scheduler"}
    assert not any(m.startswith("backends.") for m in LAYERS["executor"].may_import)
    assert "executor" not in LAYERS["sidecar"].may_import
    for name, layer in LAYERS.items():
        if name.startswith("backends."):
            assert not layer.may_import & BACKENDS_NEVER, name
        if name != "backends.loky":
            assert _NO_LOKY in layer.never_external, f"{name} must be kept from importing loky"
    assert LAYERS["errors"].may_import <= {"protocol"}
    assert LAYERS["_job"].may_import <= {"_pickling"}
    assert not LAYERS["_pickling"].may_import


def test_imports_point_one_way() -> None:
    graph = {module: IMPORTS[module][0] - {module} for module in MODULES}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle between modules of the package: {exc.args[1]}")
    assert order.index("protocol") < order.index("transport") < order.index("executor")
