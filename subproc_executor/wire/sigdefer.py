"""Python signal handlers held back over a critical section of the main thread.

Why this exists: CPython runs a Python-level signal handler (Ctrl-C's
``KeyboardInterrupt``, a user's SIGTERM or SIGALRM handler) in the main
thread *between any two bytecodes*, and blocking the signal in the main
thread does not stop it: another thread may receive the signal, and the main
thread then runs the handler at its next check. An exception raised there,
between ``os.write`` returning and its count being recorded, or between
taking the frame writer's role and the ``try`` that gives it back, leaves the
stream with bytes written twice or every later sender waiting for a writer
that is gone. Only moving the handler can prevent that::

    main thread                         signal (any thread receives it)
    with deferred():                    handler swapped: _record notes it
        queue frames, write, account      ... nothing raises in here ...
        wait_interruptibly(poll)        a noted signal cuts a wait short
    (exit) originals back, signals      the user's handler runs here, where
           sent again                   the state is whole, and may raise

Reentrant; off the main thread it does nothing (handlers never run there).
A section that hangs stays breakable: a signal that comes once it has lasted
``_ESCAPE_SECONDS`` runs its handler at once.
If putting a handler back is itself cut short by another signal, the swapped
one passes every signal straight to the original, so none is ever swallowed.
A child forked during a deferral gets its handlers back.
One known cost: ``signal.signal`` drops a ``siginterrupt(sig, False)``
(SA_RESTART) setting of a swapped signal.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

__all__ = ["deferred", "wait_interruptibly"]

# A signal that comes when a deferral has lasted longer runs its handler at
# once: the sections are meant to take microseconds (starting a sidecar, at
# most a second or so), and one that hangs must stay breakable by Ctrl-C.
_ESCAPE_SECONDS: Final = 5.0
# Every signal a Python handler can be set for.
_SIGNALS: Final = tuple(sorted(set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}))
# The C functions under signal.getsignal/signal.signal: the public ones turn
# every number into an enum member, which would double the cost of a deferral.
try:
    import _signal  # type: ignore[import-not-found]

    _getsignal: Callable[[int], Handler] = _signal.getsignal
    _setsignal: Callable[[int, Handler], Handler] = _signal.signal
except (ImportError, AttributeError):  # not CPython: the public ones
    _getsignal = signal.getsignal
    _setsignal = signal.signal


class _WaitInterrupted(BaseException):
    """A noted signal cuts a ``wait_interruptibly`` short (never escapes it)."""


class _Deferral:
    """The process's one deferral (handlers are per process, run by the main thread)."""

    def __init__(self) -> None:
        self.depth = 0
        self.since = 0.0  # when the outermost deferral began
        # {signal: the handler it had} for each signal whose handler is _record now.
        self.saved: dict[int, Handler] = {}
        self.caught: list[int] = []
        self.waiting = False
        self.handler = self._record  # one bound method, so getsignal() can be compared to it
        # getsignal() of every signal at the last enter, and which were callable then.
        self._seen: tuple[tuple[Handler, ...], tuple[int, ...]] = ((), ())

    def _record(self, signum: int, frame: FrameType | None) -> Any:
        if self.depth:
            if self.waiting:
                self.caught.append(signum)
                self.waiting = False
                raise _WaitInterrupted
            if time.monotonic() - self.since <= _ESCAPE_SECONDS:
                self.caught.append(signum)
                return None
            # The section has lasted for seconds: something in it hangs. Let the
            # handler run now, so Ctrl-C (or a test's timeout) still breaks it.
        # Left swapped by a restore that a signal cut short: act as the original.
        original = self.saved.get(signum)
        if callable(original):
            return original(signum, frame)
        return None

    def enter(self) -> None:
        # Every step is safe against a handler raising before it: nested, the
        # handlers are swapped already; outermost, the except undoes it all.
        if self.depth:
            self.depth += 1
            return
        try:
            self.since = time.monotonic()
            self.depth = 1
            handlers = tuple(map(_getsignal, _SIGNALS))
            if handlers != self._seen[0]:
                # One store: a handler raising between two would leave a stale list.
                self._seen = (
                    handlers,
                    tuple(s for s, h in zip(_SIGNALS, handlers, strict=True) if callable(h)),
                )
            for signum in self._seen[1]:
                current = _getsignal(signum)
                if current is self.handler:
                    continue  # still swapped since an interrupted restore; saved holds the original
                self.saved[signum] = current  # before the swap: an exception after it still restores
                _setsignal(signum, self.handler)
        except BaseException:
            # A signal noted before the swap ran its own handler here: undo, let it
            # raise, and send again any other signal noted meanwhile.
            self.depth = 0
            caught, self.caught = self.caught, []
            try:
                self._restore()
            finally:
                _resend(caught)
            raise

    def exit(self) -> None:
        if not self.depth:
            return  # a section a forked child inherited (see after_fork_in_child)
        self.depth -= 1
        if self.depth:
            return
        caught, self.caught = self.caught, []
        try:
            self._restore()
        finally:
            if caught:
                _deliver(caught)

    def _restore(self) -> None:
        for signum, original in list(self.saved.items()):
            if _getsignal(signum) is self.handler:  # else set anew inside (a callback's): keep it
                _setsignal(signum, original)
            del self.saved[signum]

    def after_fork_in_child(self) -> None:
        """In every forked child: no section, handlers back, and the signals
        noted so far left to the parent they came to. A child may never leave
        the section it was forked in: a fork by another thread leaves the main
        thread's behind, and one by the main thread (a done-callback that
        starts a ``multiprocessing`` Process) may end in ``os._exit``; its
        sections of its own must still protect it. The exits of sections it
        inherited find the depth at 0 and do nothing (see ``exit``)."""
        self.depth = 0
        self.waiting = False
        self.caught = []
        self._restore()


_DEFERRAL: Final = _Deferral()
os.register_at_fork(after_in_child=_DEFERRAL.after_fork_in_child)


def _on_main_thread() -> bool:
    return threading.get_ident() == threading.main_thread().ident


def _deliver(caught: list[int]) -> None:
    """Run the noted signals' handlers, now back in place, as if they came now.

    The handlers are called, not the signals raised again: the C-level part
    of a signal (``set_wakeup_fd``'s byte, which asyncio reads; a chained
    ``faulthandler``) ran when it came and must not run twice. If one
    raises, the rest are sent to the main thread (where CPython runs them at
    its next check) rather than dropped.
    """
    pending = list(dict.fromkeys(caught))
    frame = sys._getframe(1)
    try:  # around the loop: a new signal's handler may raise at its back edge too
        while True:  # not `while pending:` (tests/test_loop_edges.py)
            if not pending:
                break
            signum = pending.pop(0)
            handler = _getsignal(signum)
            if callable(handler):
                handler(signum, frame)
    except BaseException:
        _resend(pending)
        raise


def _resend(signums: list[int]) -> None:
    """Send signals to the main thread, which runs their handlers at its next check."""
    main = threading.main_thread().ident
    if main is not None:
        for signum in dict.fromkeys(signums):
            signal.pthread_kill(main, signum)


class _Deferred:
    """The context manager ``deferred()`` returns; stateless (the thread that
    enters is the one that exits), so one object serves every ``with``."""

    __slots__ = ()

    def __enter__(self) -> None:
        if _on_main_thread():
            _DEFERRAL.enter()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if _on_main_thread():
            _DEFERRAL.exit()


_DEFERRED: Final = _Deferred()


def deferred() -> _Deferred:
    """``with deferred():`` no Python signal handler runs inside; those that
    came run on the way out. Nothing happens off the main thread."""
    return _DEFERRED


def wait_interruptibly(wait: Callable[[], object]) -> bool:
    """Run a wait that a signal must cut short even inside ``deferred()``
    (waiting for room in a pipe the peer may never read). False if a signal
    came (before or during it): the caller hands its work over and leaves
    the deferral, where that signal's handler then runs.

    ``wait`` should be bounded (a poll with a timeout of a fraction of a
    second) and the caller loop: a signal that comes just before the
    syscall starts interrupts nothing (CPython has the same race), and is
    seen here at the next call."""
    d = _DEFERRAL
    if not d.depth or not _on_main_thread():
        wait()
        return True
    try:
        d.waiting = True
        if not d.caught:
            wait()
        d.waiting = False
    except _WaitInterrupted:
        return False
    except BaseException:
        d.waiting = False
        raise
    return not d.caught
