"""Properties of the typed payloads (subproc_executor.wire.messages).

Each record must survive encode/decode unchanged, and a payload that does not
match its schema (not JSON, a missing or unknown field, a value of the wrong
type) must raise ProtocolError naming the record and the field, never a
KeyError or a half-built record.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subproc_executor.wire.messages import (
    START_RECORD_SIZE,
    ErrorRecord,
    Fatal,
    Hello,
    Init,
    JobError,
    JobErrorKind,
    JobLimits,
    Kill,
    LimitedJob,
    OutcomeTag,
    Shutdown,
    SidecarSettings,
    StartRecord,
    Status,
    Workers,
    decode_error_outcome,
    encode_error_outcome,
)
from subproc_executor.wire.protocol import ProtocolError

texts = st.text(max_size=40)
pids = st.integers(0, 2**31 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
maybe_seconds = st.none() | st.floats(min_value=1e-6, max_value=1e9, allow_nan=False)

settings_records = st.builds(
    SidecarSettings,
    backend=texts,
    backend_target=texts,
    max_workers=st.integers(1, 4096),
    start_method=st.none() | texts,
    max_tasks_per_child=st.none() | st.integers(1, 10**9),
    max_batch_jobs=st.integers(1, 1024),
    pickler=texts,
    idle_timeout=maybe_seconds,
    status_interval=maybe_seconds,
    authkey=st.binary(max_size=64),
    sys_path=st.lists(texts, max_size=5).map(tuple),
    log_level=st.sampled_from(["DEBUG", "INFO", "WARNING", "ERROR"]),
    shm_threshold=st.none() | st.integers(1, 2**40),
    backend_options=st.dictionaries(texts, st.none() | st.booleans() | st.integers() | texts, max_size=3),
)
json_records = st.one_of(
    settings_records,
    st.builds(Hello, pid=pids, backend=texts, python=texts, worker_pids=st.lists(pids).map(tuple)),
    st.builds(Workers, worker_pids=st.lists(pids).map(tuple), quiesced=st.booleans()),
    st.builds(
        JobError,
        kind=st.sampled_from(JobErrorKind),
        message=texts,
        pid=st.none() | pids,
        exitcode=st.none() | st.integers(-64, 255),
        status=st.none() | texts,
        detail=st.none() | texts,
        limit=st.none() | finite,
        peak=st.none() | st.integers(0, 2**62),
    ),
    st.builds(Status, elapsed=finite, pid=pids),
    st.builds(Shutdown, kill=st.booleans(), signal=st.integers(0, 64)),
    st.builds(JobLimits, timeout=maybe_seconds, memory_limit=st.none() | st.integers(1, 2**50)),
    st.builds(Kill, kind=st.sampled_from(JobErrorKind), message=texts),
    st.builds(Fatal, message=texts),
)


@given(json_records)
def test_every_json_record_round_trips(record: Any) -> None:
    assert type(record).decode(record.encode()) == record


@given(settings_records, st.none() | st.binary(min_size=1, max_size=200))
def test_init_round_trips_with_any_initializer_bytes(settings: SidecarSettings, blob: bytes | None) -> None:
    # The initializer is opaque pickle bytes: newlines inside it must not matter.
    init = Init(settings, blob)
    assert Init.decode(init.encode()) == init


@given(
    st.builds(JobLimits, timeout=maybe_seconds, memory_limit=st.none() | st.integers(1, 2**50)),
    st.binary(max_size=200),
)
def test_limited_jobs_round_trip_with_any_job_bytes(limits: JobLimits, payload: bytes) -> None:
    # The job's bytes are opaque: newlines inside them must not matter.
    job = LimitedJob(limits, payload)
    assert LimitedJob.decode(job.encode()) == job


@given(st.integers(0, 2**64 - 1), pids, finite)
def test_start_records_round_trip_in_a_fixed_size(job_id: int, pid: int, when: float) -> None:
    data = StartRecord(job_id, pid, when).encode()
    assert len(data) == START_RECORD_SIZE
    assert StartRecord.decode(data) == (job_id, pid, when)
    assert StartRecord.decode(b"xx" + data, 2) == (job_id, pid, when)


@given(
    st.sampled_from([OutcomeTag.ERROR, OutcomeTag.INIT_FAILED]),
    st.builds(
        ErrorRecord,
        exc_bytes=st.none() | st.binary(max_size=50),
        type_name=texts,
        message=texts,
        traceback=texts,
        stage=texts,
        args_bytes=st.none() | st.binary(max_size=50),
    ),
)
def test_error_outcomes_round_trip(tag: OutcomeTag, record: ErrorRecord) -> None:
    data = encode_error_outcome(tag, record)
    assert data[0] == tag
    assert decode_error_outcome(data) == record


def test_an_error_outcome_with_str_subclasses_is_made_plain() -> None:
    class Sly(str):
        def __reduce__(self) -> Any:
            raise RuntimeError("no")

    record = ErrorRecord(None, Sly("T"), Sly("m"), "tb", "running the job", None)
    decoded = decode_error_outcome(encode_error_outcome(OutcomeTag.ERROR, record))
    assert decoded.type_name == "T" and type(decoded.type_name) is str


@given(json_records, st.data())
def test_a_missing_field_is_named(record: Any, data: st.DataObject) -> None:
    body = json.loads(record.encode())
    field = data.draw(st.sampled_from(sorted(body)))
    del body[field]
    with pytest.raises(ProtocolError, match=f"{type(record).__name__}: field '{field}' is missing"):
        type(record).decode(json.dumps(body).encode())


@given(json_records, st.data())
def test_a_field_of_the_wrong_type_is_named(record: Any, data: st.DataObject) -> None:
    body = json.loads(record.encode())
    field = data.draw(st.sampled_from(sorted(body)))
    # A list of objects is never a valid value of any field (backend_options
    # is an object; list fields hold numbers or strings).
    body[field] = [{"not": "valid"}]
    with pytest.raises(ProtocolError, match=f"{type(record).__name__}: field '{field}'"):
        type(record).decode(json.dumps(body).encode())


@pytest.mark.parametrize(
    ("payload", "phrase"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"kill": true, "signal": 0, "extra": 1}', "unknown fields"),
        (b'{"kill": 1, "signal": 0}', "field 'kill': expected true or false"),
        (b'{"kill": true}', "field 'signal' is missing"),
        (b"", "not JSON"),
    ],
)
def test_malformed_shutdown_payloads(payload: bytes, phrase: str) -> None:
    with pytest.raises(ProtocolError, match=phrase):
        Shutdown.decode(payload)


def test_bad_values_name_the_problem() -> None:
    with pytest.raises(ProtocolError, match="JobError: field 'kind': unknown job error kind 'exploded'"):
        JobError.decode(
            b'{"kind":"exploded","message":"","pid":null,"exitcode":null,"status":null,"detail":null}'
        )
    with pytest.raises(ProtocolError, match="Status: field 'pid': expected an integer >= 0"):
        Status.decode(b'{"elapsed": 1.0, "pid": -3}')
    with pytest.raises(ProtocolError, match="Status: field 'elapsed': expected a number"):
        Status.decode(b'{"elapsed": "1", "pid": 3}')
    with pytest.raises(ProtocolError, match="Workers: field 'worker_pids': expected an integer"):
        Workers.decode(b'{"worker_pids": [1, true], "quiesced": false}')
    with pytest.raises(ProtocolError, match="Init: no newline"):
        Init.decode(b'{"backend": "pipes"}')
    with pytest.raises(ProtocolError, match="StartRecord"):
        StartRecord.decode(b"short")
    with pytest.raises(ProtocolError, match="ErrorRecord"):
        decode_error_outcome(bytes([OutcomeTag.ERROR]) + b"not a pickle")
