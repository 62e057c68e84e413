"""A rain of signals whose handler raises, for tests of code that Ctrl-C may
interrupt between any two bytecodes.

CPython runs a Python signal handler in the main thread, even when another
thread received the signal; so the rain sends SIGUSR1 at random moments to
the main thread or to its own thread, and the handler raises ``error`` once
per arming (the test's own ``except`` clause is never hit by a second one).
"""

from __future__ import annotations

import gc
import random
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType, TracebackType

# How long ``__exit__`` waits for the rain's thread (it stops within one gap).
_JOIN_SECONDS = 30.0


class InterruptRain:
    """``with InterruptRain(...) as rain: rain.run(n, step)``."""

    def __init__(
        self, rnd: random.Random, error: type[BaseException], *, to_main: float, max_gap: float
    ) -> None:
        """``to_main``: the share of signals sent to the main thread (the rest go
        to the rain's own thread); ``max_gap``: the most seconds between two."""
        self._rnd = rnd
        self.error = error
        self._to_main = to_main
        self._max_gap = max_gap
        self._armed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._rain, name="test-interrupter", daemon=True)
        self._old: object = None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self._armed and not _in_finalizer(frame):
            self._armed = False
            raise self.error(f"signal {signum} during the step")

    def __enter__(self) -> InterruptRain:
        gc.collect()  # earlier tests' garbage is not finalized under the rain
        self._old = signal.signal(signal.SIGUSR1, self.handler)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._armed = False
        self._stop.set()
        self._thread.join(_JOIN_SECONDS)
        signal.signal(signal.SIGUSR1, self._old)  # type: ignore[arg-type]

    def _rain(self) -> None:
        me = threading.get_ident()
        main = threading.main_thread().ident
        assert main is not None
        while not self._stop.is_set():
            self._stop.wait(self._rnd.random() * self._max_gap)
            signal.pthread_kill(main if self._rnd.random() < self._to_main else me, signal.SIGUSR1)

    def run(self, count: int, step: Callable[[int], object]) -> int:
        """Call ``step(0)``, ..., ``step(count - 1)`` in order, each once (an
        interrupted step is not retried), under the rain; return how many were
        interrupted.

        The loop lives in a function of its own, so an interrupt always
        surfaces at a call inside this ``try``: a loop written inside the
        ``try`` may be interrupted at its back edge, which CPython 3.13 leaves
        outside the ``try`` (tests/test_loop_edges.py).
        """
        after = [0]
        interrupted = 0
        while after[0] < count:
            try:
                self._steps(after, count, step)
                self._armed = False
            except self.error:
                interrupted += 1
        return interrupted

    def _steps(self, after: list[int], count: int, step: Callable[[int], object]) -> None:
        while after[0] < count:
            k = after[0]
            after[0] = k + 1
            self._armed = True  # again each step: an interrupt may have been dropped
            step(k)


def _in_finalizer(frame: FrameType | None) -> bool:
    """Whether the handler runs inside code the garbage collector called (a
    ``__del__``, a ``weakref.finalize``, a ``gc.callbacks`` entry), where CPython
    prints an exception and drops it."""
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code in callbacks:
            return True
        if code.co_name == "__call__" and code.co_filename == weakref.__file__:
            return True
        frame = frame.f_back
    return False
