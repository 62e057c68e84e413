"""Hypothesis strategies for the frame codec (subproc_executor.wire.protocol).

Valid frames, whole streams of them, ways to cut a stream into chunks, and
headers that are wrong in exactly one field.
"""

from __future__ import annotations

import itertools

from hypothesis import strategies as st

from subproc_executor.wire.protocol import (
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    Frame,
    MessageKind,
    encode_frames,
)

MAX_UINT64 = 2**64 - 1
# Kept small so that a test stays fast: the decoder treats a 10-byte payload
# and a 10 MiB one alike, except for the copying.
MAX_TEST_PAYLOAD = 64

KIND_VALUES = frozenset(int(k) for k in MessageKind)

kinds = st.sampled_from(MessageKind)
job_ids = st.integers(min_value=0, max_value=MAX_UINT64)
payloads = st.one_of(st.just(b""), st.binary(max_size=MAX_TEST_PAYLOAD))
frames = st.builds(Frame, kind=kinds, job_id=job_ids, payload=payloads)
frame_lists = st.lists(frames, max_size=8)


def frame_bounds(frame_list: list[Frame]) -> list[int]:
    """Stream offsets of every frame boundary: 0, end of the first, ..., total length."""
    bounds = [0]
    for f in frame_list:
        bounds.append(bounds[-1] + HEADER.size + len(f.payload))
    return bounds


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Frame], bytes]:
    """A non-empty list of frames and the bytes that encode them."""
    fs = draw(st.lists(frames, min_size=1, max_size=8))
    return fs, encode_frames(fs)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at every offset in ``cuts`` (any order, repeats give empty chunks)."""
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def chunkings(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """Every way of feeding ``data``: in one piece, cut anywhere, with empty chunks."""
    return st.lists(st.integers(min_value=0, max_value=len(data)), max_size=12).map(
        lambda cuts: split_at(data, cuts)
    )


# One field wrong, the rest a valid header. Each yields (header bytes, field name).
bad_magics = st.binary(min_size=2, max_size=2).filter(lambda m: m != MAGIC)
bad_versions = st.integers(min_value=0, max_value=255).filter(lambda v: v != PROTOCOL_VERSION)
bad_kind_values = st.integers(min_value=0, max_value=255).filter(lambda k: k not in KIND_VALUES)


def header_bytes(
    *,
    magic: bytes = MAGIC,
    version: int = PROTOCOL_VERSION,
    kind: int = MessageKind.SUBMIT,
    job_id: int = 0,
    length: int = 0,
) -> bytes:
    """A raw header, bypassing encode_header's checks so it can be invalid."""
    return HEADER.pack(magic, version, kind, job_id, length)


@st.composite
def bad_headers(draw: st.DrawFn, max_payload: int) -> tuple[bytes, str]:
    """A header the decoder must reject, and which field is wrong."""
    field = draw(st.sampled_from(["magic", "version", "kind", "length"]))
    kind = int(draw(kinds))
    job_id = draw(job_ids)
    length = draw(st.integers(min_value=0, max_value=max_payload))
    if field == "magic":
        return header_bytes(magic=draw(bad_magics), kind=kind, job_id=job_id, length=length), field
    if field == "version":
        return header_bytes(version=draw(bad_versions), kind=kind, job_id=job_id, length=length), field
    if field == "kind":
        return header_bytes(kind=draw(bad_kind_values), job_id=job_id, length=length), field
    too_long = draw(st.integers(min_value=max_payload + 1, max_value=MAX_UINT64))
    return header_bytes(kind=kind, job_id=job_id, length=too_long), field


def garbage(max_payload: int) -> st.SearchStrategy[bytes]:
    """Byte soup that sometimes looks like frames: valid ones, plausible
    headers with random kinds and lengths, and random bytes, run together."""
    plausible_header = st.builds(
        lambda kind, job_id, length: header_bytes(kind=kind, job_id=job_id, length=length),
        st.integers(min_value=0, max_value=255),
        job_ids,
        st.one_of(
            st.integers(min_value=0, max_value=max_payload + 2),
            st.integers(min_value=0, max_value=MAX_UINT64),
        ),
    )
    small_frame = st.builds(Frame, kind=kinds, job_id=job_ids, payload=st.binary(max_size=max_payload)).map(
        lambda f: encode_frames([f])
    )
    piece = st.one_of(st.binary(max_size=3 * HEADER.size), plausible_header, small_frame)
    return st.lists(piece, max_size=10).map(b"".join)
