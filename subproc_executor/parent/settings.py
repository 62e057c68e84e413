"""The constructor's arguments, validated once, as one record.

``make_settings`` turns what the user passed to ``SubprocExecutor(...)`` into
a frozen ``Settings``, raising the stdlib's exception types for what the
stdlib refuses and a clear error for what a backend cannot honour. What each
built-in backend can do lives in one typed table, ``BUILTIN_BACKENDS``; the
sidecar receives concrete values (the backend's import path, the start
method it resolved to) in ``messages.SidecarSettings`` and decides nothing.

Backends are named by string so the parent never imports one: a built-in
name, a name registered in the ``subproc_executor.backends`` entry point
group, or a "module:attr" path of a backend factory.

One module, over 450 lines: every rule here is checked against the same
backend table (BUILTIN_BACKENDS), and a rule on one argument often depends on
another (a start method and max_tasks_per_child, limits and the backend's
stops_one_job, backend_options and its accepted keys); split, each piece
would import the table and the others' results. To split next: the backend
table and check_backend into parent/backends.py.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Mapping

from ..wire import shm
from ..wire.messages import JobLimits, LimitedJob, SidecarSettings
from ..wire.record import Record, field
from ..worker.pickling import DEFAULT_PICKLER, Pickler, pickler_name, resolve_pickler

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    # Public dataclasses: loaded on first use, so importing the
    # executor does not load dataclasses (and inspect, ast, ...).
    from ..stats import SlowJobReport
    from .progress import ProgressReport

__all__ = [
    "BUILTIN_BACKENDS",
    "DEFAULT_SHM_THRESHOLD",
    "ENTRY_POINT_GROUP",
    "BackendSpec",
    "Settings",
    "check_backend",
    "check_backend_options",
    "default_max_workers",
    "known_backends",
    "make_settings",
    "resolve_backend",
]

ENTRY_POINT_GROUP: Final = "subproc_executor.backends"
# Start methods of multiprocessing, and loky's own two.
START_METHODS: Final = ("fork", "forkserver", "spawn", "loky", "loky_init_main")
# Most jobs grouped into one backend call. Bigger amortises more per-call
# overhead; smaller keeps a slow job from delaying the fast ones batched with it.
MAX_BATCH_JOBS: Final = 64
# Pickled jobs and outcomes of at least this many bytes travel through shared
# memory (wire.shm) instead of the pipes. Below it, the few syscalls of making
# and mapping a segment cost more than copying through two pipes saves
# (docs/benchmarks.md, "Bandwidth by payload size").
DEFAULT_SHM_THRESHOLD: Final = 256 * 1024


class BackendSpec(Record):
    """What a built-in backend is and can honour."""

    # "module:attr" of its factory; imported by the sidecar only.
    target: str
    # Start methods accepted by name; the first is the default.
    start_methods: tuple[str, ...]
    # Default when max_tasks_per_child is set (fork cannot replace workers
    # in the stdlib pool); None: same as without.
    start_method_with_max_tasks: str | None = None
    # Start methods that mean another name here, and why it keeps the meaning.
    aliases: dict[str, str] = field(default_factory=dict)
    # Whether max_tasks_per_child is honoured, and if not, what to do instead.
    max_tasks_per_child: bool = True
    max_tasks_hint: str = ""
    # The pool counts a batch of jobs as one task: with max_tasks_per_child
    # the sidecar then sends one job per batch, as the user counts jobs.
    batches_count_as_tasks: bool = True
    # A package the backend needs, checked (not imported) at construction.
    module: str | None = None
    install: str = ""
    # It can stop one running job (kill its worker) without touching the
    # others: per-job timeouts, memory limits and cancel_running need that.
    stops_one_job: bool = False
    # Its workers announce each job they start (the notify pipe): slow-job
    # reports (status_interval) and progress reports (on_progress) need that.
    start_records: bool = True
    # Its workers share /dev/shm with the parent (same machine), so big
    # payloads may travel as shared-memory segments.
    shared_memory: bool = True
    # The keys backend_options= accepts (anything else is a ValueError).
    options: tuple[str, ...] = ()
    # Seconds of work the parent keeps in flight at the measured rate (see
    # jobtable): about a round trip of the backend, so it never idles waiting.
    window_seconds: float = 0.002


BUILTIN_BACKENDS: Final[dict[str, BackendSpec]] = {
    "process": BackendSpec(
        target="subproc_executor.sidecar.backends.process:ProcessBackend",
        start_methods=("fork", "forkserver", "spawn"),
        start_method_with_max_tasks="forkserver",
        # The stdlib pool gained max_tasks_per_child in 3.11; the sidecar runs
        # the parent's interpreter, so the parent's version decides.
        max_tasks_per_child=sys.version_info >= (3, 11),
        max_tasks_hint="the stdlib pool has it from Python 3.11; on 3.10 use backend='pipes'",
    ),
    "loky": BackendSpec(
        target="subproc_executor.sidecar.backends.loky:LokyBackend",
        start_methods=("loky", "loky_init_main", "forkserver", "spawn"),
        # fork's point in a process pool is fast worker start with nothing
        # to re-import. Inside the sidecar no method inherits the user's
        # state, and loky's workers live beside its threads, where a bare
        # fork is unsafe; its own "loky" method (fork+exec) is the safe
        # equivalent, so "fork" selects it.
        aliases={"fork": "loky"},
        max_tasks_per_child=False,
        max_tasks_hint="loky cannot replace a worker after N tasks; use backend='pipes'",
        module="loky",
        install="pip install loky",
    ),
    "pipes": BackendSpec(
        target="subproc_executor.sidecar.backends.pipes:PipesBackend",
        # A worker retires after the batch that reaches its limit, so it too
        # gets one job per batch with max_tasks_per_child.
        start_methods=("fork", "forkserver", "spawn"),
        # Each worker has pipes of its own: one killed leaves the rest working.
        stops_one_job=True,
    ),
    "dask": BackendSpec(
        target="subproc_executor.sidecar.backends.dask:DaskBackend",
        # A LocalCluster's nannies spawn their workers; a remote cluster's
        # workers are started by whoever runs them. Nothing forks from the sidecar.
        start_methods=("spawn",),
        max_tasks_per_child=False,
        max_tasks_hint="Dask does not replace a worker after N tasks; use backend='pipes'",
        module="distributed",
        install="pip install 'subproc-executor[dask]'",
        # A Dask worker is not our child and its jobs cannot be announced on
        # our pipe; it may run on another machine, without our /dev/shm.
        start_records=False,
        shared_memory=False,
        options=("address", "dashboard", "security", "allowed_failures", "connect_timeout"),
        # A task's round trip through a Dask scheduler is 15-30 ms here (0.4 ms
        # for pipes): keep that much work in flight, not 2 ms of it.
        window_seconds=0.05,
    ),
}


def default_max_workers() -> int:
    """What ProcessPoolExecutor picks: the usable CPUs (3.13+), else all CPUs."""
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return count or 1


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


def resolve_backend(name: str) -> tuple[str, BackendSpec | None]:
    """("module:attr" of the factory, its spec if built in). ValueError if unknown.

    Imports nothing (entry points are metadata), so it runs at construction.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name string, got {type(name).__name__}")
    spec = BUILTIN_BACKENDS.get(name)
    if spec is not None:
        return spec.target, spec
    target = name if ":" in name else _entry_point_target(name)
    if target is None:
        raise ValueError(
            f"unknown backend {name!r}: known backends are {', '.join(known_backends())}, "
            f"or pass 'module:attr' naming a backend factory"
        )
    return target, None


def start_method_name(mp_context: Any) -> str | None:
    """The start method named by ``mp_context`` (a context or a name), or None."""
    if mp_context is None:
        return None
    if isinstance(mp_context, str):
        name = mp_context
    else:
        get = getattr(mp_context, "get_start_method", None)
        if get is None:
            raise TypeError(
                f"mp_context must be a multiprocessing context or a start method name, got {mp_context!r}"
            )
        name = get(allow_none=False)
    if name not in START_METHODS:
        raise ValueError(f"unsupported start method {name!r}: use one of {', '.join(START_METHODS)}")
    return str(name)


def check_backend(name: str, start_method: str | None, max_tasks_per_child: int | None) -> str | None:
    """The start method backend ``name`` will use; raises for what a built-in
    backend cannot honour. A third-party backend's options pass unchanged."""
    spec = BUILTIN_BACKENDS.get(name)
    if spec is None:
        return start_method
    if spec.module is not None and importlib.util.find_spec(spec.module) is None:
        raise ImportError(f"backend {name!r} needs the {spec.module} package: {spec.install}")
    if max_tasks_per_child is not None and not spec.max_tasks_per_child:
        raise ValueError(f"backend {name!r} does not support max_tasks_per_child: {spec.max_tasks_hint}")
    if start_method is None:
        if max_tasks_per_child is not None and spec.start_method_with_max_tasks is not None:
            return spec.start_method_with_max_tasks
        return spec.start_methods[0]
    method = spec.aliases.get(start_method, start_method)
    if method not in spec.start_methods:
        raise ValueError(
            f"backend {name!r} does not support the start method {start_method!r}; "
            f"use one of {', '.join(spec.start_methods)}"
        )
    return method


def check_backend_options(name: str, spec: BackendSpec | None, options: object) -> dict[str, Any]:
    """``backend_options=`` as plain JSON data; for a built-in backend, only
    the keys it accepts. A third-party backend checks its own, in the sidecar."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"backend_options must be a mapping of option names to values, got {options!r}")
    if not all(isinstance(key, str) for key in options):
        raise TypeError(f"backend_options keys must be strings, got {sorted(map(repr, options))}")
    try:
        data: dict[str, Any] = json.loads(json.dumps(dict(options), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"backend_options must hold JSON values (str, numbers, bools, None, lists, dicts), since "
            f"they travel to the sidecar as JSON: {exc}"
        ) from None
    if spec is not None:
        unknown = sorted(set(data) - set(spec.options))
        if unknown:
            accepted = ", ".join(spec.options) or "none"
            raise ValueError(
                f"backend {name!r} does not accept the option(s) {', '.join(map(repr, unknown))} in "
                f"backend_options; it accepts: {accepted}"
            )
    return data


def _positive_seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class JobOptions(Record):
    """Per-job control (``job_timeout=``, ``memory_limit=``, ``cancel_running=``,
    ``on_progress=``, or ``executor.options(...)``), checked by ``make_options``."""

    timeout: float | None = None
    memory_limit: int | None = None
    cancel_running: bool = False
    # Called on the reader thread with each ProgressReport of the job.
    on_progress: Callable[[ProgressReport], object] | None = None
    # The head of a SUBMIT_LIMITED payload (``LimitedJob.head``): the limits'
    # JSON and a newline, made once per options, not once per job; None
    # for a plain SUBMIT.
    limits_head: bytes | None = None

    @property
    def limits(self) -> JobLimits | None:
        """What the sidecar enforces, or None for a plain SUBMIT."""
        if self.timeout is None and self.memory_limit is None:
            return None
        return JobLimits(timeout=self.timeout, memory_limit=self.memory_limit)


def make_options(
    backend: str,
    spec: BackendSpec | None,
    timeout: object,
    memory_limit: object,
    cancel_running: object,
    on_progress: object = None,
) -> JobOptions:
    """Validate per-job options; refuse them for a built-in backend whose pool
    cannot lose one worker without breaking the others."""
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not timeout > 0
        or not math.isfinite(timeout)
    ):
        raise ValueError(
            f"timeout must be a positive, finite number of seconds, or None for no limit; got {timeout!r}"
        )
    if memory_limit is not None and (
        isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit <= 0
    ):
        raise ValueError(f"memory_limit must be a positive number of bytes or None, got {memory_limit!r}")
    if memory_limit is not None and not os.path.exists("/proc/self/statm"):
        raise ValueError(
            "memory_limit needs /proc (Linux) to read a worker's resident memory, and this system has "
            "none: drop memory_limit, or cap memory inside the job"
        )
    if not isinstance(cancel_running, bool):
        raise TypeError(f"cancel_running must be True or False, got {cancel_running!r}")
    if on_progress is not None and not callable(on_progress):
        raise TypeError(
            f"on_progress must be a callable taking a ProgressReport, or None; got {on_progress!r}"
        )
    if on_progress is not None and spec is not None and not spec.start_records:
        raise ValueError(
            f"backend {backend!r} cannot forward report_progress() from its workers, so it refuses "
            "on_progress: use backend='pipes' (or another local backend)"
        )
    options = JobOptions(
        timeout=None if timeout is None else float(timeout),
        memory_limit=memory_limit,
        cancel_running=cancel_running,
        on_progress=on_progress,
    )
    limits = options.limits
    if limits is not None:
        options = options.replace(limits_head=LimitedJob.head(limits))
    if (options.limits is not None or cancel_running) and spec is not None and not spec.stops_one_job:
        asked = [
            name
            for name, value in (
                ("timeout", timeout),
                ("memory_limit", memory_limit),
                ("cancel_running", cancel_running),
            )
            if value not in (None, False)
        ]
        raise ValueError(
            f"backend {backend!r} cannot stop one job without breaking its pool (killing one of its "
            f"workers fails the others' jobs), so it refuses {', '.join(asked)}: use backend='pipes'"
        )
    return options


class Settings(Record):
    """Everything the executor was asked for, checked; see ``SubprocExecutor``."""

    max_workers: int
    backend: str
    backend_target: str
    # Concrete for built-in backends; None lets a third-party backend choose.
    start_method: str | None
    max_tasks_per_child: int | None
    max_batch_jobs: int
    pickler_name: str
    pickler: Pickler
    # Pickled (initializer, initargs), or None.
    initializer: bytes | None
    restart: bool
    log_path: str | None
    idle_timeout: float | None
    status_interval: float | None
    on_status: Callable[[SlowJobReport], object] | None
    cwd: str
    # The parent's import path when the executor was made (absolute).
    sys_path: tuple[str, ...]
    # Payloads of at least this many bytes go through shared memory; None: never.
    shm_threshold: int | None = None
    # Defaults for every job (job_timeout=, memory_limit=, cancel_running=, on_progress=).
    options: JobOptions = JobOptions()
    # The backend's spec if built in (None: a third-party backend, which
    # declares stops_one_job itself, checked by the sidecar).
    spec: BackendSpec | None = None
    # backend_options=, as JSON data (see check_backend_options).
    backend_options: dict[str, Any] = field(default_factory=dict)

    def sidecar_settings(self) -> SidecarSettings:
        """What crosses to the sidecar in INIT."""
        return SidecarSettings(
            backend=self.backend,
            backend_target=self.backend_target,
            max_workers=self.max_workers,
            start_method=self.start_method,
            max_tasks_per_child=self.max_tasks_per_child,
            max_batch_jobs=self.max_batch_jobs,
            pickler=self.pickler_name,
            idle_timeout=self.idle_timeout,
            status_interval=self.status_interval,
            authkey=bytes(multiprocessing.current_process().authkey),
            sys_path=self.sys_path,
            log_level=logging.getLevelName(logging.WARNING),
            shm_threshold=self.shm_threshold,
            backend_options=self.backend_options,
        )


def make_settings(
    *,
    max_workers: int | None,
    mp_context: Any,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    max_tasks_per_child: int | None,
    backend: str,
    pickler: object,
    restart: bool,
    log_path: str | os.PathLike[str] | None,
    idle_timeout: float | None,
    status_interval: float | None,
    on_status: Callable[[SlowJobReport], object] | None,
    shm_threshold: int | None = DEFAULT_SHM_THRESHOLD,
    job_timeout: float | None = None,
    memory_limit: int | None = None,
    cancel_running: bool = False,
    on_progress: Callable[[ProgressReport], object] | None = None,
    backend_options: Mapping[str, object] | None = None,
) -> Settings:
    """Validate the constructor's arguments, with the stdlib's exception types
    where the stdlib checks the same thing. Imports no backend."""
    if max_workers is None:
        max_workers = default_max_workers()
    elif max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    target, spec = resolve_backend(backend)
    start_method = start_method_name(mp_context)
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    if max_tasks_per_child is not None:
        if not isinstance(max_tasks_per_child, int):
            raise TypeError("max_tasks_per_child must be an integer")
        if max_tasks_per_child <= 0:
            raise ValueError("max_tasks_per_child must be >= 1")
        if start_method == "fork":
            raise ValueError(
                "max_tasks_per_child is incompatible with the 'fork' multiprocessing start method; "
                "supply a different mp_context."
            )
    start_method = check_backend(backend, start_method, max_tasks_per_child)
    options_data = check_backend_options(backend, spec, backend_options)
    if spec is not None and not spec.start_records and (status_interval is not None or on_status is not None):
        raise ValueError(
            f"backend {backend!r} does not learn when a job starts on its workers, so it cannot report "
            "slow jobs: drop status_interval and on_status, or use backend='pipes'"
        )
    options = make_options(backend, spec, job_timeout, memory_limit, cancel_running, on_progress)
    counts_batches = spec is None or spec.batches_count_as_tasks
    pickler_qualname = DEFAULT_PICKLER if pickler is None else pickler_name(pickler)
    the_pickler = resolve_pickler(pickler_qualname)
    init_blob: bytes | None = None
    if initializer is not None:
        try:
            init_blob = the_pickler.dumps((initializer, tuple(initargs)))
        except Exception as exc:
            raise TypeError(
                f"initializer {initializer!r} or its initargs could not be pickled for the workers: {exc}"
            ) from exc
    if on_status is not None and not callable(on_status):
        raise TypeError("on_status must be a callable taking a SlowJobReport")
    if shm_threshold is not None and (
        isinstance(shm_threshold, bool) or not isinstance(shm_threshold, int) or shm_threshold < 1
    ):
        raise ValueError(
            f"shm_threshold must be a number of bytes >= 1, or None to send every payload through "
            f"the pipes; got {shm_threshold!r}"
        )
    cwd = os.getcwd()
    return Settings(
        max_workers=max_workers,
        backend=backend,
        backend_target=target,
        start_method=start_method,
        max_tasks_per_child=max_tasks_per_child,
        max_batch_jobs=1 if (max_tasks_per_child is not None and counts_batches) else MAX_BATCH_JOBS,
        pickler_name=pickler_qualname,
        pickler=the_pickler,
        initializer=init_blob,
        restart=bool(restart),
        log_path=os.fspath(log_path) if log_path is not None else None,
        idle_timeout=_positive_seconds("idle_timeout", idle_timeout),
        status_interval=_positive_seconds("status_interval", status_interval),
        on_status=on_status,
        cwd=cwd,
        sys_path=tuple(dict.fromkeys(os.path.join(cwd, p) if p else cwd for p in sys.path)),
        # Workers on other machines share no /dev/shm with us.
        shm_threshold=shm_threshold if shm.available() and (spec is None or spec.shared_memory) else None,
        options=options,
        spec=spec,
        backend_options=options_data,
    )
