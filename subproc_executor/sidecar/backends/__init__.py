"""The backend interface: a pool of workers inside the sidecar.

A backend runs *batches* of opaque jobs. The sidecar hands it job ids and
job bytes; the backend runs ``worker.job.run_batch`` on one of its workers and
calls ``on_done`` with one outcome (bytes) per job, or with the exception
that kept the batch from running (a broken pool, a dead worker). The backend
never unpickles a job, never sees a frame, and never imports the executor.

The parent resolves the name the user gave (a built-in, an entry point, or
"module:attr"; see ``parent.settings``) to a "module:attr" path and sends it
in INIT; ``load_backend`` imports it here, in the sidecar.

``docs/backends.md`` shows how to write one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from ...wire.record import Record, field

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object  # Backend is an interface for mypy; a backend need not subclass it

__all__ = ["Backend", "BackendConfig", "BackendFactory", "OnDone", "load_backend"]

# Called once per batch: one outcome (bytes) per job, or the exception that
# kept the batch from finishing. The callable the sidecar passes also has a
# method ``job_done(job_id, outcome)``: a backend may report each job as soon
# as it finishes (a plain callable, as in tests, has no such method; check
# with getattr). The final call then carries only the outcomes of the jobs not
# reported yet, in order, or the exception that failed those jobs.
OnDone = Callable[["list[bytes] | BaseException"], None]


class BackendConfig(Record):
    """Everything a backend needs to build its pool, from the parent's
    ``messages.SidecarSettings`` and what the sidecar made."""

    max_workers: int
    # "fork", "forkserver" or "spawn"; None lets the backend choose.
    start_method: str | None
    max_tasks_per_child: int | None
    # Qualified name of the pickler the workers use (see worker.pickling).
    pickler: str
    # Opaque pickled (initializer, initargs), or None.
    initializer: bytes | None
    # Descriptors a forked worker inherits and must close (the sidecar's pipes).
    close_fds: tuple[int, ...] = ()
    # Made by the sidecar, not the parent: the write end (a multiprocessing
    # Connection) of the pipe on which workers announce each job they start.
    # Pass it to worker.job.worker_init; None disables the announcements.
    notify: object = None
    # backend_options= as the user gave them (JSON values). The parent checks
    # the keys of a built-in backend; a third-party backend checks its own.
    options: dict[str, object] = field(default_factory=dict)


class Backend(Protocol):
    """A pool of worker processes, driven by the sidecar's main thread.

    Methods are called from the sidecar's main thread only; ``on_done`` may
    be called from any thread the backend owns, and must not block it long.

    Two methods are optional (the sidecar asks with ``getattr``, so a
    third-party backend written before them still works), for a backend whose
    pool's own thread reaps its workers: ``dead_worker_pids()`` (workers seen
    dead whose exit code is not read yet) and ``stopped_exitcodes()`` (the exit
    codes read once ``reset`` had joined the old pool's threads). See
    ``_executor_pool`` and ``_reap``.
    """

    def start(self) -> None:
        """Create the pool and start its workers now (warm start). Idempotent."""

    def submit(self, job_ids: Sequence[int], payloads: Sequence[bytes], on_done: OnDone) -> None:
        """Run ``worker.job.run_batch`` over the jobs on one worker; report through ``on_done``."""

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


def load_backend(target: str, config: BackendConfig) -> Backend:
    """Import and build the backend factory at ``target`` ("module:attr")."""
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise ValueError(f"backend target {target!r} is not of the form 'module:attr'")
    factory: object = importlib.import_module(module_name)
    for part in attr.split("."):
        factory = getattr(factory, part)
    if not callable(factory):
        raise TypeError(f"backend {target} is not callable")
    backend: Backend = factory(config)
    return backend
