"""Big payloads through shared memory: a file in ``/dev/shm`` whose name crosses the pipes.

    parent   pickled job >= threshold --> segment "spx-<parent>-a<n>"      SUBMIT carries JOB_REF + name
    worker   run_one: JOB_REF --> map the segment, load the job            (never unlinks it: a
                                                                            re-run needs it again)
    parent   the job's Job record is dropped (its future ended) --> unlink
    worker   outcome >= threshold --> segment "spx-<parent>-<sidecar>-r<job>-<n>"
                                                                    RESULT carries timing + SPILLED + name
    parent   reader thread: RESULT with SPILLED --> open, unlink, map; the future loads from the map

Copying a payload through two pipes costs two kernel copies per hop and a
thread wake-up per pipe buffer (64 KiB to 1 MiB); a tmpfs file costs one
``write`` and one mapping, at memory speed. The sidecar only forwards names:
it still never unpickles user data.

No segment outlives its job or the death of any process (docs/protocol.md):

* an argument segment belongs to its parent's ``Job`` record (a finalizer
  unlinks it when the record is dropped, in the process that made it only);
  if the parent dies, its sidecar unlinks every ``spx-<parent>-`` name once
  the parent is really gone;
* a result segment is unlinked by the parent's reader as soon as it reads
  the RESULT frame naming it; a worker that dies before its outcome was sent
  leaves segments that the sidecar unlinks when it judges the failed batch
  (by job id); when a sidecar ends, the parent unlinks whatever its workers
  left under the sidecar's prefix.

When the parent and its sidecar die together (a process group killed, the
OOM killer), nobody is left to do that: ``wire.shm_sweep`` has the sweeps
and the owner lock that lets a later sidecar tell such a parent's segments.

Where ``/dev/shm`` is missing or full, a payload simply takes the pipes.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os

from .sigdefer import deferred

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = [
    "JOB_REF",
    "SHM_DIR",
    "Segment",
    "Sink",
    "available",
    "claim",
    "close_mapping",
    "job_ref_name",
    "map_segment",
    "parent_prefix",
    "result_prefix",
    "unlink_quietly",
]

logger = logging.getLogger(__name__)

SHM_DIR: Final = "/dev/shm"
# What the pickler writes: bytes, bytearray, memoryview or pickle.PickleBuffer,
# any object with the buffer protocol (typing has no name for it before 3.12).
if TYPE_CHECKING:
    Buffer = Any
# What a SUBMIT payload starts with when the job's bytes are in a segment; the
# segment's name follows. A pickle never starts with a NUL byte (protocol 2+
# starts with PROTO, 0x80; protocols 0 and 1 with an opcode, none of them NUL).
JOB_REF: Final = b"\x00subproc_executor.shm\x00"
# Longest name a reference may carry (NAME_MAX).
_MAX_NAME: Final = 255
# Bytes per os.write: small enough that Ctrl-C lands between writes, big
# enough that the calls cost nothing next to the copying.
_WRITE_CHUNK: Final = 16 << 20
_counter = itertools.count(1)


def available() -> bool:
    """Whether segments can be made here: a writable tmpfs at ``/dev/shm``."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK | os.X_OK)


def parent_prefix(parent_pid: int) -> str:
    """Every segment made for the parent ``parent_pid``, by any of its executors."""
    return f"spx-{parent_pid}-"


def result_prefix(parent_pid: int, sidecar_pid: int) -> str:
    """The segments the workers of one sidecar make for their outcomes."""
    return f"spx-{parent_pid}-{sidecar_pid}-"


def next_name(prefix: str) -> str:
    """A fresh name under ``prefix``, unique in this process."""
    return f"{prefix}{next(_counter)}"


def map_segment(name: str, *, unlink: bool = False) -> mmap.mmap | bytes:
    """A read-only mapping of the segment ``name``, unlinked first if asked.

    Raises OSError if it is gone. An empty segment (mmap refuses a zero
    length) reads as ``b""``.
    """
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if unlink:
            unlink_quietly(path)
        size = os.fstat(fd).st_size
        if size == 0:
            return b""
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def close_mapping(mapped: object) -> None:
    """Unmap ``mapped`` now if it is a mapping, closing the descriptor mmap
    keeps for it: left to the garbage collector, a mapping referenced from a
    traceback (a result that failed to unpickle) would hold a deleted
    segment's memory and a descriptor for as long as the exception lives."""
    if isinstance(mapped, mmap.mmap):
        try:
            mapped.close()
        except BufferError:  # a view of it is still alive: it closes when that goes
            pass


def claim(name: str) -> mmap.mmap | bytes:
    """Take a result segment: map it and unlink it, so nothing can leave it behind."""
    return map_segment(name, unlink=True)


def job_ref_name(payload: bytes | memoryview) -> str | None:
    """The segment a SUBMIT payload refers to, or None for a payload carried inline."""
    if len(payload) > len(JOB_REF) + _MAX_NAME or bytes(payload[: len(JOB_REF)]) != JOB_REF:
        return None
    return bytes(payload[len(JOB_REF) :]).decode("ascii", "replace")


def unlink_quietly(path: str) -> bool:
    """Unlink ``path``; False if it was not there (or not ours to unlink)."""
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


class Sink:
    """Where a payload is pickled to: memory below ``threshold``, a new segment past it.

    A file-like object for ``pickle.Pickler(sink).dump(obj)``. The C pickler
    writes a small pickle in one call and writes each big ``bytes``/``str``
    payload straight from the object, so a big payload is copied once, into
    the segment, instead of into a ``bytes`` first and then into the
    segment. ``head`` is written first (an outcome's tag byte). ``threshold``
    None keeps everything in memory. If making or writing the segment fails
    (``/dev/shm`` full), the rest stays in memory and takes the pipes.
    """

    def __init__(self, threshold: int | None, prefix: str, head: bytes = b"") -> None:
        self._threshold = threshold
        self._prefix = prefix
        self._parts: list[bytes] = [head] if head else []
        self._size = len(head)
        self._fd = -1
        self._path = ""
        self._failed = False

    def write(self, data: Buffer) -> int:
        # The pickler hands over big payloads themselves: bytes, bytearray, or
        # a pickle.PickleBuffer (NumPy arrays), which has no len().
        n = len(data) if isinstance(data, (bytes, bytearray)) else memoryview(data).nbytes
        if self._fd < 0:
            # Keep a reference, not a copy, of immutable bytes.
            self._parts.append(data if type(data) is bytes else bytes(memoryview(data).cast("B")))
            self._size += n
            if self._threshold is not None and self._size >= self._threshold and not self._failed:
                self._open()
        else:
            self._write_fd(data)
        return n

    # The steps that make, hand over or remove the file run inside a deferral:
    # Ctrl-C between a file's creation (or closing) and our record of it would
    # leak it, or close its descriptor twice (see wire.sigdefer).

    def _open(self) -> None:
        name = next_name(self._prefix)
        path = os.path.join(SHM_DIR, name)
        with deferred():
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                logger.debug("cannot create shared memory segment %s: %s", path, exc)
                self._failed = True
                return
            self._fd, self._path = fd, path
        parts, self._parts = self._parts, []
        for part in parts:
            if self._fd >= 0:
                self._write_fd(part)
            else:  # a write failed (/dev/shm full): the rest stays in memory
                self._parts.append(part)
                self._size += len(part)

    def _write_fd(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        try:
            while True:  # not `while cond:` in a try (tests/test_loop_edges.py)
                if not view:
                    break
                n = os.write(self._fd, view[:_WRITE_CHUNK])
                view = view[n:]
        except OSError as exc:  # ENOSPC: /dev/shm is full; what is there goes back to memory
            logger.info("segment %s could not be written (%s); using the pipes", self._path, exc)
            self._fallback()
            self._parts.append(bytes(view))
            self._size += len(view)

    def _fallback(self) -> None:
        """Move what the segment holds back to memory and remove it."""
        with deferred():
            fd, self._fd = self._fd, -1
            self._failed = True
            try:
                with open(fd, "rb", closefd=True) as f:
                    f.seek(0)
                    self._parts = [f.read()]
            finally:
                unlink_quietly(self._path)
                self._path = ""

    def close(self) -> tuple[bytes, Segment | None]:
        """(the payload, None) if it stayed in memory; (b"", its segment) otherwise.

        The ``Segment`` owns the file from here (it unlinks it when dropped;
        ``detach()`` it to hand the name on instead)."""
        if self._fd >= 0:
            with deferred():
                segment = Segment(os.path.basename(self._path))
                self._path = ""
                fd, self._fd = self._fd, -1
                os.close(fd)
            return b"", segment
        parts, self._parts = self._parts, []
        return (parts[0] if len(parts) == 1 else b"".join(parts)), None

    def discard(self) -> None:
        """Drop everything written, and the segment if one was made. Idempotent."""
        self._parts = []
        with deferred():
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                os.close(fd)
            if self._path:
                unlink_quietly(self._path)
                self._path = ""


class Segment:
    """A job's argument segment, owned by the parent's record of the job.

    Unlinked by ``release()`` or, at the latest, when the owner drops it
    (``__del__``, not ``weakref.finalize``: finalizers are disabled once the
    interpreter starts to exit, and jobs still queued then run to the end
    and drop their records afterwards). Only in the process that made it, so
    a forked child that drops its copy of the parent's records does not
    unlink the parent's segments.
    """

    __slots__ = ("_owner", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._owner = os.getpid()

    @property
    def ref(self) -> bytes:
        """The SUBMIT payload that stands for the job's bytes."""
        return JOB_REF + self.name.encode("ascii")

    def release(self) -> None:
        """Unlink the segment (once, and only in the process that made it)."""
        if self._owner == os.getpid():
            unlink_quietly(os.path.join(SHM_DIR, self.name))  # first: Ctrl-C in between only unlinks twice
            self._owner = 0

    def detach(self) -> None:
        """Forget the segment without unlinking it (it was never made)."""
        self._owner = 0

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # at interpreter teardown os may be half gone
            pass
