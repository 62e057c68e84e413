"""The supervisor: the job table, the current sidecar, and the frames between them.

    caller threads                          reader thread (launcher.SidecarProcess)
    submit_payload()                        on_frames(frames)
      table.enqueue, take_sendable            RESULT / JOB_ERROR: table.finish -> resolve future
      sidecar.send_many(SUBMIT...)            HELLO / WORKERS: remember the pool's pids
                                              STATUS: log, on_status
    shutdown() / statistics() / control()     refill the window, send SHUTDOWN when CLOSING and empty
                                            on_lost(exit)
                                              in-flight jobs fail (SidecarDiedError);
                                              queued jobs go to a new sidecar, or fail if broken

One lock guards the table and the state. It is never held while calling
into a Future (its callbacks may call back into us) or while writing to a
pipe. Kept apart from ``SubprocExecutor`` so the reader thread holds no
reference to the executor object: dropping the last reference to an executor
that was never shut down lets it be collected, and that shuts the sidecar down.

Lifecycle:

    RUNNING -> CLOSING (shutdown called; queued and in-flight jobs finish)
            -> CLOSED  (no job left; sidecar told to stop and reaped)
    any     -> BROKEN  (initializer failed, or sidecar died with restart=False)

CLOSED and BROKEN are terminal: ``submit`` raises in both.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

from ..errors import BrokenSubprocExecutor, InitializerFailedError, ProtocolError, SidecarDiedError
from ..stats import ExecutorStatistics, SlowJobReport
from ..wire.messages import Hello, Init, Shutdown, Status, Workers
from ..wire.protocol import Frame, MessageKind
from . import outcome
from .jobtable import Job, JobTable
from .launcher import SIDECAR_EXIT_GRACE_SECONDS, SidecarExit, SidecarProcess
from .settings import Settings

__all__ = ["ExecutorState", "Supervisor"]

logger = logging.getLogger(__name__)

_KILL = Shutdown(kill=True).encode()
_FINISH = Shutdown(kill=False).encode()


class ExecutorState(enum.Enum):
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"
    BROKEN = "broken"


class Supervisor:
    """The executor's state, shared with the reader thread; see the module docstring."""

    def __init__(self, settings: Settings, env: dict[str, str]) -> None:
        self.settings = settings
        self._env = env
        self._init_payload = Init(settings.sidecar_settings(), settings.initializer).encode()
        self.lock = threading.Lock()
        self.state = ExecutorState.RUNNING
        self.table = JobTable(settings.max_workers)
        self.sidecar: SidecarProcess | None = None
        # Set once the executor is CLOSED or BROKEN and its sidecar is gone.
        self.finished = threading.Event()
        self.broken_reason: BaseException | None = None
        self.sidecar_starts = 0
        # The pool as last reported by the sidecar (HELLO / WORKERS frames).
        self.worker_pids: tuple[int, ...] = ()
        self.quiesced = False

    # -- sidecar management (lock held) --------------------------------------

    def ensure_sidecar_locked(self) -> SidecarProcess:
        if self.sidecar is None:
            s = self.settings
            self.sidecar = SidecarProcess(
                env=self._env,
                cwd=s.cwd,
                init_payload=self._init_payload,
                on_frames=self._on_frames,
                on_lost=self._on_lost,
                log_path=s.log_path,
            )
            self.sidecar_starts += 1
        return self.sidecar

    @staticmethod
    def _send(sidecar: SidecarProcess, jobs: list[Job], *, block: bool) -> None:
        if jobs:
            sidecar.writer.try_send_many(
                [(MessageKind.SUBMIT, j.job_id, j.payload) for j in jobs], block=block
            )
            # Drop the parent's copy of the bytes once handed to the pipe.
            for j in jobs:
                j.payload = b""

    # -- submit path (caller threads) ------------------------------------------

    def submit_payload(self, payload: bytes) -> Future[Any]:
        """Queue a pickled job and send what fits in the window."""
        fut: Future[Any] = Future()
        with self.lock:
            self.check_open_locked()
            job_id = self.table.new_id()
            self.table.enqueue(Job(job_id, fut, payload))
            sidecar = self.ensure_sidecar_locked()
            jobs = self.table.take_sendable()
        self._send(sidecar, jobs, block=True)
        return fut

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
        done: list[tuple[Job, Frame]] = []
        reports: list[Frame] = []
        with self.lock:
            sidecar = self.sidecar
            for f in frames:
                if f.kind is MessageKind.RESULT or f.kind is MessageKind.JOB_ERROR:
                    job = self.table.finish(f.job_id)
                    if job is not None:
                        done.append((job, f))
                elif f.kind is MessageKind.STATUS:
                    reports.append(f)
                elif f.kind is MessageKind.WORKERS:
                    self._note_workers(f)
                elif f.kind is MessageKind.HELLO:
                    self._note_hello(f)
            refill = self.table.take_sendable() if sidecar is not None else []
            stop = self._maybe_stop_locked()
        if refill and sidecar is not None:
            self._send(sidecar, refill, block=False)
        if stop is not None:
            stop.writer.try_send(MessageKind.SHUTDOWN, 0, _FINISH, block=False)
        for job, f in done:
            self._resolve(job, f)
        for f in reports:
            self._report_slow(f)

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
        try:
            self.worker_pids = Hello.decode(frame.payload).worker_pids
        except ProtocolError as exc:
            logger.warning("ignoring a malformed HELLO frame: %s", exc)
            return
        self.quiesced = False

    def _report_slow(self, frame: Frame) -> None:
        """A STATUS frame: log it and hand it to the callback. Never touches a future."""
        try:
            status = Status.decode(frame.payload)
        except ProtocolError as exc:
            logger.warning("ignoring a malformed status report for job %d: %s", frame.job_id, exc)
            return
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

    def _resolve(self, job: Job, frame: Frame) -> None:
        """Set the future from a RESULT or JOB_ERROR frame, and count it. Never raises."""
        try:
            if frame.kind is MessageKind.JOB_ERROR:
                result: outcome.Value | BaseException = outcome.job_error(job.job_id, frame.payload)
            else:
                result = outcome.decode_result(job.job_id, frame.payload, self.settings.pickler)
        except BaseException as exc:  # a bug of ours or a hostile payload; the future must still end
            logger.exception("decoding the outcome of job %d failed", job.job_id)
            result = BrokenSubprocExecutor(
                f"job {job.job_id}: its outcome could not be decoded in the parent: {exc!r}",
                job_id=job.job_id,
            )
            result.__cause__ = exc
        ok = isinstance(result, outcome.Value)
        with self.lock:
            self.table.count(ok=ok)
        try:
            if isinstance(result, outcome.Value):
                job.future.set_result(result.value)
            else:
                job.future.set_exception(result)
        except BaseException:
            logger.exception("resolving job %d failed", job.job_id)
        if isinstance(result, InitializerFailedError):
            self.break_executor(result)

    def _on_lost(self, end: SidecarExit) -> None:
        """The sidecar is gone. Runs once per sidecar, on its reader thread; never raises."""
        with self.lock:
            if self.sidecar is None or self.sidecar.pid != end.pid:
                return
            self.sidecar = None
            self.worker_pids = ()
            failed = self.table.take_inflight()
            queued_fail: list[Job] = []
            if not end.clean:
                logger.error("%s", end.describe())
                if self.state is ExecutorState.RUNNING and (not self.settings.restart or not end.started):
                    # A sidecar that cannot start (a backend refusing an
                    # option, a bad "module:attr") would fail the same way
                    # again: restarting it would loop.
                    self.state = ExecutorState.BROKEN
                    self.broken_reason = SidecarDiedError(
                        end.describe(), pid=end.pid, returncode=end.returncode
                    )
                if self.state is ExecutorState.BROKEN:
                    queued_fail = self.table.take_queued()
            restart_now = bool(self.table.queued) and self.state in (
                ExecutorState.RUNNING,
                ExecutorState.CLOSING,
            )
            sidecar = self.ensure_sidecar_locked() if restart_now else None
            jobs = self.table.take_sendable() if sidecar is not None else []
            if self.sidecar is None and self.state in (ExecutorState.CLOSED, ExecutorState.BROKEN):
                self.finished.set()
            self._maybe_stop_locked()  # sidecar is None here unless restarted for queued jobs
            broken = self.state is ExecutorState.BROKEN
            self.table.failed += len(failed) + len(queued_fail)
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
            if self.state is ExecutorState.BROKEN:
                return
            self.state = ExecutorState.BROKEN
            self.broken_reason = reason
            jobs = self.table.take_queued() + self.table.take_inflight()
            self.table.failed += len(jobs)
            sidecar = self.sidecar
            if sidecar is None:
                self.finished.set()
        if sidecar is not None:
            sidecar.writer.try_send(MessageKind.SHUTDOWN, 0, _KILL, block=False)
        for job in jobs:
            fut = job.future
            if fut.done() or (not fut.running() and not fut.set_running_or_notify_cancel()):
                continue
            err = BrokenSubprocExecutor(f"job {job.job_id} did not run: {reason}", job_id=job.job_id)
            err.__cause__ = reason
            fut.set_exception(err)

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        cancelled: list[Job] = []
        with self.lock:
            if self.state is ExecutorState.RUNNING:
                self.state = ExecutorState.CLOSING
            if cancel_futures:
                cancelled = self.table.cancel_queued()
            stop = self._maybe_stop_locked()
            sidecar = self.sidecar
        for job in cancelled:
            job.future.cancel()
        if stop is not None:
            stop.writer.try_send(MessageKind.SHUTDOWN, 0, _FINISH)
        if wait:
            self.finished.wait() if sidecar is None else self._wait_finished()

    def statistics(self) -> ExecutorStatistics:
        with self.lock:
            t = self.table
            live = t.queued_live()
            return ExecutorStatistics(
                submitted=t.submitted,
                queued=live,
                running=len(t.inflight),
                done=t.done,
                failed=t.failed,
                cancelled=t.cancelled + len(t.queued) - live,
                sidecar_pid=self.sidecar.pid if self.sidecar is not None else None,
                worker_pids=self.worker_pids,
                quiesced=self.quiesced,
                sidecar_starts=self.sidecar_starts,
                state=self.state.value,
            )

    def control(self, kind: MessageKind) -> None:
        """Send QUIESCE or WAKEUP to the sidecar (starting one for WAKEUP)."""
        with self.lock:
            self.check_open_locked()
            sidecar = self.ensure_sidecar_locked() if kind is MessageKind.WAKEUP else self.sidecar
        if sidecar is not None:
            sidecar.writer.try_send(kind)

    def _wait_finished(self) -> None:
        """Wait for the jobs (unbounded, as the stdlib), then for the sidecar (bounded)."""
        stopping_since: float | None = None
        while not self.finished.wait(0.2):
            with self.lock:
                sidecar = self.sidecar
                state = self.state
            if sidecar is None and state in (ExecutorState.CLOSED, ExecutorState.BROKEN):
                return
            if sidecar is None:
                continue
            if sidecar.is_reader_thread():
                return  # shutdown(wait=True) from a callback must not wait for itself
            if state in (ExecutorState.CLOSED, ExecutorState.BROKEN):
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
