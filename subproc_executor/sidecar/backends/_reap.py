"""The sidecar's view of its worker processes, for every backend.

``WorkerTracker`` remembers each worker it has seen, so the exit code of
one that died can be read after the pool has dropped it;
``terminate_children`` stops workers in bounded time: SIGTERM, a grace
period, then SIGKILL.

The rule: this process never polls a multiprocessing child that another
thread may be polling at the same time. A forkserver child's exit status
comes once, through its sentinel pipe (``popen_forkserver.Popen.poll``): of
two threads polling it at once, one reads the status and the other reads
EOF and stores 255, possibly over the real code, which is then lost for
good. Polling is ``Process.exitcode``, ``is_alive()``, ``join()``,
``multiprocessing.active_children()``, and every ``Process.start()`` (it
polls all children first); a pool's own thread does all of these to its
workers. So:

* ``WorkerTracker`` takes the workers from their pool's process table, not
  from ``active_children()``, and remembers the pool thread that owns each;
* liveness is the sentinel's readiness, which reads nothing;
* a dead worker's exit code is the one its reaper stored. While its owner
  lives and has stored none, the code is not known yet (None): the owner is
  about to reap it. Only a worker no live thread owns is polled here. A
  child whose poll is a ``waitpid`` (fork, spawn, loky) is polled even so:
  of two concurrent waitpids the loser stores nothing, and a stuck owner
  (see ``_executor_pool._unwedge``) must not hide its death;
* ``terminate_children`` and ``live_children`` list the children from
  multiprocessing's own set, without polling them;
* the pipes backend polls a worker only under its ``_fork_lock``, which its
  ``Process.start()`` holds too.

The pool's process table and manager thread, and multiprocessing's set of
children, are private attributes (present in CPython 3.10 to 3.13 and in
loky); without them this falls back to ``active_children()``, which polls.
Not ours to prevent: a stdlib pool that starts workers on demand
(forkserver, spawn) starts one inside ``submit()``, which polls every
child, while its manager thread may be joining a retired one.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Iterable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

from ...wire.fdtools import signal_pid

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

logger = logging.getLogger(__name__)

# How long a worker gets to exit after SIGTERM before SIGKILL. Longer lets
# a worker's cleanup handlers finish; shorter bounds shutdown and quiesce.
TERMINATE_GRACE_SECONDS: Final = 2.0
# How long terminate_children waits for workers to die after SIGKILL.
_KILL_WAIT_SECONDS: Final = 5.0


class WorkerTracker:
    """Remembers the workers seen, to report how they ended, without polling them (see the rule above)."""

    def __init__(self) -> None:
        # Workers whose exit code is not known yet: alive, or dead and not reaped.
        self._procs: dict[int, BaseProcess] = {}
        # {pid: the pool thread that reaps it}, for the workers of a pool that has one.
        self._owners: dict[int, threading.Thread] = {}
        # {pid: exitcode} of the workers that ended. Their process objects are
        # dropped, so that their sentinels close when their pool drops them too.
        self._codes: dict[int, int] = {}

    def live_pids(self, pool: object | None = None) -> list[int]:
        """Pids of the live workers; remembers ``pool``'s new ones."""
        self._see(pool)
        gone = _gone(self._procs)
        return sorted(pid for pid in self._procs if pid not in gone)

    def exitcodes(self, pool: object | None = None) -> dict[int, int | None]:
        """{pid: exitcode} of every worker remembered; None while alive, or
        dead but not reaped yet by the thread that owns it."""
        self._see(pool)
        for pid in _gone(self._procs):
            self._settle(pid)
        return {**self._codes, **dict.fromkeys(self._procs)}

    def dead_pids(self, pool: object | None = None) -> list[int]:
        """Workers remembered that are dead, whether or not their exit code is known yet."""
        self._see(pool)
        return sorted({*self._codes, *_gone(self._procs)})

    def forget_dead(self) -> None:
        for pid in _gone(self._procs):
            del self._procs[pid]
        self._owners = {pid: t for pid, t in self._owners.items() if pid in self._procs}
        self._codes.clear()

    def _see(self, pool: object | None) -> None:
        """Remember ``pool``'s new workers and the thread that owns them."""
        if pool is None:
            return
        table = getattr(pool, "_processes", None)
        if isinstance(table, dict):
            procs: Iterable[object] = table.copy().values()  # the pool's threads change it
        else:
            procs = multiprocessing.active_children()  # an unknown pool: the public API, which polls
        owner = getattr(pool, "_executor_manager_thread", None)
        for p in procs:
            pid = getattr(p, "pid", None)
            if not isinstance(p, BaseProcess) or pid is None:
                continue
            if pid in self._codes:
                if _gone({pid: p}):
                    continue  # the worker that ended, still in the pool's table
                del self._codes[pid]  # a new worker, with the pid of one that ended
            self._procs.setdefault(pid, p)
            if isinstance(owner, threading.Thread):
                self._owners.setdefault(pid, owner)

    def _settle(self, pid: int) -> None:
        """Move dead worker ``pid`` to ``_codes`` once its exit code can be read
        without racing another thread."""
        p = self._procs[pid]
        if getattr(p, "_popen", None) is None:  # closed by its owner: reaped, its exit code dropped with it
            del self._procs[pid]
            self._owners.pop(pid, None)
            return
        code = _stored_exitcode(p)  # by whoever reaped it
        if code is None and self._may_poll(pid, p):
            code = p.exitcode
        if code is not None:
            self._codes[pid] = code
            del self._procs[pid]
            self._owners.pop(pid, None)

    def _may_poll(self, pid: int, p: BaseProcess) -> bool:
        """Whether no other thread can be polling ``p`` now, or a race would be harmless."""
        owner = self._owners.get(pid)
        return owner is None or not owner.is_alive() or not reads_status_once(p)


def reads_status_once(process: BaseProcess) -> bool:
    """Whether polling ``process`` consumes its exit status (forkserver), so
    that a concurrent poll loses it."""
    return getattr(getattr(process, "_popen", None), "method", None) == "forkserver"


def _gone(procs: dict[int, BaseProcess], timeout: float = 0.0) -> set[int]:
    """Pids whose process has exited, waiting up to ``timeout`` for the first;
    read without polling.

    A process has exited when an exit code is stored in it, or its sentinel
    is ready: exited (fork, spawn), or exited and reaped by the forkserver.
    Not the sentinel alone: a forkserver child's sentinel turns unready again
    once its status has been read, until the forkserver closes its end. A
    closed sentinel (ValueError) is a process closed by its owner.
    """
    by_sentinel: dict[int, int] = {}
    gone = set()
    for pid, p in procs.items():
        try:
            if _stored_exitcode(p) is not None:
                gone.add(pid)
            else:
                by_sentinel[p.sentinel] = pid
        except ValueError:
            gone.add(pid)
    for sentinel in wait(list(by_sentinel), 0 if gone else timeout):
        if isinstance(sentinel, int):
            gone.add(by_sentinel[sentinel])
    return gone


def _stored_exitcode(p: BaseProcess) -> int | None:
    """The exit code stored in ``p`` by whoever reaped it; reads, never polls."""
    code = getattr(getattr(p, "_popen", None), "returncode", None)
    return code if isinstance(code, int) else None


def children() -> list[BaseProcess]:
    """Every multiprocessing child of this process not known to be reaped,
    without polling them (``active_children()`` polls each)."""
    kids = getattr(multiprocessing.process, "_children", None)  # private: fall back to the public API
    return list(kids) if isinstance(kids, set) else multiprocessing.active_children()


def live_children() -> list[int]:
    """Pids of the multiprocessing children of this process still alive; polls nothing."""
    procs = {p.pid: p for p in children() if p.pid is not None}
    return sorted(set(procs) - _gone(procs))


def sentinel_ready(process: BaseProcess, timeout: float) -> bool:
    """Whether ``process`` exits within ``timeout``; polls nothing (see ``_gone``)."""
    return bool(_gone({process.pid or 0: process}, timeout))


def terminate_children(
    grace: float = TERMINATE_GRACE_SECONDS, processes: Iterable[BaseProcess] | None = None
) -> None:
    """Stop ``processes`` (default: every multiprocessing child of this
    process); bounded by ``grace``, then SIGKILL.

    Liveness is read from each process's sentinel and signals are sent by
    pid, not through ``Process`` methods: a pool's own thread may be reaping
    a worker meanwhile (see the rule above), and loky's process objects have
    no ``kill()``. For the same reason a forkserver child is left to its
    owner to reap (the forkserver has reaped it already: no zombie is left);
    the others are joined, so that none is left a zombie.
    """
    procs = {p.pid: p for p in (children() if processes is None else processes) if p.pid is not None}
    live = {pid: procs[pid] for pid in sorted(set(procs) - _gone(procs))}
    for pid in live:
        signal_pid(pid, signal.SIGTERM)
    pending = _wait_gone(live, grace)
    for pid in pending:
        logger.warning("worker pid %s ignored SIGTERM for %.1fs; sending SIGKILL", pid, grace)
        signal_pid(pid, signal.SIGKILL)
    stuck = _wait_gone(pending, _KILL_WAIT_SECONDS)
    if stuck:
        logger.error("workers %s outlived SIGKILL by %.0fs", sorted(stuck), _KILL_WAIT_SECONDS)
    for p in live.values():
        if not reads_status_once(p):
            p.join(0.1)  # exited (its sentinel is ready): waitpid returns at once


def _wait_gone(procs: dict[int, BaseProcess], timeout: float) -> dict[int, BaseProcess]:
    """Wait up to ``timeout`` for ``procs`` to exit; those still alive."""
    deadline = time.monotonic() + timeout
    pending = dict(procs)
    while pending:
        gone = _gone(pending, max(0.0, deadline - time.monotonic()))
        pending = {pid: p for pid, p in pending.items() if pid not in gone}
        if time.monotonic() >= deadline:
            break
    return pending
