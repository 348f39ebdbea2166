"""The event decoder: what it accepts, what it refuses and why (property-based)."""

from __future__ import annotations

import contextlib
import json
import unicodedata
import uuid
from datetime import UTC, datetime

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_analytics.config import Settings
from event_analytics.decode import decode_event
from event_analytics.errors import InvalidEvent, MalformedJSON
from event_analytics.ingest import Ingestor
from event_analytics.keys import Keys
from event_analytics.model import validate_event, validate_events
from event_analytics.store import IngestWriter

# Any printable text (emails, other trackers' ids): no control characters, no surrogates.
user_ids = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=255)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True)


@given(
    eid=st.uuids(),
    user=user_ids,
    host=hosts,
    path=st.from_regex(r"(/[A-Za-z0-9._~-]{0,12}){0,4}", fullmatch=True),
    event_type=st.from_regex(r"[a-z][a-z0-9_]{0,63}", fullmatch=True),
)
def test_valid_events_decode_as_sent(
    eid: uuid.UUID, user: str, host: str, path: str, event_type: str
) -> None:
    url = f"https://{host}{path}"
    raw = orjson.dumps(
        {
            "event_id": str(eid),
            "user_id": user,
            "timestamp": "2026-11-27T22:14:05+05:30",
            "event_type": event_type,
            "payload": {"page_url": url, "button": "buy", "n": 3},
        }
    )
    got = decode_event(raw)
    assert got.event_id == eid and got.user_id == user and got.event_type == event_type
    assert got.payload.page_url == url  # kept as sent, not normalised


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    # Every input is either an event or one of our two domain errors: never anything else.
    with contextlib.suppress(MalformedJSON, InvalidEvent):
        decode_event(raw)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["event_id", "user_id", "timestamp", "event_type", "payload", "other"]),
        json_values,
    )
)
def test_arbitrary_json_objects_give_field_errors(obj: dict[str, object]) -> None:
    try:
        decode_event(json.dumps(obj))  # stdlib: big integers too
    except InvalidEvent as exc:
        assert exc.errors and all(e.code and e.field and e.message for e in exc.errors)


_event_fields = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.just("123e4567-e89b-12d3-a456-426614174000") | st.text(max_size=5),
        "user_id": st.sampled_from(["u1", "", "a\x00b", "x" * 300]),
        "timestamp": st.sampled_from(["2026-01-01T00:00:00Z", "1700000000", "nope", ""]),
        "event_type": st.sampled_from(["page_view", "signup", "Bad-Type"]),
        "payload": st.fixed_dictionaries(
            {},
            optional={
                "page_url": st.sampled_from(["https://a.example/", "ftp://x", ""]),
                "revenue_amount": st.just("1.50"),
                "k": st.none() | st.integers() | st.text(max_size=5),
            },
        ),
    },
)


# Drawing is slow on a shared machine under load, not the thing checked.
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_event_fields | st.integers(), max_size=8))
def test_validate_events_is_each_events_own_validation(values: list[object]) -> None:
    """A batch validated in one call answers as each value validated on its own: the same
    Event, or the same first error (code, field, message)."""
    got = validate_events(values)
    assert len(got) == len(values)
    for value, answer in zip(values, got, strict=True):
        try:
            expected: object = validate_event(value)
        except InvalidEvent as exc:
            expected = exc.errors[0]
        assert answer == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://a.example/x", None),
        ("https://a.example/\x00x", "page_url must not contain control characters"),
        ("https://a.example/\x7f", "page_url must not contain control characters"),
        ("ftp://a.example/", "page_url must be an absolute http(s) URL with a host"),
        ("/relative", "page_url must be an absolute http(s) URL with a host"),
    ],
)
def test_a_page_urls_verdict_is_the_same_every_time(url: str, message: str | None) -> None:
    """The verdict on a URL is remembered (model._url_problem): asked again, the same."""
    value = {"event_id": str(uuid.uuid4()), "user_id": "u", "timestamp": "2026-01-01T00:00:00Z",
             "event_type": "page_view", "payload": {"page_url": url}}  # fmt: skip
    for _ in range(2):
        if message is None:
            assert validate_event(value).payload.page_url == url
            continue
        with pytest.raises(InvalidEvent) as exc:
            validate_event(value)
        first = exc.value.errors[0]
        assert (first.code, first.field) == ("invalid_url", "payload.page_url")
        assert first.message == message


def test_page_url_optional_for_other_types() -> None:
    raw = orjson.dumps(
        {"event_id": str(uuid.uuid4()), "user_id": "u", "timestamp": "2026-01-01T00:00:00",
         "event_type": "signup"}
    )  # fmt: skip
    assert decode_event(raw).payload.page_url is None


@pytest.mark.parametrize("extra", [{f"k{i}": i for i in range(33)}, {"1bad": 1}, {"s": "x" * 1025}])
def test_payload_bounds(extra: dict[str, object]) -> None:
    raw = orjson.dumps(
        {"event_id": str(uuid.uuid4()), "user_id": "u", "timestamp": "2026-01-01T00:00:00",
         "payload": {"page_url": "https://a.example/", **extra}}
    )  # fmt: skip
    with pytest.raises(InvalidEvent):
        decode_event(raw)


payload_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)


@pytest.fixture(scope="module")
def ingestor() -> Ingestor:
    # A client that is never connected: prepare() is pure (keys, expiries, the record).
    return Ingestor(Settings(max_age_s=10**9), IngestWriter(aioredis.Redis(), Keys()))


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), payload_values,
                            max_size=4),
    user=user_ids,
)  # fmt: skip
def test_every_decoded_event_can_be_stored_and_archived(
    ingestor: Ingestor, payload: dict[str, object], user: str
) -> None:
    # Whatever the decoder lets through must also survive preparation and the archive's
    # JSON: a 64-bit overflow used to pass validation and fail here, as a 500.
    raw = json.dumps(
        {"event_id": str(uuid.uuid4()), "user_id": user, "timestamp": "2026-11-27T22:14:05Z",
         "payload": {"page_url": "https://a.example/", **payload}}
    )  # fmt: skip
    try:
        event = decode_event(raw)
    except InvalidEvent:
        return
    except MalformedJSON:
        # json.dumps writes NaN and Infinity, which are not JSON: a 400, rightly.
        assert "NaN" in raw or "Infinity" in raw, raw
        return
    prepared = ingestor.prepare(event, datetime(2026, 11, 27, 22, 15, tzinfo=UTC))
    record = orjson.loads(prepared.record)
    assert record["user_id"] == user and record["payload"]["page_url"] == "https://a.example/"


@given(
    payload=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), payload_values,
                            max_size=5),
    page=st.sampled_from([None, "https://a.example/", "http://b.example/x?y=1"]),
)  # fmt: skip
def test_the_records_payload_is_what_pydantic_dumps(
    payload: dict[str, object], page: str | None
) -> None:
    # as_record() stands in for model_dump(exclude_none=True) on the hot path: the archive
    # must hold the same payload, key order included.
    body = {"event_id": str(uuid.uuid4()), "user_id": "u", "timestamp": "2026-11-27T22:14:05Z",
            "event_type": "click", "payload": {**payload, "page_url": page}}  # fmt: skip
    try:
        event = decode_event(json.dumps(body))
    except (InvalidEvent, MalformedJSON):
        return
    dumped = event.payload.model_dump(exclude_none=True)
    assert list(event.payload.as_record().items()) == list(dumped.items())


@pytest.mark.parametrize(
    ("value", "code"),
    [({"a": 1}, "invalid_property_value"), ([1, 2], "invalid_property_value"),
     (2**63, "property_out_of_range"), (-(2**63) - 1, "property_out_of_range")],
)  # fmt: skip
def test_payload_values_are_flat_and_bounded(value: object, code: str) -> None:
    raw = json.dumps(
        {"event_id": str(uuid.uuid4()), "user_id": "u", "timestamp": "2026-01-01T00:00:00",
         "payload": {"page_url": "https://a.example/", "v": value}}
    )  # fmt: skip
    with pytest.raises(InvalidEvent) as caught:
        decode_event(raw)
    assert caught.value.errors[0].code == code


@given(
    user=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=300).filter(
        lambda u: len(u) > 255 or any(unicodedata.category(c) == "Cc" for c in u)
    )
)
def test_user_ids_with_control_characters_or_too_long_are_refused(user: str) -> None:
    body = {"event_id": str(uuid.uuid4()), "user_id": user, "timestamp": "2026-01-01T00:00:00Z",
            "payload": {"page_url": "https://a.example/"}}  # fmt: skip
    with pytest.raises(InvalidEvent) as info:
        decode_event(orjson.dumps(body))
    assert [e.field for e in info.value.errors] == ["user_id"]
