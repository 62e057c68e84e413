"""Descriptor and process helpers every process of the executor uses, written once.

Small, dependency-free and safe to call from any thread: draining a
non-blocking pipe, a self-pipe that wakes a selector, sending a signal to a
pid that may be gone, opening a pidfd where the platform has one, and asking
for a bigger pipe buffer.
"""

from __future__ import annotations

import fcntl
import os

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["PIPE_BYTES", "WakePipe", "drain_fd", "grow_pipe", "open_pidfd", "signal_pid"]

# Pipe capacity asked for (Linux; unprivileged processes may get up to
# /proc/sys/fs/pipe-max-size, 1 MiB by default). The default 64 KiB makes a big
# payload cost a context switch per 64 KiB; a bigger pipe moves it in fewer.
PIPE_BYTES: Final = 1 << 20


def drain_fd(fd: int) -> None:
    """Read and discard everything a non-blocking ``fd`` holds now."""
    try:
        while True:  # not `while cond:` in a try (tests/test_loop_edges.py)
            if not os.read(fd, 65536):
                break
    except (BlockingIOError, InterruptedError):
        pass


def signal_pid(pid: int, sig: int) -> bool:
    """Send ``sig`` to ``pid``; False if it is gone (or not ours to signal)."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (Linux 5.3+, Python 3.9+): readable once it exits.
    None where unavailable or when the process is already gone."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        return None
    return fd


def grow_pipe(fd: int) -> None:
    """Ask for a ``PIPE_BYTES`` pipe buffer; keep the default where the platform says no."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:
        return
    try:
        fcntl.fcntl(fd, set_size, PIPE_BYTES)
    except OSError:
        pass


class WakePipe:
    """A self-pipe: ``wake()`` from any thread makes ``fileno()`` readable
    until ``drain()``. Both ends are non-blocking, so a wake never blocks and
    many wakes before a drain cost one wakeup."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def fileno(self) -> int:
        return self._r

    def wake(self) -> None:
        try:
            os.write(self._w, b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # unread wakeups are pending: the reader will look
        except OSError:
            pass  # closed: nobody is waiting any more

    def drain(self) -> None:
        drain_fd(self._r)

    def fds(self) -> tuple[int, int]:
        """Both descriptors, for a forked child to close."""
        return self._r, self._w

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._r = self._w = -1
