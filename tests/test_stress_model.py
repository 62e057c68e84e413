"""A model-based stress test: random sequences of submits, crashes, kills,
cancels, maps, quiesce/wakeup and shutdown, against a real executor.

A Hypothesis ``RuleBasedStateMachine`` drives a ``SubprocExecutor(2)`` through
the public API only, once per backend (pipes, process with fork, loky), and
checks what the docs promise (guide.md "When things fail" and "What never
hangs", errors.md):

* every future ends: within ``FINISH_WITHIN`` seconds of the wait that looks
  for it, and while any is pending some future ends at least every
  ``NO_PROGRESS_WITHIN`` seconds. A hang fails, naming the stuck jobs (a
  ``submit()`` from a done callback that never returns counts as one);
* each value belongs to its job: a job returns a value derived from its own
  unique token (``stress_jobs``);
* a job ends with its own outcome (its value, or its own exception), or with
  an error that what happened around it explains: ``WorkerDiedError`` for a
  job that crashes its worker, or that was alive while a worker was killed
  from outside, or while more than ``MAX_CRASH_RETRIES`` workers crashed;
  ``SidecarDiedError`` for one alive while the sidecar was killed. Nothing
  else: not "the backend refused the job", not "the executor is broken"
  (``restart=True``; unless ``MAX_START_ATTEMPTS`` sidecars were killed, which
  may be that many in a row before their HELLO), and ``submit``, ``map``,
  ``quiesce`` and ``wakeup`` do not raise before ``shutdown`` (and raise
  ``RuntimeError`` after it);
* a ledger counts the runs: each job appends its id to a file opened with
  ``O_APPEND``, one line per run. A job runs at most once, plus one run per
  worker death around it (the documented re-runs: errors.md, "Jobs beside a
  crash, and jobs that run twice"; a crashing job itself may run
  ``MAX_CRASH_RETRIES`` more times). A cancelled job never runs; a job that
  returned a value or raised its own exception ran;
* after ``shutdown(wait=True)`` no process of the executor is left (every
  process seen below the test process, by pid and start time) within
  ``GONE_WITHIN``, and the threads and file descriptors of the test process
  are back to what they were within ``SETTLE_WITHIN``.

A job is *around* an outside kill when its life (from ``submit`` to the end
of its future) overlaps the kill or the ``KILL_EFFECT_SECONDS`` after it: a
job submitted just after a kill may still meet the broken pool. It is around
a crash when its life overlaps the crashing job's life plus that margin. So
the model allows a superset of the documented re-runs and errors: what it
rejects, the docs rule out.

Kills come in two flavours each, which Hypothesis shrinks towards the
reproducible one: ``settle`` waits until the executor has noticed the death
before the next step, and ``after_hello`` kills a sidecar only once it has
reported its workers (otherwise maybe while it starts).

Each kind of violation raises its own exception class from one place
(``_fail``), so that Hypothesis tells kinds apart and reports each with its
own example. Whatever happens, teardown cancels what is queued, shuts the
executor down and kills, by pid, any process of it still alive.

Budget: the default ``ci`` profile runs ``EXAMPLES`` (10) sequences of up to
``STEPS`` (15) steps per backend, a few seconds each, and does not shrink a
failure (shrinking replays real processes for minutes, and races often do not
replay): the failing sequence is printed as found, with a ``@reproduce_failure``
blob. ``HYPOTHESIS_PROFILE=dev`` runs ten times as many sequences, twice as
long, and shrinks failures to a minimal example.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import math
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import psutil
import pytest
import stress_jobs
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from subproc_executor import SidecarDiedError, SubprocExecutor, WorkerDiedError

MAX_WORKERS = 2
# Every future must end within this, counted from the wait that looks for it.
FINISH_WITHIN = 30.0
# ...and while any is pending, some future must end at least this often: a
# longer silence is a hang (every job here takes well under a second).
NO_PROGRESS_WITHIN = 10.0
# How long after an outside kill (or a crash) jobs may still feel it.
KILL_EFFECT_SECONDS = 5.0
# A kill with settle=True waits this long at most for the executor to notice.
NOTICE_WITHIN = 5.0
# After shutdown(wait=True) returned, the executor's processes get this long to
# be gone (sidecars killed earlier leave workers that die by PR_SET_PDEATHSIG),
# and the threads and file descriptors of the test process this long to be
# back where they were: shutdown has already waited for everything.
GONE_WITHIN = 5.0
SETTLE_WITHIN = 3.0
# A shutdown(wait=True) that takes longer than this has hung.
SHUTDOWN_WITHIN = 30.0
# The documented bound on re-running a job that keeps being near crashes
# (subproc_executor._scheduler.MAX_CRASH_RETRIES; docs/errors.md).
MAX_CRASH_RETRIES = 2

# Sidecars in a row that may die before their HELLO before the executor breaks
# (docs/errors.md: "Four such deaths in a row break the executor").
MAX_START_ATTEMPTS = 4

CRASH_EXITCODES = {"exit": 7, "sigkill": -9}  # what stress_jobs.run dies with
VALUE_KINDS = frozenset({"value", "sleep", "big_arg", "big_result"})

# The ci profile asks 100 examples of a property, dev 1000; an example of this
# one costs seconds, so it runs a tenth of that.
_SEARCH_HARDER = settings.default.max_examples > 100
EXAMPLES = 100 if _SEARCH_HARDER else 10
STEPS = 30 if _SEARCH_HARDER else 15
# A passing ci run takes well under a minute per backend; a failing one runs
# the rest of its examples, and a hang costs NO_PROGRESS_WITHIN each.
TEST_TIMEOUT = 3600 if _SEARCH_HARDER else 600

STRESS_SETTINGS = settings(
    settings.default,
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    phases=(
        list(Phase)
        if _SEARCH_HARDER
        else [p for p in settings.default.phases if p not in (Phase.shrink, Phase.explain)]
    ),
)


# -- violations ----------------------------------------------------------------------------


class ModelViolation(AssertionError):
    """The executor did something the model rules out."""


class StuckFutures(ModelViolation):
    """Futures that did not end in time."""


class ShutdownHung(ModelViolation):
    """shutdown(wait=True) did not return in time."""


class WrongResult(ModelViolation):
    """A future got a value (or exception) of another job, or none it should have."""


class WrongExitStatus(ModelViolation):
    """A crashed job's WorkerDiedError names another exit status than the job's."""


class ExecutorBroken(ModelViolation):
    """The executor became broken (with restart=True it must keep serving)."""


class RefusedJob(ModelViolation):
    """A job failed with "the backend refused the job"."""


class UnexpectedWorkerDied(ModelViolation):
    """WorkerDiedError for a job no worker death was around."""


class UnexpectedSidecarDied(ModelViolation):
    """SidecarDiedError for a job no sidecar kill was around."""


class UnexpectedError(ModelViolation):
    """Any other error, from a job or a call, that nothing in the run explains."""


class RanAfterCancel(ModelViolation):
    """A job whose future was cancelled (or whose submit raised) ran."""


class ResultWithoutRun(ModelViolation):
    """A job reported its own outcome but never ran."""


class RanTooOften(ModelViolation):
    """A job ran more often than the documented re-runs allow."""


class LeakedProcesses(ModelViolation):
    """A process of the executor outlived its shutdown."""


class LeakedThreads(ModelViolation):
    """A thread outlived the shutdown."""


class LeakedFds(ModelViolation):
    """A file descriptor outlived the shutdown."""


# Which to raise when one run finds several (the others are noted).
_PRIORITY = [
    StuckFutures, ShutdownHung, WrongResult, ExecutorBroken, RefusedJob, UnexpectedSidecarDied,
    UnexpectedWorkerDied, UnexpectedError, WrongExitStatus, RanAfterCancel, ResultWithoutRun,
    RanTooOften, LeakedProcesses, LeakedThreads, LeakedFds,
]  # fmt: skip

Problem = tuple[type[ModelViolation], str]


def _fail(cls: type[ModelViolation], text: str) -> NoReturn:
    """Raise a violation. One raise site, called outside ``except`` blocks: the
    class alone then tells Hypothesis which failure this is."""
    raise cls(text)


def _classify(exc: BaseException) -> type[ModelViolation]:
    """The violation an error is, when nothing around its job explains it."""
    text = str(exc)
    if "executor is broken" in text or "the executor broke" in text:
        return ExecutorBroken
    if "the backend refused the job" in text:
        return RefusedJob
    if isinstance(exc, SidecarDiedError):
        return UnexpectedSidecarDied
    if isinstance(exc, WorkerDiedError):
        return UnexpectedWorkerDied
    return UnexpectedError


# -- the model -------------------------------------------------------------------------------

_NOT_YET: Any = object()


@dataclass(eq=False)
class Job:
    job_id: int
    kind: str  # value, raise, exit, sigkill, sleep, big_arg, big_result, map
    token: str
    size: int  # bytes of big_arg / big_result
    origin: str  # "submit", "callback of N", "map"
    t_submit: float
    future: cf.Future[Any] | None = None
    # When its future ended (a done callback), or when map yielded it; inf
    # while unknown (a map item never yielded may still be running).
    t_done: float = math.inf
    cancel_ok: bool = False  # future.cancel() returned True
    submit_error: BaseException | None = None
    map_value: Any = _NOT_YET
    map_error: BaseException | None = None

    def describe(self) -> str:
        extra = f", {self.size >> 20} MiB" if self.size else ""
        return f"job {self.job_id} ({self.kind}{extra}, {self.origin})"


@dataclass(frozen=True)
class Kill:
    what: str  # "worker" or "sidecar"
    pid: int
    t: float


@dataclass(frozen=True)
class Window:
    """A span of time in which a worker death may affect other jobs."""

    start: float
    end: float
    deaths: int  # worker deaths it stands for
    what: str  # "worker", "sidecar" or "crash:<job id>"

    def overlaps(self, job: Job) -> bool:
        return self.start <= job.t_done and self.end >= job.t_submit


def _fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return out


def _alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _describe_procs(procs: Iterable[psutil.Process]) -> str:
    out = []
    for p in procs:
        try:
            out.append(f"pid {p.pid} (parent {p.ppid()}): {' '.join(p.cmdline())[:100]}")
        except psutil.Error:
            out.append(f"pid {p.pid} (gone)")
    return "; ".join(out)


def _poll(check: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


F = TypeVar("F", bound=Callable[..., Any])


def _step(fn: F) -> F:
    """Mark the machine failed when a step raises: teardown then only cleans up."""

    @functools.wraps(fn)
    def wrapper(self: StressMachine, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except BaseException:
            self._failed = True
            raise

    return wrapper  # type: ignore[return-value]


# (kind, parameter): the seconds of a sleep, the bytes of a big argument or result.
job_specs = st.one_of(
    st.just(("value", None)),
    st.just(("raise", None)),
    st.sampled_from([("exit", None), ("sigkill", None)]),
    st.tuples(st.just("sleep"), st.sampled_from([0.01, 0.05, 0.2])),
    st.tuples(st.just("big_arg"), st.sampled_from([1 << 20, 4 << 20])),
    st.tuples(st.just("big_result"), st.sampled_from([1 << 20, 4 << 20])),
)
# Shrinks towards True: a kill the executor has noticed before the next step
# gives a failure that replays the same way.
settles = st.sampled_from([True, False])


class StressMachine(RuleBasedStateMachine):
    """Drives one executor; the subclasses below name the backend."""

    backend = "process"
    mp_context: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self._failed = False
        self._lock = threading.Lock()  # done callbacks add jobs too
        self._ids = itertools.count(1)
        self._nonce = os.urandom(4).hex()
        self.jobs: dict[int, Job] = {}
        self.kills: list[Kill] = []
        self.callback_problems: list[Problem] = []
        self.shutdown_called = False
        self.cancel_futures_called = False
        self.closed = False  # a shutdown() call returned
        self._helpers: list[threading.Thread] = []
        self.tmp = tempfile.mkdtemp(prefix="stress-model-")
        self.ledger = os.path.join(self.tmp, "ledger")
        self._me = psutil.Process()
        self.children0 = {p.pid for p in self._me.children(recursive=True)}
        self.threads0 = {t.ident for t in threading.enumerate()}
        self.fds0 = _fds()
        # Every process seen below us since, by (pid, start time).
        self.procs: dict[tuple[int, float], psutil.Process] = {}
        self.ex = SubprocExecutor(MAX_WORKERS, backend=self.backend, mp_context=self.mp_context)

    # -- bookkeeping ----------------------------------------------------------------------

    def _new_job(self, kind: str, param: object, origin: str) -> tuple[Job, object]:
        job_id = next(self._ids)
        token = f"{self._nonce}-{job_id}"
        size = 0
        if kind in ("big_arg", "big_result"):
            assert isinstance(param, int)
            size = param
            if kind == "big_arg":
                param = stress_jobs.big_bytes(token, size)
        job = Job(job_id, kind, token, size, origin, time.monotonic())
        with self._lock:
            self.jobs[job_id] = job
        return job, param

    def _submit(self, spec: tuple[str, object], origin: str = "submit") -> Job:
        """Submit a job; an exception from submit() is left in ``job.submit_error``."""
        kind, param = spec
        job, param = self._new_job(kind, param, origin)
        try:
            fut = self.ex.submit(stress_jobs.run, self.ledger, job.job_id, kind, job.token, param)
        except BaseException as exc:
            job.submit_error = exc
            return job

        def ended(_: cf.Future[Any], job: Job = job) -> None:
            job.t_done = time.monotonic()

        job.future = fut
        fut.add_done_callback(ended)
        return job

    def _explained_break(self, exc: BaseException) -> bool:
        """The documented break: MAX_START_ATTEMPTS sidecars in a row killed before their HELLO."""
        sidecar_kills = sum(1 for k in self.kills if k.what == "sidecar")
        return sidecar_kills >= MAX_START_ATTEMPTS and "in a row died before they could start" in str(exc)

    def _check_call(self, what: str, error: BaseException | None) -> None:
        """A call made before shutdown must not raise (unless the executor broke as documented)."""
        if error is not None and not self._explained_break(error):
            cls = _classify(error) if isinstance(error, BrokenProcessPool) else UnexpectedError
            _fail(cls, f"{what} raised {error!r} before shutdown")

    def _snapshot_procs(self) -> None:
        try:
            for p in self._me.children(recursive=True):
                if p.pid in self.children0:
                    continue
                try:
                    self.procs.setdefault((p.pid, p.create_time()), p)
                except psutil.Error:
                    pass
        except psutil.Error:
            pass

    def _descendant(self, pid: int | None) -> psutil.Process | None:
        """The process ``pid`` if it is one of the executor's, else None."""
        if pid is None or pid in self.children0:
            return None
        for p in self._me.children(recursive=True):
            if p.pid == pid:
                return p
        return None

    def _pending(self) -> list[Job]:
        """Jobs not ended: futures not done, and submit() calls not returned (from callbacks)."""
        with self._lock:
            return [
                j
                for j in self.jobs.values()
                if j.origin != "map" and j.submit_error is None and (j.future is None or not j.future.done())
            ]

    def _wait_all(self, when: str) -> None:
        """Wait for every future (done callbacks may add more); StuckFutures if some hang."""
        start = last_progress = time.monotonic()
        n_ended = -1
        while True:
            pending = self._pending()
            if not pending:
                return
            now = time.monotonic()
            ended = len(self.jobs) - len(pending)
            if ended != n_ended:
                n_ended, last_progress = ended, now
            if now - start > FINISH_WITHIN or now - last_progress > NO_PROGRESS_WITHIN:
                break
            futures = [j.future for j in pending if j.future is not None]
            if futures:
                cf.wait(futures, timeout=0.25, return_when=cf.FIRST_COMPLETED)
            else:
                time.sleep(0.05)
        stuck = ", ".join(
            j.describe() + (" still inside submit()" if j.future is None else "") for j in pending
        )
        _fail(
            StuckFutures,
            f"{when}: {len(pending)} futures still pending after {now - start:.1f}s, none ended "
            f"for {now - last_progress:.1f}s: {stuck}; {self.ex.statistics()}",
        )

    def _run_bounded(self, name: str, fn: Callable[[], object], within: float) -> bool:
        """Run ``fn`` in a helper thread; False if it is still running after ``within``."""
        errors: list[BaseException] = []

        def body() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=body, name=f"stress-{name}", daemon=True)
        self._helpers.append(t)
        t.start()
        t.join(within)
        if t.is_alive():
            return False
        if errors:
            _fail(UnexpectedError, f"{name} raised {errors[0]!r}")
        return True

    # -- rules: jobs ------------------------------------------------------------------------

    @rule(spec=job_specs)
    @precondition(lambda self: not self.shutdown_called)
    @_step
    def submit(self, spec: tuple[str, object]) -> None:
        job = self._submit(spec)
        self._check_call(f"submit of {job.describe()}", job.submit_error)

    @rule(specs=st.lists(job_specs, min_size=2, max_size=6))
    @precondition(lambda self: not self.shutdown_called)
    @_step
    def burst(self, specs: list[tuple[str, object]]) -> None:
        for spec in specs:
            job = self._submit(spec)
            self._check_call(f"submit of {job.describe()}", job.submit_error)

    @rule(spec=job_specs, child=job_specs)
    @precondition(lambda self: not self.shutdown_called)
    @_step
    def submit_with_callback(self, spec: tuple[str, object], child: tuple[str, object]) -> None:
        """The parent's done callback submits ``child`` (on one of the executor's threads)."""
        parent = self._submit(spec)
        self._check_call(f"submit of {parent.describe()}", parent.submit_error)
        assert parent.future is not None

        def callback(_: cf.Future[Any]) -> None:
            shutting_down = self.shutdown_called
            job = self._submit(child, origin=f"callback of {parent.job_id}")
            exc = job.submit_error
            if exc is None or (isinstance(exc, RuntimeError) and (shutting_down or self.shutdown_called)):
                return  # submitting after shutdown() raises RuntimeError, as documented
            if self._explained_break(exc):
                return
            cls = _classify(exc) if isinstance(exc, BrokenProcessPool) else UnexpectedError
            self.callback_problems.append((cls, f"submit of {job.describe()} raised {exc!r}"))

        parent.future.add_done_callback(callback)

    @rule(pick=st.integers(0, 7))
    @precondition(lambda self: not self.shutdown_called)
    @_step
    def cancel(self, pick: int) -> None:
        """Cancel one of the pending futures, newest first (those are the queued ones)."""
        pending = sorted((j for j in self._pending() if j.future is not None), key=lambda j: -j.job_id)
        if not pending:
            note("cancel: nothing pending")
            return
        job = pending[pick % len(pending)]
        fut = job.future
        assert fut is not None
        if fut.cancel():
            job.cancel_ok = True
            note(f"cancel: {job.describe()} cancelled")
        else:
            note(f"cancel: {job.describe()} could not be cancelled")

    @rule(
        n=st.integers(1, 6),
        seconds=st.sampled_from([0.0, 0.02, 0.1]),
        timeout=st.sampled_from([0.05, 0.5, 5.0]),
        chunksize=st.integers(1, 3),
    )
    @precondition(lambda self: not self.shutdown_called)
    @_step
    def map_with_timeout(self, n: int, seconds: float, timeout: float, chunksize: int) -> None:
        items = [self._new_job("map", None, "map")[0] for _ in range(n)]
        error: BaseException | None = None
        try:
            it = self.ex.map(
                stress_jobs.map_item,
                [self.ledger] * n,
                [j.job_id for j in items],
                [j.token for j in items],
                [seconds] * n,
                timeout=timeout,
                chunksize=chunksize,
            )
        except BaseException as exc:
            error = exc
            for j in items:
                j.submit_error = exc
        self._check_call(f"map of jobs {[j.job_id for j in items]}", error)
        got = 0
        try:
            for value in it:
                items[got].map_value = value
                items[got].t_done = time.monotonic()
                got += 1
        except cf.TimeoutError:
            note(f"map: timed out after {got} of {n} items")
        except BaseException as exc:
            # Judged with the rest at the end: the item whose chunk raised.
            items[got].map_error = exc
            note(f"map: item {got} raised {exc!r}")
        finally:
            getattr(it, "close", lambda: None)()  # a generator: cancels the chunks not started

    # -- rules: faults and lifecycle ----------------------------------------------------------

    @rule(pick=st.integers(0, MAX_WORKERS - 1), settle=settles)
    @precondition(lambda self: not self.shutdown_called)
    @_step
    def kill_worker(self, pick: int, settle: bool) -> None:
        """SIGKILL a worker from outside; with ``settle``, wait until the executor noticed."""
        self._snapshot_procs()
        pids = sorted(self.ex.statistics().worker_pids)
        if not pids:
            note("kill_worker: no workers")
            return
        proc = self._descendant(pids[pick % len(pids)])
        if proc is None:
            note(f"kill_worker: worker {pids[pick % len(pids)]} is gone already")
            return
        with self._lock:
            self.kills.append(Kill("worker", proc.pid, time.monotonic()))
        try:
            proc.kill()
        except psutil.Error:
            pass
        note(f"kill_worker: SIGKILL to worker {proc.pid}")
        if settle:
            # Reaped, and gone from worker_pids (docs: noticed within about half
            # a second, even while idle); not a violation if it takes longer.
            _poll(lambda: not _alive([proc]), NOTICE_WITHIN)
            if not _poll(lambda: proc.pid not in self.ex.statistics().worker_pids, NOTICE_WITHIN):
                note(f"kill_worker: {proc.pid} still in worker_pids after {NOTICE_WITHIN:.0f}s")

    @rule(after_hello=settles, settle=settles)
    @precondition(lambda self: not self.shutdown_called)
    @_step
    def kill_sidecar(self, after_hello: bool, settle: bool) -> None:
        """SIGKILL the sidecar from outside. With ``after_hello``, first wait until
        it has reported its workers (its HELLO; unless quiesced), else kill it
        whenever, maybe while it starts; with ``settle``, wait until the
        executor notices."""
        self._snapshot_procs()
        if after_hello:

            def started() -> bool:
                stats = self.ex.statistics()
                return stats.sidecar_pid is None or bool(stats.worker_pids) or stats.quiesced

            _poll(started, NOTICE_WITHIN)
        proc = self._descendant(self.ex.statistics().sidecar_pid)
        if proc is None:
            note("kill_sidecar: no sidecar running")
            return
        with self._lock:
            self.kills.append(Kill("sidecar", proc.pid, time.monotonic()))
        try:
            proc.kill()
        except psutil.Error:
            pass
        note(f"kill_sidecar: SIGKILL to sidecar {proc.pid}")
        if settle and not _poll(lambda: self.ex.statistics().sidecar_pid != proc.pid, NOTICE_WITHIN):
            _fail(
                UnexpectedError, f"the executor did not notice in {NOTICE_WITHIN:.0f}s that its sidecar died"
            )

    @rule()
    @precondition(lambda self: not self.shutdown_called)
    @_step
    def quiesce(self) -> None:
        error: BaseException | None = None
        try:
            self.ex.quiesce()
        except BaseException as exc:
            error = exc
        self._check_call("quiesce()", error)

    @rule()
    @precondition(lambda self: not self.shutdown_called)
    @_step
    def wakeup(self) -> None:
        error: BaseException | None = None
        try:
            self.ex.wakeup()
        except BaseException as exc:
            error = exc
        self._check_call("wakeup()", error)

    @rule(seconds=st.sampled_from([0.05, 0.5]))
    @_step
    def pause(self, seconds: float) -> None:
        time.sleep(seconds)

    @rule()
    @_step
    def drain(self) -> None:
        """Wait for every future so far."""
        self._wait_all("drain")

    @rule(wait=st.booleans(), cancel_futures=st.booleans())
    @precondition(lambda self: not self.shutdown_called)
    @_step
    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self.shutdown_called = True
        self.cancel_futures_called = cancel_futures
        self._snapshot_procs()
        call = functools.partial(self.ex.shutdown, wait=wait, cancel_futures=cancel_futures)
        if not self._run_bounded("shutdown", call, SHUTDOWN_WITHIN):
            pending = [j.describe() for j in self._pending()]
            _fail(
                ShutdownHung,
                f"shutdown(wait={wait}, cancel_futures={cancel_futures}) did not return within "
                f"{SHUTDOWN_WITHIN:.0f}s; pending: {', '.join(pending) or 'none'}; {self.ex.statistics()}",
            )
        self.closed = True

    @rule(op=st.sampled_from(["submit", "map", "quiesce", "wakeup"]))
    @precondition(lambda self: self.shutdown_called)
    @_step
    def after_shutdown(self, op: str) -> None:
        """Everything but shutdown raises RuntimeError once shutdown was called."""
        calls: dict[str, Callable[[], object]] = {
            "submit": lambda: self.ex.submit(stress_jobs.expected_value, "value", "x"),
            "map": lambda: self.ex.map(stress_jobs.expected_value, ["value"], ["x"]),
            "quiesce": self.ex.quiesce,
            "wakeup": self.ex.wakeup,
        }
        error: BaseException | None = None
        try:
            calls[op]()
        except RuntimeError:
            return
        except BaseException as exc:
            error = exc
        _fail(UnexpectedError, f"{op} after shutdown() raised {error!r}, not RuntimeError")

    @invariant()
    @_step
    def track_processes(self) -> None:
        self._snapshot_procs()

    # -- the end -----------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if not self._failed:
                self._final_checks()
        finally:
            self._cleanup()

    def _final_checks(self) -> None:
        self._wait_all("at the end")
        self.shutdown_called = True
        self._snapshot_procs()
        # After a shutdown(wait=False) rule, a second call waits for the sidecar.
        if not self._run_bounded("shutdown", lambda: self.ex.shutdown(wait=True), SHUTDOWN_WITHIN):
            _fail(ShutdownHung, f"the final shutdown(wait=True) did not return within {SHUTDOWN_WITHIN:.0f}s")
        self._wait_all("after shutdown")

        problems: list[Problem] = self._check_leaks()
        counts = self._read_ledger()
        windows = self._windows(counts)
        for job in sorted(self.jobs.values(), key=lambda j: j.job_id):
            problems += self._check_outcome(job, windows)
            problems += self._check_runs(job, counts.get(job.job_id, 0), windows)
        unknown = set(counts) - set(self.jobs)
        if unknown:
            problems.append((UnexpectedError, f"the ledger names jobs never submitted: {sorted(unknown)}"))
        problems += self.callback_problems
        if not problems:
            return
        problems.sort(key=lambda p: _PRIORITY.index(p[0]))
        for cls, text in problems[1:]:
            note(f"also {cls.__name__}: {text}")
        note(f"outside kills: {[(k.what, k.pid) for k in self.kills]}")
        _fail(*problems[0])

    def _windows(self, counts: Counter[int]) -> list[Window]:
        out = [Window(k.t, k.t + KILL_EFFECT_SECONDS, 1, k.what) for k in self.kills]
        for j in self.jobs.values():
            if j.kind in CRASH_EXITCODES and j.future is not None:
                deaths = max(1, counts.get(j.job_id, 0))
                out.append(Window(j.t_submit, j.t_done + KILL_EFFECT_SECONDS, deaths, f"crash:{j.job_id}"))
        return out

    def _near(self, job: Job, windows: list[Window]) -> list[Window]:
        return [w for w in windows if w.overlaps(job) and w.what != f"crash:{job.job_id}"]

    def _check_outcome(self, job: Job, windows: list[Window]) -> list[Problem]:
        if job.submit_error is not None:
            return []  # raised by submit: judged where it was called
        near = self._near(job, windows)
        kills = {w.what for w in near if not w.what.startswith("crash:")}
        crashes = sum(w.deaths for w in near if w.what.startswith("crash:"))

        def judge(exc: BaseException) -> list[Problem]:
            what = f"{job.describe()} failed with {type(exc).__name__}: {exc}"
            if type(exc) is stress_jobs.StressJobError and job.kind == "raise":
                return [] if exc.args == (job.token,) else [(WrongResult, f"{what}: another job's exception")]
            if isinstance(exc, SidecarDiedError) and "sidecar" in kills:
                return []
            if self._explained_break(exc):
                return []
            if isinstance(exc, WorkerDiedError):
                if job.kind in CRASH_EXITCODES:
                    want = CRASH_EXITCODES[job.kind]
                    if exc.exitcode != want and not near:
                        return [(WrongExitStatus, f"{what}: exit status {exc.exitcode}, not {want}")]
                    return []
                if "worker" in kills or crashes > MAX_CRASH_RETRIES:
                    return []
                return [(UnexpectedWorkerDied, f"{what}; {crashes} crashes and no outside kill around it")]
            return [(_classify(exc), f"{what}; outside kills around it: {sorted(kills) or 'none'}")]

        if job.future is None:  # a map item
            if job.map_error is not None:
                return judge(job.map_error)
            want = stress_jobs.expected_value("map", job.token)
            if job.map_value is not _NOT_YET and job.map_value != want:
                return [(WrongResult, f"{job.describe()} yielded {job.map_value!r:.80}, not {want!r}")]
            return []
        fut = job.future
        if fut.cancelled():
            if job.cancel_ok or self.cancel_futures_called:
                return []
            return [(UnexpectedError, f"{job.describe()} was cancelled, by no one")]
        if job.cancel_ok:
            return [(UnexpectedError, f"{job.describe()}: cancel() returned True, yet it was not cancelled")]
        exc = fut.exception(timeout=0)
        if exc is not None:
            return judge(exc)
        value = fut.result(timeout=0)
        if job.kind not in VALUE_KINDS:
            return [(WrongResult, f"{job.describe()} returned {value!r:.80} instead of failing")]
        want_value = stress_jobs.expected_value(job.kind, job.token, job.size)
        if value != want_value:
            return [(WrongResult, f"{job.describe()} returned {value!r:.80}, not {want_value!r:.80}")]
        return []

    def _check_runs(self, job: Job, runs: int, windows: list[Window]) -> list[Problem]:
        fut = job.future
        if job.submit_error is not None or (fut is not None and fut.cancelled()):
            if runs:
                return [
                    (RanAfterCancel, f"{job.describe()} was cancelled (or not submitted) but ran {runs}x")
                ]
            return []
        exc = fut.exception(timeout=0) if fut is not None else None
        own_outcome = job.map_value is not _NOT_YET or (
            fut is not None and (exc is None or type(exc) is stress_jobs.StressJobError)
        )
        if own_outcome and runs == 0:
            return [(ResultWithoutRun, f"{job.describe()} has its own outcome but never ran")]
        deaths = sum(w.deaths for w in self._near(job, windows))
        allowed = 1 + deaths + (MAX_CRASH_RETRIES if job.kind in CRASH_EXITCODES else 0)
        if runs > allowed:
            return [(RanTooOften, f"{job.describe()} ran {runs}x; at most {allowed} ({deaths} deaths near)")]
        return []

    def _read_ledger(self) -> Counter[int]:
        try:
            with open(self.ledger) as f:
                return Counter(int(line) for line in f.read().split())
        except FileNotFoundError:
            return Counter()

    def _check_leaks(self) -> list[Problem]:
        problems: list[Problem] = []
        self._snapshot_procs()
        if not _poll(lambda: not _alive(self.procs.values()), GONE_WITHIN):
            left = _describe_procs(_alive(self.procs.values()))
            problems.append((LeakedProcesses, f"alive {GONE_WITHIN:.0f}s after shutdown: {left}"))
        for t in self._helpers:
            t.join(GONE_WITHIN)  # our own helpers: shutdown() returned, so they end
        if not _poll(lambda: {t.ident for t in threading.enumerate()} <= self.threads0, SETTLE_WITHIN):
            names = [t.name for t in threading.enumerate() if t.ident not in self.threads0]
            problems.append((LeakedThreads, f"threads left {SETTLE_WITHIN:.0f}s after shutdown: {names}"))
        if not _poll(lambda: len(_fds()) <= len(self.fds0), SETTLE_WITHIN):
            now = _fds()
            extra = {fd: target for fd, target in now.items() if self.fds0.get(fd) != target}
            problems.append((LeakedFds, f"{len(now)} descriptors open, {len(self.fds0)} before: {extra}"))
        return problems

    def _cleanup(self) -> None:
        """Leave nothing behind, whatever happened: cancel, stop, kill by pid."""
        try:
            self.ex.shutdown(wait=False, cancel_futures=True)
        except Exception:
            pass
        for _ in range(3):
            self._snapshot_procs()
            left = _alive(self.procs.values())
            if not left:
                break
            for p in left:
                try:
                    p.kill()  # psutil checks that the pid still names the same process
                except psutil.Error:
                    pass
            _poll(lambda: not _alive(self.procs.values()), 5.0)
        for t in self._helpers:
            t.join(5.0)
        shutil.rmtree(self.tmp, ignore_errors=True)


class PipesMachine(StressMachine):
    backend = "pipes"


class ProcessForkMachine(StressMachine):
    backend = "process"
    mp_context = "fork"


class LokyMachine(StressMachine):
    backend = "loky"


MACHINES = [PipesMachine, ProcessForkMachine, LokyMachine]


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT)
@pytest.mark.parametrize("machine", MACHINES, ids=["pipes", "process-fork", "loky"])
def test_stress_model(machine: type[StressMachine]) -> None:
    if machine.backend == "loky":
        pytest.importorskip("loky")
    run_state_machine_as_test(machine, settings=STRESS_SETTINGS)
