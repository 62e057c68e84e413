"""The main of a worker of the pipes backend: READY, then batches until told to stop.

Runs in the worker process; the pipes backend (``sidecar.backends.pipes``)
starts it with its two pipe ends and speaks this small protocol on them:

    result pipe: READY (once, after the initializer), then one message per
                 job as it finishes: its id (OUTCOME_ID) and its outcome bytes
    job pipe:    pickled (job ids, job bytes) per batch, or STOP

One message per job, not per batch: the sidecar forwards each result at once,
and when a job later in the batch kills the worker, the results of the jobs
before it are already safe (they are not run again).

A worker gets its first batch only after READY, so the sidecar never writes
to a worker still busy in a slow initializer.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Sequence
from multiprocessing.connection import Connection

from . import job

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["OUTCOME_ID", "READY", "STOP", "worker_main"]

# The stop message: a worker exits when it reads it. A batch is never empty.
STOP: Final = b""
# A worker's first message on its result pipe: its initializer has run and it
# reads its job pipe. Outcomes are never empty.
READY: Final = b""
# The head of an outcome message: the job's id.
OUTCOME_ID: Final = struct.Struct("<Q")


def worker_main(
    job_conn: Connection,
    result_conn: Connection,
    pickler: str,
    close_fds: Sequence[int],
    initializer: bytes | None,
    notify: object,
    max_tasks: int | None,
) -> None:
    """A worker's main: run batches until the stop message or EOF on ``job_conn``.

    ``close_fds`` lists the sidecar's descriptors a forked worker inherits and
    must not keep (the parent's pipes, the other workers' pipe ends and our
    own pipes' far ends); it is empty for spawn and forkserver, whose workers
    inherit only what they are passed. Exits with 0 after the result of the
    batch that reaches ``max_tasks`` jobs.
    """
    job.worker_init(pickler, close_fds, initializer, notify)
    try:
        result_conn.send_bytes(READY)
    except OSError:
        return  # the sidecar is gone
    done = 0
    pid = os.getpid()
    while True:
        try:
            data = job_conn.recv_bytes()
        except (EOFError, OSError):
            return  # the sidecar is gone or closed our pipe
        if data == STOP:
            return
        job_ids, payloads = pickle.loads(data)
        for job_id, payload in zip(job_ids, payloads, strict=True):
            started = job.announce(job_id, pid)
            outcome = job.run_one(pickler, payload, job_id, started, pid)
            try:
                result_conn.send_bytes(OUTCOME_ID.pack(job_id) + outcome)
            except OSError:
                return  # the sidecar is gone
        done += len(job_ids)
        if max_tasks is not None and done >= max_tasks:
            return
