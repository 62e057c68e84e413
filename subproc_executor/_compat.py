"""Version gates, nothing else."""

from __future__ import annotations

import os
from typing import ParamSpec

__all__ = ["ParamSpec", "default_max_workers"]


def default_max_workers() -> int:
    """What ProcessPoolExecutor picks: the usable CPUs (3.13+), else all CPUs."""
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return count or 1
