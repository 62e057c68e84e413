"""The supervisor: the job table, the current sidecar, and the frames between them.

    caller threads                          reader thread (launcher.SidecarProcess)
    submit_payload()                        on_frames(frames)
      table.enqueue, take_sendable            RESULT / JOB_ERROR: table.finish -> resolve future
      sidecar.send_many(SUBMIT...)            HELLO / WORKERS: remember the pool's pids
                                              STATUS: log, on_status
                                              PROGRESS: on_progress of jobs in flight
    shutdown() / statistics() / control()     refill the window, send SHUTDOWN when CLOSING and empty
                                            on_lost(exit)
                                              in-flight jobs fail (SidecarDiedError);
                                              queued jobs go to a new sidecar, or fail if broken

One lock guards the table and the state. It is never held while calling
into a Future (its callbacks may call back into us) or while writing to a
pipe: frames are handed to the writer's queue under the lock (so a job is
never in flight without its bytes on their way, whatever interrupts the
caller) and written after it. The reader thread never waits for the sidecar
to read: what it sends (a refill, a callback's submit, SHUTDOWN) goes out as
far as the pipe takes it and the writer's helper thread does the rest.

One module, over 450 lines (now near 900: progress dispatch and the stops of
cancel_running joined it; the next split is the lifecycle paths, lost
sidecar / retry / break, into parent/lifecycle.py): every method here reads
or changes the same state under the same lock (table, state, current sidecar, retry timer), and
each lifecycle path (a frame, a lost sidecar, a retry, a break, a shutdown,
a fork) must be read against all the others to see that every future ends.
The pieces without that lock live apart: the table (``jobtable``), the
threads that resolve futures (``delivery``), one sidecar (``launcher``),
decoding (``outcome``).

Kept apart from ``SubprocExecutor`` so the reader thread holds no
reference to the executor object: dropping the last reference to an executor
that was never shut down lets it be collected, and that shuts the sidecar down.

Lifecycle:

    RUNNING -> CLOSING (shutdown called; queued and in-flight jobs finish)
            -> CLOSED  (no job left; sidecar told to stop and reaped)
    any     -> BROKEN  (initializer failed, sidecar died with restart=False,
                        or no sidecar could be started)
    any     -> FORKED  (in a child made by os.fork(): the sidecar is the parent's)

CLOSED, BROKEN and FORKED are terminal: ``submit`` raises in all three.

A sidecar that dies before it said HELLO ran no job: its jobs go to the next
one. It is started again after a short backoff, up to ``MAX_START_ATTEMPTS``
times in a row; one that reports FATAL (its backend cannot start) or cannot
even be spawned would fail the same way again, so that breaks the executor.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import signal
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, InvalidStateError

from ..errors import BrokenSubprocExecutor, InitializerFailedError, ProtocolError, SidecarDiedError
from ..wire import shm, shm_sweep
from ..wire.messages import Hello, Init, JobErrorKind, Kill, Shutdown, Status, Workers
from ..wire.protocol import Frame, MessageKind
from ..wire.sigdefer import deferred
from ..wire.transport import PipeClosed
from . import outcome, progress
from .delivery import Deliverer
from .jobtable import WINDOW_TARGET_SECONDS, Job, JobTable
from .launcher import SIDECAR_EXIT_GRACE_SECONDS, SidecarExit, SidecarProcess
from .settings import JobOptions, Settings
from .stoppable import StoppableFuture
from .timings import Timings, summarize

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final

    # Public dataclasses: loaded on first use, so importing the
    # executor does not load dataclasses (and inspect, ast, ...).
    from ..stats import ExecutorStatistics
    from .progress import ProgressReport

__all__ = ["ExecutorState", "Supervisor"]

logger = logging.getLogger(__name__)

_KILL = Shutdown(kill=True).encode()
_FINISH = Shutdown(kill=False).encode()
# Sidecars in a row that may die before saying HELLO before the executor
# gives up, and the backoff before each new attempt (doubling).
MAX_START_ATTEMPTS: Final = 4
START_BACKOFF_SECONDS: Final = 0.05

# Every live supervisor, for the exit handler and the fork handler.
_live: weakref.WeakSet[Supervisor] = weakref.WeakSet()


class ExecutorState(enum.Enum):
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"
    BROKEN = "broken"
    FORKED = "forked"


_TERMINAL: Final = (ExecutorState.CLOSED, ExecutorState.BROKEN, ExecutorState.FORKED)


class Supervisor:
    """The executor's state, shared with the reader thread; see the module docstring."""

    def __init__(self, settings: Settings, env: dict[str, str]) -> None:
        self.settings = settings
        self._env = env
        self._init_payload = Init(settings.sidecar_settings(), settings.initializer).encode()
        self.lock = threading.Lock()
        self.state = ExecutorState.RUNNING
        spec = settings.spec
        self.table = JobTable(
            settings.max_workers,
            target_seconds=spec.window_seconds if spec is not None else WINDOW_TARGET_SECONDS,
        )
        # Queue waits and run times of recent jobs, for statistics().
        self.timings = Timings()
        self.sidecar: SidecarProcess | None = None
        # Set once the executor is CLOSED or BROKEN and its sidecar is gone.
        self.finished = threading.Event()
        self.broken_reason: BaseException | None = None
        self.sidecar_starts = 0
        # The pool as last reported by the sidecar (HELLO / WORKERS frames).
        self.worker_pids: tuple[int, ...] = ()
        self.quiesced = False
        # Sidecars that died before HELLO since the last one that said it.
        self._failed_starts = 0
        self._retry: threading.Timer | None = None
        # Set by abandon() (a finalizer, maybe inside the garbage collector).
        self._abandoned = False
        # Jobs whose futures were cancelled while running (stop_job), for the reader thread.
        self._stops: deque[int] = deque()
        # terminate_workers()/kill_workers() was called: what the running jobs' errors say.
        self._forced: str | None = None
        self._pid = os.getpid()
        # Resolves the futures that have done-callbacks, off the reader thread.
        self._deliverer = Deliverer()
        _live.add(self)

    # -- sidecar management (lock held) --------------------------------------

    def ensure_sidecar_locked(self) -> SidecarProcess:
        """The current sidecar, started if there is none. Raises what starting
        it raised (no process or descriptor left, the working directory gone)."""
        if self.sidecar is None:
            s = self.settings
            if s.shm_threshold is not None:
                shm_sweep.own_prefix(os.getpid())  # before any segment of ours exists (see wire.shm_sweep)
            self.sidecar = SidecarProcess(
                env=self._env,
                cwd=s.cwd,
                init_payload=self._init_payload,
                on_frames=self._on_frames,
                on_lost=self._on_lost,
                on_wake=self._on_wake,
                log_path=s.log_path,
            )
            self.sidecar_starts += 1
        return self.sidecar

    def start(self) -> None:
        """Start the first sidecar (warm start); a failure breaks the executor."""
        with self.lock:
            try:
                self.ensure_sidecar_locked()
            except Exception as exc:
                logger.error("could not start a sidecar: %r", exc)
                self._break_locked(self._start_failed_locked(exc))

    @staticmethod
    def _queue_locked(sidecar: SidecarProcess, jobs: list[Job]) -> None:
        """Hand the jobs' frames to the writer (lock held; never blocks)."""
        if jobs:
            frames = [
                (MessageKind.SUBMIT, j.job_id, j.payload)
                if j.limits is None
                else (MessageKind.SUBMIT_LIMITED, j.job_id, j.limits + j.payload)
                for j in jobs
            ]
            try:
                sidecar.writer.queue_many(frames)
            except PipeClosed:
                pass  # the sidecar is gone: on_lost fails what was in flight
            # Drop the parent's copy of the bytes once handed to the writer,
            # unless the sidecar may still die before starting any job (no
            # HELLO yet): then they are sent again to the next one.
            if sidecar.hello is not None:
                for j in jobs:
                    j.payload = b""

    @staticmethod
    def _watch_progress_locked(sidecar: SidecarProcess) -> None:
        """A job whose progress someone listens to goes to this sidecar: have it
        forward reports at once, not only on its loop's next turn. Once per sidecar."""
        sidecar.progress_watched = True
        try:
            sidecar.writer.queue_many([(MessageKind.WATCH_PROGRESS, 0, b"")])
        except PipeClosed:
            pass

    @staticmethod
    def _flush(sidecar: SidecarProcess) -> None:
        """Write what is queued; the reader thread never waits for room."""
        try:
            sidecar.writer.flush(block=not sidecar.is_reader_thread())
        except PipeClosed:
            pass

    def _start_failed_locked(self, exc: BaseException) -> BaseException:
        """No sidecar could be spawned: break (the caller fails what was pending)."""
        reason = BrokenSubprocExecutor(
            f"could not start a sidecar process: {type(exc).__name__}: {exc}. Check that the working "
            f"directory ({self.settings.cwd}) still exists and that processes, descriptors and memory "
            "are left; then create a new executor"
        )
        reason.__cause__ = exc
        return reason

    # -- submit path (caller threads) ------------------------------------------

    def new_job_sink(self) -> shm.Sink:
        """Where ``submit`` pickles a job: big ones go into a segment (see wire.shm)."""
        return shm.Sink(self.settings.shm_threshold, f"{shm.parent_prefix(os.getpid())}a")

    def submit_payload(
        self, payload: bytes, segment: shm.Segment | None = None, options: JobOptions | None = None
    ) -> Future[Any]:
        """Queue a pickled job and send what fits in the window. ``segment``:
        the job's bytes are there (``payload`` names it); it lives as long as
        the job's record. ``options``: its limits, and whether ``cancel()``
        stops it while it runs.

        If no sidecar can be started, raises BrokenSubprocExecutor and queues
        nothing: a job its caller was told failed never runs later. A signal
        handler that raises during the call (Ctrl-C) raises either before the
        job exists or after it is queued; then it runs, unseen by the caller.
        """
        submitted = time.monotonic()
        stoppable = options is not None and options.cancel_running
        fut: Future[Any] = StoppableFuture() if stoppable else Future()
        # Ctrl-C (any Python signal handler) raises before the job exists or once it is
        # queued and the writer's state is whole: never in between, which would leave
        # a job the table counts in flight that no frame carries (see wire.sigdefer).
        with deferred():
            with self.lock:
                self.check_open_locked()
                if self.sidecar is None and self._retry is None:
                    try:
                        self.ensure_sidecar_locked()
                    except Exception as exc:
                        reason = self._start_failed_locked(exc)
                        broken = True
                    else:
                        broken = False
                    if broken:
                        pending = self._break_locked(reason)
                        self._fail_broken(pending, reason)
                        raise reason
                job_id = self.table.new_id()
                if isinstance(fut, StoppableFuture):
                    fut.bind(functools.partial(self.stop_job, job_id))
                if options is None:
                    job = Job(job_id, fut, payload, segment=segment, submitted=submitted)
                else:
                    job = Job(
                        job_id,
                        fut,
                        payload,
                        segment=segment,
                        limits=options.limits_head,
                        submitted=submitted,
                        on_progress=options.on_progress,
                    )
                self.table.enqueue(job)
                sidecar = self.sidecar
                if sidecar is not None and job.on_progress is not None and not sidecar.progress_watched:
                    self._watch_progress_locked(sidecar)
                if sidecar is not None:
                    self._queue_locked(sidecar, self.table.take_sendable())
            if sidecar is not None:
                self._flush(sidecar)
        return fut

    def stop_job(self, job_id: int) -> None:
        """A running job's future was cancelled (``cancel_running``). Takes no
        lock: ``cancel()`` may run anywhere, even in a generator's finalizer
        on the reader thread while it holds our lock (as ``abandon`` may). The
        reader thread forgets the job and tells the sidecar to kill it."""
        self._stops.append(job_id)
        sidecar = self.sidecar
        if sidecar is not None:
            sidecar.wake()
        else:
            # No reader to wake: nothing runs, only the table to clean.
            self._stop_jobs_now()

    def _stop_jobs_now(self) -> None:
        while True:
            try:
                job_id = self._stops.popleft()
            except IndexError:
                return
            self._stop_job(job_id)

    def _stop_job(self, job_id: int) -> None:
        kill = Kill(JobErrorKind.CANCELLED, f"job {job_id} was cancelled while it ran").encode()
        with self.lock:
            job = self.table.drop(job_id)
            if job is None:
                return
            if job.segment is not None:
                job.segment.release()
            sidecar = self.sidecar
            if sidecar is not None:
                try:
                    sidecar.writer.queue_many([(MessageKind.KILL, job_id, kill)])
                except PipeClosed:
                    pass
            self._refill_locked(sidecar)
        if sidecar is not None:
            self._flush(sidecar)

    def cancel_queued(self, futures: list[Future[Any]]) -> None:
        """Cancel those of ``futures`` whose jobs still wait in the parent
        (an options() view's shutdown(cancel_futures=True)), telling their
        waiters at once, as shutdown(cancel_futures=True) does."""
        wanted = {id(f) for f in futures}
        with deferred():  # the table's change and its frame go together (see submit_payload)
            with self.lock:
                taken = [j for j in self.table.queued if id(j.future) in wanted and not j.resent]
                for job in taken:
                    self.table.queued.remove(job)
                self.table.cancelled += len(taken)
                sidecar = self.sidecar
                stop = self._maybe_stop_locked()
                if stop is not None:
                    self._queue_shutdown_locked(stop, _FINISH)
            if sidecar is not None:
                self._flush(sidecar)
        _cancel_all(taken)

    def force_shutdown(self, sig: int) -> None:
        """``terminate_workers``/``kill_workers``: no new jobs, queued ones
        cancelled, and the sidecar told to send ``sig`` to every worker now
        and stop; the running jobs fail as their workers die."""
        if self._pid != os.getpid():
            return
        cancelled: list[Job] = []
        with deferred():  # the state's change and its frame go together (see submit_payload)
            with self.lock:
                if self.state is ExecutorState.RUNNING:
                    self.state = ExecutorState.CLOSING
                self._forced = "kill_workers()" if sig == signal.SIGKILL else "terminate_workers()"
                cancelled = self.table.cancel_queued()
                sidecar = self.sidecar
                if sidecar is not None and self.state is ExecutorState.CLOSING:
                    self._queue_shutdown_locked(sidecar, Shutdown(kill=True, signal=sig).encode())
            if sidecar is not None:
                self._flush(sidecar)
        _cancel_all(cancelled)

    def fail_unpicklable(self, error: BaseException) -> Future[Any]:
        """A job that could not be pickled in the caller fails alone, as in the stdlib."""
        fut: Future[Any] = Future()
        with self.lock:
            self.check_open_locked()
            job_id = self.table.new_id()
            self.table.count(ok=False)
        outcome.add_note(error, f"job {job_id} could not be pickled in the parent; pass picklable objects")
        fut.set_running_or_notify_cancel()
        fut.set_exception(error)
        return fut

    def check_open_locked(self) -> None:
        if self.state is ExecutorState.FORKED or self._pid != os.getpid():
            raise RuntimeError(
                f"this SubprocExecutor belongs to process {self._pid}, and this is a child forked from it "
                f"(pid {os.getpid()}): its sidecar serves the parent only. Create a new executor in the child"
            )
        if self.state is ExecutorState.BROKEN:
            raise BrokenSubprocExecutor(
                f"the executor is broken and cannot run new jobs: {self.broken_reason}; create a new one"
            ) from self.broken_reason
        if self.state is not ExecutorState.RUNNING:
            raise RuntimeError("cannot schedule new futures after shutdown")

    # -- reader thread ---------------------------------------------------------

    def _on_frames(self, frames: list[Frame]) -> None:
        """Resolve futures from sidecar frames. Runs on the reader thread; never
        raises, since an escape would stop the reader and strand every future."""
        if self._stops:
            self._stop_jobs_now()
        done: list[tuple[Job, Frame, outcome.Payload]] = []
        reports: list[Frame] = []
        progress_calls: list[tuple[Callable[[ProgressReport], object], ProgressReport]] = []
        # Outcomes in shared memory are taken (mapped and unlinked) at once,
        # whether or not their job is still waiting: nothing else would.
        payloads = [
            outcome.claim(f.job_id, f.payload) if f.kind is MessageKind.RESULT else f.payload for f in frames
        ]
        with self.lock:
            sidecar = self.sidecar
            for f, data in zip(frames, payloads, strict=True):
                if f.kind is MessageKind.RESULT or f.kind is MessageKind.JOB_ERROR:
                    job = self.table.finish(f.job_id)
                    if job is not None:
                        if job.segment is not None:
                            job.segment.release()
                        if f.kind is MessageKind.RESULT:
                            self.timings.record(job.submitted, f.payload)
                        done.append((job, f, data))
                    else:
                        shm.close_mapping(data)  # nobody waits for it
                elif f.kind is MessageKind.PROGRESS:
                    progress_calls += progress.reports_for(f.payload, self.table.inflight)
                elif f.kind is MessageKind.STATUS:
                    reports.append(f)
                elif f.kind is MessageKind.WORKERS:
                    self._note_workers(f)
                elif f.kind is MessageKind.HELLO:
                    self._note_hello(f)
            self._refill_locked(sidecar)
        if sidecar is not None:
            self._flush(sidecar)
        if progress_calls:
            # Listeners are user code: never on this thread (see delivery). Queued
            # before the outcomes of these frames, and the outcomes of jobs that
            # have listeners go the same way, so no report follows its job's end.
            self._deliverer.submit(functools.partial(progress.deliver, progress_calls))
        for job, f, data in done:
            if job.on_progress is not None or _has_callbacks(job.future):
                self._deliverer.submit(functools.partial(self._resolve, job, f.kind, data))
            else:
                self._resolve(job, f.kind, data)
        for f in reports:
            self._report_slow(f)

    def _refill_locked(self, sidecar: SidecarProcess | None) -> None:
        """A place in the window came free: queue what now fits, and SHUTDOWN
        if a closing executor has no job left. The caller flushes."""
        if sidecar is not None:
            self._queue_locked(sidecar, self.table.take_sendable())
        stop = self._maybe_stop_locked()
        if stop is not None:
            self._queue_shutdown_locked(stop, _FINISH)

    def _note_workers(self, frame: Frame) -> None:
        """Lock held. Remember the pool's pids and state from a WORKERS frame."""
        try:
            info = Workers.decode(frame.payload)
        except ProtocolError as exc:
            logger.warning("ignoring a malformed WORKERS frame: %s", exc)
            return
        self.worker_pids = info.worker_pids
        self.quiesced = info.quiesced

    def _note_hello(self, frame: Frame) -> None:
        self._failed_starts = 0
        try:
            self.worker_pids = Hello.decode(frame.payload).worker_pids
        except ProtocolError as exc:
            logger.warning("ignoring a malformed HELLO frame: %s", exc)
            return
        self.quiesced = False

    @staticmethod
    def _queue_shutdown_locked(sidecar: SidecarProcess, payload: bytes) -> None:
        try:
            sidecar.writer.queue_many([(MessageKind.SHUTDOWN, 0, payload)])
        except PipeClosed:
            pass

    def _report_slow(self, frame: Frame) -> None:
        """A STATUS frame: log it and hand it to the callback. Never touches a future."""
        try:
            status = Status.decode(frame.payload)
        except ProtocolError as exc:
            logger.warning("ignoring a malformed status report for job %d: %s", frame.job_id, exc)
            return
        from ..stats import SlowJobReport

        report = SlowJobReport(frame.job_id, status.elapsed, status.pid)
        logger.warning(
            "job %d has been running for %.1fs on worker pid %d", report.job_id, report.elapsed, report.pid
        )
        on_status = self.settings.on_status
        if on_status is not None:
            try:
                on_status(report)
            except Exception:
                logger.exception("the on_status callback raised for job %d", report.job_id)

    def _maybe_stop_locked(self) -> SidecarProcess | None:
        """CLOSING with no job left becomes CLOSED; returns the sidecar to tell
        SHUTDOWN (once), or marks the executor finished if there is none."""
        if self.state is not ExecutorState.CLOSING or not self.table.empty:
            return None
        self.state = ExecutorState.CLOSED
        if self.sidecar is None:
            self.finished.set()
        return self.sidecar

    def _resolve(self, job: Job, kind: MessageKind, payload: outcome.Payload) -> None:
        """Set the future from a RESULT or JOB_ERROR frame's payload, and count it. Never raises."""
        try:
            if kind is MessageKind.JOB_ERROR:
                result: outcome.Value | BaseException = outcome.job_error(job.job_id, bytes(payload))
            else:
                result = outcome.decode_result(job.job_id, payload, self.settings.pickler)
        except BaseException as exc:  # a bug of ours or a hostile payload; the future must still end
            logger.exception("decoding the outcome of job %d failed", job.job_id)
            result = BrokenSubprocExecutor(
                f"job {job.job_id}: its outcome could not be decoded in the parent: {exc!r}",
                job_id=job.job_id,
            )
            result.__cause__ = exc
        finally:
            # The value is a copy now; an exception's traceback may still
            # reference the mapping, and must not keep its descriptor open.
            shm.close_mapping(payload)
        ok = isinstance(result, outcome.Value)
        with self.lock:
            self.table.count(ok=ok)
        try:
            if isinstance(result, outcome.Value):
                job.future.set_result(result.value)
            else:
                job.future.set_exception(result)
        except InvalidStateError:  # cancelled while it ran (cancel_running) as it finished
            logger.debug("job %d finished as it was cancelled", job.job_id)
        except BaseException:
            logger.exception("resolving job %d failed", job.job_id)
        if isinstance(result, InitializerFailedError):
            self.break_executor(result)

    def _on_lost(self, end: SidecarExit) -> None:
        """The sidecar is gone. Runs once per sidecar, on its reader thread; never raises."""
        self._stop_jobs_now()  # cancelled while running: not to be re-sent
        pending: list[Job] = []
        broken_now: BaseException | None = None
        # Its frames are all read: whatever its workers left in shared memory
        # was never sent, and no one else knows it is there.
        shm_sweep.sweep([shm.result_prefix(os.getpid(), end.pid)])
        with self.lock:
            if self.sidecar is None or self.sidecar.pid != end.pid:
                return
            self.sidecar = None
            self.worker_pids = ()
            if not end.started and not end.clean:
                # It said no HELLO, so it handed no job to a worker: its jobs
                # never ran and go to the next sidecar, first.
                failed = self.table.requeue_unstarted()
            else:
                failed = self.table.take_inflight()
            alive = (ExecutorState.RUNNING, ExecutorState.CLOSING)
            if not end.clean:
                logger.error("%s", end.describe())
                if self.state in alive:
                    broken_now = self._judge_lost_locked(end)
            if broken_now is not None:
                pending = self._break_locked(broken_now)
            elif self.state in alive and self.table.queued:
                if end.started or end.clean:
                    broken_now = self._restart_locked()
                    if broken_now is not None:
                        pending = self._break_locked(broken_now)
                else:
                    self._schedule_retry_locked()
            if self.sidecar is None and self._retry is None and self.state in _TERMINAL:
                self.finished.set()
            self._maybe_stop_locked()  # sidecar is None here unless restarted for queued jobs
            broken = self.state is ExecutorState.BROKEN
            self.table.failed += len(failed)
            sidecar = self.sidecar
        if sidecar is not None:
            self._flush(sidecar)
        for job in failed:
            err = SidecarDiedError(
                f"job {job.job_id} was lost: {end.describe()}\n"
                + (
                    f"Its worker was stopped by {self._forced}; the executor takes no new jobs."
                    if self._forced is not None
                    else "The executor is broken: create a new one."
                    if broken
                    else "The executor starts a new sidecar for later jobs."
                ),
                job_id=job.job_id,
                pid=end.pid,
                returncode=end.returncode,
                output_tail=end.output_tail,
            )
            err.__cause__ = end.cause
            self._fail(job, err)
        if broken_now is not None:
            self._fail_broken(pending, broken_now)

    def _judge_lost_locked(self, end: SidecarExit) -> BaseException | None:
        """Whether losing this sidecar breaks the executor, and why."""
        if not self.settings.restart:
            return SidecarDiedError(end.describe(), pid=end.pid, returncode=end.returncode)
        if end.started:
            return None
        if end.fatal:
            # It could not build its pool (a backend refusing an option, a bad
            # "module:attr"): another would fail the same way.
            return SidecarDiedError(
                f"{end.describe()}\nThe sidecar cannot start with these settings: fix them and create a new "
                "executor",
                pid=end.pid,
                returncode=end.returncode,
            )
        self._failed_starts += 1
        if self._failed_starts >= MAX_START_ATTEMPTS:
            return SidecarDiedError(
                f"{self._failed_starts} sidecars in a row died before they could start; the last: "
                f"{end.describe()}\nCreate a new executor once the cause is fixed",
                pid=end.pid,
                returncode=end.returncode,
            )
        return None

    def _restart_locked(self) -> BaseException | None:
        """Start a new sidecar for the queued jobs; the reason to break if none can start."""
        try:
            sidecar = self.ensure_sidecar_locked()
        except Exception as exc:
            return self._start_failed_locked(exc)
        self._queue_locked(sidecar, self.table.take_sendable())
        return None

    def _schedule_retry_locked(self) -> None:
        """Start the next sidecar after a backoff (the last one died before HELLO)."""
        if self._retry is not None:
            return
        delay = START_BACKOFF_SECONDS * 2 ** max(0, self._failed_starts - 1)
        self._retry = threading.Timer(delay, self._retry_start)
        self._retry.name = "subproc_executor-restart"
        self._retry.daemon = True
        self._retry.start()

    def _retry_start(self) -> None:
        """The backoff timer: start a sidecar for the queued jobs. Never raises."""
        pending: list[Job] = []
        reason: BaseException | None = None
        with self.lock:
            self._retry = None
            if self.state not in (ExecutorState.RUNNING, ExecutorState.CLOSING) or self.sidecar is not None:
                if self.sidecar is None and self.state in _TERMINAL:
                    self.finished.set()
                return
            if self.table.queued:
                reason = self._restart_locked()
                if reason is not None:
                    pending = self._break_locked(reason)
            self._maybe_stop_locked()
            sidecar = self.sidecar
        if sidecar is not None:
            self._flush(sidecar)
        if reason is not None:
            self._fail_broken(pending, reason)

    # -- shutdown and breakage (any thread) -------------------------------------

    def break_executor(self, reason: BaseException) -> None:
        """Mark BROKEN, fail every pending job, stop the sidecar."""
        with self.lock:
            if self.state is ExecutorState.BROKEN:
                return
            pending = self._break_locked(reason)
            sidecar = self.sidecar
        if sidecar is not None:
            self._flush(sidecar)
        self._fail_broken(pending, reason)

    def _break_locked(self, reason: BaseException) -> list[Job]:
        """BROKEN: take every pending job (the caller fails them outside the
        lock) and tell the sidecar, if any, to stop now."""
        self.state = ExecutorState.BROKEN
        self.broken_reason = reason
        jobs = self.table.take_queued() + self.table.take_inflight()
        self.table.failed += len(jobs)
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.sidecar is None:
            self.finished.set()
        else:
            self._queue_shutdown_locked(self.sidecar, _KILL)
        return jobs

    def _fail_broken(self, jobs: list[Job], reason: BaseException) -> None:
        for job in jobs:
            fut = job.future
            try:
                if fut.done() or (not fut.running() and not fut.set_running_or_notify_cancel()):
                    continue
            except RuntimeError:  # cancelled while running (cancel_running) just now
                continue
            err = BrokenSubprocExecutor(f"job {job.job_id} did not run: {reason}", job_id=job.job_id)
            err.__cause__ = reason
            self._fail(job, err)

    def _fail(self, job: Job, err: BaseException) -> None:
        """Fail a job's future; its callbacks run on a delivery thread."""
        if _has_callbacks(job.future):
            self._deliverer.submit(functools.partial(_set_exception, job, err))
        else:
            _set_exception(job, err)

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        if self._pid != os.getpid():
            return  # a forked child: the sidecar is the parent's to stop
        cancelled: list[Job] = []
        with deferred():  # the state's change and its frame go together (see submit_payload)
            with self.lock:
                if self.state is ExecutorState.RUNNING:
                    self.state = ExecutorState.CLOSING
                if cancel_futures:
                    cancelled = self.table.cancel_queued()
                stop = self._maybe_stop_locked()
                if stop is not None:
                    self._queue_shutdown_locked(stop, _FINISH)
                if self.sidecar is None and self._retry is not None and self.state in _TERMINAL:
                    self._retry.cancel()
                    self._retry = None
                    self.finished.set()
                sidecar = self.sidecar
            if sidecar is not None:
                self._flush(sidecar)
        _cancel_all(cancelled)
        if wait:
            self.finished.wait() if sidecar is None else self._wait_finished()
        # Delivery threads exit once idle; with wait, every future is resolved
        # and its callbacks have run when this returns.
        self._deliverer.close(wait=wait)

    def abandon(self) -> None:
        """The executor was collected without shutdown(): stop the sidecar soon.

        Runs as a finalizer, which the garbage collector may call on any
        thread, even the reader thread while it holds our lock: so it takes
        no lock, and the reader does the shutdown when it wakes.
        """
        self._abandoned = True
        sidecar = self.sidecar
        if sidecar is not None:
            sidecar.wake()

    def _on_wake(self) -> None:
        """The reader thread, woken by abandon() or stop_job()."""
        self._stop_jobs_now()
        if self._abandoned:
            self.shutdown(wait=False, cancel_futures=False)

    def after_fork_in_child(self) -> None:
        """In a child made by os.fork(): FORKED. Takes no lock (one held by a
        parent thread at the fork stays held) and says nothing to the
        sidecar, which serves the parent; drops the child's copies of its pipes
        so the parent's death still reads as EOF in the sidecar."""
        self.lock = threading.Lock()
        self.state = ExecutorState.FORKED
        self._retry = None
        sidecar, self.sidecar = self.sidecar, None
        if sidecar is not None:
            sidecar.abandon_in_forked_child()
        self.finished = threading.Event()
        self.finished.set()

    def statistics(self) -> ExecutorStatistics:
        from ..stats import ExecutorStatistics

        with self.lock:
            t = self.table
            live = t.queued_live()
            waits, runs, per_worker = self.timings.snapshot()
            submitted, running, done, failed = t.submitted, len(t.inflight), t.done, t.failed
            cancelled = t.cancelled + len(t.queued) - live
            sidecar_pid = self.sidecar.pid if self.sidecar is not None else None
            worker_pids, quiesced, starts, state = (
                self.worker_pids,
                self.quiesced,
                self.sidecar_starts,
                self.state.value,
            )
        # Sorted outside the lock: submits and results need not wait for it.
        return ExecutorStatistics(
            submitted=submitted,
            queued=live,
            running=running,
            done=done,
            failed=failed,
            cancelled=cancelled,
            sidecar_pid=sidecar_pid,
            worker_pids=worker_pids,
            quiesced=quiesced,
            sidecar_starts=starts,
            state=state,
            queue_wait=summarize(waits),
            run_time=summarize(runs),
            jobs_per_worker=per_worker,
        )

    def control(self, kind: MessageKind) -> None:
        """Send QUIESCE or WAKEUP to the sidecar (starting one for WAKEUP)."""
        with deferred():  # queued means sent (see submit_payload)
            with self.lock:
                self.check_open_locked()
                sidecar = self.sidecar
                if sidecar is None and kind is MessageKind.WAKEUP and self._retry is None:
                    sidecar = self.ensure_sidecar_locked()
                if sidecar is not None:
                    try:
                        sidecar.writer.queue_many([(kind, 0, b"")])
                    except PipeClosed:
                        pass
            if sidecar is not None:
                self._flush(sidecar)

    def _wait_finished(self) -> None:
        """Wait for the jobs (unbounded, as the stdlib), then for the sidecar (bounded)."""
        stopping_since: float | None = None
        while not self.finished.wait(0.2):
            with self.lock:
                sidecar = self.sidecar
                state = self.state
            if sidecar is None and state in _TERMINAL and self._retry is None:
                return
            if sidecar is None:
                continue
            if sidecar.is_reader_thread() or self._deliverer.is_delivery_thread():
                return  # shutdown(wait=True) from a callback must not wait for itself
            if state in _TERMINAL:
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


def _has_callbacks(fut: Future[Any]) -> bool:
    """Whether resolving ``fut`` would run user code (a done-callback)."""
    return bool(getattr(fut, "_done_callbacks", True))


def _set_exception(job: Job, err: BaseException) -> None:
    try:
        job.future.set_exception(err)
    except BaseException:  # an InvalidStateError from a future resolved meanwhile
        logger.debug("job %d was already resolved", job.job_id)


def _after_fork_in_child() -> None:
    for supervisor in list(_live):
        supervisor.after_fork_in_child()


def _cancel_all(jobs: list[Job]) -> None:
    """Cancel queued jobs' futures, and tell their waiters at once.

    ``cancel()`` alone leaves a future CANCELLED, which ``wait()`` and
    ``as_completed()`` do not count as done until someone calls
    ``set_running_or_notify_cancel()``: these jobs will never be taken, so
    that call is made here (the stdlib's pool leaves them, and a wait on them
    after ``shutdown(cancel_futures=True)`` waits for ever).
    """
    for job in jobs:
        job.future.cancel()
        job.future.set_running_or_notify_cancel()


def shutdown_all_at_exit() -> None:
    """At interpreter exit, let queued jobs finish as the stdlib does, then stop sidecars."""
    for supervisor in list(_live):
        try:
            supervisor.shutdown(wait=True, cancel_futures=False)
        except Exception:
            logger.exception("shutting an executor down at exit failed")


os.register_at_fork(after_in_child=_after_fork_in_child)
