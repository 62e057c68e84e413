"""The documented behaviour of ProcessPoolExecutor, checked on SubprocExecutor,
for every backend and start method (see executor_fixtures.VARIANTS)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import jobs
import pytest
from executor_fixtures import ANSWER_WITHIN, MakeExecutor

from subproc_executor import InitializerFailedError, SubprocExecutor
from subproc_executor.errors import RemoteTraceback

# -- constructor validation: same exception types as the stdlib --------------


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"max_workers": 0}, ValueError),
        ({"max_workers": -1}, ValueError),
        ({"initializer": 42}, TypeError),
        ({"max_tasks_per_child": "3"}, TypeError),
        ({"max_tasks_per_child": 0}, ValueError),
        ({"max_tasks_per_child": 2, "mp_context": multiprocessing.get_context("fork")}, ValueError),
        ({"max_tasks_per_child": 2, "backend": "loky"}, ValueError),
        ({"mp_context": "threads"}, ValueError),
        ({"backend": "no-such-backend"}, ValueError),
    ],
)
def test_constructor_rejects_what_the_stdlib_rejects(kwargs: dict[str, object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        SubprocExecutor(**kwargs)  # type: ignore[arg-type]


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="process") as info:
        SubprocExecutor(backend="nope")
    assert "loky" in str(info.value)


def test_max_workers_attribute_is_set_like_the_stdlib(make_executor: MakeExecutor) -> None:
    assert make_executor(3)._max_workers == 3


# -- submit and map --------------------------------------------------------------


def test_submit_returns_a_stdlib_future(shared_executor: SubprocExecutor) -> None:
    fut = shared_executor.submit(jobs.add, 2, b=5)
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=ANSWER_WITHIN) == 7


def test_submit_keyword_named_fn_and_self(shared_executor: SubprocExecutor) -> None:
    # fn is positional-only, so these names reach the job as keywords.
    fut = shared_executor.submit(dict, fn=1, self=2)
    assert fut.result(timeout=ANSWER_WITHIN) == {"fn": 1, "self": 2}


@pytest.mark.parametrize("chunksize", [1, 3, 1000])
def test_map_keeps_order(shared_executor: SubprocExecutor, chunksize: int) -> None:
    assert list(shared_executor.map(jobs.square, range(200), chunksize=chunksize)) == [
        x * x for x in range(200)
    ]


def test_map_zips_several_iterables_to_the_shortest(shared_executor: SubprocExecutor) -> None:
    assert list(shared_executor.map(jobs.add, [1, 2, 3], [10, 20])) == [11, 22]


def test_map_of_nothing(shared_executor: SubprocExecutor) -> None:
    assert list(shared_executor.map(jobs.square, [])) == []


def test_map_rejects_chunksize_below_one(shared_executor: SubprocExecutor) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        shared_executor.map(jobs.square, [1], chunksize=0)


def test_map_raises_the_jobs_exception_when_its_result_is_reached(shared_executor: SubprocExecutor) -> None:
    it = shared_executor.map(jobs.fail_on, range(5), [3] * 5)
    assert [next(it), next(it), next(it)] == [0, 1, 2]
    with pytest.raises(KeyError):
        next(it)


def test_map_timeout_counts_from_the_call(shared_executor: SubprocExecutor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    start = time.monotonic()
    it = shared_executor.map(jobs.block_until, [str(tmp_path / "s")], [str(gate)], timeout=0.5)
    with pytest.raises(cf.TimeoutError):
        next(it)
    assert time.monotonic() - start >= 0.5
    gate.touch()


def test_job_exception_keeps_type_and_remote_traceback(shared_executor: SubprocExecutor) -> None:
    fut = shared_executor.submit(jobs.raise_value_error, "bad value")
    with pytest.raises(ValueError, match="bad value") as info:
        fut.result(timeout=ANSWER_WITHIN)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise_value_error" in str(cause)
    assert "raise ValueError(message)" in str(cause)


def test_as_completed_and_wait(shared_executor: SubprocExecutor) -> None:
    futures = [shared_executor.submit(jobs.square, i) for i in range(20)]
    squares = sorted(f.result() for f in cf.as_completed(futures, timeout=ANSWER_WITHIN))
    assert squares == [i * i for i in range(20)]
    done, not_done = cf.wait(futures, timeout=ANSWER_WITHIN, return_when=cf.ALL_COMPLETED)
    assert len(done) == 20 and not not_done


def test_run_in_executor(shared_executor: SubprocExecutor) -> None:
    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        return await asyncio.gather(
            *(loop.run_in_executor(shared_executor, jobs.square, i) for i in range(5))
        )

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [0, 1, 4, 9, 16]


def test_lambdas_and_closures_travel_by_value(shared_executor: SubprocExecutor) -> None:
    offset = 10

    def closure(x: int) -> int:
        return x + offset

    assert shared_executor.submit(lambda: 41 + 1).result(timeout=ANSWER_WITHIN) == 42
    assert list(shared_executor.map(closure, [1, 2])) == [11, 12]


def test_unpicklable_argument_fails_only_its_job(shared_executor: SubprocExecutor) -> None:
    bad = shared_executor.submit(jobs.identity, threading.Lock())
    with pytest.raises(TypeError, match="lock"):
        bad.result(timeout=ANSWER_WITHIN)
    assert shared_executor.submit(jobs.square, 4).result(timeout=ANSWER_WITHIN) == 16


def test_large_payloads_both_ways(shared_executor: SubprocExecutor) -> None:
    size = 100 * 1024 * 1024
    assert shared_executor.submit(jobs.length, b"y" * size).result(timeout=120) == size
    out = shared_executor.submit(jobs.make_bytes, size).result(timeout=120)
    assert isinstance(out, bytes) and len(out) == size


def test_threads_submitting_at_once_lose_nothing(shared_executor: SubprocExecutor) -> None:
    results: dict[int, list[cf.Future[int]]] = {}

    def worker(t: int) -> None:
        results[t] = [shared_executor.submit(jobs.add, t * 1000, i) for i in range(1000)]

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    for t, futs in results.items():
        assert [f.result(timeout=60) for f in futs] == [t * 1000 + i for i in range(1000)]
    assert len(results) == 8


# -- cancellation and shutdown -------------------------------------------------


def test_queued_future_can_be_cancelled(make_executor: MakeExecutor, tmp_path: Path) -> None:
    ex = make_executor(1)
    gate = tmp_path / "gate"
    first = ex.submit(jobs.block_until, str(tmp_path / "started"), str(gate), "first")
    assert jobs.wait_for_path(tmp_path / "started", 30)
    log = tmp_path / "log"
    # More jobs than the window holds: the last ones stay queued in the parent.
    later = [ex.submit(jobs.append_line, str(log), str(i)) for i in range(ex._core.table.window + 5)]
    last = later[-1]
    assert not last.running()
    assert last.cancel()
    assert last.cancelled()
    gate.touch()
    assert first.result(timeout=ANSWER_WITHIN) == "first"
    for f in later[:-1]:
        f.result(timeout=ANSWER_WITHIN)
    ex.shutdown(wait=True)
    assert str(ex._core.table.window + 4) not in log.read_text().split()


def test_sent_future_reports_running_and_cannot_be_cancelled(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_executor(1)
    fut = ex.submit(jobs.block_until, str(tmp_path / "started"), str(tmp_path / "gate"), 1)
    assert jobs.wait_for_path(tmp_path / "started", 30)
    assert fut.running()
    assert not fut.cancel()
    (tmp_path / "gate").touch()
    assert fut.result(timeout=ANSWER_WITHIN) == 1


def test_submit_after_shutdown_raises(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(jobs.square, 2)


def test_shutdown_twice_is_harmless(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    ex.submit(jobs.square, 2).result(timeout=ANSWER_WITHIN)
    ex.shutdown()
    ex.shutdown()


def test_context_manager_waits_for_jobs(make_executor: MakeExecutor) -> None:
    with make_executor() as ex:
        futs = [ex.submit(jobs.sleep_return, 0.05, i) for i in range(6)]
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == list(range(6))


def test_shutdown_without_wait_returns_and_jobs_still_finish(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_executor(1)
    gate = tmp_path / "gate"
    futs = [ex.submit(jobs.block_until, str(tmp_path / f"s{i}"), str(gate), i) for i in range(3)]
    assert jobs.wait_for_path(tmp_path / "s0", 30)
    ex.shutdown(wait=False)
    assert not futs[2].done()
    gate.touch()
    assert [f.result(timeout=ANSWER_WITHIN) for f in futs] == [0, 1, 2]


def test_cancel_futures_cancels_the_queued_and_finishes_the_running(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_executor(1)
    gate = tmp_path / "gate"
    running = ex.submit(jobs.block_until, str(tmp_path / "started"), str(gate), "ran")
    assert jobs.wait_for_path(tmp_path / "started", 30)
    queued = [ex.submit(jobs.square, i) for i in range(ex._core.table.window + 10)]

    def open_gate_once_closing() -> None:
        # Release the running job only after shutdown() has cancelled the
        # queue, whatever the machine's speed.
        deadline = time.monotonic() + 30
        while ex.statistics().state == "running" and time.monotonic() < deadline:
            time.sleep(0.005)
        gate.touch()

    opener = threading.Thread(target=open_gate_once_closing)
    opener.start()
    ex.shutdown(wait=True, cancel_futures=True)
    opener.join(30)
    assert running.result(timeout=0) == "ran"
    assert queued[-1].cancelled()
    assert all(f.done() for f in queued)


# -- initializer and worker recycling ----------------------------------------------


def test_initializer_runs_in_every_worker(make_executor: MakeExecutor) -> None:
    ex = make_executor(2, initializer=jobs.set_global, initargs=("ready",))
    assert set(ex.map(jobs.get_global, range(20))) == {"ready"}


def test_failing_initializer_breaks_the_executor_like_the_stdlib(make_executor: MakeExecutor) -> None:
    ex = make_executor(1, initializer=jobs.failing_initializer)
    fut = ex.submit(jobs.square, 3)
    with pytest.raises(BrokenProcessPool) as info:
        fut.result(timeout=60)
    assert isinstance(info.value, InitializerFailedError)
    assert "initializer exploded" in str(info.value)
    with pytest.raises(BrokenProcessPool):
        ex.submit(jobs.square, 3)


def test_max_tasks_per_child_replaces_workers(
    make_executor: MakeExecutor, variant: tuple[str, str | None]
) -> None:
    if variant[1] == "fork":
        pytest.skip("max_tasks_per_child is incompatible with fork, as in the stdlib")
    if variant[0] == "loky":
        pytest.skip("loky has no max_tasks_per_child; the constructor refuses it (test_backends)")
    if variant[0] == "process" and sys.version_info < (3, 11):
        pytest.skip("the stdlib pool has max_tasks_per_child from 3.11; the constructor refuses it")
    ex = make_executor(2, max_tasks_per_child=1)
    pids = [ex.submit(jobs.getpid).result(timeout=60) for _ in range(3)]
    assert len(set(pids)) == 3
    # A burst too: the sidecar must not group jobs the pool would count as one task.
    burst = [ex.submit(jobs.getpid) for _ in range(8)]
    assert len({f.result(timeout=60) for f in burst} | set(pids)) == 11


# -- what stdlib workers can reach, ours can ------------------------------------------


def test_manager_proxy_works_inside_jobs(make_executor: MakeExecutor) -> None:
    ex = make_executor(1)
    with multiprocessing.Manager() as manager:
        shared = manager.list()
        assert ex.submit(jobs.proxy_append, shared, "a").result(timeout=60) == 1
        assert list(shared) == ["a"]


def test_dask_compute_runs_on_the_executor(shared_executor: SubprocExecutor) -> None:
    dask = pytest.importorskip("dask")
    delayed = pytest.importorskip("dask.delayed").delayed

    total = delayed(sum)([delayed(jobs.square)(i) for i in range(10)])
    (result,) = dask.compute(total, scheduler=shared_executor)
    assert result == sum(i * i for i in range(10))


MAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from subproc_executor import SubprocExecutor

    class Point:
        def __init__(self, x):
            self.x = x

    def double(p):
        return Point(p.x * 2)

    if __name__ == "__main__":
        with SubprocExecutor(2, mp_context=sys.argv[1] or None, backend=sys.argv[2]) as ex:
            out = [p.x for p in ex.map(double, [Point(1), Point(2)])]
            out.append(ex.submit(lambda: 7).result(timeout=60))
        print(out)
    """
)


def test_functions_and_classes_from_main_work(variant: tuple[str, str | None], tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(MAIN_SCRIPT)
    backend, method = variant
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, str(script), method or "", backend],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[2, 4, 7]"


def _local_function_factory() -> object:
    def local(x: int) -> int:
        return x

    return local


def test_needs_value_is_asked_once_per_function_and_only_of_functions() -> None:
    """A script's own function (or a lambda, a closure) goes straight to
    cloudpickle: its job is pickled once per submit, not twice."""
    import functools

    from subproc_executor.worker import pickling

    main_fn = _local_function_factory()
    main_fn.__module__, main_fn.__qualname__ = "__main__", "double"  # as in a script
    assert pickling.needs_value(main_fn) is True
    assert pickling.needs_value(lambda: 1) is True
    assert pickling.needs_value(_local_function_factory()) is True
    assert pickling.needs_value(jobs.square) is False
    # Not a plain function: the usual attempt decides (a partial may hold big arguments).
    assert pickling.needs_value(functools.partial(jobs.square, 2)) is False
    assert pickling._by_value.get(main_fn) is True and pickling._by_value.get(jobs.square) is False

    made: list[list[bytes]] = []

    class ListSink:
        def __init__(self) -> None:
            self.parts: list[bytes] = []
            made.append(self.parts)

        def write(self, data: object) -> int:
            self.parts.append(bytes(data))  # type: ignore[call-overload]
            return len(self.parts[-1])

        def discard(self) -> None:
            self.parts.clear()

    job = (main_fn, (3,), {})
    sink = pickling.dump_into(pickling.HybridPickler, job, ListSink, by_value=True)
    assert len(made) == 1  # no plain attempt thrown away
    fn, args, _ = pickle.loads(b"".join(sink.parts))
    assert fn(*args) == 3
    made.clear()
    pickling.dump_into(pickling.HybridPickler, job, ListSink)
    assert len(made) == 2  # without the hint: a plain attempt, then cloudpickle


# -- pluggable pickler ---------------------------------------------------------------


def test_pickler_by_module(make_executor: MakeExecutor) -> None:
    import cloudpickle

    ex = make_executor(1, pickler=cloudpickle)
    assert ex.submit(lambda x: x + 1, 1).result(timeout=60) == 2


def test_pickler_must_be_importable_by_name() -> None:
    class LocalPickler:
        @staticmethod
        def dumps(obj: object) -> bytes:
            return b""

        @staticmethod
        def loads(data: bytes) -> object:
            return None

    with pytest.raises(ValueError, match="import"):
        SubprocExecutor(1, pickler=LocalPickler)
    with pytest.raises(TypeError, match="dumps"):
        SubprocExecutor(1, pickler=object())


def test_plain_pickle_cannot_send_a_lambda_but_fails_only_that_job(make_executor: MakeExecutor) -> None:
    import pickle

    ex = make_executor(1, pickler=pickle)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        ex.submit(lambda: 1).result(timeout=60)
    assert ex.submit(jobs.square, 5).result(timeout=60) == 25
