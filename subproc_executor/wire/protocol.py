"""The frame codec: bytes <-> frames. Pure: no I/O, no threads, no pickling.

Every message between the parent and the sidecar is one *frame*: a fixed-size,
little-endian header followed by ``length`` payload bytes.

    offset  size  field     meaning
    0       2     magic     b"SX": catches a stream that is not ours, or out of step
    2       1     version   PROTOCOL_VERSION; both ends must agree
    3       1     kind      a MessageKind
    4       8     job_id    unsigned; 0 where the kind concerns no job
    12      8     length    payload bytes that follow the header

The decoder is incremental: feed it bytes in any chunking and it returns the
whole frames completed so far. A header is validated before the payload it
announces is awaited, so a corrupt length can never make it allocate (or wait
for) more than ``max_payload`` bytes. Anything malformed raises
``ProtocolError`` naming the byte offset in the stream; the decoder is then
poisoned, since the stream has lost its framing and nothing after can be
trusted.

``docs/protocol.md`` has the same table and what each kind does.
"""

from __future__ import annotations

import enum
import operator
import struct
from collections.abc import Iterable

from .record import Record

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "PROTOCOL_VERSION",
    "Frame",
    "FrameDecoder",
    "MessageKind",
    "ProtocolError",
    "encode_frame",
    "encode_frames",
    "encode_header",
]

MAGIC: Final = b"SX"
# Bump on any change to the header layout or to the meaning of a kind, and
# update docs/protocol.md in the same commit.
PROTOCOL_VERSION: Final = 6
HEADER: Final = struct.Struct("<2sBBQQ")
HEADER_SIZE: Final = HEADER.size  # 20 bytes
# A sanity bound, not a size limit: 1 TiB is more than any payload that fits
# in memory here, so arguments and results over 2 GiB work (as with the
# stdlib pool), while a length field read from a stream that lost its framing
# (usually far beyond 2**40) is still refused before anything is awaited.
DEFAULT_MAX_PAYLOAD: Final = 1 << 40
_MAX_UINT64: Final = 2**64 - 1


class ProtocolError(Exception):
    """The byte stream is not a valid sequence of frames.

    ``offset`` is the position, counted from the first byte ever fed to the
    decoder, where the problem was found.
    """

    def __init__(self, message: str, offset: int = -1) -> None:
        super().__init__(message)
        self.offset = offset

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[str, int]]:
        return (type(self), (self.args[0], self.offset))


class MessageKind(enum.IntEnum):
    """What a frame means. Control payloads are the typed records of
    ``messages``, named here; SUBMIT and RESULT carry opaque job bytes."""

    # parent -> sidecar, first frame: messages.Init (settings and the opaque
    # pickled initializer). The sidecar builds its pool only after it.
    INIT = 1
    # parent -> sidecar: run a job; payload = opaque job bytes. job_id names it.
    SUBMIT = 2
    # parent -> sidecar: drop job_id if it has not started. No reply if it had.
    CANCEL = 3
    # sidecar -> parent: job_id finished; payload = opaque outcome bytes made
    # by the worker (its timing, messages.OutcomeTag, a value or an ErrorRecord).
    RESULT = 4
    # sidecar -> parent: job_id failed outside user code: messages.JobError.
    JOB_ERROR = 5
    # sidecar -> parent: job_id is still running: messages.Status. Never touches a future.
    STATUS = 6
    # parent -> sidecar: release the workers now; the sidecar stays.
    QUIESCE = 7
    # parent -> sidecar: start the workers again (a SUBMIT also does this).
    WAKEUP = 8
    # parent -> sidecar: stop, answer BYE and exit: messages.Shutdown.
    SHUTDOWN = 9
    # sidecar -> parent: ready: messages.Hello.
    HELLO = 10
    # sidecar -> parent: last frame before a clean exit; no payload.
    BYE = 11
    # sidecar -> parent: the pool changed: messages.Workers.
    WORKERS = 12
    # sidecar -> parent: the sidecar cannot go on: messages.Fatal. It exits.
    FATAL = 13
    # parent -> sidecar: run a job under limits: messages.LimitedJob (the
    # limits, then the opaque job bytes a SUBMIT would carry).
    SUBMIT_LIMITED = 14
    # parent -> sidecar: stop job_id now, running or not: messages.Kill. The
    # sidecar kills the worker running it and fails it with the reason given.
    KILL = 15
    # sidecar -> parent: what running jobs reported (``report_progress``): the
    # records of wire.progress, one after another; job_id 0. Never touches a future.
    PROGRESS = 16
    # parent -> sidecar: forward progress records as soon as they come, not
    # only on the loop's next turn (a wakeup per job start from now on).
    WATCH_PROGRESS = 17


# Wire value -> kind. A dict lookup, because calling the enum costs more than
# the rest of decoding a small frame.
_KIND_BY_VALUE: Final[dict[int, MessageKind]] = {int(k): k for k in MessageKind}


class Frame(Record):
    """One decoded message."""

    kind: MessageKind
    job_id: int = 0
    payload: bytes = b""

    def __init__(self, kind: MessageKind, job_id: int = 0, payload: bytes = b"") -> None:
        # Spelled out: one is made per frame read, and this is twice as fast
        # as Record's general __init__.
        set_ = object.__setattr__
        set_(self, "kind", kind)
        set_(self, "job_id", job_id)
        set_(self, "payload", payload)


def encode_header(kind: MessageKind, job_id: int, length: int) -> bytes:
    """The 20 header bytes for a frame whose payload is ``length`` bytes.

    Split from ``encode_frame`` so a writer can send a big payload with
    ``os.writev`` instead of copying it into one buffer.

    Raises TypeError if an argument is not an integer, and ValueError if
    ``kind`` is not a MessageKind value or ``job_id`` or ``length`` does not
    fit in 64 unsigned bits: never ``struct.error``, which callers would not
    think to catch.
    """
    # operator.index, not int(): int() would take "2" or 2.7 and pass them on.
    kind_value = operator.index(kind)
    if kind_value not in _KIND_BY_VALUE:
        raise ValueError(f"unknown message kind {kind!r}")
    job_id = operator.index(job_id)
    if not 0 <= job_id <= _MAX_UINT64:
        raise ValueError(f"job_id {job_id} does not fit in 64 unsigned bits")
    length = operator.index(length)
    if not 0 <= length <= _MAX_UINT64:
        raise ValueError(f"payload length {length} does not fit in 64 unsigned bits")
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, kind_value, job_id, length)


def encode_frame(kind: MessageKind, job_id: int = 0, payload: bytes = b"") -> bytes:
    """Header and payload in one buffer."""
    return encode_header(kind, job_id, len(payload)) + payload


def encode_frames(frames: Iterable[Frame]) -> bytes:
    """Many frames in one buffer, for a single write."""
    parts: list[bytes] = []
    for f in frames:
        parts.append(encode_header(f.kind, f.job_id, len(f.payload)))
        parts.append(f.payload)
    return b"".join(parts)


class FrameDecoder:
    """Turns a byte stream, fed in any chunking, into frames.

    Not thread-safe: one reader owns it. ``feed`` returns the frames completed
    by the new bytes; ``close`` says the stream ended and raises if it ended
    inside a frame.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if max_payload < 0:
            raise ValueError("max_payload must be >= 0")
        self.max_payload = max_payload
        self._buf = bytearray()
        # Stream offset of self._buf[0]: used only for error messages.
        self._offset = 0
        # The validated header of the frame being awaited, if any.
        self._pending: tuple[MessageKind, int, int] | None = None
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add bytes; return every frame they complete. Raises ProtocolError.

        On ProtocolError, frames completed earlier in the same call are
        dropped with the rest: the stream is broken and its reader must fail.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        from_buf = bool(buf)
        # Parse straight from the caller's bytes when nothing is left over
        # from the last call: whole frames then cost one copy (into their
        # payload), and only the incomplete tail is kept.
        if from_buf:
            buf += data
            view = memoryview(buf)
        else:
            view = memoryview(data)
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
        frames: list[Frame] = []
        pending = self._pending
        size = len(view)
        pos = 0
        try:
            while True:
                if pending is None:
                    if size - pos < HEADER_SIZE:
                        break
                    pending = self._parse_header(view, pos)
                kind, job_id, length = pending
                end = pos + HEADER_SIZE + length
                if size < end:
                    break
                frames.append(Frame(kind, job_id, view[pos + HEADER_SIZE : end].tobytes()))
                pending = None
                pos = end
            if from_buf:
                # The view must go before the bytearray can be resized.
                view.release()
                # Deleting from the front of a bytearray is amortised O(1)
                # in CPython, so a stream of small frames stays linear.
                del buf[:pos]
            else:
                buf += view[pos:]
        finally:
            view.release()
            self._pending = pending
            self._offset += pos
        return frames

    def close(self) -> None:
        """The stream ended. Raises ProtocolError if it ended inside a frame."""
        if self._error is not None:
            raise self._error
        if self._buf:
            if self._pending is not None:
                kind, job_id, length = self._pending
                what = (
                    f"inside the payload of a {kind.name} frame for job {job_id} "
                    f"({len(self._buf) - HEADER_SIZE} of {length} bytes received)"
                )
            else:
                what = f"inside a frame header ({len(self._buf)} of {HEADER_SIZE} bytes received)"
            self._error = ProtocolError(
                f"stream ended {what}, in the frame starting at byte {self._offset}; "
                "the peer died or closed its pipe mid-frame",
                self._offset,
            )
            raise self._error

    def _parse_header(self, view: memoryview, pos: int) -> tuple[MessageKind, int, int]:
        """Validate the header at ``view[pos:]`` before its payload is awaited.

        Poisons the decoder and raises ProtocolError if the header is bad.
        """
        magic, version, kind_value, job_id, length = HEADER.unpack_from(view, pos)
        kind = _KIND_BY_VALUE.get(kind_value)
        if kind is not None and length <= self.max_payload and magic == MAGIC and version == PROTOCOL_VERSION:
            return kind, job_id, length
        if magic != MAGIC:
            problem = f"bad magic {magic!r} (expected {MAGIC!r}): the stream is not ours or lost its framing"
        elif version != PROTOCOL_VERSION:
            problem = (
                f"protocol version {version}, expected {PROTOCOL_VERSION}: "
                "parent and sidecar come from different subproc_executor versions"
            )
        elif kind is None:
            problem = f"unknown message kind {kind_value}"
        else:
            problem = f"payload length {length} exceeds the limit of {self.max_payload} bytes"
        offset = self._offset + pos
        self._error = ProtocolError(f"{problem} (frame header at byte {offset})", offset)
        raise self._error
