"""An example backend: worker processes fed over pipes, one thread per batch.

Use it as ``SubprocExecutor(backend="example_backend:PipeBackend")`` with this
file's directory on ``sys.path``. ``docs/backends.md`` walks through it: it is
built on nothing but ``multiprocessing.Process`` and ``Pipe``, so every part
of the ``Backend`` contract is in plain sight.

Each worker serves batches over its own pipe. ``submit`` starts a short-lived
thread that borrows an idle worker, sends it the batch, waits for the outcomes
and calls ``on_done`` once. A worker that dies fails only the batch it was
running; the sidecar then calls ``reset``.

Why not ``multiprocessing.Pool``: it never reports a task whose worker died
(its callbacks never run), and ``Pool.terminate`` drops pending callbacks, so
it cannot keep the promise that ``on_done`` is called exactly once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Final

from subproc_executor.sidecar.backends import BackendConfig, OnDone
from subproc_executor.worker import job

__all__ = ["PipeBackend"]

# How long a worker gets to exit (after SIGTERM, or after being told to stop)
# before SIGKILL. Longer lets cleanup handlers finish; shorter bounds shutdown.
_GRACE_SECONDS: Final = 2.0


def _serve(conn: Connection, pickler: str, initializer: bytes | None, notify: object) -> None:
    """A worker's main: run batches until told to stop (None) or the pipe closes."""
    # close_fds=(): only a forked worker inherits the sidecar's pipes, and we never fork.
    job.worker_init(pickler, (), initializer, notify)
    while True:
        try:
            batch = conn.recv()
        except EOFError:
            return
        if batch is None:
            return
        job_ids, payloads = batch
        conn.send(job.run_batch(pickler, job_ids, payloads))


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection


class PipeBackend:
    """``max_workers`` processes, each running one batch at a time.

    Workers are started, polled and joined only on the sidecar's main thread
    (two threads polling one process can race); batch threads use nothing
    but a worker's pipe.
    """

    name = "example"

    def __init__(self, config: BackendConfig) -> None:
        # An option this backend cannot honour fails here, in the sidecar; the
        # parent's futures fail with this message.
        if config.max_tasks_per_child is not None:
            raise ValueError("the example backend has no max_tasks_per_child; use backend='process'")
        if config.start_method == "fork":
            raise ValueError(
                "the example backend runs a thread per batch, and fork is unsafe next to threads; "
                "use mp_context='forkserver' or 'spawn', or backend='process' to fork"
            )
        self._config = config
        self._context = multiprocessing.get_context(config.start_method or "forkserver")
        # Guards _workers and what goes into _idle, so that a worker retired
        # by reset() is never handed out again.
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._idle: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()
        # Every worker started since the last reset, dead ones included.
        self._seen: list[_Worker] = []
        # Threads of the batches submitted, some maybe finished (main thread only).
        self._batches: list[threading.Thread] = []

    def start(self) -> None:
        with self._lock:
            if self._workers:
                return
            cfg = self._config
            for _ in range(cfg.max_workers):
                ours, theirs = self._context.Pipe()
                process = self._context.Process(
                    target=_serve, args=(theirs, cfg.pickler, cfg.initializer, cfg.notify), daemon=True
                )
                process.start()
                theirs.close()
                worker = _Worker(process, ours)
                self._workers.append(worker)
                self._seen.append(worker)
                self._idle.put(worker)

    def submit(self, job_ids: Sequence[int], payloads: Sequence[bytes], on_done: OnDone) -> None:
        self.start()
        self._batches = [t for t in self._batches if t.is_alive()]
        thread = threading.Thread(
            target=self._run, args=(list(job_ids), list(payloads), on_done), name="example-backend-batch"
        )
        self._batches.append(thread)
        thread.start()

    def _run(self, job_ids: list[int], payloads: list[bytes], on_done: OnDone) -> None:
        """Run one batch on an idle worker and report it once. A batch thread."""
        worker = self._idle.get()
        if worker is None:
            on_done(RuntimeError("the backend was shut down before this batch started"))
            return
        try:
            worker.conn.send((job_ids, payloads))
            outcome: list[bytes] | BaseException = worker.conn.recv()
        except (EOFError, OSError):
            # The sidecar asks worker_exitcodes() how it ended.
            outcome = RuntimeError(f"worker pid {worker.process.pid} died while running jobs {job_ids}")
        else:
            with self._lock:
                if worker in self._workers:  # not retired meanwhile
                    self._idle.put(worker)
        on_done(outcome)

    def worker_pids(self) -> list[int]:
        with self._lock:
            return sorted(w.process.pid for w in self._workers if w.process.is_alive())

    def worker_exitcodes(self) -> dict[int, int | None]:
        return {w.process.pid: w.process.exitcode for w in self._seen}

    def quiesce(self) -> None:
        self._stop(kill=False)

    def reset(self) -> None:
        # Batches waiting for a worker keep waiting, and run on the new ones.
        self._stop(kill=True, fail_waiting=False)
        self._seen = []
        self.start()

    def shutdown(self, *, kill: bool) -> None:
        self._stop(kill=kill)

    def _stop(self, *, kill: bool, fail_waiting: bool = True) -> None:
        if not kill:
            for thread in self._batches:  # let every submitted batch finish
                thread.join()
        with self._lock:
            workers, self._workers = self._workers, []
            while not self._idle.empty():
                self._idle.get()
        for w in workers:
            if kill:
                w.process.terminate()  # the thread of a batch it runs sees EOF and reports it
            else:
                with contextlib.suppress(OSError):  # a worker that died already
                    w.conn.send(None)
        for w in workers:
            w.process.join(_GRACE_SECONDS)
            if w.process.exitcode is None:
                w.process.kill()
                w.process.join()
        if fail_waiting:
            for _ in self._batches:  # wake the batches still waiting for a worker
                self._idle.put(None)
            for thread in self._batches:
                thread.join()
            self._batches = []
            while not self._idle.empty():
                self._idle.get()
