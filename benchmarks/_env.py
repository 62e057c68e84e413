"""A description of the machine and the code under test, recorded with every run.

Numbers without their context cannot be compared: the same executor is twice as
fast on an idle 8-core machine as on a busy 2-core one.
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

# The repository root: the children run here, with this on PYTHONPATH.
REPO_ROOT = Path(__file__).resolve().parent.parent


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (Linux). Empty elsewhere: callers treat that as unknown."""
    result: dict[str, int] = {}
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return result
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            result[name] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return result


def mem_available() -> int:
    """Bytes the kernel could give without swapping: MemAvailable, else MemFree."""
    info = meminfo()
    return info.get("MemAvailable", info.get("MemFree", 0))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.debug("git %s failed: %s", args, exc)
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, object]:
    """Everything a reader needs to judge whether two runs are comparable."""
    info = meminfo()
    # --no-optional-locks: never take index.lock, which would race a concurrent `git commit`.
    status = _git("--no-optional-locks", "status", "--porcelain")
    try:
        usable_cores: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable_cores = os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores,
        # Other work on the machine skews every number: a reader must see it.
        "load_average": _load_average(),
        "mem_total_bytes": info.get("MemTotal"),
        "mem_available_bytes": info.get("MemAvailable"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "versions": {
            name: _version(name)
            for name in ("subproc-executor", "loky", "cloudpickle", "psutil", "matplotlib")
        },
    }
