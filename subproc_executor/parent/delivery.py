"""Delivering outcomes to futures on threads that never read a pipe.

A future's done-callbacks run inside ``set_result``, on whichever thread
resolves it, and may do anything a user does: submit more jobs, shut the
executor down, or block waiting for another job's result. If that thread were
the reader of the sidecar's pipe, a blocked callback would stop every other
result, and one waiting for another job's result would wait forever. So
futures that have callbacks are resolved here instead:

    reader thread --submit(fn)--> [queue] --> delivery thread(s): fn() -> set_result -> callbacks
                                     ^
    monitor: a backlog while every delivery thread has been busy for
    STALL_SECONDS (a callback that blocks) starts one more, up to MAX_THREADS

In the common case one thread delivers everything in order, as the stdlib's
manager thread runs callbacks; more start only while callbacks block. Idle
threads exit after IDLE_SECONDS. Futures without callbacks are resolved by
the reader itself (waking a ``result()`` waiter runs no user code).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["Deliverer"]

logger = logging.getLogger(__name__)

# A delivery thread busy this long with one outcome is taken to be blocked in
# a callback: shorter reacts sooner, longer starts fewer threads for callbacks
# that are merely slow.
STALL_SECONDS: Final = 0.02
# Delivery threads at most; each further blocked callback waits for one of
# these to finish.
MAX_THREADS: Final = 32
# A delivery thread with nothing to do for this long exits.
IDLE_SECONDS: Final = 5.0


class Deliverer:
    """A small, self-sizing pool of threads that run deliveries in order."""

    def __init__(self, name: str = "subproc_executor-delivery") -> None:
        self._name = name
        self._lock = threading.Lock()
        # Wakes delivery threads (work to do, or closing).
        self._cond = threading.Condition(self._lock)
        # Wakes the monitor: more outcomes wait than threads are idle.
        self._watch_cond = threading.Condition(self._lock)
        self._queue: deque[Callable[[], None]] = deque()
        # {thread: monotonic time it started its current delivery, or None when idle}
        self._busy: dict[threading.Thread, float | None] = {}
        self._monitor: threading.Thread | None = None
        self._closed = False
        self._count = 0

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on a delivery thread. Never blocks; ``fn`` must not raise.
        Where no thread can start (interpreter shutdown), ``fn`` runs here."""
        inline = False
        with self._lock:
            self._queue.append(fn)
            try:
                if not self._busy:
                    self._start_thread_locked()
                idle = sum(1 for since in self._busy.values() if since is None)
                if len(self._queue) > idle:
                    # Some outcome will wait for a thread: have the monitor look.
                    if self._monitor is None:
                        self._monitor = self._spawn(self._watch, f"{self._name}-monitor")
                    self._watch_cond.notify()
            except RuntimeError:  # "can't create new thread at interpreter shutdown"
                if not self._busy:
                    self._queue.remove(fn)
                    inline = True
            self._cond.notify()
        if inline:
            fn()  # resolved here rather than never

    def is_delivery_thread(self) -> bool:
        return threading.current_thread() in self._busy

    def close(self, *, wait: bool) -> None:
        """Let the threads exit once the queue is empty; with ``wait``, wait
        for them (as the stdlib's shutdown waits for the thread that runs its
        callbacks), unless called from one of them."""
        with self._lock:
            self._closed = True
            self._cond.notify_all()
            self._watch_cond.notify_all()
            threads = [t for t in self._busy if t is not threading.current_thread()]
            if self._monitor is not None and self._monitor is not threading.current_thread():
                threads.append(self._monitor)
        if wait:
            for thread in threads:
                thread.join()

    # -- threads (lock held where the name says so) --------------------------------

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def _start_thread_locked(self) -> None:
        """Start a delivery thread; registered only once started (it waits for
        our lock before it looks at its entry)."""
        self._count += 1
        thread = threading.Thread(target=self._run, name=f"{self._name}-{self._count}", daemon=True)
        thread.start()
        self._busy[thread] = None

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:
                idle_since = time.monotonic()
                while True:  # not `while cond:` in a with (tests/test_loop_edges.py)
                    if self._queue:
                        break
                    if self._closed or time.monotonic() - idle_since >= IDLE_SECONDS:
                        # Exiting, not only idle: a submit meanwhile starts a new thread.
                        del self._busy[me]
                        return
                    self._cond.wait(IDLE_SECONDS)
                fn = self._queue.popleft()
                self._busy[me] = time.monotonic()
            try:
                fn()
            except BaseException:  # fn should not raise; a delivery thread must not die
                logger.exception("delivering an outcome failed")
            finally:
                # It holds the job and its outcome (perhaps a mapped segment):
                # not for as long as this thread then waits idle.
                del fn
                with self._lock:
                    self._busy[me] = None
                    self._cond.notify_all()

    def _watch(self) -> None:
        """The monitor: while outcomes wait and every thread has been stuck in
        one for STALL_SECONDS, add a thread. Sleeps while there is no backlog;
        exits when closed."""
        with self._lock:
            while not self._closed:
                starts = [since for since in self._busy.values() if since is not None]
                if self._queue and self._busy and len(starts) == len(self._busy):
                    stalled_for = time.monotonic() - max(starts)
                    if stalled_for >= STALL_SECONDS and len(self._busy) < MAX_THREADS:
                        logger.debug("done-callbacks block every delivery thread; starting another")
                        self._start_thread_locked()
                        continue
                    self._watch_cond.wait(max(STALL_SECONDS - stalled_for, 0.001))
                elif self._queue:
                    self._watch_cond.wait(STALL_SECONDS)  # an idle thread is about to take it
                else:
                    self._watch_cond.wait()
            self._monitor = None
