"""``map`` for ``SubprocExecutor`` and its ``options()`` views: chunks in,
results out in order, with ``buffersize`` and ``progress``.

    map(fn, *iterables)                      (caller thread)
      chunks of argument tuples ---submit(options, chunk)---> futures
        every chunk now, or with buffersize the first N now and
        one more each time the oldest one's result arrives
      result iterator: waits for each chunk in order (map's timeout
        counted from the call), yields its values, cancels the rest
        if the consumer stops or a chunk fails
      progress: a MapBar (mapbar) counting the chunks' items as they
        finish, fed the chunks' own reports through their on_progress

Behaviour follows ``ProcessPoolExecutor.map`` (3.14's ``buffersize``
included), with the one bound 3.14 breaks kept (gh-131466).
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeoutError

from ..worker.job import call_chunk
from ..worker.pickling import needs_value
from .mapbar import MapBar
from .settings import JobOptions

# typing stays unimported at run time: 4 ms and 0.5 MiB in every process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from .progress import ProgressReport

    T = TypeVar("T")
    Chunk = tuple[tuple[Any, ...], ...]
    # The executor's (or view's) submit: options, function, args, kwargs, by_value.
    SubmitJob = Callable[
        [JobOptions | None, Callable[..., Any], tuple[Any, ...], dict[str, Any], bool], Future[Any]
    ]
    SubmitChunk = Callable[[JobOptions | None, Chunk], Future[list[Any]]]

__all__ = ["map_chunks"]


def map_chunks(
    submit_job: SubmitJob,
    options: JobOptions | None,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    timeout: float | None,
    chunksize: int,
    buffersize: int | None,
    progress: object = False,
) -> Iterator[Any]:
    """``map`` over ``submit_job``, a job per chunk: every chunk submitted now, or,
    with ``buffersize``, the first ``buffersize`` now and the rest as results
    are consumed. Either way the submitting happens in this call, as the
    stdlib's does, so ``timeout`` counts from here and a closed executor
    raises here. ``progress``: False, True (tqdm) or a tqdm-compatible class."""
    if chunksize < 1:
        raise ValueError("chunksize must be >= 1.")
    if buffersize is not None:
        if isinstance(buffersize, bool) or not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
    end_time = None if timeout is None else timeout + time.monotonic()
    by_value = needs_value(fn)  # once, not once per chunk

    def submit(options: JobOptions | None, chunk: Chunk) -> Future[list[Any]]:
        return submit_job(options, call_chunk, (fn, chunk), {}, by_value)

    bar: MapBar | None = None
    if progress is not False and progress is not None:
        bar = MapBar.open(progress, _total(iterables), f"map({getattr(fn, '__qualname__', 'fn')})")
        options = _with_listener(options, bar.on_progress)
    chunks = _chunks(iterables, chunksize)
    try:
        if buffersize is None:
            futures = [_submit(submit, options, chunk, bar) for chunk in chunks]
            if bar is not None:
                bar.all_submitted()
            results = _result_iterator(futures, end_time, bar)
        else:
            pending = deque(
                _submit(submit, options, chunk, bar) for chunk in itertools.islice(chunks, buffersize)
            )
            results = _buffered_results(submit, options, chunks, pending, end_time, bar)
    except BaseException:
        if bar is not None:
            bar.close()
        raise
    if bar is not None:
        # An iterator dropped before it started runs no finally: close the bar then.
        weakref.finalize(results, bar.close)
    return results


def _submit(submit: SubmitChunk, options: JobOptions | None, chunk: Chunk, bar: MapBar | None) -> Future[Any]:
    fut = submit(options, chunk)
    if bar is not None:
        bar.track(fut, len(chunk))
    return fut


def _with_listener(options: JobOptions | None, listener: Callable[[ProgressReport], object]) -> JobOptions:
    """``options`` whose jobs report to ``listener`` too (first: a raising user
    callback must not keep the bar from its reports)."""
    if options is None:
        return JobOptions(on_progress=listener)
    user = options.on_progress
    if user is None:
        return options.replace(on_progress=listener)

    def both(report: ProgressReport) -> None:
        listener(report)
        user(report)

    return options.replace(on_progress=both)


def _total(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """Items map will yield, if every input knows its length (zip stops at the shortest)."""
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _chunks(iterables: tuple[Iterable[Any], ...], chunksize: int) -> Iterator[Chunk]:
    it = zip(*iterables, strict=False)  # map stops at the shortest, as builtin map does
    while True:
        chunk = tuple(itertools.islice(it, chunksize))
        if not chunk:
            return
        yield chunk


def _chunk_result(fut: Future[list[T]], end_time: float | None) -> list[T]:
    """A chunk's results, waiting at most until ``end_time`` (map's timeout)."""
    if end_time is None:
        return fut.result()
    remaining = end_time - time.monotonic()
    if remaining <= 0 and not fut.done():
        raise FuturesTimeoutError()
    return fut.result(max(0.0, remaining))


def _buffered_results(
    submit: SubmitChunk,
    options: JobOptions | None,
    chunks: Iterator[Chunk],
    pending: deque[Future[list[T]]],
    end_time: float | None,
    bar: MapBar | None,
) -> Iterator[T]:
    """``map`` with ``buffersize``: at most ``buffersize`` chunks submitted whose
    results are not yet in hand. The next chunk is submitted once the oldest
    one's result arrives, before its values are yielded (3.14 submits it
    before waiting for the oldest: one more in flight, gh-131466)."""
    # `while True:` with a break, not `while cond:` (tests/test_loop_edges.py):
    # Ctrl-C at a back edge must still reach the finally.
    try:
        exhausted = False
        while True:
            if not pending:
                break
            fut = pending[0]
            values = _chunk_result(fut, end_time)
            pending.popleft()
            del fut
            if not exhausted:
                for chunk in itertools.islice(chunks, 1):
                    pending.append(_submit(submit, options, chunk, bar))
                    break
                else:
                    exhausted = True
                    if bar is not None:
                        bar.all_submitted()
            values.reverse()
            while True:
                if not values:
                    break
                yield values.pop()
    finally:
        for fut in pending:
            fut.cancel()
        if bar is not None:
            bar.close()


def _result_iterator(
    futures: list[Future[list[T]]], end_time: float | None, bar: MapBar | None
) -> Iterator[T]:
    """Yield results in order; cancel what is left if the consumer stops or a job fails.

    Holds no reference to a result it has yielded (gh-14406): each chunk is
    emptied as it is yielded, and its future is dropped before.
    """
    futures.reverse()  # pop() from the end is O(1)
    # `while True:` with a break, not `while cond:` (tests/test_loop_edges.py):
    # Ctrl-C at a back edge must still reach the finally.
    try:
        while True:
            if not futures:
                break
            fut = futures[-1]
            chunk = _chunk_result(fut, end_time)
            futures.pop()
            del fut
            chunk.reverse()
            while True:
                if not chunk:
                    break
                yield chunk.pop()
            del chunk
    finally:
        for fut in futures:
            fut.cancel()
        if bar is not None:
            bar.close()
