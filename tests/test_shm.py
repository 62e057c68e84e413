"""Big payloads through shared memory (``wire.shm``): used above the threshold,
bytes intact either side of it, and no segment left behind by a finished job
or by the death of any process in the middle of a transfer.

Segments live in ``/dev/shm`` under ``spx-<parent pid>-``; every test here
checks that nothing of its parent's prefix remains.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faults
import jobs
import pytest
from executor_fixtures import ANSWER_WITHIN, FAIL_WITHIN, GONE_WITHIN, POLL_SECONDS, MakeExecutor, wait_gone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hardening import (
    Kill,
    _interrupt_at_line,
    _kill_session,
    _run_script,
    _start_script,
    _submit_interrupted,
)
from test_hardening import kill as kill  # a fixture, used by name

from subproc_executor import SubprocExecutor
from subproc_executor.errors import BrokenSubprocExecutor

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this platform")

THRESHOLD = 64 * 1024
ALL_BACKENDS = pytest.mark.parametrize(
    "variant",
    [("process", "fork"), ("loky", None), ("pipes", None)],
    ids=["process-fork", "loky", "pipes"],
    indirect=True,
)


def _prefix(pid: int | None = None) -> str:
    return f"spx-{os.getpid() if pid is None else pid}-"


def _left(prefix: str, within: float = GONE_WITHIN) -> list[str]:
    """Segments under ``prefix`` still there after ``within`` seconds (a sweep may lag a death)."""
    deadline = time.monotonic() + within
    while True:
        names = jobs.shm_names(prefix)
        if not names or time.monotonic() > deadline:
            return names
        time.sleep(POLL_SECONDS)


@pytest.fixture(autouse=True)
def _no_segments_left() -> None:
    assert not jobs.shm_names(_prefix()), "segments of this process before the test"
    yield
    left = _left(_prefix())
    for name in left:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join("/dev/shm", name))
    assert not left, f"segments left behind: {left}"


@ALL_BACKENDS
@pytest.mark.timeout(60)
def test_arguments_at_or_above_the_threshold_travel_through_shared_memory(
    make_executor: MakeExecutor,
) -> None:
    """While a job runs, its argument is in a segment if its pickle reaches the threshold,
    and is not otherwise; once it has ended, the segment is gone."""
    ex = make_executor(2, shm_threshold=THRESHOLD)
    arg_prefix = _prefix() + "a"
    names, n = ex.submit(jobs.shm_names_with_arg, arg_prefix, b"x" * (2 * THRESHOLD)).result(ANSWER_WITHIN)
    assert n == 2 * THRESHOLD and len(names) == 1, names
    names, n = ex.submit(jobs.shm_names_with_arg, arg_prefix, b"x" * 100).result(ANSWER_WITHIN)
    assert n == 100 and names == []
    assert _left(_prefix()) == []


@ALL_BACKENDS
@pytest.mark.timeout(120)
def test_payloads_either_side_of_the_threshold_arrive_intact(make_executor: MakeExecutor) -> None:
    """Hypothesis picks argument and result sizes around and far past the threshold: every
    value comes back byte for byte, and no segment outlives its job."""
    ex = make_executor(2, shm_threshold=THRESHOLD)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        arg=st.integers(0, 3 * THRESHOLD) | st.sampled_from([THRESHOLD - 40, THRESHOLD, 4 << 20]),
        result=st.integers(0, 3 * THRESHOLD) | st.sampled_from([THRESHOLD - 1, THRESHOLD, 4 << 20]),
        fill=st.binary(min_size=1, max_size=7),
    )
    def echo(arg: int, result: int, fill: bytes) -> None:
        data = (fill * (arg // len(fill) + 1))[:arg]
        assert ex.submit(jobs.identity, data).result(ANSWER_WITHIN) == data
        out = ex.submit(jobs.make_bytes, result).result(ANSWER_WITHIN)
        assert out == b"x" * result
        assert _left(_prefix()) == []

    echo()


@pytest.mark.timeout(60)
def test_shm_threshold_none_sends_everything_through_the_pipes(make_executor: MakeExecutor) -> None:
    ex = make_executor(1, shm_threshold=None)
    names, n = ex.submit(jobs.shm_names_with_arg, _prefix(), b"x" * (4 << 20)).result(ANSWER_WITHIN)
    assert (names, n) == ([], 4 << 20)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "1M", True])
def test_bad_shm_threshold_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="shm_threshold"):
        SubprocExecutor(1, shm_threshold=bad)  # type: ignore[arg-type]


@ALL_BACKENDS
@pytest.mark.timeout(90)
def test_worker_killed_while_writing_a_big_result_leaves_no_segment(
    make_executor: MakeExecutor, kill: Kill
) -> None:
    """A worker SIGKILLed while it writes its result into a segment: the job fails with
    WorkerDiedError, the half-written segment is removed, the executor keeps serving."""
    ex = make_executor(2, shm_threshold=THRESHOLD)
    for _ in range(2):
        fut = ex.submit(jobs.result_then_killed_mid_write, 256 << 20, True)
        with pytest.raises(Exception) as info:
            fut.result(timeout=FAIL_WITHIN)
        assert "died" in str(info.value), info.value
        assert ex.submit(jobs.square, 5).result(ANSWER_WITHIN) == 25
        assert _left(_prefix()) == []


@ALL_BACKENDS
@pytest.mark.timeout(60)
def test_worker_killed_holding_a_big_argument_leaves_no_segment(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    """The argument's segment outlives a worker killed while using it (a re-run needs it),
    and goes once the job has ended."""
    ex = make_executor(2, shm_threshold=THRESHOLD)
    pid_path, gate = tmp_path / "pid", tmp_path / "gate"
    fut = ex.submit(jobs.block_with_arg, str(pid_path), str(gate), b"y" * (1 << 20))
    pid = jobs.read_pid(pid_path, ANSWER_WITHIN)
    assert jobs.shm_names(_prefix() + "a"), "the argument's segment"
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(Exception) as info:
        fut.result(timeout=FAIL_WITHIN)
    assert "died" in str(info.value), info.value


PARENT_SCRIPT = """
    import json, os, sys
    import jobs
    from subproc_executor import SubprocExecutor

    tmp = sys.argv[1]
    ex = SubprocExecutor(2, backend=sys.argv[2], shm_threshold=65536)
    fut = ex.submit(jobs.block_with_arg, tmp + "/pid", tmp + "/gate", b"z" * (8 << 20))
    jobs.read_pid(tmp + "/pid")
    st = ex.statistics()
    print(json.dumps({"sidecar": st.sidecar_pid, "workers": list(st.worker_pids)}), flush=True)
    jobs.wait_for_path(tmp + "/never", 300)
"""


@pytest.mark.parametrize("backend", ["process", "pipes"])
@pytest.mark.timeout(60)
def test_parent_killed_mid_job_leaves_no_segment(tmp_path: Path, backend: str) -> None:
    """A parent SIGKILLed while a job holds its big argument: once the sidecar and workers
    are gone, so is every segment of that parent."""
    proc = _start_script(tmp_path, PARENT_SCRIPT, str(tmp_path), backend, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        info = json.loads(proc.stdout.readline())
        assert jobs.shm_names(_prefix(proc.pid)), "the job's argument segment"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not wait_gone({info["sidecar"], *info["workers"]}, GONE_WITHIN)
        assert _left(_prefix(proc.pid)) == []
    finally:
        _kill_session(proc.pid)
        proc.wait()
        proc.stdout.close()
        for name in jobs.shm_names(_prefix(proc.pid)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join("/dev/shm", name))


def _unlink_all(prefix: str) -> None:
    for name in os.listdir("/dev/shm"):
        if name.startswith(prefix):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join("/dev/shm", name))


@pytest.mark.timeout(60)
def test_segments_of_a_parent_killed_with_its_sidecar_are_swept_by_the_next_sidecar(
    tmp_path: Path, make_executor: MakeExecutor
) -> None:
    """Parent, sidecar and workers killed at once (a process group, the OOM killer):
    nobody is left to remove the job's argument segment. The next sidecar started on
    this machine sees its owner lock free and removes it, and the owner file."""
    proc = _start_script(tmp_path, PARENT_SCRIPT, str(tmp_path), "pipes", stdout=subprocess.PIPE)
    assert proc.stdout is not None
    prefix = _prefix(proc.pid)
    try:
        proc.stdout.readline()
        assert jobs.shm_names(prefix), "the job's argument segment"
        assert os.path.exists(f"/dev/shm/{prefix}owner"), "the parent's owner file"
        assert not _kill_session(proc.pid, stop_first=True)
        proc.wait()
        assert jobs.shm_names(prefix), "a segment was removed by a process that was killed"
        ex = make_executor(1)
        assert ex.submit(jobs.square, 5).result(ANSWER_WITHIN) == 25
        assert _left(prefix, within=ANSWER_WITHIN) == []
        assert not os.path.exists(f"/dev/shm/{prefix}owner")
    finally:
        _kill_session(proc.pid)
        proc.wait()
        proc.stdout.close()
        _unlink_all(prefix)


OWNER_EXIT_SCRIPT = """
    import os
    import jobs
    from subproc_executor import SubprocExecutor

    print(os.getpid(), flush=True)
    ex = SubprocExecutor(1, backend="pipes", shm_threshold=65536)
    assert ex.submit(jobs.length, b"y" * (1 << 20)).result(60) == 1 << 20
    assert os.path.exists(f"/dev/shm/spx-{os.getpid()}-owner")
"""


@pytest.mark.timeout(60)
def test_a_parent_that_exits_leaves_not_even_its_owner_file(tmp_path: Path) -> None:
    code, out = _run_script(tmp_path, OWNER_EXIT_SCRIPT, timeout=ANSWER_WITHIN, stderr=subprocess.STDOUT)
    assert code == 0, out
    prefix = _prefix(int(out.split()[0]))
    try:
        assert _left(prefix) == []
        assert not os.path.exists(f"/dev/shm/{prefix}owner"), "the owner file outlived its parent"
    finally:
        _unlink_all(prefix)


OWNER_EDGES_SCRIPT = """
    import fcntl, json, os
    from subproc_executor.wire import shm_sweep

    prefix = f"/dev/shm/spx-{os.getpid()}-"
    out = {"pid": os.getpid()}
    # A sweeper stopped holding our owner lock: own_prefix gives up after its wait...
    blocker = os.open(prefix + "owner", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(blocker, fcntl.LOCK_EX)
    shm_sweep._OWNER_WAIT_SECONDS = 0.05
    shm_sweep.own_prefix(os.getpid())
    out["owned after giving up"] = shm_sweep._owned is not None
    open(prefix + "a1", "wb").close()  # ...and we make a segment anyway
    os.close(blocker)
    shm_sweep.own_prefix(os.getpid())  # a later executor: it must not take a1 for a dead process's
    out["owned later"] = shm_sweep._owned is not None
    out["a1 kept"] = os.path.exists(prefix + "a1")
    os.unlink(prefix + "a1")
    # Another holder of the same lock (a process with our pid in another pid namespace):
    other = os.open(prefix + "owner", os.O_RDONLY)
    fcntl.flock(other, fcntl.LOCK_SH)
    print(json.dumps(out), flush=True)
    # At exit the owner file stays for it.
"""


@pytest.mark.timeout(60)
def test_the_owner_lock_never_takes_our_own_segments_and_stays_for_another_holder(
    tmp_path: Path,
) -> None:
    """own_prefix that gave up (a sweeper stopped holding the lock) and is called again
    keeps the segment made meanwhile; at exit the owner file stays while another
    process (one with our pid in another pid namespace) holds its lock."""
    code, out = _run_script(tmp_path, OWNER_EDGES_SCRIPT, timeout=ANSWER_WITHIN, stderr=subprocess.STDOUT)
    assert code == 0, out
    report = json.loads(out.strip().splitlines()[-1])
    pid = report.pop("pid")
    try:
        assert report == {"owned after giving up": False, "owned later": True, "a1 kept": True}, out
        assert os.path.exists(f"/dev/shm/{_prefix(pid)}owner"), "removed while another held it"
    finally:
        _unlink_all(_prefix(pid))


STALE_OWNER_SCRIPT = """
    import json, os
    from subproc_executor.wire import shm_sweep

    prefix = f"/dev/shm/spx-{os.getpid()}-"
    for name in ("owner", "a1", "7-r1-1"):  # what a dead process that had our pid left
        open(prefix + name, "wb").close()
    shm_sweep.own_prefix(os.getpid())
    print(json.dumps(sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"spx-{os.getpid()}-"))))
"""


@pytest.mark.timeout(60)
def test_a_reused_pid_does_not_adopt_a_dead_processs_segments(tmp_path: Path) -> None:
    """An owner file nobody holds, under our own pid, was left by a dead process:
    taking the prefix removes its names, which would otherwise pass for ours
    (and never be swept, since we hold the lock)."""
    code, out = _run_script(tmp_path, STALE_OWNER_SCRIPT, timeout=ANSWER_WITHIN, stderr=subprocess.STDOUT)
    assert code == 0, out
    names = json.loads(out.strip().splitlines()[-1])
    assert len(names) == 1 and names[0].endswith("-owner"), out
    prefix = names[0][: -len("owner")]
    try:
        assert _left(prefix) == [] and not os.path.exists(f"/dev/shm/{names[0]}")
    finally:
        _unlink_all(prefix)


OWNER_SCRIPT = """
    import os, sys
    from subproc_executor.wire import shm_sweep

    shm_sweep.own_prefix(os.getpid())
    for name in sys.argv[1:]:
        with open(f"/dev/shm/spx-{os.getpid()}-{name}", "wb") as f:
            f.write(b"x")
    print("ready", flush=True)
    sys.stdin.read()
"""


@pytest.mark.timeout(60)
def test_sweep_orphans_takes_only_the_segments_of_parents_that_are_gone(tmp_path: Path) -> None:
    """``sweep_orphans`` removes every name under a prefix whose owner lock is free, the
    owner file last; it keeps a live owner's (one in this very process too: the lock
    belongs to an open file, not a process) and names with no owner file at all.
    ``sweep_dead_parent`` (a sidecar whose parent died) also spares a held prefix."""
    from subproc_executor.wire import shm_sweep

    procs = []
    for name in ("dead", "alive"):
        (tmp_path / name).mkdir()
        proc = _start_script(
            tmp_path / name, OWNER_SCRIPT, "a1", "77-r3-1", stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    dead, alive = procs
    ownerless = "spx-4194999-a1"  # above any pid_max: nobody's
    with open(f"/dev/shm/{ownerless}", "wb"):
        pass
    shm_sweep.own_prefix(os.getpid())
    try:
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait()
        shm_sweep.sweep_orphans()  # another sidecar on this machine may have swept them first
        assert jobs.shm_names(_prefix(dead.pid)) == []
        assert not os.path.exists(f"/dev/shm/{_prefix(dead.pid)}owner")
        assert jobs.shm_names(_prefix(alive.pid)) == [f"{_prefix(alive.pid)}{n}" for n in ("77-r3-1", "a1")]
        assert os.path.exists(f"/dev/shm/{_prefix(alive.pid)}owner")
        assert os.path.exists(f"/dev/shm/{_prefix()}owner"), "this process's own was swept"
        assert os.path.exists(f"/dev/shm/{ownerless}")
        # A sidecar whose parent had the live owner's pid (in another pid namespace) keeps them too.
        assert shm_sweep.sweep_dead_parent(alive.pid) == 0
        assert len(jobs.shm_names(_prefix(alive.pid))) == 2
        os.kill(alive.pid, signal.SIGKILL)
        alive.wait()
        shm_sweep.sweep_dead_parent(alive.pid)
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(_prefix(alive.pid))]
    finally:
        for proc in procs:
            _kill_session(proc.pid)
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
            _unlink_all(_prefix(proc.pid))
        _unlink_all(ownerless)


@ALL_BACKENDS
@pytest.mark.timeout(60)
def test_sidecar_killed_while_a_result_is_written_leaves_no_segment(
    make_executor: MakeExecutor, kill: Kill
) -> None:
    """The sidecar SIGKILLed once a worker has begun writing a big result into a segment: the
    job fails with SidecarDiedError, and the parent removes what the workers left."""
    ex = make_executor(1, shm_threshold=THRESHOLD)
    ex.submit(jobs.square, 1).result(ANSWER_WITHIN)
    sidecar = ex.statistics().sidecar_pid
    assert sidecar is not None
    fut = ex.submit(jobs.make_bytes, 512 << 20)
    deadline = time.monotonic() + ANSWER_WITHIN
    while not jobs.shm_names(f"{_prefix()}{sidecar}-r") and not fut.done() and time.monotonic() < deadline:
        time.sleep(0.0005)
    kill(sidecar)
    with contextlib.suppress(Exception):
        fut.result(timeout=FAIL_WITHIN)
    assert fut.done()
    assert ex.submit(jobs.square, 6).result(ANSWER_WITHIN) == 36


@pytest.mark.parametrize("variant", [("pipes", None)], ids=["pipes"], indirect=True)
@pytest.mark.timeout(60)
def test_keyboard_interrupt_while_a_big_argument_is_written_leaves_no_segment(
    make_executor: MakeExecutor,
) -> None:
    """KeyboardInterrupt while submit() writes a 256 MiB argument into its segment: submit
    raises it, the half-written segment is gone, and the executor keeps serving."""
    ex = make_executor(1, shm_threshold=THRESHOLD)
    assert ex.submit(jobs.square, 2).result(ANSWER_WITHIN) == 4
    data = b"k" * (256 << 20)
    landed = sum(_submit_interrupted(ex, data, after=16 << 20, into_shm=True) for _ in range(3))
    del data
    assert landed, "no interrupt landed during a write: nothing was tested"
    assert _left(_prefix()) == []
    assert ex.submit(jobs.length, b"m" * (4 << 20)).result(ANSWER_WITHIN) == 4 << 20


EXIT_SCRIPT = """
    import os, sys
    import jobs
    from subproc_executor import SubprocExecutor

    ex = SubprocExecutor(1, backend=sys.argv[1], shm_threshold=65536)
    futs = [ex.submit(jobs.append_length, sys.argv[2], bytes([i]) * (1 << 20)) for i in range(4)]
    print(os.getpid(), flush=True)
    # No shutdown(), no result(): at exit the queued jobs still run, as with the stdlib.
"""


@pytest.mark.parametrize("backend", ["process", "pipes"])
@pytest.mark.timeout(60)
def test_exit_without_shutdown_runs_big_jobs_and_leaves_no_segment(tmp_path: Path, backend: str) -> None:
    """A script that submits jobs with big arguments and exits at once: the interpreter's
    exit waits for them (their segments must still be there), and nothing is left after."""
    ran = tmp_path / "ran"
    proc = _start_script(
        tmp_path, EXIT_SCRIPT, backend, str(ran), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = proc.communicate(timeout=45)
    finally:
        _kill_session(proc.pid)
    assert proc.returncode == 0, err.decode(errors="replace")
    pid = int(out.split()[0])
    assert ran.read_text().split() == [str(1 << 20)] * 4, err.decode(errors="replace")
    assert _left(_prefix(pid)) == []


@ALL_BACKENDS
@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [100 * 1024, 1 << 20])
def test_objects_pickled_through_picklebuffer_go_both_ways(make_executor: MakeExecutor, size: int) -> None:
    """NumPy arrays pickle through a PickleBuffer, which the pickler hands to the sink as is:
    under the threshold (pipes) and over it (a segment), an argument and a result of that
    kind arrive whole."""
    ex = make_executor(1, shm_threshold=THRESHOLD)
    out = ex.submit(jobs.buffered_length, jobs.Buffered(b"q" * size), size + 1).result(ANSWER_WITHIN)
    assert isinstance(out, jobs.Buffered) and out.data == b"q" * (size + 1)


@pytest.mark.parametrize("variant", [("pipes", None)], ids=["pipes"], indirect=True)
@pytest.mark.timeout(120)
def test_an_interrupt_at_every_line_of_a_big_submit_leaves_no_segment(make_executor: MakeExecutor) -> None:
    """Ctrl-C at the 1st, 2nd, ... line that a submit of a big argument runs, one submit
    each, until one runs untouched: each interrupted submit made no job, or one that
    completes; and no segment is left once they are done (the fixture checks), such as
    one made but not yet recorded, or handed over but not closed."""

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("Ctrl-C during submit()")

    ex = make_executor(1, shm_threshold=THRESHOLD)
    assert ex.submit(jobs.square, 2).result(ANSWER_WITHIN) == 4
    data = b"b" * (2 * THRESHOLD)
    returned = []
    interrupted = 0
    old = signal.signal(signal.SIGUSR1, on_signal)
    try:
        for k in range(1, 2000):
            tracer = _interrupt_at_line(k)
            sys.settrace(tracer)
            try:
                returned.append(ex.submit(jobs.length, data))
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                sys.settrace(None)
            if tracer.count[0] < k:  # type: ignore[attr-defined]
                break
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert interrupted > 10, f"only {interrupted} submits were interrupted"
    assert [f.result(ANSWER_WITHIN) for f in returned] == [len(data)] * len(returned)


def test_a_full_dev_shm_sends_the_payload_through_the_pipes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment whose write fails (ENOSPC: /dev/shm full) is removed, and every byte
    written so far and after stays in memory, in order."""
    import errno

    from subproc_executor.wire import shm

    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: object) -> int:
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(shm.os, "write", failing_write)
    sink = shm.Sink(100, _prefix() + "t", head=b"H")
    parts = [b"a" * 60, b"b" * 60, b"c" * 60, bytearray(b"d" * 300)]
    for part in parts:
        sink.write(part)
    data, segment = sink.close()
    assert segment is None
    assert data == b"H" + b"".join(bytes(p) for p in parts)
    assert jobs.shm_names(_prefix() + "t") == []


def _segment_fds(pid: int | str = "self") -> list[str]:
    """What the descriptors and mappings of process ``pid`` hold of our segments."""
    held = []
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            target = os.readlink(os.path.join(fd_dir, fd))
            if target.startswith("/dev/shm/spx-") and not target.endswith("-owner"):
                held.append(f"fd {fd}: {target}")
    with open(f"/proc/{pid}/maps") as maps:
        held += [f"mapped: {line.split()[-2]}" for line in maps if "/dev/shm/spx-" in line]
    return held


@ALL_BACKENDS
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["error", "exit"])
@pytest.mark.parametrize("with_callback", [False, True], ids=["no-callback", "callback"])
def test_a_big_result_that_fails_to_load_keeps_no_segment_open(
    make_executor: MakeExecutor, kind: str, with_callback: bool
) -> None:
    """A result read from shared memory that raises while the parent unpickles it fails
    its job alone; its exception's traceback (kept by the future) must not keep the
    mapping, nor the descriptor mmap holds for it, until a garbage collection."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc")
    ex = make_executor(1, shm_threshold=THRESHOLD)
    assert ex.submit(jobs.square, 3).result(ANSWER_WITHIN) == 9
    assert _segment_fds() == []
    fut = ex.submit(faults.big_then_unloadable, 4 * THRESHOLD, kind)
    if with_callback:
        fut.add_done_callback(lambda f: None)
    with pytest.raises(BrokenSubprocExecutor, match="could not be unpickled in the parent"):
        fut.result(ANSWER_WITHIN)
    exc = fut.exception()
    assert exc is not None and exc.__cause__ is not None  # the traceback is alive
    assert _segment_fds() == []
    assert ex.submit(jobs.square, 4).result(ANSWER_WITHIN) == 16
