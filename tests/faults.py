"""Fault-injection objects: they raise, exit or crash the process the moment
they are pickled or unpickled, wherever that happens (the parent at submit,
a worker decoding its job or encoding its result, the parent decoding a
result). The idea is CPython's Lib/test/test_concurrent_futures/test_deadlock.py;
the code is ours.

Pickling calls ``__reduce__``: an ``*AtPickle`` object misbehaves there. An
``*AtUnpickle`` object pickles fine, as a call to one of the functions below,
which pickle makes while loading. Those functions must be importable by
reference from every process, so they live at module level here, and this
module, like ``jobs``, imports nothing but the stdlib.
"""

from __future__ import annotations

import pickle
from typing import NoReturn

from jobs import segfault

__all__ = [
    "CrashAtPickle",
    "CrashAtUnpickle",
    "ErrorAtPickle",
    "ErrorAtUnpickle",
    "ExitAtPickle",
    "ExitAtUnpickle",
]

PICKLE_ERROR_TEXT = "ErrorAtPickle refuses to be pickled"
UNPICKLE_ERROR_TEXT = "ErrorAtUnpickle refuses to be unpickled"
PICKLE_EXIT_TEXT = "ExitAtPickle exits while being pickled"
UNPICKLE_EXIT_TEXT = "ExitAtUnpickle exits while being unpickled"


def _raise_unpickling_error(message: str) -> NoReturn:
    raise pickle.UnpicklingError(message)


def _exit(message: str) -> NoReturn:
    raise SystemExit(message)


class ErrorAtPickle:
    """Raises ``pickle.PicklingError`` when pickled."""

    def __reduce__(self) -> NoReturn:
        raise pickle.PicklingError(PICKLE_ERROR_TEXT)


class ExitAtPickle:
    """Raises ``SystemExit`` when pickled."""

    def __reduce__(self) -> NoReturn:
        raise SystemExit(PICKLE_EXIT_TEXT)


class CrashAtPickle:
    """Kills the pickling process with SIGSEGV."""

    def __reduce__(self) -> NoReturn:
        segfault()
        raise AssertionError("unreachable")


class ErrorAtUnpickle:
    """Pickles; raises ``pickle.UnpicklingError`` when unpickled."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _raise_unpickling_error, (UNPICKLE_ERROR_TEXT,)


class ExitAtUnpickle:
    """Pickles; raises ``SystemExit`` when unpickled."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _exit, (UNPICKLE_EXIT_TEXT,)


class CrashAtUnpickle:
    """Pickles; kills the unpickling process with SIGSEGV."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return segfault, ()


def big_then_unloadable(nbytes: int, kind: str = "error") -> list[object]:
    """A result of over ``nbytes`` (so it travels through shared memory when big)
    that pickles in the worker and fails to load in the parent: ``kind`` is
    "error" (UnpicklingError) or "exit" (SystemExit)."""
    bad = ErrorAtUnpickle() if kind == "error" else ExitAtUnpickle()
    return [b"x" * nbytes, bad]
