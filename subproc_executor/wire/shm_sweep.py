"""Who removes segments nobody else will: the sweeps, and the owner lock.

    parent    own_prefix(pid): a shared flock on spx-<pid>-owner, first sidecar to exit
              (removed at exit, after the exit-time shutdown)
    sidecar   after HELLO: sweep_orphans(), every prefix whose owner lock is free
              its parent gone: sweep_dead_parent(parent), unless another holds that lock
    parent    a sidecar ended: sweep(its workers' result prefix)

When the parent and its sidecar die together (a process group killed, the
OOM killer), nobody is left to remove their segments (``wire.shm`` lists who
removes what otherwise). So each parent holds a shared ``flock`` on
``spx-<parent>-owner`` for life, and every new sidecar removes the segments
of any prefix whose owner lock it can take exclusively. A lock, unlike a
pid, cannot be mistaken for a reused pid or another pid namespace's process
sharing ``/dev/shm``. A prefix with no owner file (an older version's) is
left alone.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import time
from collections.abc import Iterable

from .shm import SHM_DIR, parent_prefix, unlink_quietly

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["own_prefix", "sweep", "sweep_dead_parent", "sweep_orphans"]

logger = logging.getLogger(__name__)


def sweep(prefixes: Iterable[str]) -> int:
    """Unlink every segment whose name starts with one of ``prefixes``; how many."""
    wanted = tuple(prefixes)
    if not wanted:
        return 0
    n = 0
    for name in _names():
        if name.startswith(wanted) and unlink_quietly(os.path.join(SHM_DIR, name)):
            n += 1
    if n:
        logger.info("removed %d shared memory segments left by dead processes (%s)", n, ", ".join(wanted))
    return n


# The file under a parent's prefix whose shared lock says the parent lives.
_OWNER: Final = "owner"
# (pid, descriptor) of this process's own owner lock; reset in a forked child.
_owned: tuple[int, int] | None = None
# The pid own_prefix was first called for in this process.
_tried: int | None = None
# How long own_prefix waits out a sweeper's exclusive lock: one holds it for
# microseconds, and one stopped mid-sweep must not hang an executor's start.
_OWNER_WAIT_SECONDS: Final = 1.0


def own_prefix(pid: int) -> None:
    """Hold the owner lock of ``spx-<pid>-`` for as long as this process lives,
    so no sidecar takes its segments for orphans. Idempotent and cheap after
    the first call. Without a writable ``/dev/shm`` it does nothing (no
    segment can be made there either).

    An owner file nobody holds was left by a dead process that had our pid:
    its names go first, so none of them is taken for ours."""
    global _owned, _tried
    if _owned is not None and _owned[0] == pid:
        return
    # Only before our first segment can what is there be a dead process's: after
    # a call that gave up, we may have made some without the lock.
    first, _tried = _tried != pid, pid
    prefix = parent_prefix(pid)
    path = os.path.join(SHM_DIR, prefix + _OWNER)
    deadline = time.monotonic() + _OWNER_WAIT_SECONDS
    while True:
        try:
            fd, made = _open_owner(path)
        except OSError as exc:
            logger.debug("cannot create %s: %s", path, exc)
            return
        kept = False
        try:
            if first and not made and _flock(fd, fcntl.LOCK_EX) and _same_file(fd, path):
                _unlink_under(prefix, _names(), keep=prefix + _OWNER)
            if _flock(fd, fcntl.LOCK_SH) and _same_file(fd, path):
                if _owned is None or _owned[0] != pid:  # else another thread's first executor won
                    _owned = (pid, fd)
                    kept = True
                return
        finally:
            if not kept:
                os.close(fd)
        # A sweeper holds the lock (for microseconds) or removed the file we opened.
        if time.monotonic() >= deadline:
            logger.warning("could not take the owner lock %s; its segments may be swept", path)
            return
        time.sleep(0.001)


def sweep_dead_parent(pid: int) -> int:
    """A sidecar's sweep once its parent ``pid`` is gone: every name under its
    prefix, the owner file last; how many. Not while another process holds
    that owner lock (one with the same pid in another pid namespace sharing
    ``/dev/shm``)."""
    prefix = parent_prefix(pid)
    removed = _sweep_if_unowned(prefix, _names())
    if removed is None:  # no owner file: the parent exited and removed it, or an older version
        return sweep([prefix])
    if removed:
        logger.info("removed %d shared memory segments of dead parent %d", removed, pid)
    return removed


def _sweep_if_unowned(prefix: str, names: Iterable[str]) -> int | None:
    """If nobody holds ``prefix``'s owner lock: unlink its ``names``, then the
    owner file, still under the lock (a new owner then makes a new file); how
    many names. 0 if the lock is held, None if there is no owner file."""
    path = os.path.join(SHM_DIR, prefix + _OWNER)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    try:
        if not _flock(fd, fcntl.LOCK_EX) or not _same_file(fd, path):
            return 0  # held (its parent lives), or swept and made anew meanwhile
        removed = _unlink_under(prefix, names, keep=prefix + _OWNER)
        unlink_quietly(path)
        return removed
    finally:
        os.close(fd)


def _open_owner(path: str) -> tuple[int, bool]:
    """(descriptor, whether we made the file) of an owner file."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600), True
    except FileExistsError:
        return os.open(path, flags), False


def _flock(fd: int, kind: int) -> bool:
    """Take (or convert to) a lock without waiting; False if another holds it."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlink_under(prefix: str, names: Iterable[str], keep: str) -> int:
    """Unlink every one of ``names`` under ``prefix`` but ``keep``; how many."""
    doomed = [name for name in names if name != keep and name.startswith(prefix)]
    return sum(unlink_quietly(os.path.join(SHM_DIR, name)) for name in doomed)


def sweep_orphans() -> int:
    """Unlink every segment of a parent whose owner lock nobody holds (it and
    everything it forked are gone); how many. A prefix with no owner file
    (made by an older version) is left alone: it cannot be judged."""
    names = _names()
    removed = 0
    swept = []
    for owner in names:
        if owner.startswith("spx-") and owner.endswith(f"-{_OWNER}"):
            prefix = owner[: -len(_OWNER)]
            n = _sweep_if_unowned(prefix, names) or 0
            if n:
                removed += n
                swept.append(prefix)
    if removed:
        logger.info("removed %d shared memory segments of dead parents (%s)", removed, ", ".join(swept))
    return removed


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _release_owner() -> None:
    """At exit, after every executor's exit-time shutdown (registered before
    theirs, so it runs after): remove our owner file, still holding its lock."""
    global _owned
    owned, _owned = _owned, None
    if owned is None or owned[0] != os.getpid():
        return
    pid, fd = owned
    try:
        path = os.path.join(SHM_DIR, parent_prefix(pid) + _OWNER)
        # Not if another holds it too: a process with our pid in another pid
        # namespace sharing /dev/shm, whose segments the file still guards.
        if _flock(fd, fcntl.LOCK_EX) and _same_file(fd, path):
            unlink_quietly(path)
    finally:
        os.close(fd)


def _forget_inherited_owner() -> None:
    """In a forked child: the parent's owner lock is not ours to keep (the
    child takes its own on its first executor)."""
    global _owned
    owned, _owned = _owned, None
    if owned is not None:
        try:
            os.close(owned[1])
        except OSError:
            pass


os.register_at_fork(after_in_child=_forget_inherited_owner)
# At import: the parent's exit-time shutdown (parent.executor) registers later, so runs first.
atexit.register(_release_owner)


def _names() -> list[str]:
    """What ``/dev/shm`` holds now (nothing if it cannot be read)."""
    try:
        return os.listdir(SHM_DIR)
    except OSError:
        return []
