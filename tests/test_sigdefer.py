"""Python signal handlers held back over a critical section (subproc_executor.wire.sigdefer).

Inside ``deferred()`` no Python-level handler runs; each signal that came runs
its own handler on the way out, where it may raise. Handlers and the signal
mask are exactly as before afterwards, whatever happened inside.
"""

from __future__ import annotations

import functools
import os
import select
import signal
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subproc_executor.wire import sigdefer
from subproc_executor.wire.sigdefer import deferred, wait_interruptibly

pytestmark = pytest.mark.timeout(60)


class Raised(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@pytest.fixture
def raising() -> Iterator[list[int]]:
    """SIGUSR1 and SIGUSR2 handlers that note the signal and raise; restored after."""
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)
        raise Raised(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        yield seen
        for s in old:
            assert signal.getsignal(s) is handler, "a handler was left swapped"
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, []), "signals left blocked"
        assert sigdefer._DEFERRAL.depth == 0 and not sigdefer._DEFERRAL.saved
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def test_a_raising_handler_runs_on_the_way_out(raising: list[int]) -> None:
    with pytest.raises(Raised), deferred():
        signal.raise_signal(signal.SIGUSR1)
        assert raising == [], "the handler ran inside the deferral"
        inside = True
    assert inside and raising == [signal.SIGUSR1]


def test_nested_deferrals_deliver_at_the_outermost_exit(raising: list[int]) -> None:
    with pytest.raises(Raised), deferred():
        with deferred():
            signal.raise_signal(signal.SIGUSR2)
        assert raising == []
    assert raising == [signal.SIGUSR2]


def test_every_signal_that_came_is_delivered_even_when_the_first_raises(raising: list[int]) -> None:
    with pytest.raises(Raised), deferred():
        signal.raise_signal(signal.SIGUSR1)
        signal.raise_signal(signal.SIGUSR2)
    # The second was sent again to the main thread when the first raised: its
    # handler ran then (its exception is the one seen, the first's its context).
    assert sorted(raising) == [signal.SIGUSR1, signal.SIGUSR2]


def test_off_the_main_thread_nothing_changes(raising: list[int]) -> None:
    seen: list[object] = []

    def run() -> None:
        with deferred():
            seen.append(signal.getsignal(signal.SIGUSR1))
            seen.append(wait_interruptibly(lambda: None))

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert seen[1] is True and callable(seen[0]) and seen[0] is not sigdefer._DEFERRAL.handler


def _never_ready() -> Iterator[int]:
    r, w = os.pipe()
    try:
        yield r
    finally:
        os.close(r)
        os.close(w)


def test_a_signal_cuts_a_wait_short_and_raises_on_the_way_out(raising: list[int]) -> None:
    """A wait inside a deferral (a sender waiting for room) ends when a signal comes.
    (Sent to the main thread: one that another thread receives wakes no syscall of
    the main thread's; CPython itself has the same limit.)"""
    for r in _never_ready():
        poller = select.poll()
        poller.register(r, select.POLLIN)
        waiting = threading.Event()
        main = threading.main_thread().ident
        assert main is not None

        def kick(waiting: threading.Event = waiting, main: int = main) -> None:
            waiting.wait(30)
            signal.pthread_kill(main, signal.SIGUSR1)

        kicker = threading.Thread(target=kick)
        kicker.start()
        slices = 0
        with pytest.raises(Raised), deferred():
            waiting.set()
            # In slices, as the frame writer waits: a signal that comes just
            # before a poll starts is seen at the next call.
            while wait_interruptibly(functools.partial(poller.poll, 50)):
                slices += 1
                assert slices < 600, "30 s of waiting and the signal was never seen"
        kicker.join(30)
        assert raising == [signal.SIGUSR1]


def test_a_signal_before_the_wait_means_no_wait(raising: list[int]) -> None:
    with pytest.raises(Raised), deferred():
        signal.raise_signal(signal.SIGUSR1)
        assert wait_interruptibly(lambda: pytest.fail("waited though a signal had come")) is False


def test_a_handler_left_swapped_passes_signals_to_the_original(raising: list[int]) -> None:
    """If putting the handlers back is cut short, the swapped one acts as the original."""
    d = sigdefer._DEFERRAL
    d.enter()
    d.depth = 0  # as if exit() was interrupted before _restore
    try:
        assert signal.getsignal(signal.SIGUSR1) is d.handler
        with pytest.raises(Raised):
            signal.raise_signal(signal.SIGUSR1)
        # The next deferral takes it over and puts the original back.
        with deferred():
            pass
    finally:
        d._restore()
    assert raising == [signal.SIGUSR1]


@settings(max_examples=40, deadline=None)
@given(
    plan=st.lists(
        st.one_of(st.sampled_from(["enter", "exit"]), st.sampled_from([signal.SIGUSR1, signal.SIGUSR2])),
        max_size=20,
    )
)
def test_any_nesting_and_signals_deliver_each_once_outside(plan: list[object]) -> None:
    """Random nesting with signals at random points: inside, no handler runs; every
    kind of signal sent runs its handler at least once (signals coalesce), outside."""
    seen: list[tuple[int, int]] = []

    def handler(signum: int, frame: object) -> None:
        seen.append((signum, sigdefer._DEFERRAL.depth))

    old = {s: signal.signal(s, handler) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    stack: list[sigdefer._Deferred] = []
    sent: set[int] = set()
    try:
        for step in plan:
            if step == "enter":
                cm = deferred()
                cm.__enter__()
                stack.append(cm)
            elif step == "exit":
                if stack:
                    stack.pop().__exit__(None, None, None)
            else:
                assert isinstance(step, int)
                sent.add(step)
                signal.raise_signal(step)
        while stack:
            stack.pop().__exit__(None, None, None)
        for _ in range(100):  # any signal sent again runs at a check
            pass
        for s in old:
            assert signal.getsignal(s) is handler
    finally:
        while stack:
            stack.pop().__exit__(None, None, None)
        for s, h in old.items():
            signal.signal(s, h)
    assert {s for s, _ in seen} == sent
    assert all(depth == 0 for _, depth in seen), "a handler ran inside a deferral"


def test_a_section_that_hangs_stays_breakable(raising: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal that comes once a deferral has lasted too long runs its handler at once
    (Ctrl-C, or a test's timeout, must still break a hang inside)."""
    monkeypatch.setattr(sigdefer, "_ESCAPE_SECONDS", 0.0)
    with pytest.raises(Raised), deferred():
        for _ in _never_ready():
            pass  # any time at all has passed now
        signal.raise_signal(signal.SIGUSR1)
        pytest.fail("the handler did not run inside a deferral that lasted too long")
    assert raising == [signal.SIGUSR1]


def test_a_deferred_signal_reaches_a_wakeup_fd_once(raising: list[int]) -> None:
    """The C-level part of a signal (the byte set_wakeup_fd writes, which asyncio
    reads) ran when it came: delivering it on the way out must not repeat it."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    old = signal.set_wakeup_fd(w)
    try:
        with pytest.raises(Raised), deferred():
            signal.raise_signal(signal.SIGUSR1)
    finally:
        signal.set_wakeup_fd(old)
    try:
        assert os.read(r, 100) == bytes([signal.SIGUSR1]), "the wakeup fd saw the signal twice"
    finally:
        os.close(r)
        os.close(w)
    assert raising == [signal.SIGUSR1]


def _child_status(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _child_checks(handler: object, seen: list[int]) -> int:
    """In a forked child: 0 if no section is left over, its handler is back, and a
    deferral of its own holds the signal back and runs its handler on the way out;
    else which check failed."""
    if sigdefer._DEFERRAL.depth != 0:
        return 3
    if signal.getsignal(signal.SIGUSR1) is not handler:
        return 4
    seen.clear()
    with deferred():
        signal.raise_signal(signal.SIGUSR1)
        if seen:
            return 5  # ran inside the child's own deferral
    return 0 if seen == [signal.SIGUSR1] else 6


@pytest.mark.filterwarnings("ignore:.*is multi-threaded, use of fork:DeprecationWarning")
def test_a_child_forked_by_another_thread_in_a_deferral_gets_its_handlers_back() -> None:
    """The child's one thread never leaves the parent's section: its handlers go
    back at the fork, so a signal runs its handler at once (not after the 5 s
    escape hatch); a deferral in the child works as anywhere."""
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)

    old = signal.signal(signal.SIGUSR1, handler)
    pids: list[int] = []

    def fork() -> None:
        pid = os.fork()
        if pid == 0:
            code = _child_checks(handler, seen)
            if code == 0:
                seen.clear()
                signal.raise_signal(signal.SIGUSR1)  # outside any section: at once
                code = 0 if seen == [signal.SIGUSR1] else 7
            os._exit(code)
        pids.append(pid)

    try:
        with deferred():
            forker = threading.Thread(target=fork)
            forker.start()
            forker.join()
        assert pids, "the fork failed"
        assert _child_status(pids[0]) == 0
    finally:
        signal.signal(signal.SIGUSR1, old)


@pytest.mark.filterwarnings("ignore:.*is multi-threaded, use of fork:DeprecationWarning")
def test_a_child_forked_by_the_main_thread_in_a_deferral_is_protected_by_its_own() -> None:
    """A fork by the thread inside the section (a done-callback that starts a
    multiprocessing Process, which may end in os._exit inside it): the child has
    its handlers at once and its own deferrals hold signals back, and leaving the
    inherited section there undoes nothing."""
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        with deferred():
            pid = os.fork()
            if pid == 0:
                code = _child_checks(handler, seen)
        if pid == 0:
            if code == 0 and (sigdefer._DEFERRAL.depth or signal.getsignal(signal.SIGUSR1) is not handler):
                code = 8
            os._exit(code)
        assert _child_status(pid) == 0
        assert signal.getsignal(signal.SIGUSR1) is handler
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_a_handler_set_inside_a_deferral_is_kept() -> None:
    """A done-callback run inside a deferral (cancel()) may set a handler: the way
    out puts back the ones it swapped, not over one set meanwhile."""

    def before(signum: int, frame: object) -> None:
        pass

    def during(signum: int, frame: object) -> None:
        pass

    old = signal.signal(signal.SIGUSR1, before)
    try:
        with deferred():
            signal.signal(signal.SIGUSR1, during)
        assert signal.getsignal(signal.SIGUSR1) is during
        with deferred():
            pass
        assert signal.getsignal(signal.SIGUSR1) is during
    finally:
        signal.signal(signal.SIGUSR1, old)
