"""Bounded termination of a backend's worker processes: SIGTERM, a grace
period, then SIGKILL. Shared by the backends; uses only public multiprocessing
API (``active_children``), so it works whatever pool created the workers."""

from __future__ import annotations

import logging
import multiprocessing
import time
from typing import Final

logger = logging.getLogger(__name__)

# How long a worker gets to exit after SIGTERM before SIGKILL. Longer lets
# a worker's cleanup handlers finish; shorter bounds shutdown and quiesce.
TERMINATE_GRACE_SECONDS: Final = 2.0


def child_pids() -> list[int]:
    """Pids of this process's live multiprocessing children (the workers)."""
    return sorted(p.pid for p in multiprocessing.active_children() if p.pid is not None)


def terminate_children(grace: float = TERMINATE_GRACE_SECONDS) -> None:
    """Stop every multiprocessing child of this process; bounded by ``grace``."""
    procs = multiprocessing.active_children()
    for p in procs:
        try:
            p.terminate()
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.exitcode is None:
            logger.warning("worker pid %s ignored SIGTERM for %.1fs; sending SIGKILL", p.pid, grace)
            try:
                p.kill()
            except (OSError, ValueError):
                pass
            p.join(5)
