"""The backend interface: a pool of workers inside the sidecar.

A backend runs *batches* of opaque jobs. The sidecar hands it job ids and
job bytes; the backend runs ``_job.run_batch`` on one of its workers and
calls ``on_done`` with one outcome (bytes) per job, or with the exception
that kept the batch from running (a broken pool, a dead worker). The backend
never unpickles a job, never sees a frame, and never imports the executor.

Backends are named by string so the parent never imports one: the built-in
names below, a name registered in the ``subproc_executor.backends`` entry
point group, or a "module:attr" path. ``load_backend`` runs in the sidecar.

``docs/backends.md`` shows how to write one.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = ["BUILTIN_BACKENDS", "Backend", "BackendConfig", "BackendFactory", "OnDone", "load_backend"]

# name -> "module:attr" of a BackendFactory. Strings, so importing this
# module imports no pool implementation.
BUILTIN_BACKENDS: Final = {
    "process": "subproc_executor.backends.process:ProcessBackend",
    "loky": "subproc_executor.backends.loky:LokyBackend",
    "pipes": "subproc_executor.backends.pipes:PipesBackend",
}
ENTRY_POINT_GROUP: Final = "subproc_executor.backends"

# What a built-in backend cannot do, checked in the parent at construction so
# no option is ignored silently. Keys: "start_methods" (allowed names; None
# means the backend's default), "max_tasks_per_child", "module" (the import a
# backend needs, checked without importing it), "install" (how to get it).
BACKEND_LIMITS: Final[dict[str, dict[str, object]]] = {
    "process": {
        "start_methods": (None, "fork", "forkserver", "spawn"),
        # The stdlib pool gained max_tasks_per_child in 3.11; the sidecar runs
        # the parent's interpreter, so the parent's version decides.
        "max_tasks_per_child": sys.version_info >= (3, 11),
        "max_tasks_hint": "the stdlib pool has it from Python 3.11; on 3.10 use backend='pipes'",
    },
    "loky": {
        "start_methods": (None, "loky", "loky_init_main", "forkserver", "spawn"),
        "max_tasks_per_child": False,
        "module": "loky",
        "install": "pip install loky",
        "fork_hint": "loky's workers run next to its threads, where fork is unsafe; "
        "use the default start method (None or 'loky'), or backend='process' to fork",
        "max_tasks_hint": "loky cannot replace a worker after N tasks; use backend='process' "
        "with mp_context='spawn' or 'forkserver'",
    },
    "pipes": {
        "start_methods": (None, "fork", "forkserver", "spawn"),
        "max_tasks_per_child": True,
    },
}

OnDone = Callable[["list[bytes] | BaseException"], None]


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """Everything a backend needs to build its pool. Plain data: it crosses
    from the parent on the sidecar's command line."""

    max_workers: int
    # "fork", "forkserver" or "spawn"; None lets the backend choose.
    start_method: str | None
    max_tasks_per_child: int | None
    # Qualified name of the pickler the workers use (see _pickling).
    pickler: str
    # Opaque pickled (initializer, initargs), or None.
    initializer: bytes | None
    # Descriptors a forked worker inherits and must close (the sidecar's pipes).
    close_fds: tuple[int, ...] = ()
    # Made by the sidecar, not the parent: the write end (a multiprocessing
    # Connection) of the pipe on which workers announce each job they start.
    # Pass it to _job.worker_init; None disables the announcements.
    notify: object = None


class Backend(Protocol):
    """A pool of worker processes, driven by the sidecar's main thread.

    Methods are called from the sidecar's main thread only; ``on_done`` may
    be called from any thread the backend owns, and must not block it long.
    """

    def start(self) -> None:
        """Create the pool and start its workers now (warm start). Idempotent."""

    def submit(self, job_ids: Sequence[int], payloads: Sequence[bytes], on_done: OnDone) -> None:
        """Run ``_job.run_batch`` over the jobs on one worker; report through ``on_done``."""

    def worker_pids(self) -> list[int]:
        """Pids of the live workers (empty when quiesced)."""

    def worker_exitcodes(self) -> dict[int, int | None]:
        """{pid: exitcode} of the workers seen since the last reset (None: alive).
        Lets the sidecar tell which worker died of its own accord."""

    def quiesce(self) -> None:
        """Stop the workers after the jobs already submitted; ``start`` brings them back."""

    def reset(self) -> None:
        """Throw away a broken pool (its running batches have been reported) and build a new one."""

    def shutdown(self, *, kill: bool) -> None:
        """Stop for good: ``kill=False`` lets submitted batches finish,
        ``kill=True`` terminates the workers (SIGTERM, then SIGKILL after a grace period)."""


BackendFactory = Callable[[BackendConfig], Backend]


def _entry_point_target(name: str) -> str | None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return str(ep.value)
    return None


def known_backends() -> list[str]:
    """Names ``backend=`` accepts besides "module:attr" paths."""
    from importlib.metadata import entry_points

    names = set(BUILTIN_BACKENDS)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def resolve_backend_name(name: str) -> str:
    """The "module:attr" path for a backend name. Raises ValueError for an unknown one.

    Cheap and import-free (entry points are metadata), so the parent calls it
    at construction to fail early, without importing the backend.
    """
    if ":" in name:
        return name
    target = BUILTIN_BACKENDS.get(name) or _entry_point_target(name)
    if target is None:
        raise ValueError(
            f"unknown backend {name!r}: known backends are {', '.join(known_backends())}, "
            f"or pass 'module:attr' naming a backend factory"
        )
    return target


def check_options(name: str, start_method: str | None, max_tasks_per_child: int | None) -> None:
    """Refuse, in the parent, options a built-in backend cannot honour.

    Imports nothing but checks that the backend's module is installed.
    Third-party backends check their own options when the sidecar builds them.
    """
    limits = BACKEND_LIMITS.get(name)
    if limits is None:
        return
    module = limits.get("module")
    if isinstance(module, str) and importlib.util.find_spec(module) is None:
        raise ImportError(f"backend {name!r} needs the {module} package: {limits['install']}")
    methods = limits["start_methods"]
    assert isinstance(methods, tuple)
    if start_method not in methods:
        hint = limits.get("fork_hint", "") if start_method == "fork" else ""
        raise ValueError(
            f"backend {name!r} does not support the start method {start_method!r}"
            + (f": {hint}" if hint else f"; use one of {', '.join(m for m in methods if m)}")
        )
    if max_tasks_per_child is not None and not limits["max_tasks_per_child"]:
        raise ValueError(
            f"backend {name!r} does not support max_tasks_per_child: {limits.get('max_tasks_hint')}"
        )


def load_backend(name: str, config: BackendConfig) -> Backend:
    """Import and build a backend by name. Runs in the sidecar."""
    target = resolve_backend_name(name)
    module_name, _, attr = target.partition(":")
    factory: object = importlib.import_module(module_name)
    for part in attr.split("."):
        factory = getattr(factory, part)
    if not callable(factory):
        raise TypeError(f"backend {name!r} ({target}) is not callable")
    backend: Backend = factory(config)
    return backend
