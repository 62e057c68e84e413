"""How a sidecar process is started: its command line, its environment, its log file.

Kept apart from ``launcher`` (which runs and watches one sidecar) because
these are the security-relevant choices, each small enough to read at once:

* the command line keeps the working directory off the sidecar's import path
  (``-P`` on 3.11+, a bootstrap on 3.10), and carries only the pipes' numbers
  and the parent's pid: everything else arrives in the INIT frame;
* the environment adds only our package's directory to PYTHONPATH (the rest of
  the parent's import path is installed by the sidecar after its own imports)
  and PYTHONSAFEPATH for the interpreters the sidecar starts;
* ``log_path`` is created private to the user and never through a symlink.
"""

from __future__ import annotations

import os
import sys

from ..wire.messages import SAFE_PATH_ADDED_ENV, SIDECAR_PID_ENV

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["open_private_log", "sidecar_argv", "sidecar_env"]

# How the sidecar is started. ``-P`` (3.11+) keeps the working directory
# off its import path, so a stray ``selectors.py`` in a shared directory is
# never imported by it; 3.10 has no -P, so a bootstrap drops sys.path[0]
# (the cwd for -c) before importing anything of ours.
_BOOT_310: Final = (
    "import sys; del sys.path[0]; from subproc_executor.sidecar.main import main; sys.exit(main())"
)


def sidecar_argv() -> list[str]:
    """The command line that starts a sidecar, before its descriptor arguments."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", "subproc_executor.sidecar"]
    return [sys.executable, "-c", _BOOT_310]


def open_private_log(path: str) -> int:
    """Open ``log_path`` for appending: created private to the user (0600),
    and never through a symlink planted at that path (which could make us
    write into another file of the user's)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        if os.path.islink(path):
            message = f"log_path {path!r} is a symbolic link; refusing to follow it: pass a plain file path"
            raise OSError(exc.errno, message) from exc
        raise


def sidecar_env() -> dict[str, str]:
    """The parent's environment, with our package findable by the sidecar.

    Only the directory holding ``subproc_executor`` is added to PYTHONPATH:
    the rest of the parent's import path reaches the sidecar in INIT and is
    installed after the sidecar's own imports, so no module of the user's
    directories can stand in for one the sidecar needs.
    """
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.pop(SIDECAR_PID_ENV, None)
    if sys.version_info >= (3, 11) and "PYTHONSAFEPATH" not in env:
        # -P for the interpreters the sidecar starts too (loky's workers run
        # "python -m", which would put the working directory first).
        env["PYTHONSAFEPATH"] = "1"
        env[SAFE_PATH_ADDED_ENV] = "1"
    return env
