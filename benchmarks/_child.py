"""Entry point of a measurement child: ``python -m benchmarks._child '<json spec>'``.

The harness starts one of these per trial, in a new session, with the
repository root on ``PYTHONPATH``. It runs one family's ``run_trial`` for one
contender and writes the outcome to the result file named in the spec, *then*
shuts the executors down: an executor whose ``shutdown()`` hangs still gets its
numbers reported, and the harness kills the child when its time is up.

The spec is JSON: ``{"module", "contender", "workers", "profile", "trial",
"result_file"}``. The result file holds ``{"ok": true, "repeats", "errors",
"extra"}`` or ``{"ok": false, "error"}``. Stdout is left to the executor under
test; nothing here parses it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks._core import PROFILES, Profile, Trial, TrialOutput, short_error
from benchmarks.contenders import CONTENDERS, Contender

if TYPE_CHECKING:
    from concurrent.futures import Executor

logger = logging.getLogger(__name__)


class Context:
    """What a family's ``run_trial`` gets: the contender, sizes, and executor
    bookkeeping, so every executor made is shut down after the result is saved."""

    def __init__(self, contender: Contender, workers: int, profile: Profile) -> None:
        self.contender = contender
        self.workers = workers
        self.profile = profile
        # Executors made in this trial, shut down by close() in creation order.
        self._executors: list[Executor] = []

    def load(self) -> Callable[[], Executor]:
        """Import the contender and return its constructor (see ``contenders``)."""
        return self.contender.load(self.workers)

    def track(self, executor: Executor) -> Executor:
        self._executors.append(executor)
        return executor

    def executor(self) -> Executor:
        """Load, construct and track in one call, for families that time neither."""
        return self.track(self.load()())

    def close(self) -> None:
        """Shut every executor down, cancelling what is queued. May block on a
        misbehaving executor; the harness's time limit covers that."""
        for executor in self._executors:
            try:
                executor.shutdown(wait=True, cancel_futures=True)
            except Exception:
                logger.exception("shutdown of %s failed", self.contender.name)


def _write_result(path: Path, payload: dict[str, object]) -> None:
    """Write then rename, so a child killed mid-write leaves no half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    result_file = Path(spec["result_file"])
    trial: Trial = spec["trial"]
    ctx = Context(CONTENDERS[spec["contender"]], int(spec["workers"]), PROFILES[spec["profile"]])
    try:
        family = importlib.import_module(f"benchmarks.{spec['module']}")
        output: TrialOutput = family.run_trial(ctx, trial)
    except Exception as exc:
        traceback.print_exc()
        # Long enough to keep the cause of a chained error; the table clips it.
        _write_result(result_file, {"ok": False, "error": short_error(exc, limit=1000)})
        ctx.close()
        return 1
    _write_result(
        result_file, {"ok": True, "repeats": output.repeats, "errors": output.errors, "extra": output.extra}
    )
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
