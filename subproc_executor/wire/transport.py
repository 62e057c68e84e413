"""Moving frames over file descriptors. Knows frames, not jobs.

``FrameWriter`` is shared by every thread that sends on one pipe. Its
descriptor is non-blocking, so a write never stalls inside the kernel: a
sender queues its frames (atomically, in order), and if nobody is writing it
becomes the writer and writes what the pipe takes now. Writes are combined:
the writer drains everything queued meanwhile in one ``os.write``/``os.writev``
per round, so a burst of submits costs a few syscalls instead of one each.

What a sender does when the pipe is full depends on who it is:

* ``block=True`` (a user's thread in ``submit``): waits for room (``poll``)
  and goes on until the queue is empty.
* ``block=False`` (a thread that must keep reading: the parent's reader, the
  sidecar's main loop and its backends' threads): stops at the first
  ``EAGAIN`` and leaves the rest to a helper thread (started on first need)
  that waits for room. So no reading thread ever waits for its peer to read,
  and the two processes cannot deadlock each waiting for the other.

A frame is never left half-written: whoever stops writing puts the unwritten
remainder back at the head of the queue, and the next writer (or the helper)
continues from exactly there. That holds even when a signal handler raises
(Ctrl-C during a big ``submit``): in the main thread, the only one that runs
Python signal handlers, a send runs inside ``sigdefer.deferred()``, so no
handler runs between a write and its bookkeeping; a signal that comes while
the sender waits for room cuts the wait short, the helper takes the rest,
and the handler runs (and raises) as the send returns.

``read_frames`` is one read step for the reading side.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Iterable

from .protocol import Frame, FrameDecoder, MessageKind, encode_header
from .sigdefer import deferred, wait_interruptibly

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["FrameWriter", "PipeClosed", "read_frames"]

logger = logging.getLogger(__name__)

# Bytes asked of os.read at a time. Bigger means fewer syscalls for big
# payloads; the buffer is sized to what arrived, so small reads stay cheap.
READ_CHUNK_BYTES: Final = 1 << 20
# read_frames reads into a buffer of this size kept per thread: os.read of
# a big size allocates that much per call (glibc maps, shrinks and unmaps it:
# three syscalls and page faults per read; strace counted 0.85 of each per
# job in the sidecar). Bigger frames build up in the decoder.
_READ_BUFFER_BYTES: Final = 256 * 1024
_read_buffers = threading.local()
# How long one wait for room lasts before the writer looks again (and sees
# a Ctrl-C that came just before the wait began; see sigdefer). Shorter
# notices such a signal sooner; longer wakes a writer stalled by its peer less.
_WAIT_SLICE_MS: Final = 100
# Parts gathered per writev call; Linux caps IOV_MAX at 1024.
_IOV_PARTS: Final = 512
# Small parts are joined into one buffer before writing (one copy, one
# iovec); parts at least this big are written from their own buffer.
_JOIN_LIMIT_BYTES: Final = 64 * 1024


class PipeClosed(OSError):
    """The other end of the pipe is gone (EPIPE), or the writer was closed."""


class FrameWriter:
    """Thread-safe, combining, never-stalling frame writer for one descriptor."""

    def __init__(self, fd: int, name: str = "subproc_executor-writer") -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._name = name
        self._lock = threading.Lock()
        # Frames in send order; only the head may be the unwritten rest of a
        # frame (a memoryview), which must go out before anything else.
        self._queue: deque[bytes | memoryview] = deque()
        self._writing = False  # some thread is inside _drain
        self._closed = False
        self._error: OSError | None = None
        self._cond = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        # A helper thread asked to exit by stop_helper().
        self._stop_thread: threading.Thread | None = None

    @property
    def fd(self) -> int:
        """The descriptor written to (-1 once closed)."""
        return self._fd

    # -- sending -------------------------------------------------------------------

    def send(self, kind: MessageKind, job_id: int = 0, payload: bytes = b"", *, block: bool = True) -> None:
        """Send one frame. Raises PipeClosed once the peer is gone."""
        self.send_many(((kind, job_id, payload),), block=block)

    def try_send(
        self, kind: MessageKind, job_id: int = 0, payload: bytes = b"", *, block: bool = True
    ) -> bool:
        """``send``, but False instead of PipeClosed: for a sender whose peer's
        death is noticed and reported elsewhere (EOF on the other pipe)."""
        return self.try_send_many(((kind, job_id, payload),), block=block)

    def try_send_many(self, items: Iterable[tuple[MessageKind, int, bytes]], *, block: bool = True) -> bool:
        """``send_many``, but False instead of PipeClosed."""
        try:
            self.send_many(items, block=block)
        except PipeClosed:
            return False
        return True

    def send_many(self, items: Iterable[tuple[MessageKind, int, bytes]], *, block: bool = True) -> None:
        """Queue frames atomically (in order, not interleaved with other
        senders), then write them, or leave them to the writer of the moment."""
        with deferred():  # a signal's handler raises before the frames are queued or after they are whole
            self.queue_many(items)
            self.flush(block=block)

    def queue_many(self, items: Iterable[tuple[MessageKind, int, bytes]]) -> None:
        """Queue frames without writing: never blocks, never raises but
        PipeClosed. A caller holding its own lock hands frames over with this,
        then calls ``flush`` outside the lock."""
        parts: list[bytes] = []
        for kind, job_id, payload in items:
            parts.append(encode_header(kind, job_id, len(payload)))
            if payload:
                parts.append(payload)
        with self._lock:
            if self._error is not None:
                raise PipeClosed(f"pipe fd {self._fd} is closed: {self._error}") from self._error
            self._queue.extend(parts)

    def flush(self, *, block: bool = True) -> None:
        """Write what is queued (see the module docstring for ``block``)."""
        with deferred():
            with self._lock:
                if self._error is not None:
                    raise PipeClosed(f"pipe fd {self._fd} is closed: {self._error}") from self._error
                if self._writing or not self._queue:
                    return  # the writer of the moment takes our frames too
                self._writing = True
            try:
                self._drain(block)
            except BaseException:
                # The queue is whole (a failed write cleared it); the helper
                # finishes the frames, so the stream stays framed.
                self._hand_over()
                raise
        if self._error is not None:
            raise PipeClosed(f"pipe fd {self._fd} is closed: {self._error}") from self._error

    def _hand_over(self) -> None:
        """Stop being the writer; the helper thread carries on from the queue."""
        with self._lock:
            self._writing = False
            if self._queue and self._error is None and self._thread is None:
                # Registered only once started: a thread that cannot start
                # (interpreter shutdown) must not look like a helper at work;
                # the queue then waits for the next flush.
                thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                thread.start()
                self._thread = thread
            self._cond.notify_all()

    def _drain(self, block: bool) -> None:
        """Write queued parts until the queue is empty (or the pipe failed), or,
        with ``block`` False, until the pipe is full: then the helper takes
        over. The caller set ``_writing``; this clears it (under the lock, in
        the same step that finds the queue empty, so a sender that saw a
        writer at work never has its frames stranded) or hands it over."""
        while True:
            with self._lock:
                if not self._queue or self._error is not None:
                    self._writing = False
                    self._cond.notify_all()
                    return
                parts: list[bytes | memoryview] = []
                size = 0
                while True:  # not `while cond:` in a with (tests/test_loop_edges.py)
                    if not self._queue or len(parts) >= _IOV_PARTS:
                        break
                    p = self._queue.popleft()
                    parts.append(p)
                    size += len(p)
            small = size < _JOIN_LIMIT_BYTES or all(len(p) < _JOIN_LIMIT_BYTES for p in parts)
            if len(parts) > 1 and small:
                parts = [b"".join(parts)]
            views = [memoryview(p) for p in parts]
            try:
                full = self._write_some(views)
            except OSError as exc:
                with self._lock:
                    if self._error is None:
                        self._error = exc
                    self._queue.clear()
                continue  # clears _writing above
            except BaseException:
                with self._lock:
                    self._queue.extendleft(reversed(views))
                raise
            if views:
                with self._lock:
                    self._queue.extendleft(reversed(views))
            # A signal while waiting for room (Ctrl-C during a big submit)
            # ends the wait; its handler runs once the send returns.
            if full and (not block or not wait_interruptibly(self._wait_writable)):
                self._hand_over()
                return

    def _write_some(self, views: list[memoryview]) -> bool:
        """Write from ``views`` until they are empty or the pipe is full
        (then True). ``views`` is updated to what is left, in step with every
        byte the kernel took (no signal handler runs here: see ``flush``)."""
        while views:
            try:
                n = os.write(self._fd, views[0]) if len(views) == 1 else os.writev(self._fd, views)
            except BlockingIOError:
                return True
            while n:
                head = views[0]
                if n >= len(head):
                    n -= len(head)
                    views.pop(0)
                else:
                    views[0] = head[n:]
                    n = 0
        return False

    def _wait_writable(self) -> None:
        """Wait until the pipe has room (or its reader is gone), or for a
        slice of time: the caller loops, and sees a signal that came just
        before the poll began (which no syscall reports) within a slice."""
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        poller.poll(_WAIT_SLICE_MS)

    # -- the helper thread -----------------------------------------------------------

    def _run(self) -> None:
        """The helper thread: writes for senders that could not wait."""
        me = threading.current_thread()
        while True:
            with self._lock:
                while True:
                    stopping = self._closed or self._stop_thread is me
                    if self._queue and not self._writing and self._error is None:
                        break
                    if stopping:
                        if self._stop_thread is me:
                            self._stop_thread = None
                        if self._thread is me:
                            self._thread = None
                        return
                    self._cond.wait()
                self._writing = True
            try:
                self._drain(block=True)
            except BaseException:
                logger.exception("frame writer %s failed", self._name)
                with self._lock:
                    self._writing = False
                    self._cond.notify_all()

    def stop_helper(self) -> bool:
        """Stop the helper thread if it is idle, so the process can fork with
        no other thread of ours alive; True if no helper is left.

        Never waits for a helper that is writing: that one waits on the peer,
        and the caller (the sidecar's main loop) must never wait on its peer.
        The next ``send(block=False)`` that needs a helper starts a new one.
        """
        with self._lock:
            thread = self._thread
            if thread is None:
                return True
            if self._writing or self._queue:
                return False
            self._stop_thread = thread
            self._thread = None
            self._cond.notify_all()
        thread.join()
        return True

    # -- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Let the helper thread exit once the queue drains; do not wait for it
        if the peer does not read. Does not close the fd."""
        with self._lock:
            self._closed = True
            self._cond.notify_all()

    def wait_drained(self, timeout: float) -> bool:
        """Wait (bounded) until everything queued has been written."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:  # not `while cond:` in a with (tests/test_loop_edges.py)
                if not (self._queue or self._writing) or self._error is not None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def close_fd(self, timeout: float = 5.0) -> None:
        """Refuse further sends, wait (bounded) for a write in progress, close the fd.

        Closing under a concurrent write could send its bytes to whatever
        file reuses the descriptor number next, so the fd closes only once
        no thread is writing.
        """
        with self._lock:
            if self._error is None:
                self._error = PipeClosed("the writer was closed")
            self._queue.clear()
            self._closed = True
            self._cond.notify_all()
            deadline = time.monotonic() + timeout
            while True:  # not `while cond:` in a with (tests/test_loop_edges.py)
                if not self._writing or time.monotonic() >= deadline:
                    break
                self._cond.wait(0.05)
            if self._writing:
                return  # leak the fd rather than risk writing into a stranger's
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def read_frames(fd: int, decoder: FrameDecoder) -> list[Frame] | None:
    """One read from ``fd``: the frames it completed, or None at EOF.

    At EOF the decoder is closed, so a stream cut mid-frame raises
    ProtocolError instead of passing silently.
    """
    buffer = getattr(_read_buffers, "buffer", None)
    if buffer is None:
        buffer = _read_buffers.buffer = bytearray(_READ_BUFFER_BYTES)
    n = os.readv(fd, [buffer])
    if not n:
        decoder.close()
        return None
    with memoryview(buffer) as whole, whole[:n] as data:
        return decoder.feed(data)  # it copies out what it keeps
