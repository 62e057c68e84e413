"""The backend interface (docs/backends.md): naming, option checks, and the
``Backend`` contract checked method by method on every backend.

Three groups:

* Names and options, checked in the parent at construction: built-in names,
  entry points, "module:attr", and the options a built-in backend refuses.
* The example third-party backend (tests/example_backend.py) driven through
  the sidecar, named as "module:attr" and as an entry point.
* The sidecar-side API run in this process: ``load_backend`` builds each
  backend from a ``BackendConfig``, and each method keeps its contract.
  (Not with fork: this process has threads, and forking a threaded process is
  what the sidecar exists to avoid; test_executor covers fork through it.)
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jobs
import psutil
import pytest
from executor_fixtures import ANSWER_WITHIN, wait_gone

from subproc_executor import BrokenSubprocExecutor, SubprocExecutor, WorkerDiedError
from subproc_executor.errors import RemoteTraceback
from subproc_executor.parent.settings import (
    BUILTIN_BACKENDS,
    ENTRY_POINT_GROUP,
    check_backend,
    known_backends,
    resolve_backend,
)
from subproc_executor.sidecar.backends import Backend, BackendConfig
from subproc_executor.sidecar.backends import load_backend as load_target
from subproc_executor.wire.messages import OutcomeTag, decode_error_outcome
from subproc_executor.wire.progress import OUTCOME_TIMING_SIZE, OutcomeTiming
from subproc_executor.worker.pickling import DEFAULT_PICKLER, HybridPickler

EXAMPLE = "example_backend:PipeBackend"


# -- helpers -------------------------------------------------------------------------

# Long-lived helpers that multiprocessing and loky start once per process and
# keep until it exits; they are not workers, and not leaks.
_HELPER_MARKS = ("multiprocessing.forkserver", "resource_tracker")


def _children() -> set[int]:
    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if not any(mark in cmdline for mark in _HELPER_MARKS):
            pids.add(p.pid)
    return pids


def _wait_gone(pids: set[int] | list[int], timeout: float = ANSWER_WITHIN) -> set[int]:
    """Pids from ``pids`` still alive after ``timeout`` (zombies count as gone)."""
    return wait_gone(set(pids), timeout)


def resolve_backend_name(name: str) -> str:
    return resolve_backend(name)[0]


def load_backend(name: str, config: BackendConfig) -> Backend:
    """As the sidecar does, with the name resolved as the parent does."""
    return load_target(resolve_backend_name(name), config)


def _payload(fn: Callable[..., object], *args: object, **kwargs: object) -> bytes:
    """Job bytes as the parent makes them."""
    return HybridPickler.dumps((fn, args, kwargs))


def _decode(outcome: bytes) -> tuple[int, object]:
    """(tag, value) for a value outcome, (tag, exception type name) otherwise."""
    started, ended, pid = OutcomeTiming.decode(outcome)
    assert started <= ended and pid > 0, (started, ended, pid)
    outcome = outcome[OUTCOME_TIMING_SIZE:]
    tag = outcome[0]
    if tag == OutcomeTag.VALUE:
        return tag, HybridPickler.loads(outcome[1:])
    return tag, decode_error_outcome(outcome).type_name


class OnDoneRecorder:
    """An ``on_done`` that records every call, thread-safely."""

    def __init__(self) -> None:
        self.calls: list[list[bytes] | BaseException] = []
        self._cond = threading.Condition()

    def __call__(self, outcome: list[bytes] | BaseException) -> None:
        with self._cond:
            self.calls.append(outcome)
            self._cond.notify_all()

    def wait(self, n: int = 1, timeout: float = ANSWER_WITHIN) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.calls) >= n, timeout)


def _run_one(backend: Backend, fn: Callable[..., object], *args: object) -> object:
    """Run one job through ``backend``; its decoded value."""
    rec = OnDoneRecorder()
    backend.submit([1], [_payload(fn, *args)], rec)
    assert rec.wait(), "on_done was not called"
    (outcome,) = rec.calls
    assert isinstance(outcome, list), outcome
    tag, value = _decode(outcome[0])
    assert tag == OutcomeTag.VALUE, value
    return value


def _config(start_method: str | None, **overrides: object) -> BackendConfig:
    fields: dict[str, object] = {
        "max_workers": 2,
        "start_method": start_method,
        "max_tasks_per_child": None,
        "pickler": DEFAULT_PICKLER,
        "initializer": None,
    }
    fields.update(overrides)
    return BackendConfig(**fields)  # type: ignore[arg-type]


# -- names: built-in, entry point, "module:attr" ----------------------------------------------


def test_builtin_names_resolve_to_strings_without_importing() -> None:
    for name, spec in BUILTIN_BACKENDS.items():
        assert resolve_backend_name(name) == spec.target
        assert name in known_backends()
    assert resolve_backend_name("some.module:Factory") == "some.module:Factory"
    assert "some.module" not in sys.modules


def test_unknown_backend_fails_at_construction_listing_the_known_ones() -> None:
    before = _children()
    with pytest.raises(ValueError, match="unknown backend 'no-such-pool'") as info:
        SubprocExecutor(backend="no-such-pool")
    message = str(info.value)
    for name in known_backends():
        assert name in message
    assert "module:attr" in message
    assert _children() == before, "a refused executor must not start a sidecar"


def _install_entry_point(site: Path, name: str, target: str) -> None:
    """A minimal installed distribution registering ``name`` in our group."""
    dist = site / "example_backend_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: example-backend-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{name} = {target}\n")


def test_entry_point_backend_is_found_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_entry_point(tmp_path, "example-pipes", EXAMPLE)
    assert "example-pipes" not in known_backends()
    # Before constructing: the sidecar inherits sys.path as PYTHONPATH.
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "example-pipes" in known_backends()
    assert resolve_backend_name("example-pipes") == EXAMPLE
    with pytest.raises(ValueError, match="example-pipes"):
        resolve_backend_name("no-such-pool")  # the error lists entry points too
    with SubprocExecutor(1, backend="example-pipes") as ex:
        assert ex.submit(jobs.add, 20, b=22).result(ANSWER_WITHIN) == 42


def test_bad_module_attr_fails_the_job_not_the_constructor(tmp_path: Path) -> None:
    # The parent never imports a backend, so a typo shows on the first job.
    ex = SubprocExecutor(1, backend="no_such_module:Pool", restart=False, log_path=tmp_path / "sidecar.log")
    try:
        fut = ex.submit(jobs.square, 3)
        with pytest.raises(BrokenSubprocExecutor, match="no_such_module"):
            fut.result(ANSWER_WITHIN)
    finally:
        ex.shutdown(wait=True)


def test_load_backend_refuses_what_is_not_a_factory() -> None:
    with pytest.raises(TypeError, match="not callable"):
        load_backend("example_backend:_GRACE_SECONDS", _config(None))
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend("no-such-pool", _config(None))


# -- options a built-in backend cannot honour: refused in the parent ---------------------------


@pytest.mark.parametrize(
    "kwargs", [{"max_tasks_per_child": 2}, {"max_tasks_per_child": 2, "mp_context": "spawn"}]
)
def test_loky_refuses_max_tasks_per_child_naming_the_alternative(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="max_tasks_per_child") as info:
        SubprocExecutor(backend="loky", **kwargs)  # type: ignore[arg-type]
    assert "backend='pipes'" in str(info.value)


@pytest.mark.parametrize("fork", ["fork", "fork-context"])
def test_loky_takes_fork_as_its_own_fork_exec_method(fork: str) -> None:
    """In a sidecar no start method inherits the user's state, and loky's bare
    fork is unsafe beside its threads: "fork" selects loky's fork+exec."""
    import multiprocessing

    pytest.importorskip("loky")
    mp_context: object = multiprocessing.get_context("fork") if fork == "fork-context" else "fork"
    assert check_backend("loky", "fork", None) == "loky"
    with SubprocExecutor(1, backend="loky", mp_context=mp_context) as ex:
        assert ex.submit(jobs.square, 4).result(ANSWER_WITHIN) == 16


@pytest.mark.parametrize("method", ["loky", "loky_init_main"])
def test_process_backend_refuses_lokys_start_methods(method: str) -> None:
    with pytest.raises(ValueError, match=f"start method '{method}'") as info:
        SubprocExecutor(backend="process", mp_context=method)
    assert "fork, forkserver, spawn" in str(info.value)


def test_each_backend_accepts_its_documented_start_methods() -> None:
    for name, spec in BUILTIN_BACKENDS.items():
        for method in spec.start_methods:
            assert check_backend(name, method, None) == method
        assert check_backend(name, None, None) == spec.start_methods[0]
    # Third-party backends check their own options in the sidecar.
    assert check_backend(EXAMPLE, "fork", 3) == "fork"


def test_loky_not_installed_fails_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == "loky" else real_find_spec(name, package)

    monkeypatch.setattr("subproc_executor.parent.settings.importlib.util.find_spec", find_spec)
    before = _children()
    with pytest.raises(ImportError, match="pip install") as info:
        SubprocExecutor(backend="loky")
    assert "loky" in str(info.value)
    assert _children() == before


# -- the example backend, through the sidecar ---------------------------------------------------


def test_example_backend_runs_submit_map_exceptions_and_initializer() -> None:
    with SubprocExecutor(2, backend=EXAMPLE, initializer=jobs.set_global, initargs=("ready",)) as ex:
        assert ex.submit(jobs.add, 2, b=5).result(ANSWER_WITHIN) == 7
        assert list(ex.map(jobs.square, range(10), chunksize=3, timeout=ANSWER_WITHIN)) == [
            x * x for x in range(10)
        ]
        fut = ex.submit(jobs.raise_value_error, "boom")
        with pytest.raises(ValueError, match="boom") as info:
            fut.result(ANSWER_WITHIN)
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert ex.submit(jobs.get_global).result(ANSWER_WITHIN) == "ready"
        pids = set(ex.map(jobs.getpid, range(8), timeout=ANSWER_WITHIN))
        assert 1 <= len(pids) <= 2


def test_example_backend_honours_the_pickler() -> None:
    import cloudpickle

    with SubprocExecutor(1, backend=EXAMPLE, pickler=cloudpickle) as ex:
        assert ex.submit(lambda x: x + 1, 41).result(ANSWER_WITHIN) == 42


def test_example_backend_worker_crash_fails_one_job_and_keeps_serving() -> None:
    with SubprocExecutor(2, backend=EXAMPLE) as ex:
        fut = ex.submit(jobs.kill_self)
        with pytest.raises(WorkerDiedError) as info:
            fut.result(ANSWER_WITHIN)
        assert info.value.exitcode == -9
        assert ex.submit(jobs.square, 7).result(ANSWER_WITHIN) == 49


def test_example_backend_refuses_its_unsupported_options_in_the_sidecar(tmp_path: Path) -> None:
    # A third-party backend is not in BUILTIN_BACKENDS: the constructor accepts
    # the option, and the backend's own refusal fails the first job.
    ex = SubprocExecutor(
        1,
        backend=EXAMPLE,
        mp_context="spawn",
        max_tasks_per_child=2,
        restart=False,
        log_path=tmp_path / "sidecar.log",
    )
    try:
        with pytest.raises(BrokenSubprocExecutor, match="max_tasks_per_child"):
            ex.submit(jobs.square, 3).result(ANSWER_WITHIN)
    finally:
        ex.shutdown(wait=True)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the stdlib pool has max_tasks_per_child from 3.11")
@pytest.mark.timeout(120)
def test_shutting_down_a_pool_that_retires_workers_kills_no_thread_of_it(tmp_path: Path) -> None:
    """The stdlib's ``shutdown(wait=False)`` dropped the pool's process table while its
    manager thread still replaced a retired worker: the thread died of a TypeError
    (its traceback in the sidecar's log) and the sidecar's shutdown waited out its
    15 s bound (2 of 8 runs). Six executors that retire a worker per job, each shut
    down right after its map: no traceback in any log."""
    for i in range(6):
        log = tmp_path / f"sidecar-{i}.log"
        ex = SubprocExecutor(
            2, backend="process", mp_context="forkserver", max_tasks_per_child=1, log_path=log
        )
        try:
            assert list(ex.map(jobs.square, range(6))) == [x * x for x in range(6)]
        finally:
            ex.shutdown(wait=True)
        text = log.read_text(errors="replace") if log.exists() else ""
        assert "Traceback" not in text, f"executor {i}: {text}"


# -- the sidecar-side API, in this process ----------------------------------------------------

IN_PROCESS = [
    ("process", "forkserver"),
    ("process", "spawn"),
    ("loky", None),
    (EXAMPLE, None),
    ("pipes", "forkserver"),
]
IN_PROCESS_IDS = ["process-forkserver", "process-spawn", "loky", "example", "pipes-forkserver"]

MakeBackend = Callable[..., Backend]


@pytest.fixture(params=IN_PROCESS, ids=IN_PROCESS_IDS)
def make_backend(request: pytest.FixtureRequest) -> Iterator[MakeBackend]:
    """Build backends with ``load_backend`` as the sidecar does; shut them down
    and check that no worker is left after the test.

    The teardown shuts down gracefully: no job is left running by a test, and
    the kill path has tests of its own.
    """
    name, method = request.param
    if name == "loky":
        pytest.importorskip("loky")
    before = _children()
    built: list[Backend] = []

    def make(**overrides: object) -> Backend:
        backend = load_backend(name, _config(method, **overrides))
        built.append(backend)
        return backend

    yield make
    for backend in built:
        backend.shutdown(kill=False)
    leaked = _wait_gone(_children() - before)
    assert not leaked, f"workers left behind: {sorted(leaked)}"


def test_start_reports_max_workers_pids_and_shutdown_kill_none(make_backend: MakeBackend) -> None:
    backend = make_backend()
    assert backend.worker_pids() == []
    backend.start()
    pids = backend.worker_pids()
    assert len(pids) == 2
    assert all(psutil.pid_exists(pid) for pid in pids)
    assert {pid: None for pid in pids}.items() <= backend.worker_exitcodes().items()
    backend.start()  # idempotent
    assert backend.worker_pids() == pids
    backend.shutdown(kill=True)
    assert backend.worker_pids() == []
    assert not _wait_gone(pids)


def test_submit_calls_on_done_once_with_one_outcome_per_job(make_backend: MakeBackend) -> None:
    backend = make_backend()
    backend.start()
    batches = [
        (
            [1, 2, 3],
            [_payload(jobs.add, 1, b=2), _payload(jobs.raise_value_error, "bad"), _payload(jobs.square, 4)],
        ),
        ([4], [_payload(jobs.identity, "x")]),
        ([5, 6], [_payload(jobs.square, 5), _payload(jobs.square, 6)]),
    ]
    recorders = [OnDoneRecorder() for _ in batches]
    for (job_ids, payloads), rec in zip(batches, recorders, strict=True):
        backend.submit(job_ids, payloads, rec)
    for rec in recorders:
        assert rec.wait()
    backend.shutdown(kill=False)  # every callback has run by now: none may come twice
    decoded = []
    for (job_ids, _), rec in zip(batches, recorders, strict=True):
        assert len(rec.calls) == 1
        (outcomes,) = rec.calls
        assert isinstance(outcomes, list) and len(outcomes) == len(job_ids)
        decoded.append([_decode(o) for o in outcomes])
    assert decoded == [
        [(OutcomeTag.VALUE, 3), (OutcomeTag.ERROR, "builtins.ValueError"), (OutcomeTag.VALUE, 16)],
        [(OutcomeTag.VALUE, "x")],
        [(OutcomeTag.VALUE, 25), (OutcomeTag.VALUE, 36)],
    ]


def test_submit_before_start_starts_the_pool(make_backend: MakeBackend) -> None:
    backend = make_backend()
    assert _run_one(backend, jobs.square, 9) == 81
    assert len(backend.worker_pids()) >= 1


def test_initializer_runs_in_the_workers(make_backend: MakeBackend) -> None:
    backend = make_backend(initializer=HybridPickler.dumps((jobs.set_global, ("initialized",))))
    backend.start()
    assert _run_one(backend, jobs.get_global) == "initialized"


def test_quiesce_waits_for_submitted_batches_then_releases_the_workers(make_backend: MakeBackend) -> None:
    backend = make_backend()
    backend.start()
    before = backend.worker_pids()
    rec = OnDoneRecorder()
    backend.submit([1], [_payload(jobs.sleep_return, 0.2, "late")], rec)
    backend.quiesce()
    assert rec.wait()
    (outcomes,) = rec.calls
    assert isinstance(outcomes, list) and _decode(outcomes[0]) == (OutcomeTag.VALUE, "late")
    assert backend.worker_pids() == []
    assert not _wait_gone(before)
    backend.start()
    after = backend.worker_pids()
    assert len(after) == 2 and not set(after) & set(before)
    assert _run_one(backend, jobs.square, 3) == 9


def test_reset_replaces_the_workers(make_backend: MakeBackend) -> None:
    backend = make_backend()
    backend.start()
    before = backend.worker_pids()
    backend.reset()
    after = backend.worker_pids()
    if getattr(backend, "name", "") == "pipes":
        # A pipes worker's death never harms the others: reset() only tops
        # the pool up to max_workers and keeps the healthy workers.
        assert after == before
    else:
        assert len(after) == 2 and not set(after) & set(before)
        assert not _wait_gone(before)
    assert _run_one(backend, jobs.square, 4) == 16


def test_dead_worker_fails_its_batch_through_on_done(make_backend: MakeBackend) -> None:
    backend = make_backend()
    backend.start()
    rec = OnDoneRecorder()
    backend.submit([1], [_payload(jobs.kill_self)], rec)
    assert rec.wait()
    (outcome,) = rec.calls
    assert isinstance(outcome, BaseException), outcome
    # The sidecar reads how the worker ended to name the culprit.
    deadline = time.monotonic() + ANSWER_WITHIN
    while -9 not in backend.worker_exitcodes().values() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert -9 in backend.worker_exitcodes().values()
    backend.reset()
    assert _run_one(backend, jobs.square, 5) == 25
    assert len(rec.calls) == 1


# Rounds of the search below, each a forkserver pool broken by a SIGKILL.
# Before the fix about two process-backend rounds in five lost the exit
# status. (loky's pool shares the process backend's code, and lost as many;
# its rounds take a second each, so it is not searched here.)
_KILL_ROUNDS = 20


@pytest.mark.parametrize("name", ["process", "pipes"])
def test_sigkilled_forkserver_worker_reports_minus_9_never_255(name: str, tmp_path: Path) -> None:
    """Search for the forkserver reaping race: a SIGKILLed worker's exit status must
    read -9, never 255, however the sidecar's threads interleave.

    A forkserver child's status is read from its sentinel pipe, once: a second
    thread polling the same process at that moment reads EOF and stores 255 for
    good. Each round a job SIGKILLs its worker while this thread reads
    ``worker_exitcodes()`` without pause, as the sidecar's loop does while it
    judges a failed batch, and the pool's own threads reap the workers.
    """
    before = _children()
    backend = load_backend(name, _config("forkserver"))
    try:
        backend.start()
        for round_ in range(_KILL_ROUNDS):
            pid_path = tmp_path / f"pid{round_}"
            rec = OnDoneRecorder()
            backend.submit([1], [_payload(jobs.die, str(pid_path), "sigkill")], rec)
            deadline = time.monotonic() + ANSWER_WITHIN
            while True:
                codes = backend.worker_exitcodes()
                if rec.calls:
                    (outcome,) = rec.calls
                    assert isinstance(outcome, BaseException), outcome
                    if isinstance(outcome, WorkerDiedError) and outcome.pid is not None:
                        # The backend names the dead worker itself (pipes).
                        codes = {outcome.pid: outcome.exitcode}
                    if all(code is not None for code in codes.values()):
                        break
                assert time.monotonic() < deadline, f"round {round_}: exit codes never settled: {codes}"
            assert 255 not in codes.values(), f"round {round_}: {codes}"
            assert codes.get(jobs.read_pid(pid_path)) == -signal.SIGKILL, f"round {round_}: {codes}"
            backend.reset()
    finally:
        backend.shutdown(kill=True)
    assert not _wait_gone(_children() - before)


class StreamingRecorder(OnDoneRecorder):
    """An ``on_done`` with ``job_done``, as the sidecar passes: records each job reported early."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[tuple[int, bytes]] = []

    def job_done(self, job_id: int, outcome: bytes) -> None:
        with self._cond:
            self.jobs.append((job_id, outcome))


def test_jobs_finished_before_a_crash_in_their_batch_keep_their_results(make_backend: MakeBackend) -> None:
    """A batch [square(3), kill_self(), square(4)]: a backend that reports jobs one by one
    (pipes) hands over job 1's result, then fails only jobs 2 and 3; any other backend fails
    or reports the whole batch in one call. Either way every job is accounted for exactly once."""
    backend = make_backend()
    backend.start()
    rec = StreamingRecorder()
    backend.submit(
        [1, 2, 3], [_payload(jobs.square, 3), _payload(jobs.kill_self), _payload(jobs.square, 4)], rec
    )
    assert rec.wait()
    (final,) = rec.calls
    assert isinstance(final, BaseException), final
    early = dict(rec.jobs)
    if name_of(backend) == "pipes":
        assert list(early) == [1], rec.jobs
    assert set(early) <= {1}, rec.jobs
    if 1 in early:
        assert _decode(early[1]) == (OutcomeTag.VALUE, 9)
    backend.reset()
    assert _run_one(backend, jobs.square, 5) == 25


def name_of(backend: Backend) -> str:
    return str(getattr(backend, "name", type(backend).__name__))


def test_shutdown_kill_reports_the_running_batch_once(make_backend: MakeBackend, tmp_path: Path) -> None:
    backend = make_backend()
    backend.start()
    pids = backend.worker_pids()
    started, gate = tmp_path / "started", tmp_path / "gate"  # the gate never opens
    rec = OnDoneRecorder()
    backend.submit([1], [_payload(jobs.block_until, str(started), str(gate))], rec)
    assert jobs.wait_for_path(started, ANSWER_WITHIN)
    t0 = time.monotonic()
    backend.shutdown(kill=True)
    assert time.monotonic() - t0 < 10, "shutdown(kill=True) must not wait for the job"
    assert rec.wait()
    assert len(rec.calls) == 1
    assert isinstance(rec.calls[0], BaseException)
    assert backend.worker_pids() == []
    assert not _wait_gone(pids)


_IGNORE_SIGTERM = (
    "import pathlib, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "pathlib.Path({ready!r}).touch()\n"
    "time.sleep(60)\n"
)


def test_terminate_children_kills_a_loky_worker_that_ignores_sigterm(tmp_path: Path) -> None:
    """Bounded termination must work for loky's workers too: SIGTERM, grace, SIGKILL."""
    pytest.importorskip("loky")
    from loky.backend.context import get_context

    from subproc_executor.sidecar.backends._reap import terminate_children

    ready = tmp_path / "ready"
    proc = get_context("loky").Process(target=exec, args=(_IGNORE_SIGTERM.format(ready=str(ready)),))
    proc.start()
    try:
        assert jobs.wait_for_path(ready, ANSWER_WITHIN)
        terminate_children(grace=0.2)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        if proc.exitcode is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(ANSWER_WITHIN)


def test_loky_refuses_max_tasks_per_child_in_the_sidecar_too() -> None:
    pytest.importorskip("loky")
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        load_backend("loky", _config(None, max_tasks_per_child=1))


# -- docs/backends.md stays true -------------------------------------------------------------

_DOCS = Path(__file__).resolve().parents[1] / "docs" / "backends.md"


def test_docs_show_the_example_backend_as_it_is() -> None:
    example = (Path(__file__).parent / "example_backend.py").read_text()
    assert f"```python\n{example}```" in _DOCS.read_text(), (
        "docs/backends.md must show tests/example_backend.py verbatim"
    )


@pytest.mark.parametrize(
    ("backend", "start_method", "max_tasks_per_child"),
    [("loky", None, 10), ("process", "loky", None)],
)
def test_docs_quote_the_refusals_as_they_are(
    backend: str, start_method: str | None, max_tasks_per_child: int | None
) -> None:
    with pytest.raises(ValueError) as info:
        check_backend(backend, start_method, max_tasks_per_child)
    docs = " ".join(_DOCS.read_text().split())
    assert " ".join(str(info.value).split()) in docs


def test_docs_describe_every_backend_method() -> None:
    docs = _DOCS.read_text()
    methods = [
        name for name in vars(Backend) if not name.startswith("_") and callable(getattr(Backend, name))
    ]
    assert methods
    for name in methods:
        assert f"### `{name}(" in docs, f"docs/backends.md has no section for Backend.{name}"
    for field in BackendConfig.FIELDS:
        assert f"| `{field}`" in docs, f"docs/backends.md does not describe BackendConfig.{field}"
    for name in BUILTIN_BACKENDS:
        assert f"| `{name}`" in docs, f"docs/backends.md has no row for the built-in backend {name!r}"
