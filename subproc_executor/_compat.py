"""Version gates, nothing else."""

from __future__ import annotations

import os
import sys
from typing import Final, ParamSpec

__all__ = ["PY_3_12_PLUS", "ParamSpec", "default_max_workers"]

PY_3_12_PLUS: Final = sys.version_info >= (3, 12)


def default_max_workers() -> int:
    """What ProcessPoolExecutor picks: the usable CPUs (3.13+), else all CPUs."""
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return count or 1
