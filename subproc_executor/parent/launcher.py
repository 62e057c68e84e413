"""Starting one sidecar process and watching it, from the parent.

``SidecarProcess`` owns the ``Popen``, the two frame pipes, the sidecar's
output, one reader thread (``subproc_executor-reader``) that waits on frames
from the sidecar, a wake pipe and the process's exit (a Linux pidfd;
elsewhere a small waiter thread), and one output thread
(``subproc_executor-output``) that copies the sidecar's stderr to ours
without ever blocking on it, keeping its tail for error messages. So there
are two independent ways to notice a dead sidecar: EOF on its pipe, and its
exit. Whichever comes first ends the connection, and ``on_lost`` runs
exactly once.

It knows frames and processes, not jobs: the executor gives it callbacks.

One module, a little over 450 lines: the Popen, the pipes, the reader
thread's selector, the stderr copy and the exit detection all end together
(``_finish``), and the order in which they are closed is what makes a dead
sidecar read as EOF exactly once; apart, that order would be spread over
modules. The start-up choices themselves live in ``spawn``.
"""

from __future__ import annotations

import logging
import os
import select
import selectors
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence

from ..errors import describe_exitcode
from ..wire.fdtools import WakePipe, grow_pipe, open_pidfd
from ..wire.messages import Fatal, Hello
from ..wire.protocol import Frame, FrameDecoder, MessageKind, ProtocolError
from ..wire.record import Record
from ..wire.transport import READ_CHUNK_BYTES, FrameWriter, read_frames
from .spawn import open_private_log, sidecar_argv

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["SidecarExit", "SidecarProcess"]

logger = logging.getLogger(__name__)

# Lines of the sidecar's output kept to quote when it dies.
OUTPUT_TAIL_LINES: Final = 20
# After SHUTDOWN, how long the sidecar gets to stop its workers and exit
# before it is killed. It escalates SIGTERM -> SIGKILL on its workers within
# a few seconds itself, so this only bounds a sidecar that is itself stuck.
SIDECAR_EXIT_GRACE_SECONDS: Final = 15.0


def _write_if_room(fd: int, poller: select.poll, data: bytes) -> int:
    """Write ``data`` to ``fd`` as far as it has room now; the bytes dropped.

    A pipe or socket is polled before each write of at most PIPE_BUF bytes,
    which then cannot block; a file or terminal always has room.
    """
    view = memoryview(data)
    while view:
        if not poller.poll(0):
            return len(view)
        try:
            n = os.write(fd, view[: select.PIPE_BUF])
        except OSError:
            return len(view)
        view = view[n:]
    return 0


class SidecarExit(Record):
    """How a connection to a sidecar ended."""

    pid: int
    returncode: int | None
    # True when the sidecar said BYE: it was asked to stop and did.
    clean: bool
    # Why the connection ended, in words, when it was not clean.
    reason: str
    output_tail: str
    # The error behind an unclean end, such as a ProtocolError.
    cause: BaseException | None = None
    # False if it ended before saying HELLO: it could not start at all.
    started: bool = True
    # It said FATAL: it could not go on (a backend that cannot start).
    fatal: bool = False

    def describe(self) -> str:
        status = (
            "is still running"
            if self.returncode is None
            else f"exited with {describe_exitcode(self.returncode)}"
        )
        text = f"sidecar (pid {self.pid}) {status}: {self.reason}"
        if self.output_tail:
            text += f"\nlast lines of its output:\n{self.output_tail}"
        return text


class SidecarProcess:
    """One running sidecar and the reader thread that serves it."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        cwd: str,
        init_payload: bytes,
        on_frames: Callable[[list[Frame]], None],
        on_lost: Callable[[SidecarExit], None],
        log_path: str | None = None,
        argv: Sequence[str] | None = None,
        on_wake: Callable[[], None] | None = None,
    ) -> None:
        """Start the sidecar (``argv``, default ``sidecar_argv()``, then its
        descriptor arguments) and the reader thread that serves it."""
        self._on_frames = on_frames
        self._on_lost = on_lost
        self._on_wake = on_wake
        # wake() from any thread, even inside the garbage collector, makes the
        # reader call on_wake: a way in that takes no lock.
        self._wake = WakePipe()
        self._log_path = log_path
        self._tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
        self._partial_line = b""
        self.hello: Hello | None = None
        # WATCH_PROGRESS sent: a job that listens to its progress went to it.
        self.progress_watched = False
        self._said_bye = False
        self._fatal = ""
        self._ended = threading.Event()

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        for fd in (to_child_w, from_child_w):
            grow_pipe(fd)
        child_fds = (to_child_r, from_child_w)
        full_argv = [
            *(sidecar_argv() if argv is None else argv),
            "--read-fd",
            str(to_child_r),
            "--write-fd",
            str(from_child_w),
            "--parent-pid",
            str(os.getpid()),
        ]
        log_fd: int | None = None
        try:
            if log_path is not None:
                log_fd = open_private_log(log_path)
            self.proc = subprocess.Popen(
                full_argv,
                stdin=subprocess.DEVNULL,
                # Like stdlib workers, jobs print to our stdout; stderr (where
                # tracebacks and crash reports go) is copied by the output
                # thread so its tail can be quoted when the sidecar dies.
                stdout=log_fd,
                stderr=log_fd if log_fd is not None else subprocess.PIPE,
                pass_fds=child_fds,
                env=env,
                cwd=cwd,
                close_fds=True,
            )
        except BaseException:
            for fd in (*child_fds, to_child_w, from_child_r):
                os.close(fd)
            self._wake.close()
            raise
        finally:
            if log_fd is not None:
                os.close(log_fd)
        # Drop our copies of the child's ends: otherwise our own descriptor
        # keeps the pipe open and the sidecar's death would never read as EOF.
        os.close(to_child_r)
        os.close(from_child_w)
        self.pid = self.proc.pid
        self._read_fd = from_child_r
        self.writer = FrameWriter(to_child_w, name="subproc_executor-writer")
        self._output: threading.Thread | None = None
        try:
            # The INIT frame goes first, before any SUBMIT a caller may send. Not
            # blocking: this may run on a reader thread, under the executor's lock.
            self.writer.send(MessageKind.INIT, 0, init_payload, block=False)
            if self.proc.stderr is not None:
                self._output = threading.Thread(
                    target=self._copy_output,
                    args=(self.proc.stderr.fileno(),),
                    name="subproc_executor-output",
                    daemon=True,
                )
                self._output.start()
            self._thread = threading.Thread(
                target=self._read_loop, name="subproc_executor-reader", daemon=True
            )
            self._thread.start()
        except BaseException:
            # No thread to serve it (none can start at interpreter shutdown,
            # or none are left): the sidecar must not outlive this failure.
            self.proc.kill()
            self.proc.wait()
            self.writer.close_fd()
            os.close(from_child_r)
            self._wake.close()
            if self.proc.stderr is not None and (self._output is None or not self._output.is_alive()):
                self.proc.stderr.close()
            raise
        logger.info("started sidecar pid %d", self.pid)

    # -- reader thread ---------------------------------------------------------

    def _read_loop(self) -> None:
        """Serve frames until the sidecar is gone. Runs on the reader thread."""
        reason = "its pipe closed unexpectedly"
        cause: BaseException | None = None
        decoder = FrameDecoder()
        sel = selectors.DefaultSelector()
        sel.register(self._read_fd, selectors.EVENT_READ, "frames")
        sel.register(self._wake.fileno(), selectors.EVENT_READ, "wake")
        pidfd = open_pidfd(self.pid)
        if pidfd is None:
            # No pidfd (not Linux, or an old kernel): a waiter thread turns
            # the exit into a byte on a pipe the selector watches.
            pidfd, exit_w = os.pipe()
            threading.Thread(
                target=self._wait_exit, args=(exit_w,), name="subproc_executor-waiter", daemon=True
            ).start()
        sel.register(pidfd, selectors.EVENT_READ, "exit")
        try:
            running = True
            while True:  # not `while cond:` in a try (tests/test_loop_edges.py)
                if not running:
                    break
                for key, _ in sel.select():
                    if key.data == "frames":
                        try:
                            frames = read_frames(self._read_fd, decoder)
                        except ProtocolError as exc:
                            reason = f"it sent a malformed frame: {exc}"
                            cause = exc
                            self.kill()
                            running = False
                            break
                        if frames is None:
                            reason = "its pipe closed unexpectedly"
                            running = False
                            break
                        self._deliver(frames)
                    elif key.data == "wake":
                        self._wake.drain()
                        if self._on_wake is not None:
                            self._on_wake()
                    else:  # the process exited: read what it wrote before dying
                        reason = "it exited unexpectedly"
                        cause = self._drain_frames(decoder)
                        if cause is not None:
                            reason = f"it exited in the middle of a frame: {cause}"
                        running = False
                        break
                if self._said_bye:
                    # The sidecar says BYE last; EOF follows. Stop now so a
                    # worker that still holds the pipe cannot delay shutdown.
                    running = False
        except Exception as exc:  # a bug here must not leave futures pending
            logger.exception("sidecar reader failed")
            reason = f"the parent's reader thread failed: {exc!r}"
            cause = exc
            self.kill()
        finally:
            sel.close()
            os.close(pidfd)
        self._finish(reason, cause)

    def _deliver(self, frames: list[Frame]) -> None:
        for f in frames:
            if f.kind is MessageKind.HELLO:
                try:
                    self.hello = Hello.decode(f.payload)
                except ProtocolError as exc:
                    logger.warning("sidecar pid %d sent a malformed HELLO: %s", self.pid, exc)
            elif f.kind is MessageKind.BYE:
                self._said_bye = True
            elif f.kind is MessageKind.FATAL:
                try:
                    self._fatal = Fatal.decode(f.payload).message
                except ProtocolError as exc:
                    self._fatal = f"(a malformed FATAL frame: {exc})"
                logger.error("sidecar pid %d: %s", self.pid, self._fatal)
        self._on_frames(frames)

    def _drain_frames(self, decoder: FrameDecoder) -> ProtocolError | None:
        """After the sidecar exited: deliver the frames still in the pipe, then
        end the stream. Returns the ProtocolError if it ended mid-frame."""
        os.set_blocking(self._read_fd, False)
        try:
            while True:
                frames = read_frames(self._read_fd, decoder)
                if frames is None:
                    return None  # EOF: read_frames closed the decoder cleanly
                self._deliver(frames)
        except ProtocolError as exc:
            return exc
        except OSError:  # BlockingIOError: a worker still holds the pipe open
            pass
        try:
            decoder.close()
        except ProtocolError as exc:
            return exc
        return None

    # -- output thread -----------------------------------------------------------

    def _copy_output(self, fd: int) -> None:
        """Copy the sidecar's stderr to ours, keeping its tail, until EOF.

        Its own thread, so that output never delays a result. Our stderr may
        be a pipe nobody reads: then output is dropped (and counted) rather
        than waited for, so the sidecar and its workers never block on a full
        stderr either. Never raises.
        """
        dropped = unreported = 0
        try:
            target = sys.stderr.fileno()
        except (OSError, ValueError, AttributeError):
            target = -1  # stderr closed or replaced by an object without a descriptor
        poller = select.poll()
        if target >= 0:
            poller.register(target, select.POLLOUT)
        try:
            while True:
                try:
                    data = os.read(fd, READ_CHUNK_BYTES)
                except OSError:
                    data = b""
                if not data:
                    break
                self._keep_tail(data)
                if target < 0:
                    continue
                if unreported and poller.poll(0):
                    note = f"\n[subproc_executor: {unreported} bytes of output were dropped here]\n"
                    if not _write_if_room(target, poller, note.encode()):
                        unreported = 0
                lost = _write_if_room(target, poller, data)
                dropped += lost
                unreported += lost
        except Exception:
            logger.exception("copying the output of sidecar pid %d failed", self.pid)
        finally:
            # This thread owns the pipe: it may outlive the sidecar for as long
            # as a leftover worker holds the pipe open.
            if self.proc.stderr is not None:
                self.proc.stderr.close()
        if dropped:
            logger.warning(
                "dropped %d bytes of output from sidecar pid %d and its workers: our stderr was not "
                "being read (its last lines are kept for error messages)",
                dropped,
                self.pid,
            )

    def _keep_tail(self, data: bytes) -> None:
        lines = (self._partial_line + data).split(b"\n")
        self._partial_line = lines.pop()[-4096:]
        self._tail.extend(line.decode(errors="replace") for line in lines)

    def _wait_exit(self, exit_w: int) -> None:
        """Where pidfd is missing: wait for the exit, then close ``exit_w``,
        which the reader sees as its exit pipe becoming readable (EOF)."""
        self.proc.wait()
        os.close(exit_w)

    def _finish(self, reason: str, cause: BaseException | None) -> None:
        """Reap the sidecar and report the end. Runs once, on the reader thread."""
        if self._said_bye:
            try:
                self.proc.wait(SIDECAR_EXIT_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                logger.warning("sidecar pid %d said BYE but did not exit; killing it", self.pid)
                self.proc.kill()
        else:
            # Dead or misbehaving: make sure it is gone before we report.
            try:
                self.proc.wait(1.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            logger.error("sidecar pid %d survived SIGKILL for 5s", self.pid)
        if self._output is not None:
            # Its EOF comes with the sidecar's exit, unless a leftover worker
            # still holds the pipe: bounded, then the tail is what arrived.
            self._output.join(1.0)
        self._wake.close()
        self.writer.close_fd()
        self.writer.close()
        os.close(self._read_fd)
        if self._fatal:
            reason = f"{reason}; it reported: {self._fatal}"
        end = SidecarExit(
            pid=self.pid,
            returncode=self.proc.returncode,
            clean=self._said_bye and self.proc.returncode == 0,
            reason=reason,
            output_tail=self.output_tail(),
            cause=cause,
            started=self.hello is not None,
            fatal=bool(self._fatal),
        )
        try:
            self._on_lost(end)
        finally:
            self._ended.set()

    # -- any thread ------------------------------------------------------------

    def output_tail(self) -> str:
        if self._log_path is not None:
            try:
                with open(self._log_path, "rb") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - 8192))
                    lines = f.read().decode(errors="replace").splitlines()
                return "\n".join(lines[-OUTPUT_TAIL_LINES:])
            except OSError:
                return ""
        return "\n".join(self._tail)

    def wake(self) -> None:
        """Make the reader thread call ``on_wake`` soon. Takes no lock: safe
        from a finalizer run by the garbage collector on any thread."""
        self._wake.wake()

    def abandon_in_forked_child(self) -> None:
        """In a child forked from the parent: drop our copies of the sidecar's
        pipes without a word to it (the sidecar serves the parent). No lock is
        taken: one held by a parent thread at the fork stays held here."""
        for fd in (self.writer.fd, self._read_fd, *self._wake.fds()):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.proc.stderr is not None:
            try:
                os.close(self.proc.stderr.fileno())
            except (OSError, ValueError):
                pass
        # Not our child: never wait for it, nor warn that it still runs.
        self.proc.returncode = 0

    def kill(self) -> None:
        """Kill the sidecar now; the reader thread reports the loss."""
        try:
            self.proc.kill()
        except OSError:
            pass

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the reader thread has reported the end."""
        return self._ended.wait(timeout)

    def is_reader_thread(self) -> bool:
        return threading.current_thread() is self._thread
