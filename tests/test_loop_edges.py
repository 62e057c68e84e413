"""No loop's back edge may fall outside the ``try`` or ``with`` that encloses it.

Why: CPython runs a signal handler (Ctrl-C's ``KeyboardInterrupt``) at a
loop's back edge, and CPython 3.12 and 3.13 compile ``while cond:`` inside a ``try``
or ``with`` so that this one jump is missing from the exception table
(python/cpython#130279). An exception raised there skips the enclosing
``finally``, ``except BaseException`` or ``with`` exit: a lock stays held, a
``map`` generator ends without cancelling its pending jobs. A CI run on 3.13
caught it in a test's own loop. ``while True:`` with an ``if not cond:
break`` compiles correctly, and so does a ``for`` loop.

The check reads the bytecode of every function in the package (nested ones
included) with ``dis``: a ``JUMP_BACKWARD`` whose loop start and previous
instruction share a handler must share it too. Where the interpreter has no
exception table (3.10) there is nothing to check.
"""

from __future__ import annotations

import dis
import importlib
import inspect
import itertools
import pkgutil
import sys
import types
from collections.abc import Iterator

import pytest

import subproc_executor

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.version_info < (3, 11), reason="no exception table before 3.11"),
]


def _handler(entries: list[dis._ExceptionTableEntry], offset: int) -> int | None:
    """The handler offset that covers the instruction at ``offset``, if any."""
    for e in entries:
        if e.start <= offset < e.end:
            return int(e.target)
    return None


def uncovered_back_edges(code: types.CodeType) -> list[int]:
    """Line numbers of back edges that leave the handler covering their loop."""
    bytecode = dis.Bytecode(code)
    entries = bytecode.exception_entries  # type: ignore[attr-defined]
    instructions = list(bytecode)
    lines = []
    for before, jump in itertools.pairwise(instructions):
        if jump.opname != "JUMP_BACKWARD":  # _NO_INTERRUPT runs no handler
            continue
        covering = _handler(entries, before.offset)
        if covering is None or _handler(entries, jump.argval) != covering:
            continue  # the loop is not inside that try (a try inside the loop's body is fine)
        if _handler(entries, jump.offset) != covering:
            lines.append(jump.positions.lineno if jump.positions else -1)
    return lines


def _codes() -> Iterator[tuple[str, types.CodeType]]:
    """Every code object of every module of the package, nested ones included."""
    for info in pkgutil.walk_packages(subproc_executor.__path__, f"{subproc_executor.__name__}."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        todo = [module.__loader__.get_code(info.name)]  # type: ignore[union-attr]
        while todo:
            code = todo.pop()
            if code is None:
                continue
            yield info.name, code
            todo.extend(c for c in code.co_consts if inspect.iscode(c))


def _example_bad(x: list[int]) -> None:
    try:
        while x:
            x.pop()
    finally:
        x.clear()


def _example_good(x: list[int]) -> None:
    try:
        while True:
            if not x:
                break
            x.pop()
    finally:
        x.clear()


def test_the_check_sees_the_compiler_bug_where_it_exists() -> None:
    """The check is not vacuous: on 3.12 and 3.13 it flags the pattern of cpython#130279."""
    assert not uncovered_back_edges(_example_good.__code__)
    if sys.version_info[:2] in ((3, 12), (3, 13)):
        assert uncovered_back_edges(_example_bad.__code__)


def test_no_back_edge_escapes_its_try() -> None:
    found = [
        f"{module}:{line} in {code.co_name}"
        for module, code in _codes()
        for line in uncovered_back_edges(code)
    ]
    assert not found, (
        "a loop whose back edge an interrupt would skip the enclosing try/with at "
        f"(write `while True:` with `if not cond: break`): {found}"
    )
