"""Properties of the frame codec (subproc_executor.wire.protocol).

The decoder is the one place where bytes from another process are trusted to
mean something, so it is held to a few strong properties rather than
examples: whatever the chunking, the same frames come out; a stream cut short
yields exactly its whole frames and then an error at EOF; corruption is
either caught or decodes to frames that re-encode to the very bytes fed; and
no header can make the decoder buffer more than one maximal frame.
"""

from __future__ import annotations

import copy
import pickle
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from strategies import (
    KIND_VALUES,
    MAX_TEST_PAYLOAD,
    MAX_UINT64,
    bad_headers,
    chunkings,
    frame_bounds,
    frame_lists,
    frames,
    garbage,
    header_bytes,
    job_ids,
    kinds,
    streams,
)

from subproc_executor.wire.protocol import (
    DEFAULT_MAX_PAYLOAD,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    MessageKind,
    ProtocolError,
    encode_frame,
    encode_frames,
    encode_header,
)

# The phrase each kind of bad header puts in its ProtocolError.
BAD_FIELD_PHRASES = {
    "magic": "bad magic",
    "version": "protocol version",
    "kind": "unknown message kind",
    "length": "exceeds the limit",
}


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out


def decode_bytewise(data: bytes, max_payload: int) -> tuple[list[Frame], ProtocolError | None, int]:
    """Reference decode, one byte per feed: (frames, error or None, bytes buffered at the end).

    Feeding one byte at a time hands out every frame completed before an error.
    """
    decoder = FrameDecoder(max_payload)
    out: list[Frame] = []
    for i in range(len(data)):
        try:
            out += decoder.feed(data[i : i + 1])
        except ProtocolError as exc:
            return out, exc, decoder.buffered
    return out, None, decoder.buffered


# --- Layout and encoding ------------------------------------------------------


def test_header_layout_is_pinned() -> None:
    # This is the wire format. If this test has to change, so must
    # PROTOCOL_VERSION and docs/protocol.md, in the same commit.
    assert HEADER_SIZE == 20
    assert MAGIC == b"SX"
    assert PROTOCOL_VERSION == 6
    header = encode_header(MessageKind.RESULT, 0x0102030405060708, 0x1112131415161718)
    assert header == (
        b"SX"  # magic
        + bytes([6])  # version
        + bytes([4])  # kind: RESULT
        + bytes.fromhex("0807060504030201")  # job_id, little-endian
        + bytes.fromhex("1817161514131211")  # length, little-endian
    )


def test_message_kind_values_are_pinned() -> None:
    # Renumbering a kind is a wire change: bump PROTOCOL_VERSION.
    assert {k.name: k.value for k in MessageKind} == {
        "INIT": 1,
        "SUBMIT": 2,
        "CANCEL": 3,
        "RESULT": 4,
        "JOB_ERROR": 5,
        "STATUS": 6,
        "QUIESCE": 7,
        "WAKEUP": 8,
        "SHUTDOWN": 9,
        "HELLO": 10,
        "BYE": 11,
        "WORKERS": 12,
        "FATAL": 13,
        "SUBMIT_LIMITED": 14,
        "KILL": 15,
        "PROGRESS": 16,
        "WATCH_PROGRESS": 17,
    }


@given(frames)
def test_encode_frame_is_header_then_payload(frame: Frame) -> None:
    encoded = encode_frame(frame.kind, frame.job_id, frame.payload)
    assert len(encoded) == HEADER_SIZE + len(frame.payload)
    assert encoded[:HEADER_SIZE] == encode_header(frame.kind, frame.job_id, len(frame.payload))
    fields = (MAGIC, PROTOCOL_VERSION, frame.kind, frame.job_id, len(frame.payload))
    assert HEADER.unpack_from(encoded) == fields
    assert encoded[HEADER_SIZE:] == frame.payload


@given(kinds, job_ids, st.integers(min_value=0, max_value=MAX_UINT64))
def test_encode_header_accepts_plain_ints(kind: MessageKind, job_id: int, length: int) -> None:
    assert encode_header(int(kind), job_id, length) == encode_header(kind, job_id, length)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "job_id", "length", "error"),
    [
        (MessageKind.SUBMIT, -1, 0, ValueError),
        (MessageKind.SUBMIT, 2**64, 0, ValueError),
        (MessageKind.SUBMIT, 2**100, 0, ValueError),
        (MessageKind.SUBMIT, 0, -1, ValueError),
        (MessageKind.SUBMIT, 0, 2**64, ValueError),
        (0, 0, 0, ValueError),
        (18, 0, 0, ValueError),
        (255, 0, 0, ValueError),
        (-1, 0, 0, ValueError),
        (MessageKind.SUBMIT, 1.0, 0, TypeError),
        (MessageKind.SUBMIT, "1", 0, TypeError),
        (MessageKind.SUBMIT, None, 0, TypeError),
        (MessageKind.SUBMIT, 0, 2.0, TypeError),
        ("SUBMIT", 0, 0, TypeError),
        ("2", 0, 0, TypeError),
        (2.0, 0, 0, TypeError),
    ],
)
def test_encode_header_rejects(kind: object, job_id: object, length: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_header(kind, job_id, length)  # type: ignore[arg-type]


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=2**64)))
def test_encode_header_rejects_job_ids_outside_64_bits(job_id: int) -> None:
    with pytest.raises(ValueError, match="job_id"):
        encode_header(MessageKind.SUBMIT, job_id, 0)
    with pytest.raises(ValueError, match="job_id"):
        encode_frame(MessageKind.SUBMIT, job_id, b"")


@given(st.integers(min_value=-(2**70), max_value=2**70).filter(lambda k: k not in KIND_VALUES))
def test_encode_header_rejects_unknown_kinds(kind: int) -> None:
    with pytest.raises(ValueError, match="unknown message kind"):
        encode_header(kind, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown message kind"):
        encode_frames([Frame(kind, 0, b"")])  # type: ignore[arg-type]


def test_decoder_rejects_negative_limit() -> None:
    with pytest.raises(ValueError, match="max_payload"):
        FrameDecoder(max_payload=-1)


# --- Round trip and chunking --------------------------------------------------


@given(frame_lists)
def test_round_trip_encode_frames(frame_list: list[Frame]) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frames(frame_list)) == frame_list
    assert decoder.buffered == 0
    decoder.close()


@given(frame_lists)
def test_round_trip_encode_frame_one_by_one(frame_list: list[Frame]) -> None:
    encoded = [encode_frame(f.kind, f.job_id, f.payload) for f in frame_list]
    assert b"".join(encoded) == encode_frames(frame_list)
    decoder = FrameDecoder()
    for data, frame in zip(encoded, frame_list, strict=True):
        assert decoder.feed(data) == [frame]
        assert decoder.buffered == 0
    decoder.close()


@given(st.data(), frame_lists)
def test_any_chunking_gives_the_same_frames(data: st.DataObject, frame_list: list[Frame]) -> None:
    stream = encode_frames(frame_list)
    chunks = data.draw(chunkings(stream), label="chunks")
    # The decoder takes any bytes-like object and must copy what it keeps.
    wrap = data.draw(st.sampled_from([bytes, bytearray, memoryview]), label="wrap")
    decoder = FrameDecoder()
    out: list[Frame] = []
    fed = 0
    for chunk in chunks:
        out += decoder.feed(wrap(chunk))
        fed += len(chunk)
        # Everything fed is either in a returned frame or buffered.
        assert decoder.buffered == fed - len(encode_frames(out))
    assert out == frame_list
    decoder.close()


@given(frame_lists)
def test_one_byte_at_a_time(frame_list: list[Frame]) -> None:
    stream = encode_frames(frame_list)
    ends = frame_bounds(frame_list)[1:]
    decoder = FrameDecoder()
    out: list[Frame] = []
    for i in range(len(stream)):
        got = decoder.feed(stream[i : i + 1])
        # A frame comes out exactly when its last byte arrives, not before.
        assert len(got) == (1 if i + 1 in ends else 0)
        out += got
    assert out == frame_list
    decoder.close()


@pytest.mark.parametrize("view", [False, True], ids=["bytearray", "memoryview"])
def test_feed_copies_what_it_keeps(view: bool) -> None:
    frame = Frame(MessageKind.RESULT, 7, b"payload")
    chunk = bytearray(encode_frames([frame])[:-3])
    decoder = FrameDecoder()
    assert decoder.feed(memoryview(chunk) if view else chunk) == []
    chunk[:] = b"X" * len(chunk)  # the caller reuses its buffer
    assert decoder.feed(b"oad") == [frame]


def test_feed_takes_a_memoryview_of_any_byte_format() -> None:
    frame_list = [Frame(MessageKind.SUBMIT, 1, b"abc"), Frame(MessageKind.CANCEL, 1)]
    stream = encode_frames(frame_list)
    decoder = FrameDecoder()
    assert decoder.feed(memoryview(stream[:5]).cast("c")) == []
    assert decoder.feed(memoryview(stream[5:]).cast("b")) == frame_list


def test_payload_of_exactly_the_limit_is_accepted() -> None:
    frame = Frame(MessageKind.RESULT, 1, b"x" * 10)
    assert FrameDecoder(max_payload=10).feed(encode_frames([frame])) == [frame]
    empty = Frame(MessageKind.BYE)
    assert FrameDecoder(max_payload=0).feed(encode_frames([empty])) == [empty]


# --- Truncation ------------------------------------------------------------------


@given(st.data(), streams())
def test_strict_prefix_yields_its_whole_frames_then_fails_at_eof(
    data: st.DataObject, frames_and_stream: tuple[list[Frame], bytes]
) -> None:
    frame_list, stream = frames_and_stream
    bounds = frame_bounds(frame_list)
    cut = data.draw(
        st.one_of(st.sampled_from(bounds[:-1]), st.integers(min_value=0, max_value=len(stream) - 1)),
        label="cut",
    )
    decoder = FrameDecoder()
    out = feed_all(decoder, data.draw(chunkings(stream[:cut]), label="chunks"))

    whole = sum(1 for end in bounds[1:] if end <= cut)
    assert out == frame_list[:whole]
    assert decoder.buffered == cut - bounds[whole]
    if cut == bounds[whole]:
        decoder.close()
        return
    with pytest.raises(ProtocolError, match="stream ended inside") as info:
        decoder.close()
    assert info.value.offset == bounds[whole]
    assert f"byte {bounds[whole]}" in str(info.value)
    # The decoder is poisoned: the same error, whatever comes next.
    with pytest.raises(ProtocolError) as again:
        decoder.close()
    assert again.value is info.value
    with pytest.raises(ProtocolError) as again:
        decoder.feed(stream[cut:])
    assert again.value is info.value


def test_eof_inside_a_header_names_the_offset_and_the_count() -> None:
    decoder = FrameDecoder()
    first = encode_frame(MessageKind.HELLO, 0, b"{}")
    decoder.feed(first + encode_frame(MessageKind.SUBMIT, 3, b"job")[:5])
    with pytest.raises(ProtocolError) as info:
        decoder.close()
    assert info.value.offset == len(first) == 22
    assert str(info.value) == (
        "stream ended inside a frame header (5 of 20 bytes received), in the frame starting "
        "at byte 22; the peer died or closed its pipe mid-frame"
    )


def test_eof_inside_a_payload_names_the_frame_and_the_count() -> None:
    decoder = FrameDecoder()
    first = encode_frame(MessageKind.HELLO, 0, b"{}")
    decoder.feed(first + encode_frame(MessageKind.SUBMIT, 7, b"0123456789")[:23])
    with pytest.raises(ProtocolError) as info:
        decoder.close()
    assert info.value.offset == 22
    assert str(info.value) == (
        "stream ended inside the payload of a SUBMIT frame for job 7 (3 of 10 bytes received), "
        "in the frame starting at byte 22; the peer died or closed its pipe mid-frame"
    )


# --- Bad headers -----------------------------------------------------------------


@given(st.data(), frame_lists, st.integers(min_value=MAX_TEST_PAYLOAD, max_value=4 * MAX_TEST_PAYLOAD))
def test_bad_header_raises_as_soon_as_it_is_complete(
    data: st.DataObject, before: list[Frame], max_payload: int
) -> None:
    header, field = data.draw(bad_headers(max_payload), label="bad header")
    after = data.draw(st.binary(max_size=3 * HEADER_SIZE), label="after")
    prefix = encode_frames(before)
    decoder = FrameDecoder(max_payload)
    assert feed_all(decoder, data.draw(chunkings(prefix), label="chunks")) == before
    # Nothing is wrong until the last header byte: the decoder waits.
    for i in range(HEADER_SIZE - 1):
        assert decoder.feed(header[i : i + 1]) == []
    # The last header byte condemns it, before any payload byte is awaited,
    # however long the header says the payload is.
    with pytest.raises(ProtocolError, match=BAD_FIELD_PHRASES[field]) as info:
        decoder.feed(header[-1:] + after)
    assert info.value.offset == len(prefix)
    assert str(info.value).endswith(f"(frame header at byte {len(prefix)})")
    # Poisoned.
    with pytest.raises(ProtocolError) as again:
        decoder.feed(b"")
    assert again.value is info.value
    with pytest.raises(ProtocolError) as again:
        decoder.close()
    assert again.value is info.value


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            header_bytes(magic=b"XS"),
            "bad magic b'XS' (expected b'SX'): the stream is not ours or lost its framing",
        ),
        (
            header_bytes(version=1),
            "protocol version 1, expected 6: parent and sidecar come from different "
            "subproc_executor versions",
        ),
        (header_bytes(kind=0), "unknown message kind 0"),
        (header_bytes(kind=200), "unknown message kind 200"),
        (header_bytes(length=1025), "payload length 1025 exceeds the limit of 1024 bytes"),
        (header_bytes(length=MAX_UINT64), f"payload length {MAX_UINT64} exceeds the limit of 1024 bytes"),
    ],
    ids=["magic", "version", "kind-0", "kind-200", "length", "length-max"],
)
def test_bad_header_messages_name_the_offset(header: bytes, message: str) -> None:
    prefix = encode_frames([Frame(MessageKind.HELLO, 0, b"{}"), Frame(MessageKind.SUBMIT, 1, b"job")])
    decoder = FrameDecoder(max_payload=1024)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(prefix + header)
    assert info.value.offset == len(prefix) == 45
    assert str(info.value) == f"{message} (frame header at byte 45)"


def test_default_limit_rejects_a_huge_length_without_allocating() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="exceeds the limit") as info:
        decoder.feed(header_bytes(length=DEFAULT_MAX_PAYLOAD + 1))
    assert info.value.offset == 0


# --- Corruption and garbage --------------------------------------------------------


@given(st.data(), streams())
def test_flipped_header_byte_is_caught_or_harmless(
    data: st.DataObject, frames_and_stream: tuple[list[Frame], bytes]
) -> None:
    frame_list, stream = frames_and_stream
    bounds = frame_bounds(frame_list)
    index = data.draw(st.integers(min_value=0, max_value=len(frame_list) - 1), label="frame")
    byte = data.draw(st.integers(min_value=0, max_value=HEADER_SIZE - 1), label="header byte")
    mask = data.draw(st.integers(min_value=1, max_value=255), label="xor mask")
    max_payload = data.draw(st.sampled_from([MAX_TEST_PAYLOAD, DEFAULT_MAX_PAYLOAD]), label="max_payload")
    corrupt = bytearray(stream)
    corrupt[bounds[index] + byte] ^= mask
    at = bounds[index]

    decoder = FrameDecoder(max_payload)
    out: list[Frame] = []
    error = None
    try:
        for chunk in data.draw(chunkings(bytes(corrupt)), label="chunks"):
            out += decoder.feed(chunk)
    except ProtocolError as exc:
        error = exc

    # What each field's corruption must do.
    if byte < 3:  # magic or version
        assert error is not None and error.offset == at
    elif byte == 3:  # kind: caught unless it became another valid kind
        if frame_list[index].kind ^ mask in KIND_VALUES:
            assert error is None
        else:
            assert error is not None and error.offset == at
    elif byte < 12:  # job id: undetectable, and harmless to the framing
        assert error is None
        assert [f.job_id for f in out] != [f.job_id for f in frame_list]
        assert [(f.kind, f.payload) for f in out] == [(f.kind, f.payload) for f in frame_list]

    if error is None:
        # Whatever came out is exactly what was fed, re-framed.
        consumed = len(corrupt) - decoder.buffered
        assert encode_frames(out) == corrupt[:consumed]
        if decoder.buffered:
            with pytest.raises(ProtocolError):
                decoder.close()
        else:
            decoder.close()
    else:
        # The error sits on a frame boundary of the stream as the decoder
        # framed it, and the frames before it are intact.
        assert encode_frames(out) == corrupt[: len(encode_frames(out))]
        assert len(encode_frames(out)) <= error.offset <= len(corrupt) - HEADER_SIZE
        before = FrameDecoder(max_payload)
        assert encode_frames(before.feed(bytes(corrupt[: error.offset]))) == corrupt[: error.offset]
        before.close()
        with pytest.raises(ProtocolError):
            FrameDecoder(max_payload).feed(bytes(corrupt[error.offset : error.offset + HEADER_SIZE]))
        with pytest.raises(ProtocolError) as again:
            decoder.close()
        assert again.value is error


@given(st.data(), st.integers(min_value=0, max_value=MAX_TEST_PAYLOAD))
def test_garbage_is_rejected_or_framed_and_never_overbuffers(data: st.DataObject, max_payload: int) -> None:
    soup = data.draw(garbage(max_payload), label="garbage")
    decoder = FrameDecoder(max_payload)
    out: list[Frame] = []
    fed = 0
    error = None
    for chunk in data.draw(chunkings(soup), label="chunks"):
        try:
            got = decoder.feed(chunk)
        except ProtocolError as exc:
            error = exc
            break
        fed += len(chunk)
        out += got
        # Never more than one maximal frame is held, whatever the headers say.
        assert decoder.buffered < HEADER_SIZE + max_payload
        assert all(len(f.payload) <= max_payload for f in got)
        assert encode_frames(out) == soup[: fed - decoder.buffered]

    # Chunking changes nothing but how many good frames precede an error:
    # those completed in the same feed as the bad header are dropped with it.
    reference, reference_error, reference_buffered = decode_bytewise(soup, max_payload)
    if reference_error is None:
        assert error is None
        assert out == reference
        assert decoder.buffered == reference_buffered
    else:
        assert error is not None
        assert (error.offset, str(error)) == (reference_error.offset, str(reference_error))
        assert out == reference[: len(out)]


# --- ProtocolError -------------------------------------------------------------------


@given(st.text(), st.integers(min_value=-1, max_value=2**70))
def test_protocol_error_pickles(message: str, offset: int) -> None:
    error = ProtocolError(message, offset)
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        clone = pickle.loads(pickle.dumps(error, protocol=proto))
        assert type(clone) is ProtocolError
        assert (str(clone), clone.offset, clone.args) == (message, offset, error.args)
    clone = copy.copy(error)
    assert (str(clone), clone.offset) == (message, offset)


def test_protocol_error_from_the_decoder_pickles() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        decoder.feed(encode_frame(MessageKind.BYE) + header_bytes(magic=b"\0\0"))
    clone = pickle.loads(pickle.dumps(info.value))
    assert (str(clone), clone.offset) == (str(info.value), 20)


def test_protocol_error_offset_defaults_to_unknown() -> None:
    assert ProtocolError("broken").offset == -1


# --- A decoder driven like a reader drives it ------------------------------------------


class DecoderMachine(RuleBasedStateMachine):
    """A peer writes frames (and perhaps one bad header) into a pipe; the
    reader feeds the decoder whatever arrived, in arbitrary pieces, takes
    frames off its queue, and eventually sees EOF.

    The model is a list of frame end offsets: a frame must come out of the
    feed that delivers its last byte, in order, and nothing else may.
    """

    def __init__(self) -> None:
        super().__init__()
        self.max_payload = MAX_TEST_PAYLOAD
        self.decoder = FrameDecoder(self.max_payload)
        self.pipe = bytearray()  # written by the peer, not yet fed
        self.written = 0  # stream offset of the end of the pipe
        self.fed = 0  # stream offset of the next byte to feed
        self.consumed = 0  # end of the last frame the decoder returned
        self.in_flight: deque[tuple[int, Frame]] = deque()  # (end offset, frame), written, not complete
        self.model_queue: deque[Frame] = deque()  # completed, per the model, not yet read
        self.decoded_queue: deque[Frame] = deque()  # returned by the decoder, not yet read
        self.bad_at: int | None = None  # offset of the bad header, once one is written
        self.error: ProtocolError | None = None
        self.eof = False

    @precondition(lambda self: not self.eof)
    @rule(frame_list=frame_lists)
    def peer_writes_frames(self, frame_list: list[Frame]) -> None:
        for frame in frame_list:
            data = encode_frames([frame])
            self.pipe += data
            self.written += len(data)
            self.in_flight.append((self.written, frame))

    @precondition(lambda self: not self.eof and self.bad_at is None)
    @rule(bad=bad_headers(MAX_TEST_PAYLOAD))
    def peer_writes_a_bad_header(self, bad: tuple[bytes, str]) -> None:
        self.bad_at = self.written
        self.pipe += bad[0]
        self.written += HEADER_SIZE

    @precondition(lambda self: not self.eof)
    @rule(n=st.integers(min_value=0, max_value=3 * (HEADER_SIZE + MAX_TEST_PAYLOAD)))
    def reader_feeds(self, n: int) -> None:
        chunk = bytes(self.pipe[:n])
        del self.pipe[:n]
        self.fed += len(chunk)
        if self.error is not None:
            with pytest.raises(ProtocolError) as info:
                self.decoder.feed(chunk)
            assert info.value is self.error
            return
        if self.bad_at is not None and self.fed >= self.bad_at + HEADER_SIZE:
            with pytest.raises(ProtocolError) as info:
                self.decoder.feed(chunk)
            assert info.value.offset == self.bad_at
            self.error = info.value
            return
        self.decoded_queue += self.decoder.feed(chunk)
        while self.in_flight and self.in_flight[0][0] <= self.fed:
            self.consumed, frame = self.in_flight.popleft()
            self.model_queue.append(frame)

    @rule(n=st.integers(min_value=1, max_value=4))
    def reader_takes_frames(self, n: int) -> None:
        for _ in range(min(n, len(self.model_queue))):
            assert self.decoded_queue.popleft() == self.model_queue.popleft()

    @precondition(lambda self: not self.eof)
    @rule()
    def eof(self) -> None:
        self.eof = True
        if self.error is not None:
            with pytest.raises(ProtocolError) as info:
                self.decoder.close()
            assert info.value is self.error
        elif self.fed == self.consumed:
            self.decoder.close()
        else:
            with pytest.raises(ProtocolError) as info:
                self.decoder.close()
            assert info.value.offset == self.consumed
            self.error = info.value

    @precondition(lambda self: self.eof)
    @rule()
    def eof_again(self) -> None:
        if self.error is None:
            self.decoder.close()
        else:
            with pytest.raises(ProtocolError) as info:
                self.decoder.close()
            assert info.value is self.error

    @invariant()
    def decoder_agrees_with_the_model(self) -> None:
        assert list(self.decoded_queue) == list(self.model_queue)
        if self.error is None:
            assert self.decoder.buffered == self.fed - self.consumed
            assert self.decoder.buffered < HEADER_SIZE + self.max_payload


TestDecoderMachine = DecoderMachine.TestCase
