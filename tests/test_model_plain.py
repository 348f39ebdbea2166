"""``model.plain_event``: the import's way round pydantic for plain events accepts only
what the model accepts, with the same values, and takes the plain case itself.

The events are generated near the plain shape, each field either plain or one of the
variants the model treats differently (coerced, refused, or needing a closer look), so
both sides of every rule are drawn."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_analytics.model import Event, PlainEvent, plain_event, validate_events

OFFSETS = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=23, minutes=59))]
)


def _mostly(plain: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``plain`` three times in four, else ``odd``: most events are near the plain shape."""
    return st.integers(0, 3).flatmap(lambda i: odd if i == 0 else plain)


UUIDS = _mostly(st.uuids().map(str), st.sampled_from([
    "00000000-0000-0000-0000-000000000001", "123E4567-E89B-12D3-A456-426614174000",
    "123e4567e89b12d3a456426614174000", "{123e4567-e89b-12d3-a456-426614174000}",
    "123e4567-e89b-12d3-a456-42661417400", "123e4567-e89b-12d3-a456-4266141740000",
    "urn:uuid:123e4567-e89b-12d3-a456-426614174000", "g23e4567-e89b-12d3-a456-426614174000",
]) | st.integers() | st.none())  # fmt: skip
PLAIN_USERS = st.from_regex(r"[A-Za-z0-9_@.\-]{1,20}", fullmatch=True)
USERS = _mostly(PLAIN_USERS, st.text(max_size=260) | st.sampled_from(
    ["u1", "a@b.example", "x\n", "x\x00", "x\x9f", " ", "é" * 255, "é" * 256, ""]
) | st.integers())  # fmt: skip
TIMES = _mostly(st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=OFFSETS
).map(lambda d: d.isoformat().replace("+00:00", "Z")), st.datetimes(
    timezones=st.none() | st.timezones()
).map(lambda d: d.isoformat()) | st.sampled_from([
    "2024-06-07T12:34:56Z", "2024-06-07T12:34:56.5Z", "2024-06-07T12:34:56.1234567Z",
    "2024-06-07T12:34:56+00:00", "2024-06-07T12:34:56-23:59", "2024-06-07T12:34:56+24:00",
    "2024-06-07T24:00:00Z", "2024-06-07T12:60:00Z", "2024-06-07T12:34:60Z",
    "2024-02-30T12:34:56Z", "2024-06-07 12:34:56Z", "2024-06-07T12:34:56", "2024-06-07",
    "0001-01-01T00:00:00+05:30", "9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00Z",
    "1717763696", "2024-06-07T12:34:56z", "2024-06-07T12:34:56+0530", "2024-06-07T12:34:56Z\n",
    "2024-06-07T12:34:56+05:60", "2024-06-07T12:34:56.000001-00:00",
]) | st.integers())  # fmt: skip
TYPES = _mostly(st.sampled_from(["page_view", "click"]), st.sampled_from(
    ["signup_2", "Click", "1st", "a" * 64, "a" * 65, "x\n", "", "a-b"]
) | st.from_regex(r"[a-z][a-z0-9_]{0,70}", fullmatch=True) | st.integers())  # fmt: skip
PLAIN_URLS = st.sampled_from(
    ["https://example.com/p1", "http://a.example/", "https://example.com/p?q=1#f"]
)
URLS = _mostly(PLAIN_URLS, st.sampled_from([
    "https://example.com/" + "a" * 2100, "ftp://example.com/", "example.com/p", "https://",
    "https://e.example/\x00", "", " ", "HTTPS://EXAMPLE.COM/", "https://exa mple.com/",
]) | st.text(max_size=30) | st.none() | st.integers())  # fmt: skip
NAMES = _mostly(st.sampled_from(["country", "plan", "a.b-c", "_x"]), st.sampled_from(
    ["1x", "x y", "x\n", "a" * 64, "a" * 65, "ä", "revenue_amount", "revenue_currency"]
) | st.text(max_size=8))  # fmt: skip
VALUES = _mostly(st.text(max_size=10) | st.booleans() | st.integers(-(2**63), 2**63 - 1), (
    st.just("v" * 1025) | st.just("v" * 1024) | st.integers(-(2**64), 2**64) | st.floats()
    | st.none() | st.lists(st.integers(), max_size=2) | st.sampled_from(["12.50", "EUR", "eur"])
))  # fmt: skip
PAYLOADS = _mostly(
    st.fixed_dictionaries({"page_url": URLS}).flatmap(
        lambda base: st.dictionaries(NAMES, VALUES, max_size=3).map(lambda e: {**base, **e})
    ),
    st.dictionaries(NAMES, VALUES, max_size=34) | st.none() | st.lists(st.integers(), max_size=1),
)  # fmt: skip
EVENTS = _mostly(st.fixed_dictionaries(
    {"event_id": UUIDS, "user_id": USERS, "timestamp": TIMES, "payload": PAYLOADS},
    optional={"event_type": TYPES},
), st.fixed_dictionaries(
    {}, optional={
        "event_id": UUIDS, "user_id": USERS, "timestamp": TIMES, "event_type": TYPES,
        "payload": PAYLOADS, "extra": st.just(1),
    },
))  # fmt: skip


def _model(value: Any) -> PlainEvent | None:
    """What the model makes of ``value``: its event's values, or None (refused)."""
    (got,) = validate_events([value])
    if not isinstance(got, Event):
        return None
    try:
        return PlainEvent.of(got)
    except OverflowError:
        return None  # refused by the import as out of range


def _same(a: PlainEvent, b: PlainEvent) -> bool:
    # The record's payload bytes too: its keys' order is the archive line's.
    return (
        a == b
        and a.timestamp.tzinfo is b.timestamp.tzinfo is UTC
        and orjson.dumps(a.payload) == orjson.dumps(b.payload)
    )


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS)
def test_plain_accepts_only_what_the_model_accepts_with_its_values(value: dict[str, Any]) -> None:
    plain = plain_event(value)
    if plain is not None:
        model = _model(value)
        assert model is not None, value
        assert _same(plain, model), (plain, model)


@settings(max_examples=300)
@given(
    st.uuids(),
    st.from_regex(r"[A-Za-z0-9_@.\-]{1,40}", fullmatch=True),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.sampled_from(["page_view", "click"]),
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(
            lambda n: n not in ("page_url", "revenue_amount", "revenue_currency")
        ),
        st.text(max_size=20) | st.booleans() | st.integers(-(2**63), 2**63 - 1),
        max_size=5,
    ),
    st.booleans(),
)
def test_our_own_records_are_plain(
    event_id: uuid.UUID, user: str, ts: datetime, kind: str, extra: dict[str, Any], z: bool
) -> None:
    """What ``export`` writes (and the import bench's file) takes the plain path, so the
    import really goes round pydantic: the first test alone would pass with no plain case."""
    stamp = ts.replace(tzinfo=UTC).isoformat()
    value = {
        "event_id": str(event_id), "user_id": user,
        "timestamp": stamp.replace("+00:00", "Z") if z else stamp, "event_type": kind,
        "payload": {"page_url": "https://example.com/p1", **extra},
    }  # fmt: skip
    plain = plain_event(value)
    assert plain is not None, value
    model = _model(value)
    assert model is not None and _same(plain, model)
