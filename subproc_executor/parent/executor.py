"""SubprocExecutor: a ProcessPoolExecutor whose pool lives in a sidecar process.

Data flow:

|================= parent process =================|==== sidecar ====|=== workers ===|

 submit(fn, *args)
   pickle (fn, args, kwargs) in the caller's thread
   supervisor: job table, queued -> in flight (window)
   FrameWriter ============== SUBMIT =======> main loop
                                              scheduler -> batches -> backend pool
                                                                   run_batch():
                                                                   loads, call, dumps
 reader thread <============ RESULT ======== backend thread <====== outcome bytes
   decode outcome, resolve future,
   move queued jobs into the window
 reader sees EOF / sidecar exit --> in-flight futures fail with SidecarDiedError;
                                    queued ones go to a new sidecar (or fail: restart=False)

This module is the public face only: argument checking is ``settings``, the
job bookkeeping ``jobtable``, the sidecar and its frames ``supervisor``.
``submit()`` pickles the job in the caller's thread, so a pickling error fails
that job at once, as in the stdlib. The sidecar and the backends are never
imported here: they are named by string.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future
from concurrent.futures import wait as wait_all

from ..wire.messages import SIDECAR_PID_ENV
from ..wire.protocol import MessageKind
from ..wire.sigdefer import deferred
from ..worker.pickling import dump_into, needs_value
from .mapping import map_chunks
from .settings import DEFAULT_SHM_THRESHOLD, JobOptions, make_options, make_settings
from .spawn import sidecar_env
from .supervisor import Supervisor, shutdown_all_at_exit

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final, ParamSpec, TypeVar

    # Public dataclasses: loaded on first use, so importing the
    # executor does not load dataclasses (and inspect, ast, ...).
    from ..stats import ExecutorStatistics, SlowJobReport
    from .progress import ProgressReport

__all__ = ["JobOptionsExecutor", "SubprocExecutor"]

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    P = ParamSpec("P")
    T = TypeVar("T")


atexit.register(shutdown_all_at_exit)


class _Unset:
    """The default of ``options()``'s arguments: keep the executor's own."""

    def __repr__(self) -> str:
        return "<executor default>"


_UNSET: Final = _Unset()


def _made_by(made: list[T], factory: Callable[[], T]) -> T:
    """``factory()``, noted in ``made``."""
    item = factory()
    made.append(item)
    return item


class SubprocExecutor(Executor):
    """An Executor that runs calls in a pool of processes kept by a sidecar.

    A drop-in for ``concurrent.futures.ProcessPoolExecutor``: same constructor,
    same ``submit``/``map``/``shutdown``, real ``concurrent.futures.Future``
    objects. Differences are all additions: callables travel by value when they
    must (lambdas, closures, ``__main__``), a worker that dies fails only the
    jobs it took down, and a dead sidecar is replaced.

    Args:
        max_workers: processes in the pool; default as ``ProcessPoolExecutor``.
        mp_context: a ``multiprocessing`` context or start method name
            ("fork", "forkserver", "spawn") for the pool *inside the sidecar*.
            Default: fork from the sidecar, which is small and single-threaded
            (forkserver when ``max_tasks_per_child`` is set, as fork cannot be).
        initializer, initargs: called in every worker at start.
        max_tasks_per_child: jobs a worker runs before it is replaced.
        backend: "pipes" (our own pool, the default: the fastest, and a
            crash fails only the crashed job), "process" (the stdlib's pool),
            "loky", "dask" (a Dask cluster: ``pip install
            'subproc-executor[dask]'``), a registered entry point name, or
            "module:attr".
        backend_options: settings for the backend, as JSON values (a
            mapping of str keys): for backend="dask", ``address`` and the
            rest (docs/backends.md); the other built-in backends take none.
            A key the built-in backend does not know is a ValueError.
        pickler: an importable object with ``dumps``/``loads``; default pickle
            with a cloudpickle fallback.
        restart: start a new sidecar when one dies (default); False makes the
            executor broken instead.
        log_path: write the sidecar's and workers' output to this file instead
            of the parent's stderr.
        idle_timeout: seconds without jobs after which the workers are
            released (the sidecar stays); the next job starts them again.
        status_interval: report each job running longer than this many
            seconds (a WARNING log record and ``on_status``), once per interval.
        on_status: called with a ``SlowJobReport`` on the reader thread; keep it quick.
        shm_threshold: pickled jobs and results of at least this many bytes
            travel through shared memory (``/dev/shm``) instead of the
            pipes; None sends everything through the pipes. Where
            ``/dev/shm`` is missing or full, payloads take the pipes anyway.
        job_timeout: seconds a job may run (counted from when it starts);
            past it its worker is killed and the job fails with
            ``JobTimeoutError``. Other jobs are not touched.
        memory_limit: bytes of resident memory a worker may hold while it
            runs a job; past it the worker is killed and the job fails with
            ``WorkerMemoryError``.
        cancel_running: ``Future.cancel()`` stops a running job too (its
            worker is killed) and returns True.
        on_progress: called with a ``ProgressReport`` each time a running
            job's ``report_progress`` reaches the parent (about ten a second
            at most per job), on the reader thread; keep it quick. A
            callback that raises is logged; the job goes on.
        The last four are defaults for every job; ``options()`` sets them
        for some. The limits and ``cancel_running`` need a backend that can
        lose one worker without breaking its pool: "pipes" (others refuse them).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        backend: str = "pipes",
        pickler: object = None,
        restart: bool = True,
        log_path: str | os.PathLike[str] | None = None,
        idle_timeout: float | None = None,
        status_interval: float | None = None,
        on_status: Callable[[SlowJobReport], object] | None = None,
        shm_threshold: int | None = DEFAULT_SHM_THRESHOLD,
        job_timeout: float | None = None,
        memory_limit: int | None = None,
        cancel_running: bool = False,
        on_progress: Callable[[ProgressReport], object] | None = None,
        backend_options: Mapping[str, object] | None = None,
    ) -> None:
        if os.environ.get(SIDECAR_PID_ENV) == str(os.getpid()):
            raise RuntimeError(
                "SubprocExecutor cannot be created inside its own sidecar process; create it in the "
                "parent or inside a job"
            )
        settings = make_settings(
            max_workers=max_workers,
            mp_context=mp_context,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
            backend=backend,
            pickler=pickler,
            restart=restart,
            log_path=log_path,
            idle_timeout=idle_timeout,
            status_interval=status_interval,
            on_status=on_status,
            shm_threshold=shm_threshold,
            job_timeout=job_timeout,
            memory_limit=memory_limit,
            cancel_running=cancel_running,
            on_progress=on_progress,
            backend_options=backend_options,
        )
        self._settings = settings
        self._options: JobOptions | None = settings.options if settings.options != JobOptions() else None
        self._max_workers = settings.max_workers  # read by Dask, as on ProcessPoolExecutor
        self._pickler = settings.pickler
        self._shm_threshold = settings.shm_threshold
        self._core = Supervisor(settings, sidecar_env())
        # Warm start. Like ProcessPoolExecutor, whose constructor starts no
        # process, a failure to start here (no thread, process or descriptor
        # left) does not raise: the executor is broken, and submit() says why.
        self._core.start()
        # Shut the sidecar down if this executor is dropped without shutdown().
        # Not shutdown() itself: a finalizer may run inside the garbage
        # collector on any thread, even one holding the supervisor's lock.
        weakref.finalize(self, self._core.abandon)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; return a Future for its result.

        The call is pickled here, so a function or argument that cannot be
        pickled fails this future at once (and nothing else).
        """
        return self._submit(self._options, fn, args, kwargs)

    def _submit(
        self,
        options: JobOptions | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        by_value: bool | None = None,
    ) -> Future[Any]:
        """``by_value``: whether the job's function needs cloudpickle, if the
        caller knows (``map`` asks once for all its chunks); else asked here."""
        segment = None
        made: list[Any] = []  # every sink made, so none outlives a failure (Ctrl-C included)
        try:
            if self._shm_threshold is None:
                payload = self._pickler.dumps((fn, args, kwargs))
            else:
                if by_value is None:
                    by_value = needs_value(fn)
                new_sink = functools.partial(_made_by, made, self._core.new_job_sink)
                sink = dump_into(self._pickler, (fn, args, kwargs), new_sink, by_value)
                payload, segment = sink.close()
        except BaseException as exc:
            with deferred():  # all of them, even if another Ctrl-C comes meanwhile
                for sink in made:
                    sink.discard()  # after close() there is nothing left to discard: the segment owns it
            if not isinstance(exc, (Exception, SystemExit)):
                raise
            return self._core.fail_unpicklable(exc)  # a __reduce__ may raise anything; the job fails alone
        if segment is not None:
            payload = segment.ref
        return self._core.submit_payload(payload, segment, options)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: object = False,
    ) -> Iterator[T]:
        """Like ``ProcessPoolExecutor.map``: results in order, ``timeout``
        counted from this call, a job's exception raised when its result is
        reached, items sent ``chunksize`` at a time.

        ``buffersize`` (Python 3.14's meaning, on every version): the inputs
        are read lazily, and at most ``buffersize`` chunks are submitted ahead
        of the consumer (never one more), so an endless iterator works.

        ``progress=True`` draws a tqdm bar of the items completed on stderr
        (only on a terminal), with the running chunks' own ``report_progress``;
        it needs ``pip install 'subproc-executor[progress]'``. A tqdm-compatible
        class (or ``functools.partial(tqdm, file=...)``) may be passed instead.
        The bar closes when map's iterator ends, raises or is dropped.
        """
        return map_chunks(
            self._submit,
            self._options,
            fn,
            iterables,
            timeout,
            chunksize,
            buffersize,
            progress,
        )

    def options(
        self,
        *,
        timeout: float | _Unset | None = _UNSET,
        memory_limit: int | _Unset | None = _UNSET,
        cancel_running: bool | _Unset = _UNSET,
        on_progress: Callable[[ProgressReport], object] | _Unset | None = _UNSET,
    ) -> JobOptionsExecutor:
        """An Executor sharing this pool whose jobs get these options (the
        others keep this executor's defaults). Hand it to any code that takes
        an executor. Its ``shutdown()`` closes it, not the pool: see
        ``JobOptionsExecutor``."""
        base = self._options or JobOptions()
        options = make_options(
            self._settings.backend,
            self._settings.spec,
            base.timeout if isinstance(timeout, _Unset) else timeout,
            base.memory_limit if isinstance(memory_limit, _Unset) else memory_limit,
            base.cancel_running if isinstance(cancel_running, _Unset) else cancel_running,
            base.on_progress if isinstance(on_progress, _Unset) else on_progress,
        )
        return JobOptionsExecutor(self, options)

    def terminate_workers(self) -> None:
        """Python 3.14's ``ProcessPoolExecutor.terminate_workers()``, on every
        version: no new jobs, queued ones cancelled, every worker sent
        SIGTERM now; running jobs fail as their workers die. Returns at once."""
        self._force_shutdown(signal.SIGTERM)

    def kill_workers(self) -> None:
        """``terminate_workers()`` with SIGKILL (Python 3.14's meaning)."""
        self._force_shutdown(signal.SIGKILL)

    def _force_shutdown(self, sig: int) -> None:
        self._core.force_shutdown(sig)
        self._core.shutdown(False, True)

    def quiesce(self) -> None:
        """Release the workers once the jobs already sent finish. The sidecar
        stays; the next job (or ``wakeup()``) starts workers again. Jobs
        submitted meanwhile are never lost."""
        self._core.control(MessageKind.QUIESCE)

    def wakeup(self) -> None:
        """Start the workers now (after ``quiesce()`` or an idle timeout)."""
        self._core.control(MessageKind.WAKEUP)

    def statistics(self) -> ExecutorStatistics:
        """A frozen snapshot of the executor's counters and processes."""
        return self._core.statistics()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting jobs; let the pending ones finish unless cancelled.

        ``wait=True`` returns once every job has finished and the sidecar and
        its workers have exited (a sidecar that does not exit is killed after
        a grace period).
        """
        self._core.shutdown(wait, cancel_futures)


class JobOptionsExecutor(Executor):
    """``SubprocExecutor.options(...)``: the same pool, other per-job options.

    ``submit`` and ``map`` behave as the executor's, with these options.
    ``shutdown(wait, cancel_futures)`` closes this view only: it refuses new
    jobs, cancels its own queued jobs if asked, and with ``wait`` waits for
    the jobs submitted through it (``map``'s included). It never stops the
    pool, which others share: shut the ``SubprocExecutor`` itself down for
    that. So handing a view to code that ends with ``with executor:`` is safe.
    """

    def __init__(self, executor: SubprocExecutor, options: JobOptions) -> None:
        self._executor = executor
        self.job_options = options
        self._max_workers = executor._max_workers
        self._lock = threading.Lock()
        self._closed = False
        # Its jobs not yet done; each leaves when its future ends.
        self._futures: set[Future[Any]] = set()

    def _submit_tracked(
        self,
        options: JobOptions | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        by_value: bool | None = None,
    ) -> Future[Any]:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            fut = self._executor._submit(options, fn, args, kwargs, by_value)
            self._futures.add(fut)
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(fut)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self._submit_tracked(self.job_options, fn, args, kwargs)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: object = False,
    ) -> Iterator[T]:
        return map_chunks(
            self._submit_tracked,
            self.job_options,
            fn,
            iterables,
            timeout,
            chunksize,
            buffersize,
            progress,
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            futures = list(self._futures)
        if cancel_futures:
            self._executor._core.cancel_queued(futures)
        if wait:
            wait_all(futures)
