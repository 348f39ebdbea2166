"""The event decoder: what it accepts, what it refuses and why (property-based)."""

from __future__ import annotations

import contextlib
import json
import uuid

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from event_analytics.model import InvalidEvent, MalformedJSON, decode_event

user_ids = st.from_regex(r"[A-Za-z0-9_.-]{1,255}", fullmatch=True)
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
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
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
