"""What a worker that is not ours runs: a Dask worker handed a batch by the ``dask`` backend.

    sidecar (the Dask client) --client.submit(run_batch, ...)--> Dask scheduler --> Dask worker
    Dask worker (one of its task threads): run_batch
        the user's initializer, once per process (per distinct initializer)
        job.run_batch(...) --> [outcome bytes], gathered by the sidecar, opaque to it

A Dask worker is not our child, so nothing here does what ``job.worker_init``
does for our own workers: no inherited descriptors to close, no parent-death
signal, no watch on the sidecar, no SIGINT to ignore (Dask owns the process).
There is no notify pipe either (no start records, no progress reports), and
outcomes always travel inline: the worker may be on another machine, without
the parent's ``/dev/shm``. Imports nothing of Dask: the function is named by
module and attribute, and the job bytes arrive as plain ``bytes``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Sequence

from ..wire.progress import pack_timing
from . import job

__all__ = ["run_batch"]

# {digest of (pickler, initializer bytes): its failure's outcome bytes, or None}.
# Keyed, not a flag: executors with different initializers may share a cluster.
_initialized: dict[bytes, bytes | None] = {}
# A Dask worker may run several tasks at once (--nthreads > 1): one initializer run each.
_init_lock = threading.Lock()


def _init_once(pickler_name: str, initializer: bytes | None) -> bytes | None:
    """Run the initializer the first time this process sees it; its failure bytes or None."""
    if initializer is None:
        return None
    key = hashlib.sha256(pickler_name.encode() + b"\0" + initializer).digest()
    with _init_lock:
        if key not in _initialized:
            _initialized[key] = job.run_initializer(pickler_name, initializer)
        return _initialized[key]


def run_batch(
    pickler_name: str, initializer: bytes | None, job_ids: Sequence[int], payloads: Sequence[bytes]
) -> list[bytes]:
    """One outcome per job, in order; never raises (a raise would fail the
    whole batch in Dask instead of one job)."""
    failure = _init_once(pickler_name, initializer)
    if failure is not None:
        now, pid = time.monotonic(), os.getpid()
        return [pack_timing(now, now, pid) + failure for _ in job_ids]
    return job.run_batch(pickler_name, job_ids, payloads)
