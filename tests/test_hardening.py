"""Situations that must neither hang nor wedge the executor, as a hostile user would try them.

Public API only. Every wait is bounded and waits on futures, events, pipes or
process state. Where a failure would strand jobs, the test kills the sidecar
on its way out, so that the executor's teardown cannot hang. Scenarios that
need a process of their own (fork, an undrained stderr, a parent killed,
garbage collection) run a small script in a new session, killed whole after.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import jobs
import psutil
import pytest
from executor_fixtures import (
    ANSWER_WITHIN,
    FAIL_WITHIN,
    GONE_WITHIN,
    ONLY_PROCESS_FORK,
    PROCESS_AND_PIPES,
    MakeExecutor,
    wait_gone,
)
from interrupts import InterruptRain

from subproc_executor import SubprocExecutor

CALLBACK_WAIT = 10.0  # how long a done-callback waits for another job's completion
BIG = 8 << 20


Kill = Callable[["int | None"], None]


def _eventually(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it holds; False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _chain_text(exc: BaseException | None) -> str:
    """Type and message of ``exc`` and of every exception behind it."""
    parts: list[str] = []
    while exc is not None and len(parts) < 10:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


@pytest.fixture
def kill() -> Iterator[Kill]:
    """SIGKILL a process; its descendants still alive at teardown are killed too."""
    tree: list[psutil.Process] = []

    def kill_(pid: int | None) -> None:
        if pid is None or pid <= 0:  # os.kill(0, ...) would hit our own process group
            raise ValueError(f"no process to kill: {pid!r}")
        with contextlib.suppress(psutil.NoSuchProcess):
            tree.extend(psutil.Process(pid).children(recursive=True))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    yield kill_
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.is_running():
                p.kill()


@contextlib.contextmanager
def _unwedged(ex: SubprocExecutor, kill: Kill) -> Iterator[None]:
    """If the body fails, kill the sidecar: its lost jobs fail, so teardown cannot hang."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(ValueError):
            kill(ex.statistics().sidecar_pid)
        raise


def _shutdown_returns(ex: SubprocExecutor, kill: Kill) -> bool:
    """Whether ``shutdown()`` returns; if it hangs, the sidecar is killed to release it."""
    t = threading.Thread(target=ex.shutdown, name="test-shutdown", daemon=True)
    t.start()
    t.join(ANSWER_WITHIN)
    if not t.is_alive():
        return True
    with contextlib.suppress(ValueError):
        kill(ex.statistics().sidecar_pid)
    t.join(ANSWER_WITHIN)
    return False


def _kill_session(sid: int, *, stop_first: bool = False) -> set[int]:
    """SIGKILL every process of session ``sid``: a script and everything it started.
    ``stop_first``: SIGSTOP them all before, so that all die at one instant and none
    can notice another's death and clean up after it. Returns those still alive."""
    pids = set()
    for pid in psutil.pids():
        with contextlib.suppress(OSError):
            if os.getsid(pid) == sid:
                os.kill(pid, signal.SIGSTOP if stop_first else signal.SIGKILL)
                pids.add(pid)
    if stop_first:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    return wait_gone(pids)


def _start_script(tmp_path: Path, source: str, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
    """Start a script in a session of its own, with our import path."""
    (tmp_path / "script.py").write_text(textwrap.dedent(source))
    kw["env"] = dict(os.environ, PYTHONPATH=os.pathsep.join(os.path.abspath(p) for p in sys.path if p))
    argv = [sys.executable, str(tmp_path / "script.py"), *args]
    return subprocess.Popen(argv, cwd=tmp_path, start_new_session=True, **kw)


def _run_script(
    tmp_path: Path, source: str, *args: str, timeout: float, stderr: Any = None
) -> tuple[int | None, str]:
    """Run a script to its end: (its exit code, None if it outlived ``timeout``; its stdout)."""
    with open(tmp_path / "stdout", "wb") as out:
        proc = _start_script(tmp_path, source, *args, stdout=out, stderr=stderr or out)
    try:
        code: int | None = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        _kill_session(proc.pid)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    return code, (tmp_path / "stdout").read_text(errors="replace")


@pytest.mark.timeout(60)
def test_idle_worker_killed_from_outside_is_replaced(make_executor: MakeExecutor) -> None:
    """A worker SIGKILLed while idle does not make the pool refuse later jobs, and its pid
    leaves ``statistics().worker_pids``."""
    ex = make_executor(2)
    victim = ex.submit(jobs.getpid).result(timeout=ANSWER_WITHIN)
    os.kill(victim, signal.SIGKILL)
    _eventually(lambda: not psutil.pid_exists(victim), FAIL_WITHIN)  # reaped: the pool saw it
    futs = [ex.submit(jobs.square, i) for i in range(6)]
    assert [f.result(timeout=ANSWER_WITHIN) for f in futs] == [i * i for i in range(6)]
    assert _eventually(lambda: victim not in ex.statistics().worker_pids, FAIL_WITHIN), ex.statistics()


@pytest.mark.parametrize(
    "variant",
    [("process", "fork"), ("process", "forkserver"), ("loky", None), ("pipes", None)],
    ids=["process-fork", "process-forkserver", "loky", "pipes"],
    indirect=True,
)
@pytest.mark.timeout(90)
def test_worker_killed_while_sending_its_result_does_not_wedge_the_pool(
    make_executor: MakeExecutor, kill: Kill
) -> None:
    """A worker SIGKILLed halfway through writing a big result to its pipe fails that job
    with WorkerDiedError, and the executor keeps serving.

    The stdlib's pool waits forever for the rest of such a message (its manager
    thread holds a write end of the result pipe, so no EOF comes): inside the
    sidecar, the loop notices the dead worker the pool has not reported and
    replaces the pool. Results take the pipes here (shm_threshold=None), which
    is where the half message can happen. With forkserver the stuck pool has
    not reaped the dead worker, so the sidecar may not read its exit code
    until the reset (sidecar.backends._reap): it must notice the death, and
    name the culprit, all the same.
    """
    ex = make_executor(2, shm_threshold=None)
    with _unwedged(ex, kill):
        for _ in range(2):
            fut = ex.submit(jobs.result_then_killed_mid_write, 16 << 20)
            with pytest.raises(BrokenProcessPool) as info:
                fut.result(timeout=FAIL_WITHIN)
            # The culprit is named, with how it ended.
            assert getattr(info.value, "exitcode", None) == -signal.SIGKILL, info.value
            assert ex.submit(jobs.square, 7).result(timeout=ANSWER_WITHIN) == 49


@pytest.mark.timeout(60)
def test_done_callbacks_submitting_big_jobs_do_not_deadlock(make_executor: MakeExecutor, kill: Kill) -> None:
    """Done-callbacks that submit the next job of a chain, with an 8 MiB argument and
    result, on three chains at once: every job completes."""
    ex = make_executor(2)
    chains, links = 3, 4
    lengths: list[int] = []
    errors: list[BaseException] = []
    finished = threading.Event()

    def step(fut: cf.Future[Any], left: int) -> None:
        try:
            lengths.append(len(fut.result()))
            if left:
                ex.submit(jobs.identity, b"n" * BIG).add_done_callback(functools.partial(step, left=left - 1))
        except BaseException as exc:
            errors.append(exc)
        if errors or len(lengths) == chains * links:
            finished.set()

    with _unwedged(ex, kill):
        for _ in range(chains):
            ex.submit(jobs.identity, b"f" * BIG).add_done_callback(functools.partial(step, left=links - 1))
        assert finished.wait(ANSWER_WITHIN), f"only {len(lengths)} of {chains * links} chained jobs finished"
        assert not errors, errors
        assert lengths == [BIG] * (chains * links)


@pytest.mark.timeout(60)
def test_done_callback_may_wait_for_another_jobs_completion(
    make_executor: MakeExecutor, tmp_path: Path, kill: Kill
) -> None:
    """A done-callback that blocks until another job completes (that job's own callback sets
    an Event) is released: results keep arriving while a callback blocks."""
    ex = make_executor(2)
    in_callback, other_done, returned = threading.Event(), threading.Event(), threading.Event()
    released: list[bool] = []

    def wait_for_other(_: cf.Future[Any]) -> None:
        in_callback.set()
        released.append(other_done.wait(CALLBACK_WAIT))
        returned.set()

    with _unwedged(ex, kill):
        first = ex.submit(jobs.block_until, str(tmp_path / "s1"), str(tmp_path / "g1"), 1)
        second = ex.submit(jobs.block_until, str(tmp_path / "s2"), str(tmp_path / "g2"), 2)
        first.add_done_callback(wait_for_other)
        second.add_done_callback(lambda _: other_done.set())
        (tmp_path / "g1").touch()
        assert in_callback.wait(ANSWER_WITHIN)
        (tmp_path / "g2").touch()  # only now can the second job finish
        assert returned.wait(CALLBACK_WAIT + ANSWER_WITHIN)
        assert released == [True], "the other job's completion never arrived while a callback blocked"
        assert second.result(timeout=ANSWER_WITHIN) == 2


@pytest.mark.timeout(60)
def test_done_callback_may_call_shutdown(make_executor: MakeExecutor, tmp_path: Path, kill: Kill) -> None:
    """``shutdown()`` (wait=True) from a done-callback returns; the pending jobs still
    finish and the executor closes."""
    ex = make_executor(2)
    returned = threading.Event()

    def stop(_: cf.Future[Any]) -> None:
        ex.shutdown()
        returned.set()

    with _unwedged(ex, kill):
        first = ex.submit(jobs.block_until, str(tmp_path / "started"), str(tmp_path / "gate"))
        rest = [ex.submit(jobs.square, i) for i in range(5)]
        first.add_done_callback(stop)
        (tmp_path / "gate").touch()
        assert returned.wait(ANSWER_WITHIN), "shutdown() called from a done-callback did not return"
        assert [f.result(timeout=ANSWER_WITHIN) for f in rest] == [i * i for i in range(5)]
        assert _eventually(lambda: ex.statistics().state == "closed", ANSWER_WITHIN), ex.statistics()
        with pytest.raises(RuntimeError):
            ex.submit(jobs.square, 1)


def _submit_interrupted(ex: SubprocExecutor, data: bytes, after: int, *, into_shm: bool = False) -> bool:
    """Submit ``data``, raising KeyboardInterrupt in the main thread once the sidecar has
    read ``after`` more bytes, i.e. while submit() writes. True if the interrupt landed.
    ``into_shm``: once this process has written ``after`` more bytes (into a segment).

    SIGUSR1 from a watcher thread, not SIGALRM: pytest-timeout owns SIGALRM."""
    pid = ex.statistics().sidecar_pid
    assert pid is not None
    watched = psutil.Process() if into_shm else psutil.Process(pid)

    def moved() -> int:
        counters = watched.io_counters()
        return counters.write_chars if into_shm else counters.read_chars

    base = moved()
    armed = threading.Event()
    armed.set()

    def on_signal(signum: int, frame: object) -> None:
        if armed.is_set():
            armed.clear()
            raise KeyboardInterrupt("Ctrl-C while submit() writes")

    def watch() -> None:
        while armed.is_set():
            if moved() - base >= after:
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
                return
            time.sleep(0.001)

    old = signal.signal(signal.SIGUSR1, on_signal)
    watcher = threading.Thread(target=watch, name="test-interrupter", daemon=True)
    watcher.start()
    try:
        try:
            ex.submit(jobs.length, data)
        finally:
            armed.clear()
    except KeyboardInterrupt:
        return True
    finally:
        watcher.join()
        signal.signal(signal.SIGUSR1, old)
    return False


@PROCESS_AND_PIPES
@pytest.mark.slow
@pytest.mark.timeout(60)
def test_keyboard_interrupt_during_a_big_submit_leaves_the_executor_usable(
    make_executor: MakeExecutor, kill: Kill
) -> None:
    """KeyboardInterrupt while submit() writes a 256 MiB argument to the sidecar leaves the
    executor usable: later jobs run correctly and shutdown() returns. (Through the pipes:
    test_shm interrupts the write into shared memory.)"""
    ex = make_executor(1, shm_threshold=None)
    assert ex.submit(jobs.square, 2).result(timeout=ANSWER_WITHIN) == 4  # the sidecar is up
    data = b"k" * (256 << 20)
    with _unwedged(ex, kill):
        landed = sum(_submit_interrupted(ex, data, after=16 << 20) for _ in range(3))
        del data
        assert landed, "no interrupt landed during a write: nothing was tested"
        medium = b"m" * (4 << 20)
        assert ex.submit(jobs.length, medium).result(timeout=2 * FAIL_WITHIN) == len(medium)
        assert ex.submit(jobs.square, 7).result(timeout=FAIL_WITHIN) == 49
    assert _shutdown_returns(ex, kill), "shutdown() hung after an interrupted submit()"


@PROCESS_AND_PIPES
@pytest.mark.timeout(90)
def test_keyboard_interrupts_at_random_moments_of_submit_lose_no_job(
    make_executor: MakeExecutor, kill: Kill
) -> None:
    """Ctrl-C may land between any two bytecodes of submit(): CPython runs the handler in
    the main thread even when another thread received the signal. Submits of every size
    under a rain of interrupts, sent to either thread: each submit that returned a future
    sees it complete with the right result (none stays in flight with no frame sent, and
    the stream to the sidecar stays framed); later jobs run; shutdown() returns."""
    import random

    ex = make_executor(2, shm_threshold=None)
    assert ex.submit(jobs.square, 2).result(timeout=ANSWER_WITHIN) == 4
    rnd = random.Random(os.getpid())
    sizes = [rnd.choice([0, 100, 70_000, 1 << 20]) for _ in range(400)]
    returned: list[tuple[cf.Future[int], int]] = []

    def step(k: int) -> None:
        returned.append((ex.submit(jobs.length, b"s" * sizes[k]), sizes[k]))

    with _unwedged(ex, kill):
        with InterruptRain(rnd, KeyboardInterrupt, to_main=0.3, max_gap=0.002) as rain:
            landed = rain.run(len(sizes), step)
        assert landed, "no interrupt landed during the submits: nothing was tested"
        _, not_done = cf.wait([f for f, _ in returned], timeout=2 * FAIL_WITHIN)
        assert not not_done, f"{len(not_done)} of {len(returned)} returned futures never completed"
        assert [f.result(timeout=0) for f, _ in returned] == [size for _, size in returned]
        assert ex.submit(jobs.square, 7).result(timeout=FAIL_WITHIN) == 49
    assert _shutdown_returns(ex, kill), "shutdown() hung: a job interrupted in submit() stayed in flight"


def _interrupt_at_line(k: int, also: tuple[str, ...] = ()) -> Callable[..., Any]:
    """A trace function that raises SIGUSR1 at the ``k``-th line the library's code runs
    (the handler then runs right there, as it would between two bytecodes); ``also``:
    parts of the paths of other code to count (the stdlib's ``concurrent/futures``)."""
    count = [0]
    where = ("subproc_executor", *also)

    def trace(frame: Any, event: str, arg: object) -> Any:
        if not any(part in frame.f_code.co_filename for part in where):
            return None
        if frame.f_code.co_name == "__del__":
            return None  # CPython drops an exception raised there: not ours to test
        if event == "line":
            count[0] += 1
            if count[0] == k:
                signal.raise_signal(signal.SIGUSR1)
        return trace

    trace.count = count  # type: ignore[attr-defined]
    return trace


@ONLY_PROCESS_FORK
@pytest.mark.timeout(120)
def test_an_interrupt_at_every_line_of_submit_strands_no_job(make_executor: MakeExecutor, kill: Kill) -> None:
    """The exhaustive form of the test above: KeyboardInterrupt at the 1st, 2nd, ... line
    that submit() runs, one submit each, until a submit runs to its end without one. Each
    interrupted submit either created no job or one that completes; every returned
    future completes; shutdown() returns (no job stays in flight unsent)."""

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("Ctrl-C during submit()")

    ex = make_executor(1)
    assert ex.submit(jobs.square, 2).result(timeout=ANSWER_WITHIN) == 4
    returned: list[tuple[cf.Future[int], int]] = []
    interrupted = 0
    old = signal.signal(signal.SIGUSR1, on_signal)
    with _unwedged(ex, kill):
        try:
            for k in range(1, 2000):
                tracer = _interrupt_at_line(k)
                sys.settrace(tracer)
                try:
                    fut = ex.submit(jobs.square, k)
                except KeyboardInterrupt:
                    interrupted += 1
                    continue
                finally:
                    sys.settrace(None)
                returned.append((fut, k * k))
                if tracer.count[0] < k:  # type: ignore[attr-defined]
                    break  # the whole submit ran before line k: every line was tried
        finally:
            signal.signal(signal.SIGUSR1, old)
        assert interrupted > 10, f"only {interrupted} submits were interrupted: nothing much was tested"
        _, not_done = cf.wait([f for f, _ in returned], timeout=2 * FAIL_WITHIN)
        assert not not_done, (
            f"{len(not_done)} of {len(returned)} returned futures never completed; k={k} {ex.statistics()}"
        )
        assert [f.result(timeout=0) for f, _ in returned] == [v for _, v in returned]
        assert ex.submit(jobs.square, 7).result(timeout=FAIL_WITHIN) == 49
    assert _shutdown_returns(ex, kill), "shutdown() hung: a job interrupted in submit() stayed in flight"


def _executor_in(make_executor: MakeExecutor, home: Path, monkeypatch: pytest.MonkeyPatch) -> SubprocExecutor:
    """An executor created with ``home`` as working directory (so its sidecars start there)."""
    home.mkdir()
    monkeypatch.chdir(home)
    ex = make_executor(1)
    monkeypatch.chdir(home.parent)
    return ex


def _says_why(exc: BaseException | None, home: Path) -> bool:
    text = _chain_text(exc)
    return str(home) in text or "No such file" in text or "working directory" in text


@pytest.mark.timeout(60)
def test_pending_jobs_fail_clearly_when_no_replacement_sidecar_can_start(
    make_executor: MakeExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill: Kill
) -> None:
    """The sidecar dies after its working directory was removed: every pending job, sent or
    still queued, fails with a BrokenProcessPool; the queued ones say why; shutdown() returns."""
    home = tmp_path / "home"
    ex = _executor_in(make_executor, home, monkeypatch)
    first = ex.submit(jobs.block_with_pid, str(tmp_path / "pid"), str(tmp_path / "never"))
    jobs.read_pid(tmp_path / "pid")
    more = [ex.submit(jobs.square, i) for i in range(6)]
    queued = [f for f in more if not f.running()]
    assert queued, "every job went to the sidecar: nothing tests the queued ones"
    home.rmdir()
    kill(ex.statistics().sidecar_pid)
    _, not_done = cf.wait([first, *more], timeout=FAIL_WITHIN)
    assert not not_done, f"{len(not_done)} of {len(more) + 1} futures still pending"
    for f in [first, *more]:
        assert isinstance(f.exception(timeout=0), BrokenProcessPool), repr(f.exception(timeout=0))
    for f in queued:
        assert _says_why(f.exception(timeout=0), home), _chain_text(f.exception(timeout=0))
    assert _shutdown_returns(ex, kill), "shutdown() hung"


@pytest.mark.timeout(60)
def test_submit_that_cannot_start_a_sidecar_queues_nothing(
    make_executor: MakeExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill: Kill
) -> None:
    """A submit() needing a new sidecar that cannot start (its working directory is gone)
    fails clearly; if it raised, its job never runs, even once a sidecar can start again."""
    home = tmp_path / "home"
    ex = _executor_in(make_executor, home, monkeypatch)
    assert ex.submit(jobs.square, 2).result(timeout=ANSWER_WITHIN) == 4
    old = ex.statistics().sidecar_pid
    kill(old)
    assert _eventually(lambda: ex.statistics().sidecar_pid != old, FAIL_WITHIN)
    home.rmdir()
    marker = tmp_path / "ran"
    raised: BaseException | None = None
    try:
        fut = ex.submit(jobs.append_line, str(marker), "ran")
    except Exception as exc:
        raised = exc
        assert _says_why(exc, home), _chain_text(exc)
    else:
        err = fut.exception(timeout=FAIL_WITHIN)
        assert isinstance(err, BrokenProcessPool) and _says_why(err, home), _chain_text(err)
    home.mkdir()  # a sidecar could start again now
    with contextlib.suppress(BrokenProcessPool, RuntimeError):
        ex.submit(jobs.square, 3).result(timeout=ANSWER_WITHIN)
    assert _shutdown_returns(ex, kill), "shutdown() hung"
    assert raised is None or not marker.exists(), f"submit() raised {raised!r}, yet its job ran later"


FORK_SCRIPT = """
    import json, os, sys, threading
    import jobs
    from subproc_executor import SubprocExecutor

    ex = SubprocExecutor(2)
    assert ex.submit(jobs.square, 2).result(timeout=60) == 4
    before = ex.statistics().sidecar_pid
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        said = "exited without submitting"
        if sys.argv[1] == "submit":
            try:
                said = f"ran: {ex.submit(jobs.square, 3).result(timeout=10)!r}"
            except RuntimeError as exc:
                said = f"refused: {exc}"
            except BaseException as exc:
                said = f"failed: {exc!r}"
        os.write(w, said.encode())
        sys.exit(0)  # the normal way out: atexit handlers run
    os.close(w)
    status = []
    waiter = threading.Thread(target=lambda: status.append(os.waitpid(child, 0)[1]), daemon=True)
    waiter.start()
    waiter.join(20)
    exited = not waiter.is_alive()
    if not exited:
        os.kill(child, 9)
        waiter.join()
    said = os.read(r, 65536).decode()
    after = ex.statistics().sidecar_pid
    try:
        parent_job = ex.submit(jobs.square, 5).result(timeout=30)
    except BaseException as exc:
        parent_job = repr(exc)
    info = dict(exited=exited, status=status[0], said=said, before=before, after=after, parent_job=parent_job)
    print(json.dumps(info), flush=True)
    ex.shutdown()
    print("shutdown returned", flush=True)
"""


@pytest.mark.parametrize("action", ["submit", "exit"])
@pytest.mark.timeout(60)
def test_forked_child_exits_and_leaves_the_parents_executor_alone(tmp_path: Path, action: str) -> None:
    """After os.fork(), the child's submit() is refused (RuntimeError) or runs on a sidecar of
    its own; the child exits normally and promptly; the parent keeps its sidecar, which serves."""
    code, out = _run_script(tmp_path, FORK_SCRIPT, action, timeout=50)
    lines = out.splitlines()
    info = next((json.loads(line) for line in lines if line.startswith("{")), None)
    assert info is not None, f"exit code {code}, output:\n{out}"
    assert info["exited"] and info["status"] == 0, f"the child did not exit (0) within 20 s: {info}"
    if action == "submit":
        assert info["said"] == "ran: 9" or info["said"].startswith("refused: "), info
    assert info["after"] == info["before"], f"the parent's sidecar changed: {info}"
    assert info["parent_job"] == 25, info
    assert code == 0 and "shutdown returned" in lines, f"exit code {code}, output:\n{out}"


@PROCESS_AND_PIPES
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_argument_over_2_gib_fails_only_its_job(
    make_executor: MakeExecutor, tmp_path: Path, kill: Kill
) -> None:
    """A job whose argument is over 2 GiB runs, or fails alone with a clear error: a job
    running beside it succeeds and the executor keeps its sidecar."""
    ex = make_executor(2)
    sibling = ex.submit(jobs.block_with_pid, str(tmp_path / "pid"), str(tmp_path / "gate"), "sibling")
    jobs.read_pid(tmp_path / "pid")
    starts = ex.statistics().sidecar_starts
    with _unwedged(ex, kill):
        huge = ex.submit(jobs.length, bytes(2**31 + 1))
        (tmp_path / "gate").touch()
        assert sibling.result(timeout=ANSWER_WITHIN) == "sibling"
        try:
            n = huge.result(timeout=8 * ANSWER_WITHIN)  # 2 GiB copied a few times, on a busy machine
        except Exception as exc:
            text = _chain_text(exc)
            assert any(w in text for w in ("limit", "too large", "too big", "exceeds")), text
        else:
            assert n == 2**31 + 1
        assert ex.submit(jobs.square, 3).result(timeout=ANSWER_WITHIN) == 9
        assert ex.statistics().sidecar_starts == starts, ex.statistics()


STDERR_SCRIPT = """
    import sys
    import jobs
    from subproc_executor import SubprocExecutor

    with SubprocExecutor(2, backend=sys.argv[1]) as ex:
        noisy = [ex.submit(jobs.spew_stderr, 1 << 20) for _ in range(4)]
        quiet = [ex.submit(jobs.square, i) for i in range(20)]
        assert [f.result(timeout=60) for f in noisy] == [1 << 20] * 4
        assert [f.result(timeout=60) for f in quiet] == [i * i for i in range(20)]
    print("ok", flush=True)
"""


@pytest.mark.parametrize("backend", ["process", "pipes"])
@pytest.mark.timeout(60)
def test_results_arrive_when_nobody_reads_the_parents_stderr(tmp_path: Path, backend: str) -> None:
    """With the parent's stderr a pipe nobody reads, jobs printing 1 MiB each to stderr do
    not stop results from arriving: the script finishes and prints ok."""
    code, out = _run_script(tmp_path, STDERR_SCRIPT, backend, timeout=45, stderr=subprocess.PIPE)
    assert code == 0 and out.strip() == "ok", f"exit code {code} (None: hung), stdout:\n{out}"


SLOW_INIT_SCRIPT = """
    import json, time
    import jobs
    from subproc_executor import SubprocExecutor

    ex = SubprocExecutor(2, backend="pipes", initializer=jobs.sleep_return, initargs=(10,))
    # More than a pipe holds: handed to a worker still in its initializer, it cannot be written at once.
    fut = ex.submit(jobs.length, b"a" * (4 << 20))
    deadline = time.monotonic() + 30
    while len(ex.statistics().worker_pids) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    st = ex.statistics()
    print(json.dumps({"sidecar": st.sidecar_pid, "workers": list(st.worker_pids)}), flush=True)
    time.sleep(300)  # until the test kills us
"""


@pytest.mark.timeout(60)
def test_parent_death_clears_pipes_pool_while_workers_initialize(tmp_path: Path) -> None:
    """pipes backend, an initializer sleeping 10 s, a job submitted: when the parent is
    SIGKILLed, the sidecar and its workers are gone within seconds, not after the initializer."""
    proc = _start_script(tmp_path, SLOW_INIT_SCRIPT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        info = json.loads(proc.stdout.readline())  # bounded by the test's timeout
        tree = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        assert {info["sidecar"], *info["workers"]} <= tree, (info, tree)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        left = wait_gone(tree, GONE_WITHIN)
        assert not left, f"outlived their parent by {GONE_WITHIN}s: {sorted(left)} ({info})"
    finally:
        _kill_session(proc.pid)
        proc.wait()
        proc.stdout.close()


GC_SCRIPT = """
    import gc, os, sys, threading
    import jobs
    from subproc_executor import SubprocExecutor

    backend, rounds, tmp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    alive = []  # the one outside way to this round's executor
    gc.freeze()  # collect only what comes next: full collections stay cheap and frequent
    gc.set_threshold(1, 1, 1)
    for i in range(rounds):
        ex = SubprocExecutor(1, backend=backend)
        box = [ex]
        box.append(box)  # the executor is in a reference cycle
        alive.append(box)
        gate = os.path.join(tmp, f"gate{i}")
        futs = [ex.submit(jobs.block_until, os.path.join(tmp, f"s{i}"), gate, 0)]
        futs += [ex.submit(jobs.square, j) for j in range(1, 30)]
        del ex, box
        done, count = threading.Event(), [0]

        def on_done(_, n=len(futs)):
            alive.clear()  # dropped on the reader thread: the collector runs there next
            count[0] += 1
            if count[0] == n:
                done.set()

        for f in futs:
            f.add_done_callback(on_done)
        open(gate, "w").close()
        if not done.wait(20):
            print(f"round {i}: {len(futs) - count[0]} of {len(futs)} jobs never finished", flush=True)
            os._exit(3)
    print("ok", flush=True)
"""


@pytest.mark.timeout(60)
def test_collecting_an_executor_on_its_reader_thread_does_not_deadlock(tmp_path: Path) -> None:
    """Executors dropped in reference cycles without shutdown, the collector running very
    often, the last outside reference dropped on the reader thread: every job finishes and
    the process exits."""
    code, out = _run_script(tmp_path, GC_SCRIPT, "pipes", "30", str(tmp_path), timeout=50)
    assert code == 0 and out.strip() == "ok", f"exit code {code} (None: hung), output:\n{out}"


@pytest.mark.timeout(60)
def test_sidecar_killed_before_hello_is_restarted(make_executor: MakeExecutor) -> None:
    """With restart=True, a sidecar killed before it said HELLO is replaced, not taken for
    one that can never start: the next job runs."""
    for _ in range(10):
        ex = make_executor(1)
        pid = ex.statistics().sidecar_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        if not psutil.Process(pid).children() and not ex.statistics().worker_pids:
            break  # no worker yet: its backend has not started, so it has not said HELLO
        os.kill(pid, signal.SIGCONT)
    else:
        pytest.fail("never caught a sidecar before its HELLO")
    os.kill(pid, signal.SIGKILL)
    assert _eventually(lambda: ex.statistics().sidecar_pid != pid, FAIL_WITHIN)
    assert ex.submit(jobs.square, 3).result(timeout=ANSWER_WITHIN) == 9


@ONLY_PROCESS_FORK
@pytest.mark.timeout(60)
def test_sidecar_that_can_never_start_fails_clearly(make_executor: MakeExecutor) -> None:
    """A sidecar that can never start (its backend cannot be imported) fails the job with the
    reason, and the executor ends broken with no sidecar instead of looping."""
    ex = make_executor(1, backend="subproc_executor_no_such_module:Backend")
    try:
        err = ex.submit(jobs.square, 2).exception(timeout=ANSWER_WITHIN)
    except BrokenProcessPool as exc:
        err = exc
    assert isinstance(err, BrokenProcessPool), repr(err)
    assert "subproc_executor_no_such_module" in _chain_text(err), _chain_text(err)
    st = ex.statistics()
    assert st.state == "broken" and st.sidecar_pid is None, st
    with pytest.raises(BrokenProcessPool):
        ex.submit(jobs.square, 3)


SHADOW_MODULE = """
import importlib.util as _util, os as _os, sys as _sys
with open({marker!r}, "a") as _f:
    _f.write(f"{{__name__}} imported from the working directory by pid {{_os.getpid()}}: {{_sys.argv}}\\n")
# Then become the real module, so that the process goes on as usual.
_path = _os.path.join(_os.path.dirname(_os.__file__), __name__ + ".py")
_spec = _util.spec_from_file_location(__name__, _path)
_real = _util.module_from_spec(_spec)
_sys.modules[__name__] = _real
_spec.loader.exec_module(_real)
"""


@pytest.mark.timeout(60)
def test_sidecar_does_not_import_modules_from_the_working_directory(
    make_executor: MakeExecutor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variant: tuple[str, str | None],
) -> None:
    """Modules in the parent's working directory that shadow the stdlib (argparse.py,
    selectors.py) are imported neither by the sidecar nor by its workers."""
    if sys.version_info < (3, 11) and (variant[0] == "loky" or variant[1] in ("spawn", "forkserver")):
        pytest.skip(
            "Python 3.10 has no -P / PYTHONSAFEPATH: the interpreters the sidecar starts for spawn, "
            "forkserver and loky workers put the working directory first while they start "
            "(documented in guide.md); the sidecar itself and forked workers are covered"
        )
    cwd, marker = tmp_path / "cwd", tmp_path / "imported"
    cwd.mkdir()
    for name in ("argparse", "selectors"):
        (cwd / f"{name}.py").write_text(SHADOW_MODULE.format(marker=str(marker)))
    monkeypatch.chdir(cwd)
    # The import path the sidecar inherits must not name the directory: python -m is the test.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p and os.path.abspath(p) != str(cwd)])
    ex = make_executor(2)
    assert ex.submit(jobs.square, 3).result(timeout=ANSWER_WITHIN) == 9
    ex.shutdown()
    assert not marker.exists(), marker.read_text()


@ONLY_PROCESS_FORK
@pytest.mark.parametrize("planted", ["nothing", "symlink", "dangling-symlink"])
@pytest.mark.timeout(60)
def test_log_file_is_private_and_never_a_planted_symlink(
    make_executor: MakeExecutor, tmp_path: Path, planted: str
) -> None:
    """``log_path`` is created with mode 0600 whatever the umask; a symlink planted there is
    not followed: its target is neither created nor written (refusing the path is fine)."""
    target, log = tmp_path / "victim", tmp_path / "pool.log"
    if planted == "symlink":
        target.write_text("original\n")
    if planted != "nothing":
        log.symlink_to(target)
    old = os.umask(0o022)
    try:
        ex = make_executor(1, log_path=log)
    except OSError:
        assert planted != "nothing"  # refused a planted path: fine
    else:
        with contextlib.suppress(BrokenProcessPool):
            ex.submit(jobs.print_to_stderr, "hello").result(timeout=ANSWER_WITHIN)
        ex.shutdown()
    finally:
        os.umask(old)
    if planted == "nothing":
        assert stat.S_IMODE(log.stat().st_mode) == 0o600, oct(log.stat().st_mode)
    else:
        assert target.read_text() == "original\n" if planted == "symlink" else not target.exists()
