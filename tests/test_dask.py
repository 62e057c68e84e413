"""backend="dask": construction checks, the shared suite on a LocalCluster,
and a real ``dask scheduler`` with two ``dask worker`` processes on 127.0.0.1.

The shared tests imported below run here with the fixtures of this module:
``variant`` and ``shared_executor`` are overridden to mean backend="dask"
(its default LocalCluster). Those that need what Dask cannot do are listed in
``NOT_ON_DASK`` and skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import jobs
import psutil
import pytest
from executor_fixtures import ANSWER_WITHIN, FAIL_WITHIN, MakeExecutor, make_executor, wait_gone

# The shared tests that apply to Dask, collected again in this module.
from test_executor import (
    test_as_completed_and_wait,
    test_cancel_futures_cancels_the_queued_and_finishes_the_running,
    test_context_manager_waits_for_jobs,
    test_dask_compute_runs_on_the_executor,
    test_failing_initializer_breaks_the_executor_like_the_stdlib,
    test_initializer_runs_in_every_worker,
    test_job_exception_keeps_type_and_remote_traceback,
    test_lambdas_and_closures_travel_by_value,
    test_map_keeps_order,
    test_map_of_nothing,
    test_map_raises_the_jobs_exception_when_its_result_is_reached,
    test_queued_future_can_be_cancelled,
    test_submit_after_shutdown_raises,
    test_submit_returns_a_stdlib_future,
    test_unpicklable_argument_fails_only_its_job,
)

from subproc_executor import BrokenSubprocExecutor, SidecarDiedError, SubprocExecutor, WorkerDiedError

pytest.importorskip("distributed")

__all__ = [
    "make_executor",
    "test_as_completed_and_wait",
    "test_cancel_futures_cancels_the_queued_and_finishes_the_running",
    "test_context_manager_waits_for_jobs",
    "test_dask_compute_runs_on_the_executor",
    "test_failing_initializer_breaks_the_executor_like_the_stdlib",
    "test_initializer_runs_in_every_worker",
    "test_job_exception_keeps_type_and_remote_traceback",
    "test_lambdas_and_closures_travel_by_value",
    "test_map_keeps_order",
    "test_map_of_nothing",
    "test_map_raises_the_jobs_exception_when_its_result_is_reached",
    "test_queued_future_can_be_cancelled",
    "test_submit_after_shutdown_raises",
    "test_submit_returns_a_stdlib_future",
    "test_unpicklable_argument_fails_only_its_job",
]

# Shared tests not run on Dask, and why.
NOT_ON_DASK = {
    "test_max_tasks_per_child_replaces_workers": "Dask does not replace a worker after N tasks (refused)",
    "test_functions_and_classes_from_main_work": "a Dask worker does not run the parent's __main__",
    "test_manager_proxy_works_inside_jobs": "Dask workers need not share the parent's authkey or machine",
    "test_sent_future_reports_running_and_cannot_be_cancelled": "covered by the cancel tests here",
    "test_large_payloads_both_ways": "no shared memory with Dask; big payloads cross Dask's own comms",
    "test_shutdown_without_wait_returns_and_jobs_still_finish": "kept out of CI time; same path as cancel",
    "test_threads_submitting_at_once_lose_nothing": "backend-independent; run on the local backends",
}


@pytest.fixture
def variant() -> tuple[str, str | None]:
    return ("dask", None)


@pytest.fixture(scope="module")
def shared_executor() -> Iterator[SubprocExecutor]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    ex = SubprocExecutor(2, backend="dask")
    yield ex
    ex.shutdown(wait=True)
    leaked = wait_gone({p.pid for p in psutil.Process().children(recursive=True)} - before)
    assert not leaked, f"processes left behind: {sorted(leaked)}"


@pytest.mark.parametrize("name", sorted(NOT_ON_DASK))
def test_shared_tests_not_run_on_dask(name: str) -> None:
    pytest.skip(f"{name}: {NOT_ON_DASK[name]}")


# -- construction ------------------------------------------------------------------------


def test_an_unknown_option_names_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"'adress'.*accepts: address, dashboard"):
        SubprocExecutor(1, backend="dask", backend_options={"adress": "tcp://x:8786"})
    with pytest.raises(ValueError, match=r"'address'.*accepts: none"):
        SubprocExecutor(1, backend="pipes", backend_options={"address": "tcp://x:8786"})


def test_backend_options_must_be_json() -> None:
    with pytest.raises(TypeError, match="JSON values"):
        SubprocExecutor(1, backend="dask", backend_options={"address": object()})
    with pytest.raises(TypeError, match="mapping"):
        SubprocExecutor(1, backend="dask", backend_options=["address"])  # type: ignore[arg-type]


def test_missing_distributed_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "distributed" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"pip install 'subproc-executor\[dask\]'"):
        SubprocExecutor(1, backend="dask")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"job_timeout": 5}, "cannot stop one job.*backend='pipes'"),
        ({"cancel_running": True}, "cannot stop one job"),
        ({"max_tasks_per_child": 3}, "max_tasks_per_child"),
        ({"status_interval": 1.0}, "status_interval"),
        ({"on_progress": print}, "on_progress"),
        ({"mp_context": "fork"}, "start method 'fork'"),
    ],
)
def test_what_dask_cannot_do_is_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SubprocExecutor(1, backend="dask", **kwargs)  # type: ignore[arg-type]


# -- LocalCluster end to end ---------------------------------------------------------------


def test_local_cluster_runs_twice_fails_a_crash_and_keeps_serving(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_executor(2)
    assert list(ex.map(jobs.square, range(25), chunksize=4)) == [i * i for i in range(25)]
    # pure=False: two identical submits run twice.
    log = tmp_path / "log"
    a = ex.submit(jobs.append_line, str(log), "same")
    b = ex.submit(jobs.append_line, str(log), "same")
    a.result(ANSWER_WITHIN), b.result(ANSWER_WITHIN)
    assert log.read_text().split() == ["same", "same"]
    # A job that kills its Dask worker fails alone, naming the worker.
    crash = ex.submit(os._exit, 3)
    with pytest.raises(WorkerDiedError, match=r"Dask worker tcp://127\.0\.0\.1:\d+"):
        crash.result(FAIL_WITHIN + ANSWER_WITHIN)
    assert ex.submit(jobs.square, 7).result(ANSWER_WITHIN) == 49


def test_a_crash_among_siblings_fails_only_the_crashed_job(make_executor: MakeExecutor) -> None:
    """Jobs queued behind the crash, on the same Dask worker, are not suspects:
    only the task that was running when the worker died fails (the crash
    family of the harness saw one innocent job fail while the LocalCluster
    allowed no worker death per task: Dask counts a death against every task
    assigned to the worker)."""
    ex = make_executor(2)
    ex.submit(jobs.square, 1).result(ANSWER_WITHIN)  # the cluster is up
    futures = [ex.submit(jobs.sleep_return, 0.2, i) for i in range(3)]
    crash = ex.submit(jobs.kill_self)
    futures += [ex.submit(jobs.sleep_return, 0.2, i) for i in range(3, 7)]
    assert [f.result(ANSWER_WITHIN) for f in futures] == list(range(7))
    with pytest.raises(WorkerDiedError):
        crash.result(ANSWER_WITHIN)


def test_sidecar_death_fails_pending_jobs(make_executor: MakeExecutor, tmp_path: Path) -> None:
    ex = make_executor(1, restart=False)
    fut = ex.submit(jobs.block_until, str(tmp_path / "started"), str(tmp_path / "gate"), 1)
    assert jobs.wait_for_path(tmp_path / "started", ANSWER_WITHIN)
    pid = ex.statistics().sidecar_pid
    assert pid is not None
    sidecar = psutil.Process(pid)
    workers = {p.pid for p in sidecar.children(recursive=True)}
    sidecar.kill()
    with pytest.raises(Exception, match="sidecar"):
        fut.result(FAIL_WITHIN)
    assert not wait_gone(workers), "the LocalCluster's workers outlived the sidecar"


# -- a real scheduler and two workers -----------------------------------------------------


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group: a nanny and its worker die together
    )


def _block_first(i: int, started: str, gate: str) -> int:
    """Job 0 records its worker's pid and waits for the gate; the others return at once."""
    if i == 0:
        Path(f"{started}.{os.getpid()}").touch()
        jobs.wait_for_path(Path(gate), 60)
    return i * i


class DaskCluster:
    """A scheduler and workers as separate processes on 127.0.0.1, as a user runs them."""

    def __init__(self, tmp_path: Path) -> None:
        self.env = dict(os.environ)
        here = Path(__file__).resolve().parent
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(here.parent), str(here), self.env.get("PYTHONPATH", "")]
        )
        self.scheduler_file = tmp_path / "scheduler.json"
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, workers: int) -> str:
        """Start the scheduler and ``workers`` workers; the scheduler's address."""
        from distributed import Client

        self.scheduler = _spawn(
            [
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(self.scheduler_file),
            ],
            self.env,
        )
        self.procs.append(self.scheduler)
        assert jobs.wait_for_path(self.scheduler_file, ANSWER_WITHIN)
        for _ in range(workers):
            self.procs.append(
                _spawn(
                    [
                        "distributed.cli.dask_worker",
                        "--scheduler-file",
                        str(self.scheduler_file),
                        "--nthreads",
                        "1",
                        "--host",
                        "127.0.0.1",
                        "--no-dashboard",
                    ],
                    self.env,
                )
            )
        with Client(scheduler_file=str(self.scheduler_file), timeout=ANSWER_WITHIN) as client:
            client.wait_for_workers(workers, timeout=ANSWER_WITHIN)
            return str(client.scheduler.address)

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(FAIL_WITHIN)
        assert not wait_gone({p.pid for p in self.procs}), "a Dask process was left behind"


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[DaskCluster]:
    cluster = DaskCluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()


def _wait_for_glob(folder: Path, pattern: str, count: int) -> list[Path]:
    deadline = time.monotonic() + ANSWER_WITHIN
    while len(found := list(folder.glob(pattern))) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return found


@pytest.mark.timeout(120)
def test_a_real_scheduler_survives_a_killed_worker(tmp_path: Path, dask_cluster: DaskCluster) -> None:
    """A worker killed mid-job: the scheduler (allowed-failures 3, Dask's
    default) runs the job again elsewhere, and every result arrives."""
    address = dask_cluster.start(workers=2)
    started, gate = tmp_path / "started", tmp_path / "gate"
    with SubprocExecutor(2, backend="dask", backend_options={"address": address}) as ex:
        results = ex.map(_block_first, range(8), [str(started)] * 8, [str(gate)] * 8)
        (first,) = _wait_for_glob(tmp_path, "started.*", 1)
        os.kill(int(first.suffix[1:]), signal.SIGKILL)
        # Dask runs the job again, on the other worker or the restarted one.
        assert len(_wait_for_glob(tmp_path, "started.*", 2)) == 2
        gate.touch()
        assert list(results) == [i * i for i in range(8)]
        assert len(list(tmp_path.glob("started.*"))) == 2


@pytest.mark.timeout(120)
def test_losing_the_scheduler_fails_pending_jobs_and_never_hangs(
    tmp_path: Path, dask_cluster: DaskCluster
) -> None:
    """The scheduler dies with a job running and another waiting: both fail
    (within connect_timeout and the sidecar's exit, not never), and so does
    what is submitted next, with a message naming the scheduler."""
    address = dask_cluster.start(workers=1)
    started, gate = tmp_path / "started", tmp_path / "gate"
    ex = SubprocExecutor(
        1, backend="dask", backend_options={"address": address, "connect_timeout": 2}, restart=False
    )
    try:
        running = ex.submit(_block_first, 0, str(started), str(gate))
        waiting = ex.submit(jobs.square, 3)
        _wait_for_glob(tmp_path, "started.*", 1)
        assert dask_cluster.scheduler is not None
        os.killpg(dask_cluster.scheduler.pid, signal.SIGKILL)
        for fut in (running, waiting):
            with pytest.raises(BrokenProcessPool) as info:
                fut.result(ANSWER_WITHIN)
            assert isinstance(info.value, (SidecarDiedError, BrokenSubprocExecutor)), info.value
        with pytest.raises(BrokenProcessPool):
            ex.submit(jobs.square, 4).result(ANSWER_WITHIN)
    finally:
        gate.touch()
        ex.shutdown(wait=True, cancel_futures=True)
