"""SubprocExecutor: a ProcessPoolExecutor whose pool lives in a sidecar process.

Data flow:

|================= parent process =================|==== sidecar ====|=== workers ===|

 submit(fn, *args)
   pickle (fn, args, kwargs) in the caller's thread
   job table: queued  [Job, Job, ...]   futures PENDING: cancel() works
              inflight {job_id: Job}    futures RUNNING: at most `window`
   FrameWriter ============== SUBMIT =======> main loop
                                              backlog -> batches -> backend pool
                                                                   run_batch():
                                                                   loads, call, dumps
 reader thread <============ RESULT ======== backend thread <====== outcome bytes
   decode outcome, resolve future,
   move queued jobs into the window
 reader sees EOF / sidecar exit --> in-flight futures fail with SidecarDiedError;
                                    queued ones go to a new sidecar (or fail: restart=False)

Actors:

* ``submit()`` pickles the job in the caller's thread (so a pickling error
  fails that job at once), queues it, and sends what fits in the window.
  Sending combines: a burst of submits from many threads becomes a few writes.
* The *window* bounds jobs sent but unfinished, as the stdlib bounds its call
  queue. A queued job's future stays PENDING, so ``Future.cancel()`` succeeds
  until the job enters the window; once its SUBMIT frame is written, the future
  is RUNNING and ``cancel()`` returns False.
* The reader thread (in ``_launcher``) turns RESULT and JOB_ERROR frames into
  future results. It never blocks on writing: frames it sends go through the
  writer's helper thread when the pipe is busy.
* The sidecar (``sidecar.py``) and the backends (``backends/``) are never
  imported here: they are named by string on the sidecar's command line.

Lifecycle of the executor:

    RUNNING -> CLOSING (shutdown called; queued and in-flight jobs finish)
            -> CLOSED  (no job left; sidecar told to stop and reaped)
    any     -> BROKEN  (initializer failed, or sidecar died with restart=False)

CLOSED and BROKEN are terminal: ``submit`` raises in both.
"""

from __future__ import annotations

import atexit
import enum
import itertools
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

from . import _job, _outcome
from ._compat import ParamSpec, default_max_workers
from ._launcher import SIDECAR_EXIT_GRACE_SECONDS, SidecarExit, SidecarProcess
from ._pickling import DEFAULT_PICKLER, Pickler, pickler_name, resolve_pickler
from .errors import (
    BrokenSubprocExecutor,
    InitializerFailedError,
    SidecarDiedError,
)
from .protocol import Frame, MessageKind
from .stats import ExecutorStatistics, SlowJobReport

__all__ = ["SubprocExecutor"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# The window: jobs sent to the sidecar and not yet finished. A bigger one lets
# the sidecar batch more and keeps workers busy across the round trip; a
# smaller one lets Future.cancel() succeed for more of the queued jobs. So it
# adapts: it starts at max_workers + 1, as the stdlib's call queue, and grows
# to hold about _WINDOW_TARGET_SECONDS of work at the measured completion
# rate, at most _MAX_EXTRA_PER_WORKER jobs per worker more. Slow jobs (where
# cancelling matters) keep it at the stdlib's size; a flood of tiny jobs
# (where they finish before anyone could cancel them) opens it up.
_WINDOW_TARGET_SECONDS: Final = 0.002
_MAX_EXTRA_PER_WORKER: Final = 32
# How often the completion rate is measured.
_RATE_PERIOD_SECONDS: Final = 0.01
# Start methods of multiprocessing, and loky's own two.
_START_METHODS: Final = ("fork", "forkserver", "spawn", "loky", "loky_init_main")
_VALUE_TAG: Final = bytes([_job.TAG_VALUE])


class _State(enum.Enum):
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"
    BROKEN = "broken"


@dataclass(slots=True)
class _Job:
    job_id: int
    future: Future[Any]
    payload: bytes


class _Core:
    """The executor's state, shared with the reader thread.

    Kept apart from ``SubprocExecutor`` so the reader thread holds no
    reference to the executor object: dropping the last reference to an
    executor that was never shut down lets it be collected, and that
    shuts the sidecar down (as the stdlib does).
    """

    def __init__(
        self,
        *,
        max_workers: int,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        init_payload: bytes,
        pickler: Pickler,
        restart: bool,
        log_path: str | None,
        on_status: Callable[[SlowJobReport], object] | None,
    ) -> None:
        self.max_workers = max_workers
        self.on_status = on_status
        self._base_window = max_workers + 1
        self.window = self._base_window
        self._max_window = max_workers * (1 + _MAX_EXTRA_PER_WORKER)
        # Completions counted since _rate_since, to size the window.
        self._rate_count = 0
        self._rate_since = time.monotonic()
        self._argv = argv
        self._env = env
        self._cwd = cwd
        self._init_payload = init_payload
        self._pickler = pickler
        self._restart = restart
        self._log_path = log_path
        # Guards every field below. Never held while calling into a Future
        # (its callbacks may call back into us) or while writing to the pipe.
        self.lock = threading.Lock()
        self.state = _State.RUNNING
        # Jobs waiting in the parent, oldest first; futures PENDING.
        self.queued: deque[_Job] = deque()
        # Jobs sent to the current sidecar and not yet answered, e.g.
        # {5: _Job(5, <Future running>, b"..."), 6: ...}; futures RUNNING.
        self.inflight: dict[int, _Job] = {}
        self.sidecar: SidecarProcess | None = None
        # Set once the executor is CLOSED or BROKEN and its sidecar is gone.
        self.finished = threading.Event()
        self.broken_reason: BaseException | None = None
        self.sidecar_starts = 0
        self._ids = itertools.count(1)
        # Counters for statistics(); written under the lock.
        self.submitted = 0
        self.n_done = 0
        self.n_failed = 0
        self.n_cancelled = 0
        # The pool as last reported by the sidecar (HELLO / WORKERS frames).
        self.worker_pids: tuple[int, ...] = ()
        self.quiesced = False

    # -- sidecar management (lock held) --------------------------------------

    def _ensure_sidecar_locked(self) -> SidecarProcess:
        if self.sidecar is None:
            self.sidecar = SidecarProcess(
                self._argv,
                self._env,
                self._cwd,
                self._init_payload,
                on_frames=self._on_frames,
                on_lost=self._on_lost,
                log_path=self._log_path,
            )
            self.sidecar_starts += 1
        return self.sidecar

    def _take_sendable_locked(self) -> list[_Job]:
        """Move queued jobs into the window; their futures become RUNNING."""
        out: list[_Job] = []
        while self.queued and len(self.inflight) < self.window:
            job = self.queued.popleft()
            if not job.future.set_running_or_notify_cancel():
                self.n_cancelled += 1
                continue  # cancelled while queued: it never runs
            self.inflight[job.job_id] = job
            out.append(job)
        return out

    def _send(self, sidecar: SidecarProcess, jobs: list[_Job], *, block: bool) -> None:
        if jobs:
            sidecar.send_many([(MessageKind.SUBMIT, j.job_id, j.payload) for j in jobs], block=block)
            # Drop the parent's copy of the bytes once handed to the pipe.
            for j in jobs:
                j.payload = b""

    # -- submit path (caller threads) ------------------------------------------

    def submit_payload(self, payload: bytes | None, error: BaseException | None) -> Future[Any]:
        fut: Future[Any] = Future()
        with self.lock:
            self._check_open_locked()
            job_id = next(self._ids)
            self.submitted += 1
            if error is not None:
                # Failed to pickle in the caller: the job fails alone, as in the stdlib.
                fut.set_running_or_notify_cancel()
                to_fail: tuple[Future[Any], BaseException] | None = (fut, error)
                jobs: list[_Job] = []
                sidecar = None
            else:
                to_fail = None
                assert payload is not None
                self.queued.append(_Job(job_id, fut, payload))
                sidecar = self._ensure_sidecar_locked()
                jobs = self._take_sendable_locked()
        if to_fail is not None:
            with self.lock:
                self.n_failed += 1
            fut_, exc_ = to_fail
            note = f"job {job_id} could not be pickled in the parent; pass picklable objects"
            _outcome.add_note(exc_, note)
            fut_.set_exception(exc_)
        elif sidecar is not None:
            self._send(sidecar, jobs, block=True)
        return fut

    def _check_open_locked(self) -> None:
        if self.state is _State.BROKEN:
            raise BrokenSubprocExecutor(
                f"the executor is broken and cannot run new jobs: {self.broken_reason}; create a new one"
            ) from self.broken_reason
        if self.state is not _State.RUNNING:
            raise RuntimeError("cannot schedule new futures after shutdown")

    # -- reader thread ---------------------------------------------------------

    def _on_frames(self, frames: list[Frame]) -> None:
        """Resolve futures from sidecar frames. Runs on the reader thread; never
        raises, since an escape would stop the reader and strand every future."""
        done: list[tuple[_Job, Frame]] = []
        reports: list[Frame] = []
        with self.lock:
            sidecar = self.sidecar
            for f in frames:
                if f.kind is MessageKind.RESULT or f.kind is MessageKind.JOB_ERROR:
                    job = self.inflight.pop(f.job_id, None)
                    if job is not None:
                        done.append((job, f))
                        if f.kind is MessageKind.RESULT and f.payload[:1] == _VALUE_TAG:
                            self.n_done += 1
                        else:
                            self.n_failed += 1
                elif f.kind is MessageKind.STATUS:
                    reports.append(f)
                elif f.kind is MessageKind.WORKERS or f.kind is MessageKind.HELLO:
                    self._note_workers(f.payload)
            if done:
                self._adapt_window_locked(len(done))
            refill = self._take_sendable_locked() if sidecar is not None else []
            stop = self._maybe_stop_locked()
        if refill and sidecar is not None:
            self._send(sidecar, refill, block=False)
        if stop is not None:
            stop.send(MessageKind.SHUTDOWN, 0, b'{"kill": false}', block=False)
        for job, f in done:
            try:
                self._resolve(job, f)
            except BaseException as exc:
                # A bug of ours or a hostile payload; the future must still end.
                logger.exception("resolving job %d failed", job.job_id)
                if not job.future.done():
                    err = BrokenSubprocExecutor(
                        f"job {job.job_id}: its outcome could not be decoded in the parent: {exc!r}",
                        job_id=job.job_id,
                    )
                    err.__cause__ = exc
                    try:
                        job.future.set_exception(err)
                    except BaseException:
                        logger.exception("failing job %d failed", job.job_id)
        for f in reports:
            self._report_slow(f)

    def _note_workers(self, payload: bytes) -> None:
        """Lock held. Remember the pool's pids and state from a HELLO or WORKERS frame."""
        try:
            info = json.loads(payload)
        except ValueError:
            return
        pids = info.get("worker_pids")
        if isinstance(pids, list):
            self.worker_pids = tuple(int(p) for p in pids)
        self.quiesced = bool(info.get("quiesced", False))

    def _report_slow(self, frame: Frame) -> None:
        """A STATUS frame: log it and hand it to the callback. Never touches a future."""
        try:
            info = json.loads(frame.payload)
            report = SlowJobReport(frame.job_id, float(info["elapsed"]), int(info["pid"]))
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed status report for job %d", frame.job_id)
            return
        logger.warning(
            "job %d has been running for %.1fs on worker pid %d", report.job_id, report.elapsed, report.pid
        )
        if self.on_status is not None:
            try:
                self.on_status(report)
            except Exception:
                logger.exception("the on_status callback raised for job %d", report.job_id)

    def _adapt_window_locked(self, finished: int) -> None:
        """Resize the window from the completion rate (see _WINDOW_TARGET_SECONDS)."""
        self._rate_count += finished
        now = time.monotonic()
        elapsed = now - self._rate_since
        if elapsed >= _RATE_PERIOD_SECONDS:
            rate = self._rate_count / elapsed
            self.window = min(self._max_window, self._base_window + int(rate * _WINDOW_TARGET_SECONDS))
            self._rate_count = 0
            self._rate_since = now

    def _maybe_stop_locked(self) -> SidecarProcess | None:
        """CLOSING with no job left becomes CLOSED; returns the sidecar to tell
        SHUTDOWN (once), or marks the executor finished if there is none."""
        if self.state is not _State.CLOSING or self.queued or self.inflight:
            return None
        self.state = _State.CLOSED
        if self.sidecar is None:
            self.finished.set()
        return self.sidecar

    def _resolve(self, job: _Job, frame: Frame) -> None:
        """Set the future from a RESULT or JOB_ERROR frame (see _outcome)."""
        fut = job.future
        if frame.kind is MessageKind.JOB_ERROR:
            fut.set_exception(_outcome.job_error(job.job_id, frame.payload))
            return
        outcome = _outcome.decode_result(job.job_id, frame.payload, self._pickler)
        if isinstance(outcome, _outcome.Value):
            fut.set_result(outcome.value)
        elif isinstance(outcome, InitializerFailedError):
            fut.set_exception(outcome)
            self.break_executor(outcome)
        else:
            fut.set_exception(outcome)

    def _on_lost(self, end: SidecarExit) -> None:
        """The sidecar is gone. Runs once per sidecar, on its reader thread; never raises."""
        failed: list[_Job]
        with self.lock:
            if self.sidecar is None or self.sidecar.pid != end.pid:
                return
            self.sidecar = None
            self.worker_pids = ()
            failed = list(self.inflight.values())
            self.inflight.clear()
            self.n_failed += len(failed)
            queued_fail: list[_Job] = []
            if not end.clean:
                logger.error("%s", end.describe())
                if self.state is _State.RUNNING and (not self._restart or not end.started):
                    # A sidecar that cannot start (a backend refusing an
                    # option, a bad "module:attr") would fail the same way
                    # again: restarting it would loop.
                    self.state = _State.BROKEN
                    self.broken_reason = SidecarDiedError(
                        end.describe(), pid=end.pid, returncode=end.returncode
                    )
                if self.state is _State.BROKEN:
                    queued_fail = list(self.queued)
                    self.n_failed += sum(1 for j in queued_fail if not j.future.cancelled())
                    self.queued.clear()
            restart_now = bool(self.queued) and self.state in (_State.RUNNING, _State.CLOSING)
            sidecar = self._ensure_sidecar_locked() if restart_now else None
            jobs = self._take_sendable_locked() if sidecar is not None else []
            if self.sidecar is None and self.state in (_State.CLOSED, _State.BROKEN):
                self.finished.set()
            self._maybe_stop_locked()  # sidecar is None here unless restarted for queued jobs
            broken = self.state is _State.BROKEN
        if sidecar is not None:
            self._send(sidecar, jobs, block=False)
        for job in failed:
            err = SidecarDiedError(
                f"job {job.job_id} was lost: {end.describe()}\n"
                + (
                    "The executor is broken: create a new one."
                    if broken
                    else "The executor starts a new sidecar for later jobs."
                ),
                job_id=job.job_id,
                pid=end.pid,
                returncode=end.returncode,
                output_tail=end.output_tail,
            )
            err.__cause__ = end.cause
            job.future.set_exception(err)
        for job in queued_fail:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(
                    BrokenSubprocExecutor(
                        f"job {job.job_id} never ran: the executor broke ({self.broken_reason})",
                        job_id=job.job_id,
                    )
                )

    # -- shutdown and breakage (any thread) -------------------------------------

    def break_executor(self, reason: BaseException) -> None:
        """Mark BROKEN, fail every pending job, stop the sidecar."""
        with self.lock:
            if self.state is _State.BROKEN:
                return
            self.state = _State.BROKEN
            self.broken_reason = reason
            jobs = list(self.queued) + list(self.inflight.values())
            self.n_failed += sum(1 for j in jobs if not j.future.cancelled())
            self.queued.clear()
            self.inflight.clear()
            sidecar = self.sidecar
            if sidecar is None:
                self.finished.set()
        if sidecar is not None:
            sidecar.send(MessageKind.SHUTDOWN, 0, b'{"kill": true}', block=False)
        for job in jobs:
            fut = job.future
            if fut.done() or (not fut.running() and not fut.set_running_or_notify_cancel()):
                continue
            err = BrokenSubprocExecutor(f"job {job.job_id} did not run: {reason}", job_id=job.job_id)
            err.__cause__ = reason
            fut.set_exception(err)

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        cancelled: list[_Job] = []
        with self.lock:
            if self.state is _State.RUNNING:
                self.state = _State.CLOSING
            if cancel_futures:
                cancelled = list(self.queued)
                self.n_cancelled += len(cancelled)
                self.queued.clear()
            stop = self._maybe_stop_locked()
            sidecar = self.sidecar
        for job in cancelled:
            job.future.cancel()
        if stop is not None:
            stop.send(MessageKind.SHUTDOWN, 0, b'{"kill": false}')
        if wait:
            self.finished.wait() if sidecar is None else self._wait_finished()

    def statistics(self) -> ExecutorStatistics:
        with self.lock:
            cancelled_in_queue = sum(1 for j in self.queued if j.future.cancelled())
            return ExecutorStatistics(
                submitted=self.submitted,
                queued=len(self.queued) - cancelled_in_queue,
                running=len(self.inflight),
                done=self.n_done,
                failed=self.n_failed,
                cancelled=self.n_cancelled + cancelled_in_queue,
                sidecar_pid=self.sidecar.pid if self.sidecar is not None else None,
                worker_pids=self.worker_pids,
                quiesced=self.quiesced,
                sidecar_starts=self.sidecar_starts,
                state=self.state.value,
            )

    def control(self, kind: MessageKind) -> None:
        """Send QUIESCE or WAKEUP to the sidecar (starting one for WAKEUP)."""
        with self.lock:
            self._check_open_locked()
            sidecar = self._ensure_sidecar_locked() if kind is MessageKind.WAKEUP else self.sidecar
        if sidecar is not None:
            sidecar.send(kind)

    def _wait_finished(self) -> None:
        """Wait for the jobs (unbounded, as the stdlib), then for the sidecar (bounded)."""
        stopping_since: float | None = None
        while not self.finished.wait(0.2):
            with self.lock:
                sidecar = self.sidecar
                state = self.state
            if sidecar is None and state in (_State.CLOSED, _State.BROKEN):
                return
            if sidecar is None:
                continue
            if sidecar.is_reader_thread():
                return  # shutdown(wait=True) from a callback must not wait for itself
            if state in (_State.CLOSED, _State.BROKEN):
                # Every job is done and SHUTDOWN was sent: the sidecar only has
                # to stop its workers, which it bounds itself. Bound it here too.
                now = time.monotonic()
                stopping_since = stopping_since if stopping_since is not None else now
                if now - stopping_since > SIDECAR_EXIT_GRACE_SECONDS:
                    logger.warning(
                        "sidecar pid %d did not exit %.0fs after SHUTDOWN; killing it",
                        sidecar.pid,
                        SIDECAR_EXIT_GRACE_SECONDS,
                    )
                    sidecar.kill()
                    stopping_since = now


_live_cores: weakref.WeakSet[_Core] = weakref.WeakSet()


@atexit.register
def _shutdown_at_exit() -> None:
    """At interpreter exit, let queued jobs finish as the stdlib does, then stop sidecars."""
    for core in list(_live_cores):
        try:
            core.shutdown(wait=True, cancel_futures=False)
        except Exception:
            logger.exception("shutting an executor down at exit failed")


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
        backend: "process" (the stdlib pool), "loky", a registered entry point
            name, or "module:attr".
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
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        backend: str = "process",
        pickler: object = None,
        restart: bool = True,
        log_path: str | os.PathLike[str] | None = None,
        idle_timeout: float | None = None,
        status_interval: float | None = None,
        on_status: Callable[[SlowJobReport], object] | None = None,
    ) -> None:
        if os.environ.get(_job.SIDECAR_PID_ENV) == str(os.getpid()):
            raise RuntimeError(
                "SubprocExecutor cannot be created inside its own sidecar process; create it in the "
                "parent or inside a job"
            )
        if max_workers is None:
            max_workers = default_max_workers()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a name string, got {type(backend).__name__}")
        start_method = _start_method_name(mp_context)
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
        from .backends import check_options, resolve_backend_name  # names only: imports no pool

        resolve_backend_name(backend)
        check_options(backend, start_method, max_tasks_per_child)
        pickler_qualname = DEFAULT_PICKLER if pickler is None else pickler_name(pickler)
        the_pickler = resolve_pickler(pickler_qualname)

        self._max_workers = max_workers  # read by Dask, as on ProcessPoolExecutor
        init_blob = b""
        if initializer is not None:
            try:
                init_blob = the_pickler.dumps((initializer, tuple(initargs)))
            except Exception as exc:
                raise TypeError(
                    f"initializer {initializer!r} or its initargs could not be pickled for the workers: {exc}"
                ) from exc
        header = json.dumps({"authkey": bytes(multiprocessing.current_process().authkey).hex()}).encode()
        argv = [
            sys.executable,
            "-m",
            "subproc_executor.sidecar",
            "--backend",
            backend,
            "--max-workers",
            str(max_workers),
            "--pickler",
            pickler_qualname,
        ]
        if start_method is not None:
            argv += ["--start-method", start_method]
        if max_tasks_per_child is not None:
            argv += ["--max-tasks-per-child", str(max_tasks_per_child)]
        for name, value in (("idle_timeout", idle_timeout), ("status_interval", status_interval)):
            if value is not None:
                if not isinstance(value, (int, float)) or value <= 0:
                    raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
                argv += ["--" + name.replace("_", "-"), repr(float(value))]
        if on_status is not None and not callable(on_status):
            raise TypeError("on_status must be a callable taking a SlowJobReport")
        self._core = _Core(
            max_workers=max_workers,
            argv=argv,
            env=_sidecar_env(),
            cwd=os.getcwd(),
            init_payload=header + b"\n" + init_blob,
            pickler=the_pickler,
            restart=restart,
            log_path=os.fspath(log_path) if log_path is not None else None,
            on_status=on_status,
        )
        self._pickler = the_pickler
        _live_cores.add(self._core)
        with self._core.lock:
            self._core._ensure_sidecar_locked()
        # Shut the sidecar down if this executor is dropped without shutdown().
        weakref.finalize(self, self._core.shutdown, False, False)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; return a Future for its result.

        The call is pickled here, so a function or argument that cannot be
        pickled fails this future at once (and nothing else).
        """
        try:
            payload = self._pickler.dumps((fn, args, kwargs))
        except (Exception, SystemExit) as exc:  # a __reduce__ may raise anything; the job fails alone
            return self._core.submit_payload(None, exc)
        return self._core.submit_payload(payload, None)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Like ``ProcessPoolExecutor.map``: results in order, ``timeout``
        counted from this call, a job's exception raised when its result is
        reached, items sent ``chunksize`` at a time."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        chunks = _chunks(iterables, chunksize)
        futures = cast("list[Future[list[T]]]", [self.submit(_job.call_chunk, fn, chunk) for chunk in chunks])
        return _result_iterator(futures, end_time)

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


def _start_method_name(mp_context: Any) -> str | None:
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
    if name not in _START_METHODS:
        raise ValueError(f"unsupported start method {name!r}: use one of {', '.join(_START_METHODS)}")
    return name


def _sidecar_env() -> dict[str, str]:
    """The parent's environment, with its import path so workers find the user's modules."""
    env = dict(os.environ)
    paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.pop(_job.SIDECAR_PID_ENV, None)
    return env


def _chunks(iterables: tuple[Iterable[Any], ...], chunksize: int) -> Iterator[tuple[tuple[Any, ...], ...]]:
    it = zip(*iterables, strict=False)  # map stops at the shortest, as builtin map does
    while True:
        chunk = tuple(itertools.islice(it, chunksize))
        if not chunk:
            return
        yield chunk


def _result_iterator(futures: list[Future[list[T]]], end_time: float | None) -> Iterator[T]:
    """Yield results in order; cancel what is left if the consumer stops or a job fails."""
    futures.reverse()  # pop() from the end is O(1)
    try:
        while futures:
            fut = futures[-1]
            if end_time is None:
                chunk = fut.result()
            else:
                remaining = end_time - time.monotonic()
                if remaining <= 0 and not fut.done():
                    raise FuturesTimeoutError()
                chunk = fut.result(max(0.0, remaining))
            futures.pop()
            del fut
            yield from chunk
    finally:
        for fut in futures:
            fut.cancel()
