"""Moving frames over file descriptors. Knows frames, not jobs.

``FrameWriter`` is shared by every thread that sends on one pipe. Writes are
combined: the first thread to find the pipe idle becomes the writer and
drains everything queued meanwhile in one ``os.write``/``os.writev`` per
round, so a burst of submits costs a few syscalls instead of one each.

Some threads must never block on a full pipe, or the two processes can
deadlock, each waiting for the other to read: the parent's reader thread,
and the sidecar's main loop. They call ``send(..., block=False)``: their
frames are queued, and if nobody is writing, a helper thread (started on
first need, named by the owner: ``subproc_executor-writer`` in the parent,
``subproc_executor-sidecar-writer`` in the sidecar) drains the queue for them.

``read_frames`` is one non-blocking-friendly read step for the reading side.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Final

from .protocol import Frame, FrameDecoder, MessageKind, encode_header

__all__ = ["FrameWriter", "PipeClosed", "read_frames"]

logger = logging.getLogger(__name__)

# Bytes asked of os.read at a time. Bigger means fewer syscalls for big
# payloads; the buffer is sized to what arrived, so small reads stay cheap.
READ_CHUNK_BYTES: Final = 1 << 20
# Parts gathered per writev call; Linux caps IOV_MAX at 1024.
_IOV_PARTS: Final = 512
# Payloads at least this big are written from their own buffer (writev)
# instead of being copied into a joined one.
_JOIN_LIMIT_BYTES: Final = 64 * 1024


class PipeClosed(OSError):
    """The other end of the pipe is gone (EPIPE), or the writer was closed."""


class FrameWriter:
    """Thread-safe, combining frame writer for one file descriptor."""

    def __init__(self, fd: int, name: str = "subproc_executor-writer") -> None:
        self._fd = fd
        self._name = name
        self._lock = threading.Lock()
        # Invariant: parts in _queue are whole frames, in send order.
        self._queue: deque[bytes] = deque()
        self._writing = False  # some thread is inside _drain
        self._closed = False
        self._error: OSError | None = None
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        # A helper thread asked to exit by stop_helper().
        self._stop_thread: threading.Thread | None = None

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
        senders) and write them, or leave them to the writer of the moment."""
        parts: list[bytes] = []
        for kind, job_id, payload in items:
            parts.append(encode_header(kind, job_id, len(payload)))
            if payload:
                parts.append(payload)
        with self._lock:
            if self._error is not None:
                raise PipeClosed(f"pipe fd {self._fd} is closed: {self._error}") from self._error
            self._queue.extend(parts)
            if self._writing:
                return
            if not block:
                self._wake_thread_locked()
                return
            self._writing = True
        self._drain()
        if self._error is not None:
            raise PipeClosed(f"pipe fd {self._fd} is closed: {self._error}") from self._error

    def _wake_thread_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._wake.notify()

    def _drain(self) -> None:
        """Write until the queue is empty. Caller set _writing under the lock."""
        while True:
            with self._lock:
                if not self._queue or self._error is not None:
                    self._writing = False
                    self._wake.notify_all()
                    return
                parts: list[bytes] = []
                size = 0
                while self._queue and len(parts) < _IOV_PARTS:
                    p = self._queue.popleft()
                    parts.append(p)
                    size += len(p)
            try:
                if len(parts) == 1:
                    self._write_all([parts[0]])
                elif size < _JOIN_LIMIT_BYTES or all(len(p) < _JOIN_LIMIT_BYTES for p in parts):
                    self._write_all([b"".join(parts)])
                else:
                    self._write_all(parts)
            except OSError as exc:
                with self._lock:
                    if self._error is None:
                        self._error = exc
                    self._queue.clear()
                    self._writing = False
                    self._wake.notify_all()
                return

    def _write_all(self, parts: list[bytes]) -> None:
        views = [memoryview(p) for p in parts]
        while views:
            n = os.write(self._fd, views[0]) if len(views) == 1 else os.writev(self._fd, views)
            while n:
                head = views[0]
                if n >= len(head):
                    n -= len(head)
                    views.pop(0)
                else:
                    views[0] = head[n:]
                    n = 0

    def _run(self) -> None:
        """The helper thread: writes for senders that must not block."""
        me = threading.current_thread()
        while True:
            with self._lock:
                stopping = self._closed or self._stop_thread is me
                while not stopping and (self._writing or not self._queue):
                    self._wake.wait()
                    stopping = self._closed or self._stop_thread is me
                if stopping and (self._writing or not self._queue):
                    # Queue empty, or someone else is draining it: done.
                    if self._stop_thread is me:
                        self._stop_thread = None
                    return
                self._writing = True
            self._drain()

    def stop_helper(self) -> None:
        """Stop the helper thread after it drains the queue; the next
        ``send(block=False)`` that needs one starts a new one. Lets the
        sidecar fork with no other thread alive."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._stop_thread = thread
            self._wake.notify_all()
        thread.join()

    def close(self) -> None:
        """Stop the helper thread once the queue drains. Does not close the fd."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

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
            self._wake.notify_all()
            deadline = time.monotonic() + timeout
            while self._writing and time.monotonic() < deadline:
                self._wake.wait(0.05)
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
    data = os.read(fd, READ_CHUNK_BYTES)
    if not data:
        decoder.close()
        return None
    return decoder.feed(data)
