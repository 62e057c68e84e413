"""``map(..., progress=True)``: a tqdm bar of the items completed, with the
in-job progress of the running chunks.

    map() (caller thread)        MapBar.open: the bar, before any chunk is submitted
      submit each chunk          track(future, items): a done-callback per chunk
    reader / delivery threads    on_progress(report): the chunk's own report -> postfix
                                 chunk done: +items (a chunk that failed adds none)
    the result iterator ends,    close(): once, whichever comes first; also when
    raises, is closed, or is     every chunk is done and the input is used up, and
    dropped unstarted            when the iterator is collected

Items count when their chunk's job returns, not when the caller takes them:
the bar shows the pool's work. Every call into the bar holds one lock (it is
driven from several threads). The bar is made with ``disable=None``, tqdm's
"only on a terminal"; pass a class or a ``functools.partial(tqdm, ...)`` to
choose otherwise.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from concurrent.futures import Future
    from typing import Any, Final

    from .progress import ProgressReport

__all__ = ["MapBar"]

logger = logging.getLogger("subproc_executor")

# Running chunks whose in-job progress the postfix shows; the rest are counted.
_SHOWN_RUNNING: Final = 4
_MESSAGE_CHARS: Final = 40
_REFRESH_SECONDS: Final = 0.1


class MapBar:
    """One ``map`` call's progress bar."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar
        # Reentrant: close() may run from a finalizer (the garbage collector)
        # on a thread that is inside another method already.
        self._lock = threading.RLock()
        self._items: dict[Future[Any], int] = {}  # running chunks: their item counts
        self._reports: dict[Future[Any], ProgressReport] = {}  # their latest reports
        self._all_submitted = False
        self._closed = False
        self._last_refresh = 0.0

    @classmethod
    def open(cls, progress: object, total: int | None, desc: str) -> MapBar:
        """The bar ``progress`` asks for: True for tqdm's own, or a
        tqdm-compatible class (called with ``total``, ``unit``, ``desc``)."""
        if progress is True:
            try:
                from tqdm import tqdm
            except ImportError:
                raise ImportError(
                    "map(..., progress=True) draws its bar with tqdm, which is not installed: "
                    "pip install 'subproc-executor[progress]' (or tqdm), or pass a tqdm-compatible "
                    "class as progress=..."
                ) from None
            bar = tqdm(total=total, unit="item", desc=desc, file=sys.stderr, disable=None, dynamic_ncols=True)
        elif callable(progress):
            bar = progress(total=total, unit="item", desc=desc)
        else:
            raise TypeError(
                f"progress must be True, False or a tqdm-compatible class (a callable taking total=, "
                f"unit=, desc=), got {progress!r}"
            )
        return cls(bar)

    def track(self, future: Future[Any], items: int) -> None:
        """A chunk of ``items`` was submitted as ``future``."""
        with self._lock:
            self._items[future] = items
        future.add_done_callback(self._chunk_done)

    def all_submitted(self) -> None:
        """The input is used up: the bar closes when the last chunk is done."""
        with self._lock:
            self._all_submitted = True
            finished = not self._items
        if finished:
            self.close()

    def on_progress(self, report: ProgressReport) -> None:
        """A running chunk's own report: shown after the count."""
        with self._lock:
            if self._closed or report.future not in self._items:
                return
            self._reports[report.future] = report
            self._show_running_locked()

    def _chunk_done(self, future: Future[Any]) -> None:
        with self._lock:
            items = self._items.pop(future, 0)
            had_report = self._reports.pop(future, None) is not None
            if self._closed:
                return
            try:
                if not future.cancelled() and future.exception() is None:
                    self._bar.update(items)
                if had_report:
                    self._show_running_locked()
            except Exception:
                logger.exception("updating the progress bar of a map failed")
            finished = self._all_submitted and not self._items
        if finished:
            self.close()

    def _show_running_locked(self) -> None:
        reports = list(self._reports.values())
        if not reports:
            text = ""
        else:
            shown = []
            for report in reports[-_SHOWN_RUNNING:]:
                fraction = report.fraction
                shown.append(f"{fraction:.0%}" if fraction is not None else f"{report.done:g}")
            text = "running: " + " ".join(shown)
            if len(reports) > _SHOWN_RUNNING:
                text += f" +{len(reports) - _SHOWN_RUNNING}"
            message = reports[-1].message
            if message:
                text += f" | {message[:_MESSAGE_CHARS]}"
        set_postfix = getattr(self._bar, "set_postfix_str", None)
        if set_postfix is not None:
            now = time.monotonic()
            # Redrawn at most ten times a second, however many workers report.
            refresh = now - self._last_refresh >= _REFRESH_SECONDS
            if refresh:
                self._last_refresh = now
            try:
                set_postfix(text, refresh=refresh)
            except Exception:
                logger.exception("updating the progress bar of a map failed")

    def close(self) -> None:
        """Close the bar once (any thread, any number of times). Counts the
        chunks that are done but whose callbacks have not run yet: a result's
        waiter wakes before its future's callbacks run, so the consumer may
        finish (and close) first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            shown, self._reports = bool(self._reports), {}
            try:
                finished = sum(
                    items
                    for future, items in self._items.items()
                    if future.done() and not future.cancelled() and future.exception() is None
                )
                self._items.clear()
                if finished:
                    self._bar.update(finished)
                if shown and hasattr(self._bar, "set_postfix_str"):
                    self._bar.set_postfix_str("", refresh=False)
                self._bar.close()
            except Exception:
                logger.exception("closing the progress bar of a map failed")
