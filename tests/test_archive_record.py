"""The archive record codec (pure): round trips, the bytes of format 1, what it refuses."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from event_analytics.archive import files
from event_analytics.archive.record import (
    COLUMNS,
    FORMAT_VERSION,
    ID_PREFIX,
    InvalidRecord,
    Record,
    archive_line,
    decode,
    encode,
)
from event_analytics.config import Settings
from event_analytics.ingest import Ingestor
from event_analytics.keys import Keys
from event_analytics.model import EVENT_ADAPTER
from event_analytics.store import IngestWriter

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # no lone surrogates
utc_times = st.datetimes(timezones=st.just(UTC))
values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
records = st.builds(
    Record,
    event_id=st.uuids(),
    user_id=text,
    timestamp=utc_times,
    event_type=text,
    payload=st.dictionaries(text, values, max_size=6),
    received_at=st.none() | utc_times,
)


def v1_bytes(record: Record) -> bytes:
    """Format 1 as the service wrote it before the codec existed (ingest.py, 2026-11)."""
    fields: dict[str, Any] = {
        "event_id": str(record.event_id),
        "user_id": record.user_id,
        "timestamp": record.timestamp.isoformat()[:-6] + "Z",
        "event_type": record.event_type,
        "payload": record.payload,
    }
    if record.received_at is not None:
        fields["received_at"] = record.received_at.replace(tzinfo=None).isoformat() + "Z"
    return orjson.dumps(fields)


@given(records)
def test_round_trip(record: Record) -> None:
    raw = encode(record)
    assert decode(raw) == record
    assert decode(raw + b"\n") == record  # as read from a file
    assert encode(decode(raw)) == raw


@given(records)
def test_bytes_are_format_1_with_the_id_at_its_offset(record: Record) -> None:
    raw = encode(record)
    assert FORMAT_VERSION == 1
    assert raw == v1_bytes(record)  # files written before the codec read and re-encode alike
    assert raw.startswith(ID_PREFIX) and b"\n" not in raw
    assert files.event_id_of(raw + b"\n") == str(record.event_id)


@given(records, st.integers(-23 * 60, 23 * 60))
def test_times_are_written_in_utc(record: Record, offset_min: int) -> None:
    zone = timezone(timedelta(minutes=offset_min))
    with_offset = dataclasses.replace(record, timestamp=record.timestamp.astimezone(zone))
    try:
        raw = encode(with_offset)
    except OverflowError:  # near year 1 or 9999 the offset leaves datetime's range
        return
    assert raw == encode(record)
    assert decode(raw).timestamp.tzinfo is UTC


# Lines the service wrote before the codec existed (prepare() at 17bbcc9).
GOLDEN = [
    (
        b'{"event_id":"123e4567-e89b-12d3-a456-426614174000","user_id":"user_1",'
        b'"timestamp":"2026-11-27T22:14:05Z","event_type":"page_view",'
        b'"payload":{"page_url":"https://example.com/page-1"},'
        b'"received_at":"2026-11-27T22:15:00.250000Z"}',
        Record(
            uuid.UUID("123e4567-e89b-12d3-a456-426614174000"),
            "user_1",
            datetime(2026, 11, 27, 22, 14, 5, tzinfo=UTC),
            "page_view",
            {"page_url": "https://example.com/page-1"},
            datetime(2026, 11, 27, 22, 15, 0, 250000, tzinfo=UTC),
        ),
    ),
    (
        b'{"event_id":"0b6f9a4e-3f1c-4d2b-9a7e-5c8d1e2f3a4b","user_id":"u.2-x",'
        b'"timestamp":"2026-11-27T22:14:05.123456Z","event_type":"click",'
        b'"payload":{"page_url":"https://example.com/\xc3\xbc?q=1","n":-9223372036854775808,'
        b'"f":0.1,"b":true,"s":"caf\xc3\xa9 \\"q\\""},'
        b'"received_at":"2026-11-27T22:15:00.250000Z"}',
        Record(
            uuid.UUID("0b6f9a4e-3f1c-4d2b-9a7e-5c8d1e2f3a4b"),
            "u.2-x",
            datetime(2026, 11, 27, 22, 14, 5, 123456, tzinfo=UTC),
            "click",
            {
                "page_url": "https://example.com/\u00fc?q=1",
                "n": -(2**63),
                "f": 0.1,
                "b": True,
                "s": 'caf\u00e9 "q"',
            },
            datetime(2026, 11, 27, 22, 15, 0, 250000, tzinfo=UTC),
        ),
    ),
]


@pytest.mark.parametrize(("raw", "want"), GOLDEN)
def test_lines_written_before_the_codec_read_back(raw: bytes, want: Record) -> None:
    assert decode(raw) == want
    assert encode(want) == raw


def test_columns_are_the_record_fields_in_their_order() -> None:
    names = [f.name for f in dataclasses.fields(Record)]
    assert [name for name, _ in COLUMNS] == names
    assert list(orjson.loads(GOLDEN[0][0])) == names


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{oops",
        b"[]",
        b'{"event_id":"123e4567-e89b-12d3-a456-426614174000"}',  # no other field
        b'{"event_id":"short","user_id":"u","timestamp":"2026-01-01T00:00:00Z","event_type":"t"}',
        b'{"event_id":"123e4567-e89b-12d3-a456-42661417400x","user_id":"u",'
        b'"timestamp":"2026-01-01T00:00:00Z","event_type":"t"}',  # 36 chars, not a UUID
        b'{"event_id":"123e4567-e89b-12d3-a456-426614174000","user_id":7,'
        b'"timestamp":"2026-01-01T00:00:00Z","event_type":"t"}',
        b'{"event_id":"123e4567-e89b-12d3-a456-426614174000","user_id":"u",'
        b'"timestamp":"yesterday","event_type":"t"}',
        b'{"event_id":"123e4567-e89b-12d3-a456-426614174000","user_id":"u",'
        b'"timestamp":"2026-01-01T00:00:00Z","event_type":"t","payload":[1]}',
    ],
)
def test_what_is_not_a_record_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidRecord):
        decode(raw)
    with pytest.raises(InvalidRecord):
        archive_line(raw)


@given(records)
def test_archive_line_puts_event_id_first_and_keeps_every_field(record: Record) -> None:
    raw = encode(record)
    assert archive_line(raw) == (record, raw)
    fields = orjson.loads(raw)
    foreign = orjson.dumps({"extra": [1, 2], **dict(reversed(list(fields.items())))})
    got, line = archive_line(foreign)
    assert got == record
    assert line.startswith(ID_PREFIX) and files.event_id_of(line) == str(record.event_id)
    assert orjson.loads(line) == {**fields, "extra": [1, 2]}


NOW = datetime(2026, 11, 27, 22, 15, 0, 250000, tzinfo=UTC)
INGESTOR = Ingestor(
    Settings(max_age_s=10**9), IngestWriter(aioredis.Redis(), Keys())
)  # never connected


@given(
    eid=st.uuids(),
    when=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2026, 11, 27)),
    offset_min=st.integers(-14 * 60, 14 * 60),
    extra=st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), values, max_size=4),
)
def test_ingest_streams_the_codecs_record(
    eid: uuid.UUID, when: datetime, offset_min: int, extra: dict[str, Any]
) -> None:
    sent = when.replace(tzinfo=timezone(timedelta(minutes=offset_min)))
    payload = {"page_url": "https://a.example/", **extra}
    body = {"event_id": str(eid), "user_id": "u1", "timestamp": sent.isoformat(),
            "event_type": "click", "payload": payload}  # fmt: skip
    event = EVENT_ADAPTER.validate_python(body)
    raw = INGESTOR.prepare(event, NOW).record
    assert isinstance(raw, bytes)
    # The record says what was sent: the time in UTC, the payload without its nulls.
    want = Record(
        eid,
        "u1",
        sent.astimezone(UTC),
        "click",
        {k: v for k, v in payload.items() if v is not None},
        NOW,
    )
    assert decode(raw) == want
    assert raw == v1_bytes(want)
