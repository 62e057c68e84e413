"""The delivery threads (subproc_executor.parent.delivery), on their own.

Deliveries run in order on one thread while none blocks; a delivery that
blocks (a done-callback waiting for another job's result) gets another
thread, so the one it waits for still runs; and closing waits for what was
queued, then leaves no thread behind.
"""

from __future__ import annotations

import threading

from subproc_executor.parent.delivery import MAX_THREADS, Deliverer

WITHIN = 10.0


def test_deliveries_run_in_order_on_one_thread_when_none_blocks() -> None:
    d = Deliverer(name="test-delivery")
    seen: list[tuple[int, str]] = []
    for i in range(200):
        d.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
    d.close(wait=True)
    assert [i for i, _ in seen] == list(range(200))
    assert len({name for _, name in seen}) == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("test-delivery")]


def test_a_blocked_delivery_does_not_stop_the_one_it_waits_for() -> None:
    d = Deliverer(name="test-delivery")
    second_ran = threading.Event()
    first_saw_it = threading.Event()

    def first() -> None:
        if second_ran.wait(WITHIN):  # a callback waiting for another job's result
            first_saw_it.set()

    d.submit(first)
    d.submit(second_ran.set)
    assert first_saw_it.wait(WITHIN), "the second delivery never ran while the first blocked"
    d.close(wait=True)


def test_blocked_deliveries_are_bounded_and_all_finish() -> None:
    d = Deliverer(name="test-delivery")
    release = threading.Event()
    done = threading.Semaphore(0)
    n = MAX_THREADS + 5

    def blocker() -> None:
        release.wait(WITHIN)
        done.release()

    for _ in range(n):
        d.submit(blocker)
    threads = [t for t in threading.enumerate() if t.name.startswith("test-delivery-")]
    assert len(threads) <= MAX_THREADS
    release.set()
    for _ in range(n):
        assert done.acquire(timeout=WITHIN)
    d.close(wait=True)


def test_a_delivery_that_raises_is_logged_and_the_next_runs() -> None:
    d = Deliverer(name="test-delivery")
    ran = threading.Event()

    def bad() -> None:
        raise RuntimeError("a bug in a delivery")

    d.submit(bad)
    d.submit(ran.set)
    assert ran.wait(WITHIN)
    d.close(wait=True)
