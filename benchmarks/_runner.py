"""Run one measurement child under a time limit, and leave nothing behind.

The child is started in a new session (``start_new_session=True``), so it leads
a process group that its workers, sidecars and forkservers inherit. On expiry
the harness kills that group, by the child's pid, with SIGKILL: an executor that
hangs in ``submit``, ``result`` or ``shutdown`` costs its time limit and
nothing more. Descendants that left the group (a ``setsid`` sidecar) are found
through psutil before the kill and killed one by one.

The child's stdout and stderr go to files, not pipes: a grandchild that escaped
the kill and still held a pipe would keep ``communicate()`` waiting forever.

After a normal exit the group is checked for stragglers, which an executor
should not leave. They get a grace period to exit and are then killed, with a
warning, so they cannot skew the next measurement. (Killing by group id is
safe after the leader exits: Linux does not reuse a pid while a process group
of that id still exists.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from benchmarks._env import REPO_ROOT

logger = logging.getLogger(__name__)

# How long stragglers in the child's group get to exit on their own after the
# child exits (loky's resource tracker, for one, exits when it notices).
_STRAGGLER_GRACE_S: Final = 3.0
# Characters of the child's stderr kept for the JSON: enough for a traceback.
_STDERR_TAIL_CHARS: Final = 4000


@dataclass(frozen=True)
class ChildOutcome:
    """How one child ended and what it reported."""

    # The parsed result file (see ``_child``), or None if the child never wrote one.
    result: dict[str, Any] | None
    returncode: int | None
    timed_out: bool
    wall_s: float
    stderr_tail: str

    def failure(self, timeout_s: float) -> str | None:
        """A short reason for a table cell, or None if the trial produced numbers."""
        if self.result is not None and self.result.get("ok"):
            return None
        if self.result is not None:
            return f"error: {self.result.get('error')}"
        if self.timed_out:
            return f"timeout ({timeout_s:.0f} s)"
        if self.returncode is not None and self.returncode < 0:
            return f"error: child killed by {signal.Signals(-self.returncode).name}"
        lines = [line for line in self.stderr_tail.splitlines() if line.strip()]
        return f"error: exit code {self.returncode}: {lines[-1].strip() if lines else 'no output'}"


def child_env() -> dict[str, str]:
    """The harness's environment with the repo root first on PYTHONPATH, so the
    child, its workers and any sidecar import ``benchmarks`` and the package
    under test from this checkout."""
    env = dict(os.environ)
    parts = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def run_child(spec: dict[str, object], *, timeout_s: float, workdir: Path, tag: str) -> ChildOutcome:
    """Run ``python -m benchmarks._child <spec>`` and return how it went. Never
    raises for anything the child does; a KeyboardInterrupt still kills it."""
    result_file = workdir / f"{tag}.json"
    stdout_file, stderr_file = workdir / f"{tag}.stdout", workdir / f"{tag}.stderr"
    spec = {**spec, "result_file": str(result_file)}
    argv = [sys.executable, "-m", "benchmarks._child", json.dumps(spec)]
    timed_out = False
    t0 = time.perf_counter()
    with stdout_file.open("wb") as out, stderr_file.open("wb") as err:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            logger.debug("child %d (%s) timed out after %.0f s; killing its group", proc.pid, tag, timeout_s)
        finally:
            if proc.returncode is None:  # timed out, or the harness is being interrupted
                _kill_tree(proc)
    wall_s = time.perf_counter() - t0
    _reap_stragglers(proc.pid, tag)
    result: dict[str, Any] | None = None
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        result = json.loads(result_file.read_text())
    stderr_tail = stderr_file.read_text(errors="replace")[-_STDERR_TAIL_CHARS:]
    return ChildOutcome(result, proc.returncode, timed_out, wall_s, stderr_tail)


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's process group, then any descendant outside it; reap the child."""
    escaped = []
    try:
        import psutil

        escaped = psutil.Process(proc.pid).children(recursive=True)
    except ImportError:
        logger.debug("psutil missing: only the child's process group is killed")
    except Exception as exc:  # psutil.NoSuchProcess and friends: the child is gone already
        logger.debug("could not list descendants of %d: %s", proc.pid, exc)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for descendant in escaped:
        # psutil checks the pid still names the process it listed, so this
        # cannot hit an unrelated process that reused the pid.
        with contextlib.suppress(Exception):
            descendant.kill()
    proc.wait()


def _reap_stragglers(pgid: int, tag: str) -> None:
    """Kill what the child left in its group after a grace period, with a warning."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return  # the usual case: the group is empty
    try:
        import psutil
    except ImportError:
        logger.warning("%s: processes left in group %d; killing them (no psutil to wait)", tag, pgid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        return
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            # A zombie has already exited; only its new parent's reaping is pending.
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    if not members:
        return
    _, alive = psutil.wait_procs(members, timeout=_STRAGGLER_GRACE_S)
    if alive:
        logger.warning(
            "%s: the executor left %d process(es) running after the child exited (pids %s); killing them",
            tag,
            len(alive),
            ", ".join(str(p.pid) for p in alive),
        )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
