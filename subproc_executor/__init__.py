"""subproc_executor: a drop-in ProcessPoolExecutor whose pool lives in a sidecar process."""

from __future__ import annotations

import logging

from .errors import (
    BrokenSubprocExecutor,
    InitializerFailedError,
    ProtocolError,
    RemoteError,
    SidecarDiedError,
    WorkerDiedError,
)
from .executor import SubprocExecutor
from .stats import ExecutorStatistics, SlowJobReport

__all__ = [
    "BrokenSubprocExecutor",
    "ExecutorStatistics",
    "InitializerFailedError",
    "ProtocolError",
    "RemoteError",
    "SidecarDiedError",
    "SlowJobReport",
    "SubprocExecutor",
    "WorkerDiedError",
    "__version__",
]

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
