"""Sidecar start-up: ``python -P -m subproc_executor.sidecar --read-fd R --write-fd W --parent-pid P``.

A small, clean interpreter between the parent and the workers. The command
line carries only what is needed before a frame can be read: the two pipe
descriptors and the parent's pid. Everything else arrives in the INIT frame
(``messages.Init``): the settings, decided and validated in the parent, and
the opaque pickled initializer.

Order matters: read INIT, install the parent's import path (after our own
imports, so no module of the user's directories stands in for one we need;
``-P`` keeps the working directory out before that), build the backend and
start its workers while this process is still single-threaded (so forking
them copies no lock held by another thread),
say HELLO, then run the main loop (``loop.SidecarLoop``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence

from ..wire import shm, shm_sweep
from ..wire.fdtools import grow_pipe
from ..wire.messages import SHM_ENV, SIDECAR_PID_ENV, Fatal, Hello, Init
from ..wire.protocol import Frame, FrameDecoder, MessageKind, ProtocolError
from ..wire.transport import FrameWriter, read_frames
from .backends import BackendConfig, load_backend
from .loop import SidecarLoop
from .scheduler import Scheduler

__all__ = ["main"]

logger = logging.getLogger(__name__)

# How long an exiting sidecar waits for the parent to take its last frames.
_DRAIN_AT_EXIT_SECONDS = 5.0
_USAGE = "usage: python -m subproc_executor.sidecar --read-fd R --write-fd W --parent-pid P"


def _parse_args(argv: Sequence[str]) -> tuple[int, int, int]:
    """(read fd, write fd, parent pid). Exits with status 2 and the usage on anything else."""
    wanted = {"--read-fd": -1, "--write-fd": -1, "--parent-pid": -1}
    args = list(argv)
    try:
        while True:  # not `while cond:` in a try (tests/test_loop_edges.py)
            if not args:
                break
            name, value = args.pop(0), args.pop(0)
            if name not in wanted:
                raise ValueError(f"unknown argument {name}")
            wanted[name] = int(value)
        if min(wanted.values()) < 0:
            raise ValueError("missing argument")
    except (IndexError, ValueError) as exc:
        sys.stderr.write(f"{_USAGE}\nerror: {exc}\n")
        raise SystemExit(2) from None
    return wanted["--read-fd"], wanted["--write-fd"], wanted["--parent-pid"]


def _read_init(fd: int, decoder: FrameDecoder) -> tuple[Init, list[Frame]]:
    """Block for the INIT frame; return it and any frames after it."""
    frames: list[Frame] = []
    while not frames:
        got = read_frames(fd, decoder)
        if got is None:
            raise SystemExit(0)  # parent died before saying anything
        frames.extend(got)
    first = frames.pop(0)
    if first.kind is not MessageKind.INIT:
        raise ProtocolError(f"expected INIT as the first frame, got {first.kind.name}")
    return Init.decode(first.payload), frames


def _install_sys_path(paths: Sequence[str]) -> None:
    """The parent's import path, in its order, ahead of what is ours alone:
    workers (forked, or spawned with this process's sys.path) then import
    the user's modules as the parent would."""
    sys.path[:] = list(dict.fromkeys([*paths, *sys.path]))


def main(argv: Sequence[str] | None = None) -> int:
    read_fd, write_fd, parent_pid = _parse_args(sys.argv[1:] if argv is None else argv)
    os.environ[SIDECAR_PID_ENV] = str(os.getpid())
    # Ctrl-C in a terminal reaches the whole foreground group; the parent
    # decides what it means for the pool, and our EOF follows its exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != parent_pid:
        return 0  # the parent died while we started
    writer = FrameWriter(write_fd, name="subproc_executor-sidecar-writer")
    backend_name = "?"
    try:
        decoder = FrameDecoder()
        init, early = _read_init(read_fd, decoder)
        s = init.settings
        backend_name = s.backend
        logging.basicConfig(
            level=s.log_level.upper(),
            format=f"subproc_executor sidecar[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
        )
        if s.shm_threshold is not None and shm.available():
            # Workers inherit it (and remove it): big outcomes go back through
            # shared memory under a prefix naming the parent and this sidecar.
            os.environ[SHM_ENV] = f"{s.shm_threshold}:{shm.result_prefix(parent_pid, os.getpid())}"
        # Workers inherit it, so multiprocessing.Manager proxies made by the
        # parent authenticate from inside jobs as they do in stdlib workers.
        multiprocessing.current_process().authkey = s.authkey
        notify_reader, notify_writer = multiprocessing.Pipe(duplex=False)
        os.set_blocking(notify_reader.fileno(), False)
        # Room for what workers write between two reads of the loop (at least
        # twice a second): start records, and progress records when nobody
        # asked the loop to wake for them.
        grow_pipe(notify_reader.fileno())
        config = BackendConfig(
            max_workers=s.max_workers,
            start_method=s.start_method,
            max_tasks_per_child=s.max_tasks_per_child,
            pickler=s.pickler,
            initializer=init.initializer,
            close_fds=(read_fd, write_fd, notify_reader.fileno()),
            notify=notify_writer,
            options=dict(s.backend_options),
        )
        # After our own imports, before the backend's: a third-party backend
        # lives on the user's path, and forked workers inherit it.
        _install_sys_path(s.sys_path)
        backend = load_backend(s.backend_target, config)
        backend.start()
    except SystemExit:
        raise
    except BaseException as exc:
        message = f"backend {backend_name!r} failed to start: {type(exc).__name__}: {exc}"
        logger.exception("%s", message)
        writer.try_send(MessageKind.FATAL, 0, Fatal(message).encode(), block=False)
        writer.wait_drained(_DRAIN_AT_EXIT_SECONDS)
        return 2
    hello = Hello(
        pid=os.getpid(),
        backend=s.backend,
        python=sys.version.split()[0],
        worker_pids=tuple(backend.worker_pids()),
    )
    writer.try_send(MessageKind.HELLO, 0, hello.encode())
    if s.shm_threshold is not None and shm.available():
        # Segments of parents killed together with their sidecars (see wire.shm);
        # after HELLO, off the parent's wait for it.
        shm_sweep.sweep_orphans()
    loop = SidecarLoop(
        read_fd=read_fd,
        writer=writer,
        backend=backend,
        scheduler=Scheduler(s.max_workers, max_batch_jobs=s.max_batch_jobs),
        notify_reader=notify_reader,
        parent_pid=parent_pid,
        idle_timeout=s.idle_timeout,
        status_interval=s.status_interval,
        decoder=decoder,
    )
    loop.handle(early)
    try:
        return loop.run()
    finally:
        # Frames queued without blocking (a FATAL, the last results) go out
        # before we exit, unless the parent has stopped reading.
        writer.wait_drained(_DRAIN_AT_EXIT_SECONDS)
        writer.close()
