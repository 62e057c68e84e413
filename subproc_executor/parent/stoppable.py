"""A Future whose ``cancel()`` stops a running job (``cancel_running=True``).

``concurrent.futures.Future.cancel()`` returns False once the job runs: the
stdlib cannot stop it. Ours can (the sidecar kills the one worker running
it), so for jobs submitted with ``cancel_running`` the future's ``cancel()``
also works while RUNNING: it asks the supervisor to stop the job, marks the
future cancelled at once, wakes its waiters and runs its callbacks, exactly
as a cancel of a queued job does. That is what lets ``asyncio`` cancellation
of ``loop.run_in_executor(...)`` (which calls ``cancel()`` on this future)
stop the work.

It touches ``Future``'s private state (``_condition``, ``_state``,
``_waiters``, ``_invoke_callbacks``), the same in CPython 3.10 to 3.13, as
``Future.cancel`` itself does.
"""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, RUNNING

from ..wire.sigdefer import deferred

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["StoppableFuture"]


class StoppableFuture(Future):  # type: ignore[type-arg]
    """A Future that can be cancelled while its job runs; see the module."""

    def __init__(self) -> None:
        super().__init__()
        self._stop: Callable[[], None] | None = None

    def bind(self, stop: Callable[[], None]) -> None:
        """``stop()`` ends the running job (called once, outside our lock)."""
        self._stop = stop

    def cancel(self) -> bool:
        # Marked cancelled, asked to stop and its callbacks run in one step: Ctrl-C
        # in between would leave a future cancelled whose job runs on, or whose
        # callbacks (an asyncio awaiter's) never run (see wire.sigdefer).
        with deferred():
            with self._condition:
                if self._state != RUNNING or self._stop is None:
                    stop = None
                else:
                    stop = self._stop
                    # Straight to CANCELLED_AND_NOTIFIED: nothing will call
                    # set_running_or_notify_cancel() again, so tell waiters here.
                    self._state = CANCELLED_AND_NOTIFIED
                    waiters: list[Any] = list(self._waiters)
                    for waiter in waiters:
                        waiter.add_cancelled(self)
                    self._condition.notify_all()
            if stop is None:
                return super().cancel()  # queued or done: the stdlib's, its callbacks inside too
            stop()  # never blocks (see Supervisor.stop_job); before callbacks that might
            self._invoke_callbacks()  # type: ignore[attr-defined]
        return True
