"""The sidecar's main loop: frames from the parent in, jobs to the backend, outcomes out.

    parent --SUBMIT/CANCEL/QUIESCE/WAKEUP/SHUTDOWN--> main loop (this module)
                                                      scheduler: waiting -> batches
                                                      backend.submit(batch, on_done)
    parent <--RESULT------------------------------- on_done (backend thread)
    parent <--JOB_ERROR/STATUS/WORKERS------------- main loop, via the writer's helper
    workers --start records (notify pipe)---------> main loop: which job runs where
    parent <--PROGRESS----------------------------- main loop <--progress records (notify pipe)-- workers

It never unpickles a user payload, so it needs none of the user's modules,
and it forks workers only while no other thread of its own is alive.

Threads here: the main loop (reads frames, dispatches, runs timers), the
backend's own threads, which call ``on_done`` and write RESULT frames, and
the writer's helper, which finishes what a full pipe did not take. No thread
here waits for the parent to read: every frame goes out as far as the pipe
takes it and the helper does the rest; and the main loop never waits for the
helper while it writes (see ``transport``).

Dispatch keeps at most ``max_workers + 1`` batches in the backend, as the
stdlib keeps ``max_workers + 1`` calls in its call queue; when more jobs
wait than that, they are grouped into batches so that a burst of small jobs
pays the pool's per-call overhead once per batch, not once per job.

One module, over 450 lines: the loop, its timers, the judging of failed
batches and the watch over the pool's health (a pool that broke while idle,
or that stopped reporting a dead worker) all read and change the same state
(the scheduler, the queue of failures, the exit codes kept per pool
generation), and the batch reports backend threads call must see it too.
The pool watch is the part to move out once per-job timeouts add a second
watcher.

The sidecar exits when the parent says SHUTDOWN, when the parent's pipe
reaches EOF (the parent died), or when its parent pid changes (a backstop
for an EOF that never comes because some other process holds the pipe).
"""

from __future__ import annotations

import logging
import math
import os
import select
import selectors
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection

from ..errors import WorkerDiedError
from ..wire import shm, shm_sweep
from ..wire.fdtools import WakePipe, open_pidfd, signal_pid
from ..wire.messages import (
    START_RECORD_SIZE,
    Fatal,
    JobError,
    JobErrorKind,
    JobLimits,
    Kill,
    LimitedJob,
    OutcomeTag,
    Shutdown,
    StartRecord,
    Status,
    Workers,
)
from ..wire.progress import OUTCOME_TIMING_SIZE, progress_job_id
from ..wire.protocol import Frame, FrameDecoder, MessageKind, ProtocolError
from ..wire.transport import FrameWriter, read_frames
from .backends import Backend, OnDone
from .limits import JobWatch
from .scheduler import Batch, Scheduler

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

logger = logging.getLogger(__name__)

# How often the main loop checks that its parent still lives when no frame
# arrives. Shorter reacts faster to a parent killed while some other process
# holds its pipe open; longer costs fewer wakeups of an idle sidecar.
_PARENT_POLL_SECONDS: Final = 0.5
# A pool that has not reported a dead worker this long after its death, while
# jobs run, is taken for wedged and replaced (see _check_pool). Longer than
# any pool takes to notice a death and fail the batch.
_WEDGED_SECONDS: Final = 2.0
# After the parent's pipe reached EOF, how long to wait to see it reparented
# (its files close a moment before it is gone).
_PARENT_EXIT_SECONDS: Final = 1.0
# After a pool breaks, how long to wait for its workers' exit codes.
_EXIT_SETTLE_SECONDS: Final = 1.0
# While a quiesce waits for running jobs, how often the loop looks again.
_QUIESCE_RETRY_SECONDS: Final = 0.05
# Slow-job checks run at least this often, so a report comes at most this
# late after its interval elapses.
_STATUS_TICK_SECONDS: Final = 0.25
# Whether time.monotonic() in a worker reads the same clock as here
# (CLOCK_MONOTONIC is system-wide on Linux); elsewhere a start is timed
# when the sidecar reads its record.
_SHARED_MONOTONIC: Final = sys.platform.startswith("linux")
# Bytes asked for per read of the start-record pipe.
_NOTIFY_READ_BYTES: Final = 65536
# The tag of an outcome held in shared memory (the segment's name follows),
# and where it sits: after the job's timing.
_SPILLED_TAG: Final = bytes([OutcomeTag.SPILLED])
_TAG_AT: Final = OUTCOME_TIMING_SIZE
# Why a job stopped on purpose fails (see limits): its worker's death is no crash.
_KILL_KINDS: Final = frozenset({JobErrorKind.TIMEOUT, JobErrorKind.MEMORY, JobErrorKind.CANCELLED})
# The length prefix multiprocessing.Connection puts before each message.
_CONN_HEADER: Final = struct.Struct("!i")


class SidecarLoop:
    """The main loop. Lives on the sidecar's main thread."""

    def __init__(
        self,
        *,
        read_fd: int,
        writer: FrameWriter,
        backend: Backend,
        scheduler: Scheduler,
        notify_reader: Connection | None,
        parent_pid: int,
        idle_timeout: float | None,
        status_interval: float | None,
        decoder: FrameDecoder,
    ) -> None:
        self._read_fd = read_fd
        self._writer = writer
        self._backend = backend
        self._scheduler = scheduler
        self._notify = notify_reader
        self._notify_buf = b""
        # The parent wants progress records forwarded at once (WATCH_PROGRESS).
        self._watch_progress = False
        # Worker pids seen in start records, to notice replacements.
        self._known_pids: set[int] = set()
        self._parent_pid = parent_pid
        self._idle_timeout = idle_timeout
        self._status_interval = status_interval
        self._decoder = decoder
        # Failed batches reported by backend threads, handled on the main loop.
        self._failures: deque[tuple[Batch, BaseException]] = deque()
        self._failures_lock = threading.Lock()
        self._quiesced = False
        self._quiesce_requested = False
        self._shutdown: Shutdown | None = None
        self._last_activity = time.monotonic()
        self._next_status = math.inf if status_interval is None else time.monotonic() + status_interval
        self._wake_pipe = WakePipe()
        self._shm_prefix = shm.result_prefix(parent_pid, os.getpid())
        # {pid: when first seen dead} of workers dead while jobs run (see _check_pool).
        self._dead_since: dict[int, float] = {}
        # {pool generation: its workers' exit codes when it was replaced}.
        self._codes_by_generation: dict[int, dict[int, int | None]] = {}
        # Time and memory limits, and KILL: jobs stopped on purpose.
        self._watch = JobWatch(
            scheduler,
            self._send_job_error,
            expect_kill=getattr(backend, "expect_kill", None),
            idle_workers=getattr(backend, "idle_worker_pids", None),
        )
        # {limits line: its JobLimits}, so each distinct line is decoded once.
        self._limits_seen: dict[bytes, JobLimits] = {}
        # The pool as last told to the parent (WORKERS).
        self._workers_sent: Workers | None = None
        # Whether the backend's pool survives the loss of one worker (a
        # backend declares it; see docs/backends.md).
        self._stops_one_job = bool(getattr(backend, "stops_one_job", False))

    # -- backend callbacks (backend threads) ---------------------------------

    def _on_done_factory(self, batch: Batch) -> OnDone:
        return _BatchReport(self, batch)

    def _job_done(self, batch: Batch, job_id: int, outcome: bytes) -> None:
        """One job of a batch finished ahead of the rest. Backend thread; never raises."""
        try:
            pid = self._scheduler.pid_of(job_id) if self._scheduler.uses_memory_limits else None
            if self._scheduler.job_done(batch, job_id):
                if pid is not None:
                    self._watch.job_finished(pid)
                self._writer.try_send(MessageKind.RESULT, job_id, outcome, block=False)
            else:
                logger.error("backend reported job %d, which is not in its batch %s", job_id, batch.job_ids)
                if outcome[_TAG_AT : _TAG_AT + 1] == _SPILLED_TAG:  # no one else would remove its segment
                    shm_sweep.sweep([outcome[_TAG_AT + 1 :].decode("ascii", "replace")])
        except BaseException:
            logger.exception("reporting job %d failed", job_id)

    def _batch_done(self, batch: Batch, outcome: list[bytes] | BaseException) -> None:
        """Report one batch (the jobs not reported one by one). Runs on a backend
        thread; never raises, since an escape would be swallowed there and leave
        the parent waiting."""
        try:
            if not isinstance(outcome, BaseException) and len(outcome) != len(batch.jobs):
                outcome = RuntimeError(f"backend returned {len(outcome)} outcomes for {len(batch.jobs)} jobs")
            if isinstance(outcome, BaseException):
                with self._failures_lock:
                    self._failures.append((batch, outcome))
                self._wake()
            else:
                results = zip(batch.job_ids, outcome, strict=True)
                # Never blocking: this thread may be one the main loop
                # joins (a pool's), or one that must keep reading
                # workers. False if the parent is gone; the loop sees EOF.
                self._writer.try_send_many(
                    ((MessageKind.RESULT, job_id, out) for job_id, out in results), block=False
                )
                self._scheduler.done(batch)
                # Wake the loop only if it has jobs to hand out, or must
                # start the idle clock. Start records pile up meanwhile,
                # at most one per job in the parent's window, far below a
                # pipe's capacity.
                if self._scheduler.has_waiting() or (self._idle_timeout is not None and self._scheduler.idle):
                    self._wake()
        except BaseException:
            logger.exception("reporting jobs %s failed", batch.job_ids)

    def _wake(self) -> None:
        self._wake_pipe.wake()

    # -- main loop -------------------------------------------------------------

    def run(self) -> int:
        """Serve until shutdown or the parent's death; the exit status."""
        sel = selectors.DefaultSelector()
        sel.register(self._read_fd, selectors.EVENT_READ, "parent")
        sel.register(self._wake_pipe.fileno(), selectors.EVENT_READ, "wake")
        next_poll = time.monotonic() + _PARENT_POLL_SECONDS
        # Start records are read on every turn; the loop also wakes for them
        # while a job's start must be acted on at once (a time or memory
        # limit, a stop waiting for the job to start), and only then: an
        # extra wakeup per job otherwise.
        watching_starts = False
        # Jobs may have arrived with INIT, before the loop: hand them out first.
        self._dispatch()
        while True:
            if (
                self._notify is not None
                and (self._scheduler.needs_start_records or self._watch_progress) != watching_starts
            ):
                watching_starts = not watching_starts
                if watching_starts:
                    sel.register(self._notify.fileno(), selectors.EVENT_READ, "starts")
                else:
                    sel.unregister(self._notify.fileno())
            timeout = max(0.0, min(next_poll, self._next_timer()) - time.monotonic())
            for key, _ in sel.select(timeout):
                if key.data == "wake":
                    self._wake_pipe.drain()
                    continue
                if key.data == "starts":
                    continue  # read below, with every turn's
                try:
                    frames = read_frames(self._read_fd, self._decoder)
                except ProtocolError as exc:
                    self._fatal(f"bad frame from the parent: {exc}")
                    self._backend.shutdown(kill=True)
                    return 3
                except OSError as exc:
                    logger.error("reading from the parent failed: %s", exc)
                    frames = None
                if frames is None:
                    logger.info("parent closed its pipe; stopping the workers")
                    self._backend.shutdown(kill=True)
                    self._sweep_after_parent()
                    return 0
                self.handle(frames)
            self._read_start_records()
            self._handle_failures()
            if self._shutdown is not None:
                return self._finish()
            self._dispatch()
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + _PARENT_POLL_SECONDS
                if os.getppid() != self._parent_pid:
                    logger.warning("parent pid %d is gone; stopping the workers", self._parent_pid)
                    self._backend.shutdown(kill=True)
                    self._sweep_after_parent()
                    return 0
                self._check_pool()
                # A backend replaces a dead or retired worker on its own: keep
                # the parent's statistics current without a start record.
                self._send_workers(only_if_changed=True)
            self._run_timers(now)

    def handle(self, frames: list[Frame]) -> None:
        for frame in frames:
            kind = frame.kind
            if kind is MessageKind.SUBMIT:
                self._scheduler.add(frame.job_id, frame.payload)
            elif kind is MessageKind.SUBMIT_LIMITED:
                try:
                    limited = self._decode_limited(frame.payload)
                except ProtocolError as exc:
                    self._send_job_error(
                        frame.job_id, JobError(JobErrorKind.BACKEND, f"its limits could not be read: {exc}")
                    )
                    continue
                if not self._stops_one_job:
                    self._send_job_error(frame.job_id, self._cannot_stop(frame.job_id))
                    continue
                self._scheduler.add(frame.job_id, limited.payload, limited.limits)
                if limited.limits.memory_limit is not None:
                    self._watch.check_idle(limited.limits.memory_limit)
            elif kind is MessageKind.KILL:
                try:
                    kill = Kill.decode(frame.payload)
                except ProtocolError:
                    kill = Kill(JobErrorKind.CANCELLED, f"job {frame.job_id} was cancelled")
                if self._stops_one_job:
                    self._watch.stop(frame.job_id, JobError(kill.kind, kill.message))
                else:
                    logger.warning("%s", self._cannot_stop(frame.job_id).message)
            elif kind is MessageKind.CANCEL:
                if self._scheduler.cancel(frame.job_id):
                    self._send_job_error(
                        frame.job_id, JobError(JobErrorKind.CANCELLED, f"job {frame.job_id} was cancelled")
                    )
            elif kind is MessageKind.WATCH_PROGRESS:
                self._watch_progress = True
            elif kind is MessageKind.QUIESCE:
                self._quiesce_requested = True
            elif kind is MessageKind.WAKEUP:
                self._quiesce_requested = False
                self._wakeup()
            elif kind is MessageKind.SHUTDOWN:
                try:
                    stop = Shutdown.decode(frame.payload)
                except ProtocolError as exc:
                    logger.error("malformed SHUTDOWN from the parent (%s); stopping the workers now", exc)
                    stop = Shutdown(kill=True)
                # A kill (kill_workers, then the executor's own shutdown) is never softened.
                if self._shutdown is None or not self._shutdown.kill:
                    self._shutdown = stop
            else:
                logger.warning("ignoring unexpected %s frame from the parent", kind.name)
        self._last_activity = time.monotonic()

    def _dispatch(self) -> None:
        """Hand waiting jobs to the backend.

        A backend that refuses a batch is most often a pool that broke while
        idle (a worker killed from outside): the batch goes back to the front
        and the pool is replaced, once; a fresh pool that refuses it too fails
        its jobs, each with the backend's reason.
        """
        if not self._scheduler.has_waiting():
            return
        if self._quiesced:
            self._wakeup()
        reset_done = False
        while True:
            refused: BaseException | None = None
            for batch in self._scheduler.next_batches():
                if refused is not None:
                    self._scheduler.requeue(batch)
                    continue
                try:
                    self._backend.submit(batch.job_ids, batch.payloads, self._on_done_factory(batch))
                except Exception as exc:
                    if reset_done:
                        logger.exception("backend refused jobs %s", batch.job_ids)
                        self._scheduler.unsent(batch)
                        for job_id in batch.job_ids:
                            self._send_job_error(
                                job_id,
                                JobError(JobErrorKind.BACKEND, f"the backend refused the job: {exc!r}"),
                            )
                    else:
                        refused = exc
                        self._scheduler.requeue(batch)
            if refused is None:
                return
            logger.warning("backend refused jobs (%r); replacing its pool", refused)
            reset_done = True
            self._replace_pool()

    def _replace_pool(self) -> None:
        """A new pool for later batches (the failures of the old one are judged already)."""
        # The old pool's exit codes, for judging batches it reports failed
        # during or after the reset (a reset forgets its dead workers).
        try:
            codes = dict(self._backend.worker_exitcodes())
        except Exception:
            codes = {}
        self._codes_by_generation[self._scheduler.generation] = codes
        for old in [g for g in self._codes_by_generation if g < self._scheduler.generation - 4]:
            del self._codes_by_generation[old]
        self._dead_since.clear()
        self._scheduler.new_generation()
        try:
            self._start_pool(self._backend.reset)
        except Exception as reset_exc:
            self._fatal(f"could not restart the pool: {reset_exc!r}")
            raise SystemExit(4) from reset_exc
        # Codes the old pool's thread reaped only as the reset stopped it (a
        # wedged pool reaps none before; see sidecar.backends._reap). Optional.
        stopped = getattr(self._backend, "stopped_exitcodes", None)
        if callable(stopped):
            try:
                late: dict[int, int | None] = stopped()
            except Exception:
                late = {}
            for pid, code in late.items():
                if codes.get(pid) is None:
                    codes[pid] = code  # the old generation's dict, kept above
        self._send_workers()

    def _check_pool(self) -> None:
        """Notice a pool that broke with no job on it: a worker that died while
        idle (the OOM killer, a kill from outside) breaks a stdlib or loky
        pool, and nothing else would tell until the next job was refused.
        A backend that replaces such a worker itself reports no dead one."""
        if self._quiesced:
            return
        try:
            codes = self._backend.worker_exitcodes()
            # Dead workers whose exit code the backend may not read yet: their
            # pool's thread reaps them (see sidecar.backends._reap). Optional.
            dead_pids = getattr(self._backend, "dead_worker_pids", None)
            unreaped = [pid for pid in dead_pids() if codes.get(pid) is None] if callable(dead_pids) else []
        except Exception:
            return
        dead = sorted(pid for pid, code in codes.items() if code not in (None, 0))
        if not dead and not unreaped:
            self._dead_since.clear()
            return
        if self._scheduler.idle:
            if dead:  # not an unreaped one: it may be a retired worker, exiting with 0
                logger.warning("workers %s died while idle; replacing the pool", dead)
                self._replace_pool()
            return
        # Jobs run: the pool reports a death by failing their batch, at
        # once. One that has not done so long after is wedged (a stdlib
        # pool whose worker was killed while sending a result waits for the
        # rest of it forever, and reaps none): replacing it fails its batches.
        dead = sorted({*dead, *unreaped})
        now = time.monotonic()
        first = min(self._dead_since.setdefault(pid, now) for pid in dead)
        if now - first >= _WEDGED_SECONDS:
            logger.warning(
                "workers %s died %.1fs ago and the pool has not reported it; replacing the pool",
                dead,
                now - first,
            )
            self._replace_pool()

    def _read_start_records(self) -> None:
        """Drain the notify pipe (non-blocking): the workers' job-start
        announcements, and their progress records, forwarded to the parent."""
        if self._notify is None:
            return
        fd = self._notify.fileno()
        chunks = [self._notify_buf]
        try:
            # One read per loop when records wait (a short read means the
            # pipe is empty now); this runs on every turn of the loop.
            while True:
                data = os.read(fd, _NOTIFY_READ_BYTES)
                chunks.append(data)
                if len(data) < _NOTIFY_READ_BYTES:
                    break
        except BlockingIOError:
            pass
        buf = b"".join(chunks)
        now = time.monotonic()
        pos = 0
        new_worker = False
        # {job id: its latest progress record}: older ones of a job are stale.
        progress: dict[int, bytes] = {}
        # Each record is a Connection message: 4-byte big-endian length, then the record.
        while len(buf) - pos >= 4:
            (n,) = _CONN_HEADER.unpack_from(buf, pos)
            if len(buf) - pos - 4 < n:
                break
            if n == START_RECORD_SIZE:
                job_id, pid, when = StartRecord.decode(buf, pos + 4)
                kill_pid = self._scheduler.started(job_id, pid, when if _SHARED_MONOTONIC else now)
                if kill_pid is not None:
                    self._watch.on_started(job_id, kill_pid)
                if pid not in self._known_pids:
                    self._known_pids.add(pid)
                    new_worker = True
            else:
                about = progress_job_id(buf, pos + 4)
                if about is not None:
                    progress[about] = buf[pos + 4 : pos + 4 + n]
            pos += 4 + n
        self._notify_buf = buf[pos:]
        if progress:
            # Forwarded before this turn's failures are judged: a report a job
            # made before it crashed reaches the parent ahead of its JOB_ERROR.
            self._writer.try_send(MessageKind.PROGRESS, 0, b"".join(progress.values()), block=False)
        if new_worker:
            # A worker replaced (max_tasks_per_child) or started on demand:
            # keep the parent's statistics current.
            self._send_workers()

    def _handle_failures(self) -> None:
        """Judge failed batches (see scheduler); reset a broken pool once."""
        if self._failures:
            # A failure queued since this turn read the notify pipe: the dead
            # worker's start record and last progress report come first.
            self._read_start_records()
        while True:
            with self._failures_lock:
                if not self._failures:
                    return
                batch, exc = self._failures.popleft()
            died = exc if isinstance(exc, WorkerDiedError) and exc.pid is not None else None
            # A backend that names the dead worker has reaped it already; the
            # others may still be alive and healthy, so there is nothing to wait for.
            exitcodes = (
                self._backend.worker_exitcodes()
                if died is not None
                else self._settled_exitcodes(batch.generation)
            )
            error = f"{type(exc).__name__}: {exc}"
            # Outcomes its worker put in shared memory but never sent (a
            # worker that died mid-batch): no one else knows their names.
            shm_sweep.sweep(f"{self._shm_prefix}r{job_id}-" for job_id in batch.job_ids)
            # A backend may name the worker in its own terms (a Dask worker's address).
            name = getattr(died, "worker_name", None)
            failures = self._scheduler.failed(
                batch,
                exitcodes,
                error,
                died.pid if died is not None else None,
                name if isinstance(name, str) else None,
            )
            failures_were_kills = bool(failures) and all(f.error.kind in _KILL_KINDS for f in failures)
            for failure in failures:
                self._send_job_error(failure.job_id, failure.error)
            if batch.generation == self._scheduler.generation:
                if died is not None and failures_were_kills:
                    logger.info("worker pid %d was killed to stop a job; replacing it", died.pid)
                else:
                    logger.warning("pool broke (%s); starting a new one", error)
                self._replace_pool()

    def _sweep_after_parent(self) -> None:
        """The parent's pipe closed: remove the shared memory it can no longer.

        Once the parent is gone (reparented within ``_PARENT_EXIT_SECONDS`` of
        its EOF), every segment made for it, arguments of all its executors
        included; if it lives on (it closed our pipe on purpose), only what
        our own workers made.
        """
        pidfd = open_pidfd(self._parent_pid) if os.getppid() == self._parent_pid else None
        if pidfd is not None:
            try:
                select.select([pidfd], [], [], _PARENT_EXIT_SECONDS)
            finally:
                os.close(pidfd)
        if os.getppid() != self._parent_pid:
            shm_sweep.sweep_dead_parent(self._parent_pid)
        else:
            shm_sweep.sweep([self._shm_prefix])

    def _settled_exitcodes(self, generation: int) -> dict[int, int | None]:
        """Exit codes of the workers, once those that ran the failed jobs have one.

        A worker's death is seen (its pipes close) a moment before it can be
        reaped, and a broken pool terminates the rest, so waiting briefly turns
        "unknown" into the real exit status that names the culprit.
        """
        deadline = time.monotonic() + _EXIT_SETTLE_SECONDS
        suspects = set(self._scheduler.running_pids().values())
        before = self._codes_by_generation.get(generation, {})
        while True:
            try:
                codes = {**before, **self._backend.worker_exitcodes()}
            except Exception:
                return dict(before)
            if all(codes.get(pid) is not None for pid in suspects) or time.monotonic() >= deadline:
                return codes
            time.sleep(0.01)

    def _next_timer(self) -> float:
        t = min(self._next_status, self._watch.next_timer(time.monotonic()))
        if self._idle_timeout is not None and not self._quiesced:
            t = min(t, self._last_activity + self._idle_timeout)
        if self._quiesce_requested:
            t = min(t, time.monotonic() + _QUIESCE_RETRY_SECONDS)
        return t

    def _run_timers(self, now: float) -> None:
        self._watch.run(now)
        if self._status_interval is not None and now >= self._next_status:
            self._next_status = now + min(self._status_interval, _STATUS_TICK_SECONDS)
            for job_id, elapsed, pid in self._scheduler.overdue(now, self._status_interval):
                status = Status(elapsed=round(elapsed, 3), pid=pid)
                self._writer.try_send(MessageKind.STATUS, job_id, status.encode(), block=False)
        if not self._scheduler.idle:
            self._last_activity = now
        elif not self._quiesced and (
            self._quiesce_requested
            or (self._idle_timeout is not None and now - self._last_activity >= self._idle_timeout)
        ):
            self._quiesce_requested = False
            self._backend.quiesce()
            self._quiesced = True
            self._send_workers()

    def _wakeup(self) -> None:
        if self._quiesced:
            self._start_pool(self._backend.start)
            self._quiesced = False
            self._send_workers()

    def _start_pool(self, start: Callable[[], None]) -> None:
        """Start (or reset) the pool with no thread of ours alive.

        A fork copies only the calling thread, and locks the others hold stay
        held in the child; so the sidecar forks workers only while no other
        thread of its own exists, and the writer's helper thread is stopped
        first. It restarts on the next send that needs it. The backends join
        their own pool threads before this.
        """
        self._writer.stop_helper()
        start()

    def _finish(self) -> int:
        stop = self._shutdown
        if stop is not None and stop.kill and stop.signal:
            # terminate_workers / kill_workers: every worker gets the signal
            # now; the backend then fails their jobs and reaps them.
            try:
                pids = self._backend.worker_pids()
            except Exception:
                pids = []
            for pid in pids:
                signal_pid(pid, stop.signal)
        self._backend.shutdown(kill=stop is not None and stop.kill)
        self._writer.try_send(MessageKind.BYE)
        return 0

    # -- frames to the parent (never blocking the main loop) ------------------

    def _decode_limited(self, payload: bytes) -> LimitedJob:
        """A SUBMIT_LIMITED payload; its limits line decoded once per distinct
        line (every job of one options() view has the same)."""
        head, newline, job = payload.partition(b"\n")
        limits = self._limits_seen.get(head) if newline else None
        if limits is None:
            decoded = LimitedJob.decode(payload)
            if len(self._limits_seen) < 64:
                self._limits_seen[head] = decoded.limits
            return decoded
        return LimitedJob(limits, job)

    def _cannot_stop(self, job_id: int) -> JobError:
        return JobError(
            JobErrorKind.BACKEND,
            f"job {job_id} has a time or memory limit or cancel_running, but backend "
            f"{type(self._backend).__name__} cannot stop one job without breaking its pool (it does "
            "not declare stops_one_job = True): use backend='pipes', or drop those options",
        )

    def _send_job_error(self, job_id: int, error: JobError) -> None:
        self._writer.try_send(MessageKind.JOB_ERROR, job_id, error.encode(), block=False)

    def _send_workers(self, only_if_changed: bool = False) -> None:
        try:
            pids = self._backend.worker_pids()
        except Exception:
            pids = []
        workers = Workers(worker_pids=tuple(pids), quiesced=self._quiesced)
        if only_if_changed and workers == self._workers_sent:
            return
        self._workers_sent = workers
        self._writer.try_send(MessageKind.WORKERS, 0, workers.encode(), block=False)

    def _fatal(self, message: str) -> None:
        logger.error("%s", message)
        self._writer.try_send(MessageKind.FATAL, 0, Fatal(message).encode(), block=False)


class _BatchReport:
    """The ``on_done`` of one batch (see ``backends.OnDone``): called at the
    end, and ``job_done`` for each job a backend reports as it finishes."""

    __slots__ = ("_batch", "_loop")

    def __init__(self, loop: SidecarLoop, batch: Batch) -> None:
        self._loop = loop
        self._batch = batch

    def __call__(self, outcome: list[bytes] | BaseException) -> None:
        self._loop._batch_done(self._batch, outcome)

    def job_done(self, job_id: int, outcome: bytes) -> None:
        self._loop._job_done(self._batch, job_id, outcome)
