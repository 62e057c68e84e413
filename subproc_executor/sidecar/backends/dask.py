"""The dask backend: the sidecar as the client of a Dask cluster.

    sidecar main thread                 Dask scheduler                Dask workers
    submit(ids, payloads, on_done)
      held until a worker thread is free (at most one batch in Dask per thread)
      client.submit(remote.run_batch,   --> a task per batch -------> worker.remote.run_batch
        pickler, initializer,                (pure=False, retries=0)     initializer once per process
        ids, [job bytes])                                                job.run_batch -> [outcome bytes]
    collector thread: on_done(outcomes) <------------------------------- (gathered, opaque here)
      or on_done(WorkerDiedError) for a KilledWorker (Dask's retries spent)

Results are gathered by ``distributed.as_completed(with_results=True)``, on
Dask's event loop, many at once; a done-callback that called
``future.result()`` would fetch them one round trip at a time on Dask's one
callback thread (about 70 jobs a second here).

The only module of the package that imports ``distributed``. Without an
``address`` it starts a ``LocalCluster`` on loopback (processes, one thread
each, ``max_workers`` of them) and closes it with itself. The sidecar never
unpickles user data here either: the task's arguments and results are
``bytes``; only ``worker.remote`` on a Dask worker opens them.

What Dask cannot do, the parent refuses (``parent.settings``: no per-job
stop, no start records, no shared memory): a Dask worker is not our child,
its jobs are not announced, and it may be on another machine.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import CancelledError

import dask
from distributed import Client, Future, LocalCluster, Security, as_completed
from distributed.scheduler import KilledWorker

from ...errors import WorkerDiedError
from ...wire.messages import ErrorRecord, OutcomeTag, encode_error_outcome
from ...wire.progress import pack_timing
from ...worker import remote
from . import BackendConfig, OnDone

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = ["OPTIONS", "DaskBackend"]

logger = logging.getLogger(__name__)

# backend_options= keys (parent.settings lists the same for the parent's check).
OPTIONS: Final = ("address", "dashboard", "security", "allowed_failures", "connect_timeout")
# A LocalCluster's scheduler fails a task whose worker died this many times
# more than once. Not 0: Dask counts a death against every task assigned to
# the dead worker, the ones queued there behind the one that ran too, and
# with 0 those innocent jobs failed with it (the harness's crash family: 6 of
# 7 siblings survived). With 1 they run again elsewhere, and a job that kills
# its worker fails once it has killed a second one. A remote scheduler keeps
# its own setting (distributed.scheduler.allowed-failures, Dask's default 3).
_LOCAL_ALLOWED_FAILURES: Final = 1
# Seconds to reach the scheduler, and to get it back after losing it.
_CONNECT_TIMEOUT: Final = 10.0
# The collector ends within its iterator's poll once the client is closed.
_COLLECTOR_JOIN_SECONDS: Final = 5.0
# How long shutdown(kill=False) and quiesce wait for submitted batches.
_DRAIN_SECONDS: Final = 3600.0


class DaskBackend:
    """Batches as Dask tasks. Methods run on the sidecar's main thread; Dask's
    callback thread reports each batch (``on_done``) exactly once."""

    name = "dask"
    # Killing one running job means killing a Dask worker we do not own.
    stops_one_job = False

    def __init__(self, config: BackendConfig) -> None:
        options = dict(config.options)
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(
                f"backend 'dask' does not accept {unknown} in backend_options; it accepts {OPTIONS}"
            )
        self._config = config
        # Dask sets its loggers to INFO; the sidecar's level (WARNING) rules here.
        logging.getLogger("distributed").setLevel(logging.getLogger().getEffectiveLevel())
        self._address = _optional_str(options, "address")
        dashboard = options.get("dashboard", False)
        if not isinstance(dashboard, (bool, str)):
            raise ValueError(
                f"backend_options['dashboard'] must be true, false or an address, got {dashboard!r}"
            )
        self._dashboard: str | None = (":0" if dashboard is True else dashboard) or None
        security = options.get("security", False)
        if not isinstance(security, bool):
            raise ValueError(f"backend_options['security'] must be true or false, got {security!r}")
        self._security = security
        failures = options.get("allowed_failures")
        if failures is not None and (
            isinstance(failures, bool) or not isinstance(failures, int) or failures < 0
        ):
            raise ValueError(f"backend_options['allowed_failures'] must be an integer >= 0, got {failures!r}")
        if failures is not None and self._address is not None:
            raise ValueError(
                "backend_options['allowed_failures'] applies to the LocalCluster the sidecar starts; a "
                "running scheduler keeps its own: set distributed.scheduler.allowed-failures where it runs"
            )
        self._allowed_failures = _LOCAL_ALLOWED_FAILURES if failures is None else failures
        timeout = options.get("connect_timeout", _CONNECT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"backend_options['connect_timeout'] must be positive seconds, got {timeout!r}")
        self._timeout = float(timeout)
        self._client: Client | None = None
        self._cluster: LocalCluster | None = None
        # {task key: (its future, its batch's on_done, its job ids)}; a batch
        # is reported by whoever pops it, once.
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[Future[list[bytes]], OnDone, list[int]]] = {}
        self._drained = threading.Condition(self._lock)
        self._work = threading.Condition(self._lock)
        self._closing = False
        # Every submitted task, yielded with its result once it ends.
        self._completed: Any = None
        self._collector: threading.Thread | None = None
        # Batches not yet handed to Dask, and how many may be in Dask at once:
        # the cluster's worker threads (see _pump_locked).
        self._held: deque[tuple[list[int], list[bytes], OnDone]] = deque()
        self._slots = max(1, config.max_workers)

    # -- the Backend protocol ------------------------------------------------------------

    def start(self) -> None:
        if self._client is not None:
            return
        self._closing = False
        if self._address is not None:
            security = Security(require_encryption=True) if self._security else None
            self._client = Client(
                self._address, security=security, timeout=self._timeout, set_as_default=False
            )
            self._count_slots()
            return
        # Read when the scheduler is made; this process makes no other.
        dask.config.set({"distributed.scheduler.allowed-failures": self._allowed_failures})
        self._cluster = LocalCluster(
            n_workers=self._config.max_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=self._dashboard,
            security=True if self._security else None,
        )
        self._client = Client(self._cluster, set_as_default=False, timeout=self._timeout)

    def submit(self, job_ids: Sequence[int], payloads: Sequence[bytes], on_done: OnDone) -> None:
        self.start()
        client = self._client
        assert client is not None
        if client.status != "running":
            raise ConnectionError(f"the Dask client is {client.status}: {self._where()}")
        with self._lock:
            self._held.append((list(job_ids), list(payloads), on_done))
            self._pump_locked(client)

    def _pump_locked(self, client: Client, *, all_held: bool = False) -> None:
        """Hand held batches to Dask while a worker thread is free for each (lock held).

        Never more: Dask assigns a task to a worker at once, and a worker's
        death counts against every task assigned to it, the ones waiting
        there behind the one that ran too. Held here, an innocent batch is
        never on a worker that a crashing job kills. ``all_held``: a drain
        (quiesce, shutdown) hands everything over."""
        while self._held and (all_held or len(self._pending) < self._slots):
            ids, payloads, on_done = self._held.popleft()
            key = f"subproc_executor-{ids[0]}-{uuid.uuid4().hex}"
            cfg = self._config
            try:
                future = client.submit(
                    remote.run_batch,
                    cfg.pickler,
                    cfg.initializer,
                    ids,
                    payloads,
                    key=key,
                    pure=False,
                    retries=0,
                )
            except Exception as exc:  # the client is closing: the batch is reported, never lost
                on_done(exc)
                continue
            # Under the lock the collector reports under: it cannot see the
            # task end before it is pending.
            self._pending[key] = (future, on_done, ids)
            if self._completed is None:
                self._completed = as_completed([], loop=client.loop, with_results=True, raise_errors=False)
            self._completed.add(future)
            self._work.notify()
            if self._collector is None:
                self._collector = threading.Thread(
                    target=self._collect, name="subproc_executor-dask-collector", daemon=True
                )
                self._collector.start()

    def worker_pids(self) -> list[int]:
        """The LocalCluster's worker processes; [] for a remote cluster, whose
        pids name processes on other machines (the sidecar signals these)."""
        cluster = self._cluster
        if cluster is None:
            return []
        pids = [getattr(nanny, "pid", None) for nanny in list(cluster.workers.values())]
        return sorted(pid for pid in pids if isinstance(pid, int))

    def worker_exitcodes(self) -> dict[int, int | None]:
        # Nannies replace dead workers and the scheduler reports their jobs
        # (KilledWorker): there is no broken pool to notice.
        return dict.fromkeys(self.worker_pids())

    def _count_slots(self) -> None:
        """A cluster of yours: as many batches in Dask as its workers have threads
        (``max_workers`` while none has joined yet)."""
        client = self._client
        if client is None or self._address is None:
            return
        try:
            threads = sum(client.nthreads().values())
        except Exception:
            logger.warning("could not ask the Dask scheduler for its workers' threads", exc_info=True)
            return
        with self._lock:
            self._slots = max(1, threads or self._config.max_workers)

    def quiesce(self) -> None:
        self._close(kill=False)

    def reset(self) -> None:
        """Nothing to throw away: Dask replaced the dead worker. Check that the
        scheduler is still there, or fail loudly rather than queue for nobody."""
        client = self._client
        if client is None:
            self.start()
            return
        deadline = time.monotonic() + self._timeout
        while client.status != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        if client.status != "running":
            raise ConnectionError(
                f"lost the Dask scheduler ({self._where()}) and could not reconnect within "
                f"{self._timeout:g}s; check that it runs, or raise backend_options['connect_timeout']"
            )
        self._count_slots()

    def shutdown(self, *, kill: bool) -> None:
        self._close(kill=kill)

    # -- internals -----------------------------------------------------------------------

    def _close(self, *, kill: bool) -> None:
        client, cluster = self._client, self._cluster
        self._client, self._cluster = None, None
        with self._lock:
            self._closing = kill
            held = list(self._held) if kill or client is None else []
            if kill or client is None:
                self._held.clear()
            elif client is not None:
                self._pump_locked(client, all_held=True)
            futures = [f for f, _, _ in self._pending.values()]
        for ids, _, on_done in held:
            on_done(CancelledError(f"the Dask backend shut down before jobs {ids} were handed to Dask"))
        if client is not None and futures:
            if kill:
                try:
                    client.cancel(futures, force=True)
                except Exception:
                    logger.exception("cancelling the Dask tasks failed")
            else:
                with self._lock:
                    self._drained.wait_for(lambda: not self._pending, timeout=_DRAIN_SECONDS)
        # Whatever Dask never reported gets its one report now.
        with self._lock:
            left, self._pending = list(self._pending.values()), {}
            collector, self._collector, self._completed = self._collector, None, None
            self._work.notify_all()
        for _, on_done, ids in left:
            on_done(CancelledError(f"the Dask backend shut down before jobs {ids} finished"))
        for closable in (client, cluster):
            if closable is not None:
                try:
                    closable.close()
                except Exception:
                    logger.exception("closing the Dask %s failed", type(closable).__name__)
        if collector is not None:
            collector.join(_COLLECTOR_JOIN_SECONDS)

    def _collect(self) -> None:
        """The collector thread: report each task as it ends, until closed."""
        while True:
            with self._lock:
                self._work.wait_for(lambda: bool(self._pending) or self._collector is None)
                if self._collector is None and not self._pending:
                    return
                completed = self._completed
            try:
                for future, result in completed:  # ends when no task is left
                    self._finished(future, result)
            except Exception:
                logger.exception("collecting Dask results failed")
                time.sleep(0.1)

    def _finished(self, future: Future[list[bytes]], result: object) -> None:
        """A task ended (collector thread): report its batch once. Never raises."""
        with self._lock:
            entry = self._pending.pop(str(future.key), None)
            client = self._client
            if client is not None and self._held:
                try:
                    self._pump_locked(client)  # a thread came free
                except Exception:
                    logger.exception("handing held jobs to Dask failed")
            if not self._pending:
                self._drained.notify_all()
            closing = self._closing
        if entry is None:
            return  # reported by a shutdown already
        _, on_done, ids = entry
        try:
            if future.status == "finished" and isinstance(result, list):
                outcome: list[bytes] | BaseException = result
            else:
                outcome = self._outcome(future, ids, closing)
        except BaseException as exc:
            outcome = RuntimeError(f"reading the Dask result of jobs {ids} failed: {exc!r}")
        future.release()
        on_done(outcome)

    def _outcome(
        self, future: Future[list[bytes]], ids: list[int], closing: bool
    ) -> list[bytes] | BaseException:
        if future.status == "finished":
            result: list[bytes] = future.result()
            return result
        if future.cancelled():
            if closing:
                return CancelledError(f"the Dask backend shut down before jobs {ids} finished")
            return ConnectionError(
                f"Dask cancelled the task of jobs {ids}: lost the scheduler? ({self._where()})"
            )
        exc = future.exception()
        if isinstance(exc, KilledWorker):
            worker: Any = exc.last_worker
            address = getattr(worker, "address", "?")
            pid = getattr(worker, "pid", None)
            died = WorkerDiedError(
                f"Dask worker {address} died running jobs {ids}, the last of {exc.allowed_failures + 1} "
                "Dask workers that did (Dask's allowed-failures retries are spent)",
                pid=pid if isinstance(pid, int) else 0,
            )
            died.worker_name = f"Dask worker {address}" + (f" (pid {pid})" if isinstance(pid, int) else "")  # type: ignore[attr-defined]
            return died
        # Our task itself could not run there (most often: the worker cannot
        # import subproc_executor). Fail each job with that, not a crash.
        now = time.monotonic()
        message = (
            f"the Dask worker could not run the task of jobs {ids}: {type(exc).__name__}: {exc}. Every Dask "
            "worker needs subproc_executor installed and your modules importable"
        )
        record = ErrorRecord(
            None, f"{type(exc).__module__}.{type(exc).__qualname__}", message, "", "dask", None
        )
        return [
            pack_timing(now, now, 0) + encode_error_outcome(OutcomeTag.JOB_UNREADABLE, record) for _ in ids
        ]

    def _where(self) -> str:
        return f"scheduler {self._address}" if self._address else f"LocalCluster of {os.getpid()}"


def _optional_str(options: dict[str, object], key: str) -> str | None:
    value = options.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"backend_options[{key!r}] must be a string, got {value!r}")
    return value
