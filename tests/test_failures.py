"""Faults and bad input: nothing hangs, nothing is lost, the executor keeps serving.

What is broken, and what must follow:

    a worker dies mid-job       its job fails with WorkerDiedError (pid, exit status);
                                jobs beside it are rerun; the executor keeps serving
    the sidecar dies            its pending jobs fail with SidecarDiedError (pid,
                                return code, output tail); a new sidecar, or BROKEN
    the parent dies             the sidecar and every worker are gone within seconds
    bad input                   only that job fails, with a clear exception
    a job raises BaseException  only that job fails, with that exception
    a corrupt frame             a ProtocolError-caused failure, never a hang
    shutdown                    bounded, even with a worker that ignores SIGTERM
    many jobs and executors     no thread, descriptor or process left behind

Every wait is bounded (``result(timeout=...)``, ``wait_gone``) and waits on
state (pid files, gates, futures), not on the clock. The fault objects are in
``faults.py``, the job functions in ``jobs.py``.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import pickle
import selectors
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import faults
import jobs
import psutil
import pytest
from executor_fixtures import ANSWER_WITHIN, FAIL_WITHIN, GONE_WITHIN, TWO_VARIANTS, MakeExecutor, wait_gone

from subproc_executor import (
    BrokenSubprocExecutor,
    ProtocolError,
    RemoteError,
    SidecarDiedError,
    SubprocExecutor,
    WorkerDiedError,
)
from subproc_executor.errors import RemoteTraceback
from subproc_executor.parent.launcher import SidecarExit, SidecarProcess
from subproc_executor.sidecar.scheduler import MAX_CRASH_RETRIES
from subproc_executor.wire.protocol import MessageKind, encode_header

# The heavy matrices (the pickling fault matrix, a corrupt frame) run on
# TWO_VARIANTS only: the start methods differ only in how workers are
# created, which the worker, sidecar and parent death tests below cover on
# all of them; the full matrix everywhere would push this module past its
# time budget.


# sidecar_tree's function: SIGKILL an executor's sidecar; (its pid, its descendants' pids).
KillSidecar = Callable[[SubprocExecutor], tuple[int, set[int]]]


def _check_still_serving(ex: SubprocExecutor) -> None:
    assert ex.submit(jobs.square, 3).result(timeout=ANSWER_WITHIN) == 9


@pytest.fixture
def sidecar_tree() -> Iterator[KillSidecar]:
    """Kill an executor's sidecar with SIGKILL; returns (its pid, its descendants' pids).

    The descendants (workers, a forkserver, resource trackers) are this
    test's own processes; any still alive at teardown are killed, so a
    failing assertion does not leave them running for the rest of the session.
    """
    tree: list[psutil.Process] = []

    def kill(ex: SubprocExecutor) -> tuple[int, set[int]]:
        pid = ex.statistics().sidecar_pid
        assert pid is not None
        sidecar = psutil.Process(pid)
        kids = sidecar.children(recursive=True)
        tree.extend(kids)
        os.kill(pid, signal.SIGKILL)
        return pid, {p.pid for p in kids}

    yield kill
    for p in tree:
        try:
            if p.is_running():  # also checks that the pid was not reused
                p.kill()
        except psutil.NoSuchProcess:
            pass


# -- 1. a worker dies mid-job -----------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "exitcode", "status"),
    [
        ("sigkill", -signal.SIGKILL, "SIGKILL"),
        ("exit3", 3, "exit code 3"),
        ("segv", -signal.SIGSEGV, "SIGSEGV"),
    ],
)
def test_dead_worker_fails_its_job_with_pid_and_exit_status(
    make_executor: MakeExecutor, tmp_path: Path, how: str, exitcode: int, status: str
) -> None:
    ex = make_executor(2)
    pid_path = tmp_path / "pid"
    fut = ex.submit(jobs.die, str(pid_path), how)
    with pytest.raises(WorkerDiedError) as info:
        fut.result(timeout=FAIL_WITHIN)
    err = info.value
    assert isinstance(err, BrokenProcessPool)
    assert err.job_id is not None
    # The job dies each time it runs: it fails after a bounded number of runs,
    # and the error names the worker that ran it last.
    runs = (tmp_path / "pid.log").read_text().split()
    assert 1 <= len(runs) <= MAX_CRASH_RETRIES + 1
    assert err.pid == jobs.read_pid(pid_path) == int(runs[-1])
    assert err.exitcode == exitcode
    assert str(err.pid) in str(err)
    assert status in str(err)
    _check_still_serving(ex)


def test_jobs_beside_a_dying_worker_still_succeed(make_executor: MakeExecutor, tmp_path: Path) -> None:
    ex = make_executor(2)
    good = [ex.submit(jobs.sleep_return, 0.05, i) for i in range(3)]
    killer = ex.submit(jobs.die, str(tmp_path / "pid"), "sigkill")
    good += [ex.submit(jobs.sleep_return, 0.05, i) for i in range(3, 7)]
    assert [f.result(timeout=ANSWER_WITHIN) for f in good] == list(range(7))
    with pytest.raises(WorkerDiedError):
        killer.result(timeout=FAIL_WITHIN)
    _check_still_serving(ex)


def test_job_running_on_another_worker_is_rerun(make_executor: MakeExecutor, tmp_path: Path) -> None:
    ex = make_executor(2)
    gate = tmp_path / "gate"
    bystander = ex.submit(jobs.block_with_pid, str(tmp_path / "bystander"), str(gate), "survived")
    jobs.read_pid(tmp_path / "bystander")  # it runs on one worker...
    killer = ex.submit(jobs.die, str(tmp_path / "pid"), "sigkill")  # ...and this kills the other
    with pytest.raises(WorkerDiedError):
        killer.result(timeout=FAIL_WITHIN)
    gate.touch()
    assert bystander.result(timeout=ANSWER_WITHIN) == "survived"
    _check_still_serving(ex)


# -- 2. the sidecar dies ----------------------------------------------------------------


def _block_two(ex: SubprocExecutor, tmp_path: Path) -> list[cf.Future[Any]]:
    """Two jobs blocked on a gate that never opens, both running."""
    futs = [
        ex.submit(jobs.block_with_pid, str(tmp_path / f"pid{i}"), str(tmp_path / "never")) for i in range(2)
    ]
    for i in range(2):
        jobs.read_pid(tmp_path / f"pid{i}")
    return futs


def _assert_all_lost(futs: list[cf.Future[Any]], pid: int) -> list[SidecarDiedError]:
    _, not_done = cf.wait(futs, timeout=FAIL_WITHIN)
    assert not not_done, "futures still pending after the sidecar died"
    errors = []
    for f in futs:
        err = f.exception(timeout=0)
        assert isinstance(err, SidecarDiedError), repr(err)
        assert isinstance(err, BrokenProcessPool)
        assert err.pid == pid
        assert err.returncode == -signal.SIGKILL
        assert str(pid) in str(err)
        errors.append(err)
    return errors


def test_sidecar_death_fails_pending_jobs_and_a_new_sidecar_serves(
    make_executor: MakeExecutor, tmp_path: Path, sidecar_tree: KillSidecar
) -> None:
    ex = make_executor(2)
    futs = [*_block_two(ex, tmp_path), ex.submit(jobs.square, 4)]  # the third waits in the sidecar
    pid, _ = sidecar_tree(ex)
    _assert_all_lost(futs, pid)
    _check_still_serving(ex)
    stats = ex.statistics()
    assert stats.sidecar_starts == 2
    assert stats.sidecar_pid not in (None, pid)


def test_sidecar_death_without_restart_breaks_the_executor(
    make_executor: MakeExecutor, tmp_path: Path, sidecar_tree: KillSidecar
) -> None:
    ex = make_executor(2, restart=False)
    futs = _block_two(ex, tmp_path)
    pid, _ = sidecar_tree(ex)
    _assert_all_lost(futs, pid)
    with pytest.raises(BrokenProcessPool) as info:
        ex.submit(jobs.square, 3)
    assert isinstance(info.value, BrokenSubprocExecutor)
    assert ex.statistics().state == "broken"
    assert ex.statistics().sidecar_starts == 1


def test_sidecar_death_quotes_its_output_tail(
    make_executor: MakeExecutor, tmp_path: Path, sidecar_tree: KillSidecar
) -> None:
    # Workers write to the sidecar's output, here a log file: its tail is quoted.
    ex = make_executor(1, log_path=tmp_path / "log")
    marker = f"marker-{os.getpid()}-before-the-crash"
    fut = ex.submit(jobs.print_and_block, marker, str(tmp_path / "pid"), str(tmp_path / "never"))
    jobs.read_pid(tmp_path / "pid")
    pid, _ = sidecar_tree(ex)
    (err,) = _assert_all_lost([fut], pid)
    assert marker in err.output_tail
    assert marker in str(err)


# -- 3. the parent dies -----------------------------------------------------------------

PARENT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import jobs
    from subproc_executor import SubprocExecutor

    backend, method, tmp, job = sys.argv[1], sys.argv[2] or None, sys.argv[3], sys.argv[4]
    ex = SubprocExecutor(2, backend=backend, mp_context=method)
    ex.submit(jobs.square, 2).result(timeout=60)  # HELLO (worker pids) has arrived
    block = jobs.ignore_sigterm_and_block if job == "ignore-sigterm" else jobs.block_with_pid
    fut = ex.submit(block, os.path.join(tmp, "job.pid"), os.path.join(tmp, "never"))
    job_pid = jobs.read_pid(os.path.join(tmp, "job.pid"))
    stats = ex.statistics()
    workers = sorted({*stats.worker_pids, job_pid})
    print(json.dumps({"sidecar": stats.sidecar_pid, "workers": workers}), flush=True)
    time.sleep(300)  # until the test kills us
    """
)


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first line ``proc`` writes to stdout, within ``timeout``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise TimeoutError(f"no line from pid {proc.pid} in {timeout}s; got {data!r}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError(f"pid {proc.pid} exited with {proc.wait()} before printing; got {data!r}")
            data += chunk
    return data.split(b"\n", 1)[0]


@pytest.mark.parametrize("job", ["block", "ignore-sigterm"])
def test_parent_death_takes_the_sidecar_and_workers_down(
    variant: tuple[str, str | None], tmp_path: Path, job: str
) -> None:
    backend, method = variant
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    with open(tmp_path / "stderr", "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script), backend, method or "", str(tmp_path), job],
            stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=tmp_path,
        )
    tree: list[psutil.Process] = []
    try:
        try:
            info = json.loads(_read_line(proc, ANSWER_WITHIN))
        except (TimeoutError, EOFError) as exc:
            pytest.fail(f"{exc}\nits stderr:\n{(tmp_path / 'stderr').read_text()}")
        # Everything the parent started: the sidecar, its workers and helpers.
        tree = psutil.Process(proc.pid).children(recursive=True)
        pids = {info["sidecar"], *info["workers"]}
        assert pids <= {p.pid for p in tree}
        proc.kill()
        proc.wait(timeout=ANSWER_WITHIN)
        left = wait_gone(pids | {p.pid for p in tree}, GONE_WITHIN)
        assert not left, f"outlived their parent by {GONE_WITHIN}s: {sorted(left)} ({info})"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        for p in tree:
            try:
                if p.is_running():
                    p.kill()
            except psutil.NoSuchProcess:
                pass


# -- 4. bad input: only its own job fails -----------------------------------------------


def _unpicklable_function() -> Callable[..., object]:
    return threading.Lock().acquire


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: (_unpicklable_function(),), id="function"),
        pytest.param(lambda: (jobs.identity, threading.Lock()), id="lock-argument"),
        pytest.param(lambda: (jobs.identity, (x for x in range(3))), id="generator-argument"),
    ],
)
def test_unpicklable_function_or_argument_fails_its_job(
    shared_executor: SubprocExecutor, call: Callable[[], tuple[Any, ...]]
) -> None:
    fn, *args = call()
    fut = shared_executor.submit(fn, *args)
    with pytest.raises((TypeError, pickle.PicklingError), match="pickle"):
        fut.result(timeout=FAIL_WITHIN)
    _check_still_serving(shared_executor)


def test_unpicklable_result_fails_its_job(shared_executor: SubprocExecutor) -> None:
    fut = shared_executor.submit(jobs.make_lock)
    with pytest.raises((TypeError, pickle.PicklingError), match="pickle") as info:
        fut.result(timeout=FAIL_WITHIN)
    assert "raised while pickling the result in the worker" in getattr(info.value, "__notes__", [])
    _check_still_serving(shared_executor)


def test_unpicklable_exception_comes_back_as_remote_error(shared_executor: SubprocExecutor) -> None:
    fut = shared_executor.submit(jobs.raise_unpicklable_error, "it held a lock")
    with pytest.raises(RemoteError) as info:
        fut.result(timeout=FAIL_WITHIN)
    err = info.value
    assert err.type_name == "jobs.UnpicklableError"
    assert err.message == "it held a lock"
    assert "raise_unpicklable_error" in err.traceback_text
    assert "UnpicklableError: it held a lock" in err.traceback_text
    assert isinstance(err.__cause__, RemoteTraceback)
    assert "jobs.UnpicklableError" in str(err)
    _check_still_serving(shared_executor)


def test_exception_whose_init_breaks_unpickling_keeps_its_type_or_text(
    shared_executor: SubprocExecutor,
) -> None:
    fut = shared_executor.submit(jobs.raise_two_arg_error, "left", "right")
    with pytest.raises((jobs.TwoArgError, RemoteError)) as info:
        fut.result(timeout=FAIL_WITHIN)
    err = info.value
    if isinstance(err, RemoteError):
        assert err.type_name == "jobs.TwoArgError"
        assert err.message == "left-right"
    else:
        assert str(err) == "left-right"
    assert isinstance(err.__cause__, RemoteTraceback)
    assert "raise_two_arg_error" in str(err.__cause__)
    _check_still_serving(shared_executor)


# The CPython test_deadlock.py matrix, through the sidecar: {error, exit,
# crash} x {where}. Each row: (job function, its arguments, the exception
# fut.result() raises, text its message holds, a note it carries or None).
_CRASH_IN_PARENT = "the parent itself would segfault; nothing can survive that, so there is nothing to test"
_NOTE_PICKLING_RESULT = "raised while pickling the result in the worker"
FAULT_MATRIX = [
    # pickling the job, in the parent (submit)
    pytest.param(
        jobs.identity, (faults.ErrorAtPickle(),), pickle.PicklingError, faults.PICKLE_ERROR_TEXT, None,
        id="error-pickling_job_in_parent",
    ),
    pytest.param(
        jobs.identity, (faults.ExitAtPickle(),), SystemExit, faults.PICKLE_EXIT_TEXT, None,
        id="exit-pickling_job_in_parent",
    ),
    pytest.param(
        None, (), None, None, None, id="crash-pickling_job_in_parent",
        marks=pytest.mark.skip(reason=_CRASH_IN_PARENT),
    ),
    # unpickling the job, in the worker
    pytest.param(
        jobs.identity, (faults.ErrorAtUnpickle(),), BrokenProcessPool, faults.UNPICKLE_ERROR_TEXT,
        None, id="error-unpickling_job_in_worker",
    ),
    pytest.param(
        jobs.identity, (faults.ExitAtUnpickle(),), BrokenProcessPool, faults.UNPICKLE_EXIT_TEXT,
        None, id="exit-unpickling_job_in_worker",
    ),
    pytest.param(
        jobs.identity, (faults.CrashAtUnpickle(),), WorkerDiedError, "SIGSEGV", None,
        id="crash-unpickling_job_in_worker",
    ),
    # running the job, in the worker
    pytest.param(
        jobs.raise_value_error, ("job failed",), ValueError, "job failed", None, id="error-running_job"
    ),
    pytest.param(jobs.exit_job, ("job exited",), SystemExit, "job exited", None, id="exit-running_job"),
    pytest.param(jobs.segfault, (), WorkerDiedError, "SIGSEGV", None, id="crash-running_job"),
    # pickling the result, in the worker
    pytest.param(
        jobs.instantiate, (faults.ErrorAtPickle,), pickle.PicklingError, faults.PICKLE_ERROR_TEXT,
        _NOTE_PICKLING_RESULT, id="error-pickling_result_in_worker",
    ),
    pytest.param(
        jobs.instantiate, (faults.ExitAtPickle,), SystemExit, faults.PICKLE_EXIT_TEXT, _NOTE_PICKLING_RESULT,
        id="exit-pickling_result_in_worker",
    ),
    pytest.param(
        jobs.instantiate, (faults.CrashAtPickle,), WorkerDiedError, "SIGSEGV", None,
        id="crash-pickling_result_in_worker",
    ),
    # unpickling the result, in the parent's reader thread
    pytest.param(
        jobs.instantiate, (faults.ErrorAtUnpickle,), BrokenProcessPool, faults.UNPICKLE_ERROR_TEXT, None,
        id="error-unpickling_result_in_parent",
    ),
    pytest.param(
        jobs.instantiate, (faults.ExitAtUnpickle,), BrokenProcessPool, faults.UNPICKLE_EXIT_TEXT, None,
        id="exit-unpickling_result_in_parent",
    ),
    pytest.param(
        None, (), None, None, None, id="crash-unpickling_result_in_parent",
        marks=pytest.mark.skip(reason=_CRASH_IN_PARENT),
    ),
    # unpickling the job's exception, in the parent's reader thread: the
    # exception pickles in the worker but its args misbehave when loaded
    pytest.param(
        jobs.raise_holding, (faults.ErrorAtUnpickle,), RemoteError, "builtins.ValueError", None,
        id="error-unpickling_exception_in_parent",
    ),
    pytest.param(
        jobs.raise_holding, (faults.ExitAtUnpickle,), RemoteError, "builtins.ValueError", None,
        id="exit-unpickling_exception_in_parent",
    ),
    pytest.param(
        None, (), None, None, None, id="crash-unpickling_exception_in_parent",
        marks=pytest.mark.skip(reason=_CRASH_IN_PARENT),
    ),
]


@TWO_VARIANTS
@pytest.mark.parametrize(("fn", "args", "expected", "text", "note"), FAULT_MATRIX)
def test_fault_while_pickling_unpickling_or_running_fails_only_its_job(
    make_executor: MakeExecutor,
    fn: Callable[..., object],
    args: tuple[object, ...],
    expected: type[BaseException],
    text: str,
    note: str | None,
) -> None:
    ex = make_executor(2)
    fut = ex.submit(fn, *args)
    with pytest.raises(expected) as info:
        fut.result(timeout=FAIL_WITHIN)
    err = info.value
    assert text in str(err)
    if note is not None:
        assert note in getattr(err, "__notes__", [])
    if expected is BrokenProcessPool:
        # What the stdlib raises for a job or result that cannot be loaded,
        # with the original error kept; and the job's id.
        assert err.__cause__ is not None and text in str(err.__cause__)
        assert isinstance(err, BrokenSubprocExecutor) and err.job_id is not None
    if isinstance(err, WorkerDiedError):
        assert err.exitcode == -signal.SIGSEGV
    _check_still_serving(ex)


# -- 5. BaseExceptions from a job -------------------------------------------------------


def test_base_exceptions_fail_only_their_job_and_keep_the_workers(make_executor: MakeExecutor) -> None:
    ex = make_executor(2)
    _check_still_serving(ex)
    before = ex.statistics()
    for kind, exc_type in [
        ("SystemExit", SystemExit),
        ("KeyboardInterrupt", KeyboardInterrupt),
        ("JobAbort", jobs.JobAbort),
    ]:
        fut = ex.submit(jobs.raise_base_exception, kind)
        with pytest.raises(exc_type) as info:
            fut.result(timeout=FAIL_WITHIN)
        assert isinstance(info.value.__cause__, RemoteTraceback)
        _check_still_serving(ex)
    after = ex.statistics()
    assert after.sidecar_pid == before.sidecar_pid
    assert after.worker_pids == before.worker_pids
    assert after.sidecar_starts == 1


# -- 6. corrupt frames --------------------------------------------------------------------


@TWO_VARIANTS
def test_garbage_from_the_parent_fails_pending_jobs(make_executor: MakeExecutor, tmp_path: Path) -> None:
    ex = make_executor(2)
    fut = ex.submit(jobs.block_with_pid, str(tmp_path / "pid"), str(tmp_path / "never"))
    worker = jobs.read_pid(tmp_path / "pid")
    sidecar = ex.statistics().sidecar_pid
    assert sidecar is not None and ex._core.sidecar is not None
    # Test-only reach into internals: the parent's end of the pipe to the
    # sidecar. No frame is being written now (the job was sent and runs).
    os.write(ex._core.sidecar.writer._fd, b"this is not a frame, not at all")
    with pytest.raises(SidecarDiedError) as info:
        fut.result(timeout=FAIL_WITHIN)
    err = info.value
    assert err.pid == sidecar
    assert "bad frame" in str(err)
    assert "bad magic" in str(err)
    # The sidecar stopped its workers on its way out.
    assert not wait_gone({sidecar, worker}, GONE_WITHIN)
    _check_still_serving(ex)


FAKE_SIDECAR = textwrap.dedent(
    """
    import os, sys, time
    mode, data, pid_path = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]
    fd = int(sys.argv[sys.argv.index("--write-fd") + 1])
    if mode == "held":
        # A leftover process (think: a leaked worker) keeps the pipe open.
        if os.fork() == 0:
            with open(pid_path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(pid_path + ".tmp", pid_path)
            time.sleep(60)
            os._exit(0)
        while not os.path.exists(pid_path):
            time.sleep(0.005)
    os.write(fd, data)
    if mode == "close-and-stay":
        os.close(fd)
    if mode in ("stay", "close-and-stay"):
        time.sleep(60)
    sys.exit(0)
    """
)
_GARBAGE = b"garbage, and not a frame at all"
_HALF_HEADER = encode_header(MessageKind.HELLO, 0, 10)[:7]
_HALF_PAYLOAD = encode_header(MessageKind.HELLO, 0, 10) + b"abc"


def _run_fake_sidecar(tmp_path: Path, mode: str, data: bytes) -> tuple[SidecarExit, SidecarProcess]:
    lost: list[SidecarExit] = []
    ended = threading.Event()

    def on_lost(end: SidecarExit) -> None:
        lost.append(end)
        ended.set()

    frames: list[object] = []
    fake = SidecarProcess(
        argv=[sys.executable, "-c", FAKE_SIDECAR, mode, data.hex(), str(tmp_path / "holder.pid")],
        env=dict(os.environ),
        cwd=str(tmp_path),
        init_payload=b"{}\n",
        on_frames=frames.extend,
        on_lost=on_lost,
    )
    assert ended.wait(FAIL_WITHIN), f"on_lost was not called within {FAIL_WITHIN}s"
    assert len(lost) == 1 and not frames
    assert fake.wait(FAIL_WITHIN)
    # Reaped: it has a return code, and is gone.
    assert fake.proc.returncode is not None
    assert not wait_gone({fake.pid}, GONE_WITHIN)
    return lost[0], fake


def test_garbage_from_the_sidecar_is_a_protocol_error(tmp_path: Path) -> None:
    end, fake = _run_fake_sidecar(tmp_path, "stay", _GARBAGE)
    assert isinstance(end.cause, ProtocolError)
    assert "bad magic" in str(end.cause)
    assert not end.clean
    # It was still running: the parent killed it.
    assert end.returncode == fake.proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("data", [_HALF_HEADER, _HALF_PAYLOAD], ids=["half-header", "half-payload"])
def test_stream_cut_mid_frame_is_a_protocol_error(tmp_path: Path, data: bytes) -> None:
    # The fake closes its end mid-frame but stays alive: EOF, then a kill.
    end, _ = _run_fake_sidecar(tmp_path, "close-and-stay", data)
    assert isinstance(end.cause, ProtocolError)
    assert "stream ended" in str(end.cause)
    assert end.returncode == -signal.SIGKILL


@pytest.mark.parametrize("data", [_HALF_HEADER, _HALF_PAYLOAD], ids=["half-header", "half-payload"])
def test_sidecar_exiting_mid_frame_is_a_protocol_error(tmp_path: Path, data: bytes) -> None:
    # The reader usually sees EOF before the exit; when it sees the exit
    # first, the truncation must still be reported: the next test forces that order.
    end, _ = _run_fake_sidecar(tmp_path, "exit", data)
    assert isinstance(end.cause, ProtocolError), end
    assert "stream ended" in str(end.cause)
    assert end.returncode == 0


def test_sidecar_exiting_mid_frame_while_its_pipe_is_held_is_a_protocol_error(tmp_path: Path) -> None:
    try:
        end, _ = _run_fake_sidecar(tmp_path, "held", _HALF_HEADER)
    finally:
        holder = tmp_path / "holder.pid"
        if holder.exists():
            try:
                os.kill(int(holder.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert isinstance(end.cause, ProtocolError), end


# -- 7. bounded shutdown ------------------------------------------------------------------


def test_worker_ignoring_sigterm_dies_with_a_killed_sidecar(
    make_executor: MakeExecutor, tmp_path: Path, sidecar_tree: KillSidecar
) -> None:
    ex = make_executor(2)
    fut = ex.submit(jobs.ignore_sigterm_and_block, str(tmp_path / "pid"), str(tmp_path / "never"))
    worker = jobs.read_pid(tmp_path / "pid")
    _check_still_serving(ex)  # the other worker is idle
    workers = set(ex.statistics().worker_pids) | {worker}
    _, tree = sidecar_tree(ex)
    with pytest.raises(SidecarDiedError):
        fut.result(timeout=FAIL_WITHIN)
    # A SIGKILLed sidecar cannot stop its workers: they must go by themselves.
    left = wait_gone(workers | tree, GONE_WITHIN)
    assert not left, f"outlived the sidecar by {GONE_WITHIN}s: {sorted(left)} (workers {sorted(workers)})"


def test_shutdown_after_jobs_finish_is_bounded_and_leaves_no_process(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    ex = make_executor(2)
    (tmp_path / "open").touch()
    # A worker that ran this keeps ignoring SIGTERM after the job returns.
    pid = ex.submit(jobs.ignore_sigterm_and_block, str(tmp_path / "pid"), str(tmp_path / "open")).result(
        timeout=ANSWER_WITHIN
    )
    assert [f.result(timeout=ANSWER_WITHIN) for f in [ex.submit(jobs.square, i) for i in range(10)]] == [
        i * i for i in range(10)
    ]
    stats = ex.statistics()
    sidecar = psutil.Process(stats.sidecar_pid)
    processes = {sidecar.pid, pid, *stats.worker_pids, *(p.pid for p in sidecar.children(recursive=True))}
    start = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - start < FAIL_WITHIN
    assert not wait_gone(processes, GONE_WITHIN)
    assert ex.statistics().state == "closed"


# -- 8. hygiene --------------------------------------------------------------------------


def _resources() -> tuple[int, int, int]:
    return (
        threading.active_count(),
        len(os.listdir("/proc/self/fd")),
        len(psutil.Process().children(recursive=True)),
    )


def _settled(before: tuple[int, int, int], timeout: float = 5.0) -> tuple[int, int, int]:
    """Resources once back to ``before`` (threads and reaping finish a moment late), or at ``timeout``."""
    deadline = time.monotonic() + timeout
    now = _resources()
    while any(n > b for n, b in zip(now, before, strict=True)) and time.monotonic() < deadline:
        time.sleep(0.05)
        now = _resources()
    return now


@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", [("process", "fork")], ids=["process-fork"], indirect=True)
def test_no_thread_fd_or_process_is_left_behind(variant: tuple[str, str | None]) -> None:
    # Its own executors, not make_executor's: those are shut down only after
    # the test, and this one counts what remains after each shutdown.
    backend, method = variant
    before = _resources()
    threads_before = threading.enumerate()
    with SubprocExecutor(2, backend=backend, mp_context=method) as ex:
        n = 10_000
        assert list(ex.map(jobs.square, range(n), chunksize=1)) == [i * i for i in range(n)]
        assert ex.statistics().done == n
    for _ in range(20):
        with SubprocExecutor(2, backend=backend, mp_context=method) as ex:
            assert ex.submit(jobs.square, 2).result(timeout=ANSWER_WITHIN) == 4
    after = _settled(before)
    assert all(a <= b for a, b in zip(after, before, strict=True)), (
        f"(threads, fds, children) before {before}, after {after}; "
        f"new threads: {set(threading.enumerate()) - set(threads_before)}"
    )
