"""The pipes backend: a lean pool of our own, two pipes per worker, one reader thread.

    |================================ sidecar =================================|=== workers ===|
     main thread                        reader thread (subproc_executor-pipes-reader)
     submit(ids, payloads, on_done)
       idle worker? --send batch--------------------------------job pipe-->  _worker_main:
       none idle?   --> FIFO                                                    recv batch
                                        select(result pipes, sentinels, wake)   run each job
     on_done.job_done <---------------- recv an outcome <-----result pipe--     send its outcome
       (writes a RESULT frame)          last of the batch? the next batch from
     on_done([])                        the FIFO first, then report
                                        sentinel ready / EOF: fail that worker's batch only,
                                        reap it, start a replacement

*submit()* runs on the sidecar's main thread. Under the lock it takes an idle
worker and marks it busy, then writes the batch to that worker's job pipe
outside the lock. If no worker is idle the batch waits in a FIFO. The sidecar
keeps at most ``max_workers + 1`` batches in a backend, so the FIFO holds one
batch or so.

*The reader thread* waits on every worker's result connection and process
sentinel, and on a self-pipe that wakes it when the set of workers changes or
when it must stop. It reports each job's outcome as it arrives
(``on_done.job_done``); on a batch's last one it first hands the worker the
next waiting batch (so the worker computes while we report). On a death it
fails what is left of the batch that worker was running, and only that, with
``WorkerDiedError`` (pid and exit status), reaps the worker and starts a
replacement: the jobs it finished before dying keep their results. A worker
that retires after ``max_tasks_per_child`` jobs is replaced without a report.

*Each worker* runs ``_worker_main``: ``job.worker_init``, then batches until
an empty message or EOF on its job pipe.

Why it is faster than the stdlib pool inside the sidecar: there a job crosses
the main thread, the pool's manager thread, its call-queue feeder thread, the
worker, and the manager thread again; every crossing is a thread wakeup and a
GIL hand-off. Here a job goes main thread -> worker -> reader thread, which
reports each outcome itself: two fewer hand-offs each way, and the only
pickling in the sidecar is one ``pickle.dumps`` of (job ids, payload bytes). And a
crash costs less: a dead worker breaks the whole stdlib pool, so every running
batch fails and innocent jobs run again; here only the dead worker's batch
fails and the other workers keep running theirs.

Who touches what (the invariants the lock keeps):

* A busy worker's job connection is written by the one thread that took the
  worker under the lock (``submit`` on the main thread, or the reader thread),
  one batch at a time. Result connections and sentinels are read only by the
  reader thread.
* Every ``on_done`` is called exactly once, never with the lock held: the
  thread that takes a batch out of ``_queue`` or ``_Worker.batch`` under the
  lock is the one that reports it.
* Pipe descriptors of the workers are created and closed only under
  ``_fork_lock``, which is also held across ``Process.start()``. So a forked
  worker is told to close exactly the sidecar's descriptors open at its fork,
  and no number on that list can be reused meanwhile.
* A worker is polled (its exit status read) only under ``_fork_lock``, after
  its sentinel is ready: ``Process.start()`` polls every child, and a
  forkserver child's status can be read once (see ``sidecar.backends._reap``).

One module, over 450 lines: the invariants above bind the main thread's
``submit``, the reader thread and the starting and stopping of workers to
one lock and one fork lock; split, they could no longer be checked together.
The worker's side lives in ``worker.pipes_main``.

The design follows ``tests/example_backend.py`` (a process and a pipe per
worker) with its thread per batch replaced by one reader thread, and the idea
of failing only the dead worker's task from pebble's process pool.
"""

from __future__ import annotations

import enum
import logging
import multiprocessing
import pickle
import selectors
import signal
import threading
import time
import warnings
from collections import deque
from collections.abc import Sequence
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.util import Finalize

from ...errors import WorkerDiedError, describe_exitcode
from ...wire.fdtools import WakePipe, signal_pid
from ...wire.record import Record, field
from ...worker.pipes_main import OUTCOME_ID as _OUTCOME_ID
from ...worker.pipes_main import READY as _READY
from ...worker.pipes_main import STOP as _STOP
from ...worker.pipes_main import worker_main as _worker_main
from . import BackendConfig, OnDone
from ._reap import TERMINATE_GRACE_SECONDS, sentinel_ready, terminate_children

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from multiprocessing.context import ForkContext, ForkServerContext, SpawnContext
    from typing import Final

__all__ = ["PipesBackend"]

logger = logging.getLogger(__name__)

# How long idle workers get to exit after the stop message (quiesce and
# shutdown(kill=False)) before SIGTERM, then SIGKILL. Longer lets slow atexit
# handlers of user code finish; shorter bounds quiesce and shutdown.
_STOP_GRACE_SECONDS: Final = 3.0
# How long a worker whose result pipe reached EOF gets to exit before it is
# killed (one that only closed its pipes), and then to die.
_REAP_SECONDS: Final = 1.0
# How long stopping waits for the reader thread, which may be inside an
# ``on_done`` writing to the parent's pipe. Longer tolerates a slower parent;
# shorter bounds shutdown when the parent does not read.
_READER_JOIN_SECONDS: Final = 5.0


class _State(enum.Enum):
    # NEW -> RUNNING -> STOPPING -> STOPPED (quiesce) -> RUNNING (start) ...
    # any -> STOPPING -> CLOSED (shutdown). CLOSED is terminal.
    # Only RUNNING hands out queued batches and replaces workers.
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CLOSED = "closed"


class _Batch(Record, frozen=False, eq=False):
    """One ``submit``: job ids (for messages), the encoded batch, its callback."""

    job_ids: list[int]
    data: bytes
    on_done: OnDone
    # Outcomes still to come from the worker.
    left: int = 0
    # Outcomes kept for the final call when on_done cannot take them one by one.
    kept: list[bytes] = field(default_factory=list)

    def __init__(self, job_ids: list[int], data: bytes, on_done: OnDone, left: int = 0) -> None:
        # Spelled out: one is made per batch (see scheduler._Job).
        self.job_ids = job_ids
        self.data = data
        self.on_done = on_done
        self.left = left
        self.kept = []


class _Worker(Record, frozen=False, eq=False):
    """One worker process and the sidecar's ends of its two pipes."""

    process: BaseProcess
    pid: int
    job_conn: Connection  # write end: batches and the stop message
    result_conn: Connection  # read end: pickled outcome lists; reader thread only
    sentinel: int
    # The batch it runs, or None when idle. Set and cleared under the lock.
    batch: _Batch | None = None
    # A thread writes to job_conn outside the lock; it closes job_conn if the
    # worker died meanwhile (closing it under the writer's feet could hand
    # its descriptor number to a new pipe while the write is in progress).
    sending: bool = False
    jobs_done: int = 0
    # Reached max_tasks_per_child: it exits after its last result; its
    # replacement is already started.
    retiring: bool = False
    # Reaped; its pipes are closed (job_conn maybe later, see ``sending``).
    dead: bool = False
    # Said READY: past its initializer, reading its job pipe. Only a ready
    # worker is given a batch, so no thread ever waits writing to a worker
    # that is not reading (a slow initializer would stall it).
    ready: bool = False


class PipesBackend:
    """``max_workers`` processes fed over their own pipes; see the module docstring."""

    # One worker killed (a time limit, a memory limit, a cancel) leaves the
    # others running: each has pipes of its own (see sidecar.limits).
    stops_one_job = True

    name = "pipes"

    def __init__(self, config: BackendConfig) -> None:
        method = config.start_method or "fork"
        if method not in ("fork", "forkserver", "spawn"):
            raise ValueError(
                f"backend 'pipes' does not support the start method {method!r}; "
                "use one of fork, forkserver, spawn"
            )
        if config.max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {config.max_workers}")
        self._config = config
        self._context = _get_context(method)
        if method == "forkserver":
            # Workers forked by the forkserver start with the worker code loaded.
            self._context.set_forkserver_preload(["subproc_executor.worker.pipes_main"])
        self._forks = method == "fork"
        self._max_tasks = config.max_tasks_per_child

        # Guards every field below except _reader (main thread only).
        self._lock = threading.Lock()
        # Notified whenever a batch leaves a worker or the FIFO: quiesce waits on it.
        self._changed = threading.Condition(self._lock)
        # Held across creating pipes, Process.start() and closing pipes (see
        # the module docstring). When both are needed it is taken first:
        # nothing waits for it while holding _lock.
        # Workers the sidecar kills on purpose (expect_kill).
        self._expected_kills: set[int] = set()
        self._fork_lock = threading.Lock()
        self._state = _State.NEW
        # {pid: worker} of the live workers, retiring ones included, e.g.
        #     {4242: _Worker(pid=4242, batch=None, ...), 4243: _Worker(pid=4243, batch=_Batch(...))}
        # Invariant: a worker is in _idle iff it is here, ready, batch is None and not retiring.
        self._workers: dict[int, _Worker] = {}
        # Bumped whenever _workers changes, so the reader rebuilds its selector.
        self._workers_version = 0
        # Idle workers, most recently used last (its caches are the warmest).
        self._idle: list[_Worker] = []
        # Batches submitted while every worker was busy, oldest first.
        self._queue: deque[_Batch] = deque()
        # Workers being started: counted as live so two threads topping up
        # (the reader replacing a dead worker, reset on the main thread) do
        # not both start one.
        self._starting = 0
        # {pid: exitcode or None} of the live workers and of those that died
        # with a batch in flight since the last reset, for the sidecar to
        # judge a failed batch. Workers that ended without a batch (retired,
        # stopped, killed while idle) are dropped: they cannot be to blame,
        # and would make a later crash look like one of several.
        self._exitcodes: dict[int, int | None] = {}
        # Sidecar's descriptors of the workers' pipes (under _fork_lock).
        self._pipe_fds: set[int] = set()
        self._reader_stop = False
        self._reader: threading.Thread | None = None
        # Self-pipe: a byte wakes the reader to look at the workers again.
        self._wake = WakePipe()
        # If the sidecar exits without shutdown(), multiprocessing's atexit
        # handler joins our workers, which are not daemons (so that jobs may
        # start processes of their own, as in stdlib workers) and would wait
        # for a batch forever: kill them first (exitpriority runs this before
        # those joins). Holds self until shutdown() cancels it.
        self._finalizer = Finalize(self, self._kill_at_exit, exitpriority=10)

    # -- Backend API (sidecar main thread) ------------------------------------------------

    def start(self) -> None:
        """Start ``max_workers`` workers, then the reader thread. Idempotent.

        The workers fork before the reader thread exists, so with fork the
        sidecar is single-threaded at the first forks.
        """
        with self._lock:
            if self._state is _State.RUNNING:
                return
            if self._state is _State.CLOSED:
                raise RuntimeError("backend 'pipes' was shut down; it cannot start again")
            self._state = _State.RUNNING
            self._reader_stop = False
        self._top_up()
        if self._reader is None:
            self._wake.drain()
            self._reader = threading.Thread(
                target=self._read_loop, name="subproc_executor-pipes-reader", daemon=True
            )
            self._reader.start()
        logger.info("backend 'pipes' started workers %s", self.worker_pids())

    def submit(self, job_ids: Sequence[int], payloads: Sequence[bytes], on_done: OnDone) -> None:
        if self._state is not _State.RUNNING:
            self.start()
        ids = list(job_ids)
        batch = _Batch(ids, pickle.dumps((ids, list(payloads)), pickle.HIGHEST_PROTOCOL), on_done, len(ids))
        with self._lock:
            worker = self._idle.pop() if self._idle else None
            if worker is None:
                self._queue.append(batch)
            else:
                worker.batch = batch
                worker.sending = True
        if worker is not None:
            self._send(worker, batch)

    def expect_kill(self, pid: int) -> None:
        """The sidecar is about to kill worker ``pid`` to stop its job (a time
        or memory limit, a cancel): its death is reported at INFO, not as a
        crash."""
        with self._lock:
            self._expected_kills.add(pid)

    def idle_worker_pids(self) -> list[int]:
        """Workers that hold no batch now (the sidecar may replace one of
        these without touching a job)."""
        with self._lock:
            return [w.pid for w in self._idle]

    def worker_pids(self) -> list[int]:
        with self._lock:
            return sorted(pid for pid, w in self._workers.items() if not w.retiring)

    def worker_exitcodes(self) -> dict[int, int | None]:
        with self._lock:
            return dict(self._exitcodes)

    def quiesce(self) -> None:
        """Let every submitted batch finish, then stop the workers; ``start`` brings new ones."""
        if self._state is _State.RUNNING:
            self._stop(kill=False, final=False)

    def reset(self) -> None:
        """Make sure ``max_workers`` workers live; never stops a busy one.

        A failed batch here means one worker died, and that worker is already
        gone: the others are healthy and keep their batches. So unlike the
        stdlib pool there is nothing to throw away; dead workers' exit codes
        are forgotten, and the reader's replacement is started now if it is
        not already.
        """
        with self._lock:
            self._exitcodes = {pid: code for pid, code in self._exitcodes.items() if code is None}
            running = self._state is _State.RUNNING
        if running:
            self._top_up()
        else:
            self.start()

    def shutdown(self, *, kill: bool) -> None:
        """Stop for good. ``kill=False`` lets submitted batches finish first;
        ``kill=True`` fails them and terminates the workers. Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._stop(kill=kill, final=True)
        self._wake.close()
        self._finalizer.cancel()

    def _kill_at_exit(self) -> None:
        """The sidecar is exiting without shutdown(): SIGKILL the workers, and
        stop the reader from replacing them. Main thread, at exit."""
        with self._fork_lock, self._lock:
            self._state = _State.STOPPING
            self._reader_stop = True
            pids = list(self._workers)
        self._wake_reader()
        if pids:
            logger.warning("backend 'pipes' was not shut down; killing workers %s", pids)
        for pid in pids:
            signal_pid(pid, signal.SIGKILL)

    # -- starting and stopping workers ------------------------------------------------------

    def _top_up(self) -> None:
        """Start workers until ``max_workers`` live or are starting. Any thread."""
        with self._lock:
            live = sum(1 for w in self._workers.values() if not w.retiring)
            n = max(0, self._config.max_workers - live - self._starting)
            self._starting += n
        for i in range(n):
            try:
                self._start_worker()
            except BaseException:
                with self._lock:
                    self._starting -= n - i - 1  # the slots not tried; the failed one released its own
                raise

    def _start_worker(self) -> None:
        """Start one worker; its READY makes it idle or gives it a batch. Any thread.

        The caller has counted it in ``_starting``; this releases that count.
        Starts nothing once the backend is stopping: the stop, or the exit
        finalizer, has already chosen which workers to stop.
        """
        cfg = self._config
        with self._fork_lock:
            try:
                with self._lock:
                    if self._state is not _State.RUNNING:
                        self._starting -= 1
                        return
                job_r, job_w = self._context.Pipe(duplex=False)
                result_r, result_w = self._context.Pipe(duplex=False)
                try:
                    close_fds: tuple[int, ...] = ()
                    if self._forks:
                        # Only a forked worker inherits our descriptors; in a
                        # spawned one the same numbers may name its own files.
                        close_fds = (
                            *cfg.close_fds,
                            *self._wake.fds(),
                            job_w.fileno(),
                            result_r.fileno(),
                            *self._pipe_fds,
                        )
                    process = self._context.Process(
                        target=_worker_main,
                        args=(
                            job_r,
                            result_w,
                            cfg.pickler,
                            close_fds,
                            cfg.initializer,
                            cfg.notify,
                            self._max_tasks,
                        ),
                        name="subproc_executor-pipes-worker",
                    )
                    with warnings.catch_warnings():
                        # Python 3.12+ warns that fork() in a multi-threaded
                        # process may deadlock the child, when a replacement
                        # forks from the reader thread. Safe here: the child
                        # runs only _worker_main, which takes no lock another
                        # sidecar thread may hold (CPython reinitialises the
                        # GIL, the import lock and logging's locks after fork).
                        # catch_warnings is not thread-safe; _fork_lock makes
                        # this the only code of ours changing the filters.
                        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork.*")
                        process.start()
                except BaseException:
                    job_w.close()
                    result_r.close()
                    raise
                finally:
                    # The worker's ends: kept open here, a dead worker's
                    # result pipe would never reach EOF.
                    job_r.close()
                    result_w.close()
            except BaseException:
                with self._lock:
                    self._starting -= 1
                raise
            assert process.pid is not None
            self._pipe_fds.update((job_w.fileno(), result_r.fileno()))
            worker = _Worker(process, process.pid, job_w, result_r, process.sentinel)
            # Registered before _fork_lock is released, so that a stop that
            # takes _fork_lock sees every worker started.
            with self._lock:
                self._starting -= 1
                self._workers[worker.pid] = worker
                self._workers_version += 1
                self._exitcodes[worker.pid] = None
        self._wake_reader()  # to wait on the new worker too; it gets work once READY

    def _replace(self) -> None:
        """Start the replacement counted in ``_starting``. Reader thread; never raises.

        If it cannot start and no worker is left, fail the waiting batches
        rather than leave them waiting for a worker that never comes.
        """
        try:
            self._start_worker()
        except Exception as exc:
            logger.exception("backend 'pipes' could not start a replacement worker")
            with self._lock:
                stranded: list[_Batch] = []
                if not self._workers and not self._starting:
                    stranded = list(self._queue)
                    self._queue.clear()
                    self._changed.notify_all()
            for batch in stranded:
                self._report(batch, BrokenProcessPool(f"backend 'pipes' could not start a worker: {exc!r}"))

    def _stop(self, *, kill: bool, final: bool) -> None:
        """Stop every worker and the reader thread. Main thread.

        ``kill=False``: wait for the submitted batches, then send the stop
        message; a worker still alive after ``_STOP_GRACE_SECONDS`` gets
        SIGTERM, then SIGKILL. ``kill=True``: fail the batches, SIGTERM at
        once, SIGKILL after the grace period.
        """
        if not kill:
            with self._changed:
                self._changed.wait_for(self._drained_locked)
        with self._lock:
            self._state = _State.STOPPING
            self._reader_stop = True
            unfinished: list[tuple[_Batch, bool]] = [(b, False) for b in self._queue]
            self._queue.clear()
            for w in self._workers.values():
                if w.batch is not None:
                    unfinished.append((w.batch, True))
                    w.batch = None
            if kill:
                # Before joining the reader: it may be writing a batch to a
                # worker that does not read (one stuck in its initializer).
                for w in self._workers.values():
                    signal_pid(w.pid, signal.SIGTERM)
        self._stop_reader()
        with self._lock:
            workers = list(self._workers.values())
        if not kill:
            for w in workers:
                try:
                    w.job_conn.send_bytes(_STOP)
                except OSError:
                    pass  # it died meanwhile
            deadline = time.monotonic() + _STOP_GRACE_SECONDS
            for w in workers:
                sentinel_ready(w.process, max(0.0, deadline - time.monotonic()))
        # Sentinels, not exitcode: a reader thread that outlived its join may
        # be reaping a worker (see _reap).
        alive = [w for w in workers if not sentinel_ready(w.process, 0)]
        if alive:
            if not kill:
                logger.warning(
                    "backend 'pipes': workers %s did not exit %.0fs after the stop message; terminating them",
                    [w.pid for w in alive],
                    _STOP_GRACE_SECONDS,
                )
            terminate_children(TERMINATE_GRACE_SECONDS, [w.process for w in alive])
        for w in workers:
            self._bury(w, self._reap(w.process), None)
        with self._lock:
            self._state = _State.CLOSED if final else _State.STOPPED
            self._idle.clear()
        if self._reader is not None:  # it outlived _READER_JOIN_SECONDS: the workers are gone now
            self._reader.join(_READER_JOIN_SECONDS)
            if self._reader.is_alive():
                logger.error("backend 'pipes': the reader thread did not stop")
            self._reader = None
        for batch, ran in unfinished:
            ids = batch.job_ids
            exc: BaseException = (
                BrokenProcessPool(f"backend 'pipes' was shut down with kill=True while jobs {ids} ran")
                if ran
                else CancelledError(f"backend 'pipes' was shut down before jobs {ids} started")
            )
            self._report(batch, exc)

    def _stop_reader(self) -> None:
        reader = self._reader
        if reader is None:
            return
        self._wake_reader()
        reader.join(_READER_JOIN_SECONDS)
        if not reader.is_alive():
            self._reader = None

    def _drained_locked(self) -> bool:
        return not self._queue and all(w.batch is None for w in self._workers.values())

    def _bury(self, worker: _Worker, exitcode: int | None, batch: _Batch | None) -> None:
        """Forget a reaped worker and close its pipes. Any thread; lock not held."""
        with self._lock:
            worker.dead = True
            self._workers.pop(worker.pid, None)
            self._workers_version += 1
            if worker in self._idle:
                self._idle.remove(worker)
            if batch is not None:
                self._exitcodes[worker.pid] = exitcode
            else:
                self._exitcodes.pop(worker.pid, None)
            close_job_conn = not worker.sending
            self._changed.notify_all()
        # Not process.close(): multiprocessing's own exit handler, or any
        # Process.start(), may be polling the same process object from
        # another thread. The sentinel closes when the object is collected.
        with self._fork_lock:
            self._close_locked(worker.result_conn)
            if close_job_conn:
                self._close_locked(worker.job_conn)

    def _close_locked(self, conn: Connection) -> None:
        """Close one of the workers' pipe ends; ``_fork_lock`` held."""
        if not conn.closed:
            self._pipe_fds.discard(conn.fileno())
            conn.close()

    def _reap(self, process: BaseProcess) -> int | None:
        """The exit code of a worker that is gone or going; bounded by ``2 * _REAP_SECONDS``.

        It waits for the sentinel, which reads nothing, then polls under
        ``_fork_lock``: every ``Process.start()`` polls all children, and of
        two threads polling a forkserver child at once one reads EOF and
        stores 255 for its exit code (see ``sidecar.backends._reap``). A worker that
        closed its pipes but does not exit is killed. Any thread; locks not held.
        """
        deadline = time.monotonic() + _REAP_SECONDS
        killed = False
        while True:
            ready = sentinel_ready(process, max(0.0, deadline - time.monotonic()))
            if ready:
                with self._fork_lock:
                    code = process.exitcode
                if code is not None:
                    return code
            if time.monotonic() >= deadline:
                if killed or ready or process.pid is None:
                    return None
                logger.warning("worker pid %d closed its pipes but did not exit; killing it", process.pid)
                signal_pid(process.pid, signal.SIGKILL)
                killed = True
                deadline = time.monotonic() + _REAP_SECONDS
            elif ready:
                time.sleep(0.001)  # exited, not yet a zombie (fork, spawn): waitpid has nothing yet

    # -- batches --------------------------------------------------------------------------

    def _send(self, worker: _Worker, batch: _Batch) -> None:
        """Write ``batch`` to a worker this thread took; never raises.

        A worker that died cannot read it: the reader sees its exit and fails
        the batch, which is still the worker's.
        """
        try:
            worker.job_conn.send_bytes(batch.data)
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                worker.sending = False
                close = worker.dead
            if close:
                with self._fork_lock:
                    self._close_locked(worker.job_conn)

    @staticmethod
    def _report(batch: _Batch, outcome: list[bytes] | BaseException) -> None:
        """Call the batch's ``on_done``; never raises. Lock not held."""
        try:
            batch.on_done(outcome)
        except Exception:
            logger.exception("on_done for jobs %s raised", batch.job_ids)

    # -- the reader thread ------------------------------------------------------------------

    def _wake_reader(self) -> None:
        self._wake.wake()

    def _read_loop(self) -> None:
        """The reader thread's body. Never raises: each failure is logged and
        the loop goes on, since an escape would strand every batch in flight.

        It keeps one selector (epoll on Linux) for as long as the set of
        workers stays the same, rather than building one per wait as
        ``multiprocessing.connection.wait`` does: that is on every result's path.
        """
        sel: selectors.BaseSelector | None = None
        version = -1
        try:
            while True:
                with self._lock:
                    if self._reader_stop:
                        return
                    if sel is None or version != self._workers_version:
                        if sel is not None:
                            sel.close()
                        sel = selectors.DefaultSelector()
                        sel.register(self._wake.fileno(), selectors.EVENT_READ, None)
                        for w in self._workers.values():
                            sel.register(w.result_conn.fileno(), selectors.EVENT_READ, (w, True))
                            sel.register(w.sentinel, selectors.EVENT_READ, (w, False))
                        version = self._workers_version
                try:
                    events = sel.select()
                except Exception:
                    # A handle closed under us (a bug): look at the workers again.
                    logger.exception("backend 'pipes': waiting for the workers failed")
                    version = -1
                    continue
                for key, _ in events:
                    try:
                        if key.data is None:
                            self._wake.drain()
                            continue
                        worker, is_result = key.data
                        if worker.dead:
                            continue  # its result pipe and sentinel were both ready
                        if is_result:
                            self._on_readable(worker)
                        else:
                            self._on_exit(worker)
                    except Exception:
                        logger.exception("backend 'pipes': handling a worker event failed")
        finally:
            if sel is not None:
                sel.close()

    def _on_readable(self, worker: _Worker) -> None:
        """A worker's result pipe is readable: a result, or EOF when it died."""
        try:
            data = worker.result_conn.recv_bytes()
        except (EOFError, OSError):
            self._on_exit(worker)
            return
        self._on_result(worker, data)

    def _on_ready(self, worker: _Worker) -> None:
        """The worker finished its initializer: give it a waiting batch or mark it idle."""
        with self._lock:
            worker.ready = True
            batch = None
            if self._queue and self._state is _State.RUNNING:
                batch = self._queue.popleft()
                worker.batch = batch
                worker.sending = True
            elif not worker.retiring:
                self._idle.append(worker)
            self._changed.notify_all()
        if batch is not None:
            self._send(worker, batch)

    def _on_result(self, worker: _Worker, data: bytes) -> None:
        """A message from a worker: READY, or one job's outcome (see ``worker.pipes_main``)."""
        if data == _READY:
            self._on_ready(worker)
            return
        if len(data) < _OUTCOME_ID.size:
            logger.error("worker pid %d sent a malformed message (%d bytes); dropped", worker.pid, len(data))
            return
        (job_id,) = _OUTCOME_ID.unpack_from(data)
        outcome = data[_OUTCOME_ID.size :]
        following: _Batch | None = None
        replace = False
        with self._lock:
            batch = worker.batch
            last = batch is not None and batch.left <= 1
            if batch is not None:
                batch.left -= 1
            if last and batch is not None:
                worker.batch = None
                worker.jobs_done += len(batch.job_ids)
                if self._max_tasks is not None and worker.jobs_done >= self._max_tasks:
                    worker.retiring = True  # it exits now; its exit is not a crash
                    replace = self._state is _State.RUNNING
                    if replace:
                        self._starting += 1
                elif self._queue and self._state is _State.RUNNING:
                    following = self._queue.popleft()
                    worker.batch = following
                    worker.sending = True
                else:
                    self._idle.append(worker)
                self._changed.notify_all()
        if batch is None:
            logger.error("worker pid %d sent job %d's outcome with no batch in flight", worker.pid, job_id)
            return
        # Next batch first, so the worker runs it while we report this one.
        if following is not None:
            self._send(worker, following)
        job_done = getattr(batch.on_done, "job_done", None)
        if job_done is not None:
            try:
                job_done(job_id, outcome)
            except Exception:
                logger.exception("job_done for job %d raised", job_id)
        else:
            batch.kept.append(outcome)
        if last:
            self._report(batch, batch.kept)
        if replace:
            self._replace()

    def _on_exit(self, worker: _Worker) -> None:
        """A worker's sentinel is ready or its result pipe reached EOF: it is gone."""
        # A result sent just before exiting (a worker retiring after its last
        # batch) may still be in the pipe: it counts.
        while not worker.dead:
            try:
                if not worker.result_conn.poll():
                    break
                data = worker.result_conn.recv_bytes()
            except (EOFError, OSError):
                break
            self._on_result(worker, data)
        exitcode = self._reap(worker.process)
        with self._lock:
            batch, worker.batch = worker.batch, None
            replace = self._state is _State.RUNNING and not worker.retiring
            if replace:
                self._starting += 1
        self._bury(worker, exitcode, batch)
        status = describe_exitcode(exitcode)
        if batch is not None:
            message = (
                f"worker pid {worker.pid} died with {status} while running jobs {batch.job_ids}; "
                "backend 'pipes' replaced it, the other workers were not affected"
            )
            with self._lock:
                expected = worker.pid in self._expected_kills
                self._expected_kills.discard(worker.pid)
            logger.log(logging.INFO if expected else logging.WARNING, "%s", message)
            self._report(batch, WorkerDiedError(message, pid=worker.pid, exitcode=exitcode))
        elif not worker.retiring and exitcode != 0:
            logger.warning("idle worker pid %d died with %s; replacing it", worker.pid, status)
        if replace:
            self._replace()


def _get_context(method: str) -> ForkContext | ForkServerContext | SpawnContext:
    if method == "fork":
        return multiprocessing.get_context("fork")
    if method == "forkserver":
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")
