"""The frame writer (subproc_executor.wire.transport) against a real pipe.

Whatever mix of senders (blocking or not, from many threads), whatever the
reader's pace, and even when a signal handler raises in the middle of a big
write, the bytes on the pipe decode to exactly the frames sent, each sender's
in its order, and no sender that must not block ever waits for the reader.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from interrupts import InterruptRain

from subproc_executor.wire.protocol import FrameDecoder, MessageKind
from subproc_executor.wire.transport import FrameWriter, PipeClosed

READ_WITHIN = 30.0


class PipeReader:
    """Reads a pipe on a thread, at a pace the test sets; decodes frames."""

    def __init__(self, fd: int, delay: float = 0.0) -> None:
        self.fd = fd
        self.delay = delay
        self.frames: list[tuple[int, bytes]] = []
        self.error: BaseException | None = None
        self.paused = threading.Event()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = FrameDecoder()
        try:
            while True:
                if self.paused.is_set():
                    time.sleep(0.005)
                    continue
                data = os.read(self.fd, 65536)
                if not data:
                    decoder.close()
                    break
                self.frames.extend((f.job_id, f.payload) for f in decoder.feed(data))
                if self.delay:
                    time.sleep(self.delay)
        except BaseException as exc:
            self.error = exc
            # Keep the pipe drained, so a writer fails its assertions instead of waiting forever.
            try:
                while os.read(self.fd, 65536):
                    pass
            except OSError:
                pass
        finally:
            self.done.set()

    def join(self) -> None:
        assert self.done.wait(READ_WITHIN), "the reader did not reach EOF"
        assert self.error is None, self.error


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def _payload(sender: int, i: int, size: int) -> bytes:
    head = f"{sender}:{i}:".encode()
    return head + bytes([i % 251]) * max(0, size - len(head))


@settings(max_examples=25, deadline=None)
@given(
    senders=st.lists(
        st.tuples(st.booleans(), st.lists(st.integers(0, 300_000), min_size=1, max_size=8)),
        min_size=1,
        max_size=4,
    ),
    delay=st.sampled_from([0.0, 0.001]),
)
def test_concurrent_senders_frames_arrive_whole_and_in_order(
    senders: list[tuple[bool, list[int]]], delay: float
) -> None:
    r, w = os.pipe()
    try:
        reader = PipeReader(r, delay)
        writer = FrameWriter(w, name="test-writer")
        threads = []
        for n, (block, sizes) in enumerate(senders):

            def send(n: int = n, block: bool = block, sizes: list[int] = sizes) -> None:
                for i, size in enumerate(sizes):
                    writer.send(MessageKind.RESULT, n, _payload(n, i, size), block=block)

            threads.append(threading.Thread(target=send))
        for t in threads:
            t.start()
        for t in threads:
            t.join(READ_WITHIN)
        assert writer.wait_drained(READ_WITHIN)
        writer.close_fd()
        reader.join()
    finally:
        os.close(r)
    for n, (_, sizes) in enumerate(senders):
        got = [payload for sender, payload in reader.frames if sender == n]
        assert got == [_payload(n, i, size) for i, size in enumerate(sizes)]


def test_a_non_blocking_sender_never_waits_for_the_reader(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = PipeReader(r)
    reader.paused.set()  # nobody reads: the pipe fills
    writer = FrameWriter(w)
    big = b"x" * (8 << 20)
    started = time.monotonic()
    for i in range(4):
        writer.send(MessageKind.RESULT, i, big, block=False)  # returns with the pipe full
    assert not writer.stop_helper(), "the helper is writing: stopping it must not wait for the reader"
    reader.paused.clear()
    assert writer.wait_drained(READ_WITHIN)
    writer.close_fd()
    reader.join()
    assert [job for job, _ in reader.frames] == [0, 1, 2, 3]
    assert all(p == big for _, p in reader.frames)
    del started


def test_a_signal_handler_raising_mid_write_leaves_the_stream_framed(pipe: tuple[int, int]) -> None:
    """Ctrl-C (here SIGUSR1 raising) while the main thread writes a big frame:
    the send raises, the frame is finished by the helper, later frames follow."""
    r, w = pipe
    reader = PipeReader(r, delay=0.0005)
    writer = FrameWriter(w)

    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    old = signal.signal(signal.SIGUSR1, handler)
    pid = os.getpid()
    big = b"y" * (64 << 20)
    try:
        timer = threading.Timer(0.05, os.kill, (pid, signal.SIGUSR1))
        timer.start()
        with pytest.raises(Interrupted):
            writer.send(MessageKind.SUBMIT, 1, big)
            # The write finished before the signal came: wait for it here.
            time.sleep(READ_WITHIN)
        timer.cancel()
    finally:
        signal.signal(signal.SIGUSR1, old)
    writer.send(MessageKind.SUBMIT, 2, b"after")
    assert writer.wait_drained(READ_WITHIN)
    writer.close_fd()
    reader.join()
    assert [job for job, _ in reader.frames] == [1, 2]
    assert reader.frames[0][1] == big and reader.frames[1][1] == b"after"


def test_a_closed_reader_fails_senders_with_pipe_closed(pipe: tuple[int, int]) -> None:
    r, w = pipe
    writer = FrameWriter(w)
    os.close(r)
    with pytest.raises(PipeClosed):
        writer.send(MessageKind.RESULT, 1, b"z" * 100_000)
    assert not writer.try_send(MessageKind.RESULT, 2, b"z")
    writer.close_fd()


class _Interrupted(Exception):
    pass


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), to_main=st.sampled_from([0.0, 0.2, 1.0]))
def test_signal_handlers_raising_at_any_moment_never_break_the_stream(seed: int, to_main: float) -> None:
    """A handler may raise between any two bytecodes of the main thread, even while
    it blocks the signal, when another thread received it. Signals sent at random
    moments (to another thread, or to the main one) while the main thread sends
    frames of every size: the stream decodes to frames in order, none twice, every
    send that returned among them; later senders never wait for a lost writer; and
    no signal stays blocked or swapped afterwards."""
    rnd = random.Random(seed)
    r, w = os.pipe()
    sizes = [rnd.choice([10, 3_000, 70_000, 300_000]) for _ in range(1_500)]
    confirmed: set[int] = set()
    try:
        reader = PipeReader(r)
        writer = FrameWriter(w, name="test-writer")

        def step(k: int) -> None:
            writer.send(MessageKind.SUBMIT, k, bytes([k % 251]) * sizes[k])
            confirmed.add(k)

        with InterruptRain(rnd, _Interrupted, to_main=to_main, max_gap=0.0005) as rain:
            interrupts = rain.run(len(sizes), step)
            assert signal.getsignal(signal.SIGUSR1) == rain.handler, "a handler was left swapped"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, []), "signals left blocked"
        assert writer.wait_drained(READ_WITHIN), "a writer's role was lost: later frames stay queued"
        writer.close_fd()
        reader.join()
    finally:
        os.close(r)
    ids = [job for job, _ in reader.frames]
    assert all(a < b for a, b in itertools.pairwise(ids)), "a frame arrived twice or out of order"
    lost = sorted(confirmed - set(ids))
    assert not lost, f"sends that returned but never arrived: {lost[:10]}"
    for job, payload in reader.frames:
        assert payload == bytes([job % 251]) * sizes[job]
    assert interrupts, "no handler raised during the sends: nothing was tested"
