"""A progress bar per measurement family, on stderr, when tqdm is there to draw it.

A full run takes long enough that a silent minute looks like a hang; the bar
shows which family is running, for which contender, and how many of its
trials are done. It is decoration: without tqdm (the ``bench`` extra) the bar
is a no-op, and by default (``disable=None``) tqdm draws nothing when stderr
is not a terminal, so a redirected or captured run reads exactly as before.
While a bar is drawn, the harness's log lines go through ``tqdm.write`` so
they print above the bar instead of through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol, TextIO


class Bar(Protocol):
    """The part of ``tqdm`` the harness uses."""

    def update(self, n: float = 1) -> object: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...


# (family name, total trials) -> a context manager yielding the family's bar.
BarFactory = Callable[[str, int], contextlib.AbstractContextManager[Bar]]


class _NoBar:
    """Stands in for a bar when tqdm is not installed."""

    def update(self, n: float = 1) -> object:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass


@contextlib.contextmanager
def family_bar(
    name: str, total: int, *, file: TextIO | None = None, disable: bool | None = None
) -> Iterator[Bar]:
    """A bar of ``total`` trials for one family, closed however the family ends.

    ``file`` defaults to stderr; ``disable=None`` hides the bar when ``file``
    is not a terminal, ``True`` always (``--quiet``), ``False`` never (tests).
    """
    try:
        from tqdm import tqdm
    except ImportError:
        yield _NoBar()
        return
    bar = tqdm(total=total, desc=name, unit="trial", file=file, disable=disable)
    try:
        if bar.disable:
            yield bar
        else:
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm(tqdm_class=tqdm):
                yield bar
    finally:
        bar.close()
