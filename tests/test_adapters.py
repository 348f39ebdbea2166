"""The pure adapters: Segment and Plausible payloads to events, names, flattening,
enrichment. Every mapped event must pass the native validation unchanged."""

from __future__ import annotations

import contextlib
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from event_analytics.adapters import names, plausible, segment
from event_analytics.adapters.enrich import Enricher, Seen, parse_agent, source_name
from event_analytics.adapters.flatten import MAX_DEPTH, Dropped, flatten_into
from event_analytics.model import (
    EVENT_ADAPTER,
    EVENT_TYPE_PATTERN,
    MAX_PROPERTIES,
    PROPERTY_NAME_PATTERN,
    Payload,
)

NOW = datetime(2026, 11, 27, 22, 14, 5, tzinfo=UTC)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
# What orjson.loads can yield: integers from -2**63 to 2**64 - 1 (larger ones are floats).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=1100)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=70), inner, max_size=6)
    ),
    max_leaves=60,
)


# -- names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("Order Completed", "order_completed"),
        ("order_completed", "order_completed"),
        ("Outbound Link: Click", "outbound_link_click"),
        ("404", "event_404"),
        ("Café Visité!", "cafe_visite"),
        ("", "unnamed"),
        ("!!!", "unnamed"),
        ("x" * 100, "x" * 64),
    ],
)
def test_event_names_normalise_as_documented(sent: str, expected: str) -> None:
    assert names.event_type(sent) == expected


def test_a_track_named_like_our_own_types_is_kept_apart() -> None:
    assert names.track_type("Page View") == "track_page_view"
    assert names.track_type("Signed Up") == "signed_up"


@given(st.text(max_size=200))
def test_every_name_becomes_a_valid_stable_event_type(name: str) -> None:
    normal = names.event_type(name)
    assert re.fullmatch(EVENT_TYPE_PATTERN, normal)
    assert names.event_type(normal) == normal  # idempotent: a normalised name stays put
    assert re.fullmatch(EVENT_TYPE_PATTERN, names.track_type(name))


@given(st.text(max_size=100))
def test_property_names_are_valid_or_none(name: str) -> None:
    normal = names.property_name(name)
    assert normal is None or PROPERTY_NAME_PATTERN.match(normal)


# -- flattening ----------------------------------------------------------------------


def _leaf_count(value: Any, depth: int = 0) -> int:
    if isinstance(value, dict | list) and depth < MAX_DEPTH:
        items = value.values() if isinstance(value, dict) else value
        return sum(_leaf_count(v, depth + 1) for v in items)
    if isinstance(value, dict | list) and not value:
        return 0
    return 1


@given(st.dictionaries(st.text(max_size=70), json_values, max_size=12))
def test_flattening_keeps_or_lists_every_leaf_and_yields_a_valid_payload(
    sent: dict[str, Any],
) -> None:
    payload: dict[str, Any] = {"page_url": "https://a.example/", "event_name": "x"}
    dropped: list[Dropped] = []
    flatten_into(payload, sent, dropped)
    # Nothing vanishes: every leaf sent is kept or listed, and ours are untouched.
    assert len(payload) - 2 + len(dropped) == _leaf_count(sent)
    assert payload["event_name"] == "x"
    assert len(payload) - 1 <= MAX_PROPERTIES
    Payload.model_validate(payload)  # the native rules accept the result as it is
    assert {d.reason for d in dropped} <= {
        "too_deep",
        "invalid_name",
        "duplicate_name",
        "reserved",
        "too_long",
        "out_of_range",
        "too_many",
    }


def test_flattening_by_example() -> None:
    payload: dict[str, Any] = {"event_name": "Order Completed"}
    dropped: list[Dropped] = []
    sent = {
        "product": {"sku": "A1", "price": 9.5},
        "items": [{"sku": "B2"}],
        "Product ID": "p1",
        "event_name": "mine",
        "long": "x" * 2000,
        "big": 2**70,
        "a": {"b": {"c": {"d": {"e": 1}}}},
        "empty": {},
    }
    flatten_into(payload, sent, dropped)
    assert payload == {
        "event_name": "Order Completed",
        "product.sku": "A1",
        "product.price": 9.5,
        "items.0.sku": "B2",
        "Product_ID": "p1",
    }
    assert [d.as_dict() for d in dropped] == [
        {"property": "event_name", "reason": "reserved"},
        {"property": "long", "reason": "too_long"},
        {"property": "big", "reason": "out_of_range"},
        {"property": "a.b.c.d", "reason": "too_deep"},
    ]


def test_too_many_properties_are_dropped_in_order() -> None:
    payload: dict[str, Any] = {"page_url": "https://a.example/"}
    dropped: list[Dropped] = []
    flatten_into(payload, {f"p{i}": i for i in range(40)}, dropped)
    assert list(payload)[1:] == [f"p{i}" for i in range(MAX_PROPERTIES)]
    assert dropped == [Dropped(f"p{i}", "too_many") for i in range(MAX_PROPERTIES, 40)]


# -- Segment -------------------------------------------------------------------------


def _seg(**fields: Any) -> dict[str, Any]:
    message = {
        "type": "track",
        "event": "Order Completed",
        "userId": "ada@example.com",
        "messageId": "m-1",
        "timestamp": "2026-11-27T22:10:00Z",
    }
    message.update(fields)
    return {k: v for k, v in message.items() if v is not None}


def _one(message: dict[str, Any], enricher: Enricher | None = None) -> segment.Mapped:
    return segment.map_message(0, message, NOW, enricher)


def test_a_track_becomes_its_normalised_type_with_the_name_kept() -> None:
    mapped = _one(_seg(properties={"revenue": 12.5, "product": {"sku": "A1"}}))
    assert mapped.errors == [] and mapped.event is not None
    event = EVENT_ADAPTER.validate_python(mapped.event)
    assert event.event_type == "order_completed"
    assert event.user_id == "ada@example.com"
    assert event.event_id == uuid.uuid5(segment.NAMESPACE, "m-1")
    assert event.timestamp == datetime(2026, 11, 27, 22, 10, tzinfo=UTC)
    assert mapped.event["payload"] == {
        "revenue_amount": "12.5",  # Segment's revenue, USD when no currency is sent
        "revenue_currency": "USD",
        "event_name": "Order Completed",
        "product.sku": "A1",
    }


def test_message_ids_map_deterministically() -> None:
    some = str(uuid.uuid4())
    assert segment.event_id(some) == some
    assert segment.event_id(some.upper()) == some  # one UUID, however it is written
    assert segment.event_id("abc") == segment.event_id("abc") != segment.event_id("abd")
    assert _one(_seg(messageId="abc")).event == _one(_seg(messageId="abc")).event


@given(st.text(min_size=1, max_size=100))
def test_message_ids_become_uuid5_in_our_namespace(message_id: str) -> None:
    expected = str(uuid.uuid5(segment.NAMESPACE, message_id))
    if len(message_id) == 36:
        with contextlib.suppress(ValueError):
            expected = str(uuid.UUID(message_id))
    assert segment.event_id(message_id) == expected


@given(st.uuids(), st.lists(st.booleans(), min_size=36, max_size=36), st.sampled_from(["", "{}"]))
def test_uuid_message_ids_are_their_own_event_ids(
    some: uuid.UUID, upper: list[bool], braces: str
) -> None:
    # However a UUID is spelt (case, braces: what uuid.UUID reads), it is its own id.
    text = "".join(c.upper() if up else c for c, up in zip(str(some), upper, strict=True))
    if braces:
        text = "{" + text.replace("-", "", 2) + "}"  # 36 characters still
    assert segment.event_id(text) == str(some)


def test_the_clients_clock_is_corrected_with_sent_at() -> None:
    # The client's clock is 1 h fast: it stamped 23:10 and sent at 23:14:00.
    mapped = _one(_seg(timestamp="2026-11-27T23:10:00Z", sentAt="2026-11-27T23:14:00+00:00"))
    assert mapped.event is not None
    assert mapped.event["timestamp"] == NOW - timedelta(minutes=4)  # 22:10:05Z
    batch = segment.map_request(
        {"batch": [_seg(timestamp="2026-11-27T23:10:00Z")], "sentAt": "2026-11-27T23:14:00Z"},
        None,
        NOW,
        None,
    )
    assert batch[0].event is not None and batch[0].event["timestamp"] == NOW - timedelta(minutes=4)
    # No timestamp at all: when it arrived.
    assert _one(_seg(timestamp=None)).event["timestamp"] == NOW  # type: ignore[index]


def test_page_and_screen_count_as_views_with_their_url() -> None:
    page = _one(
        _seg(
            type="page",
            event=None,
            name="Home",
            properties={"url": "https://shop.example/?utm_source=news", "title": "T"},
        )
    )
    assert page.event is not None and page.event["event_type"] == "page_view"
    assert page.event["payload"] == {
        "page_url": "https://shop.example/?utm_source=news",
        "name": "Home",
        "title": "T",
    }
    via_context = _one(
        _seg(type="page", event=None, context={"page": {"url": "https://shop.example/a"}})
    )
    assert via_context.event is not None
    assert via_context.event["payload"]["page_url"] == "https://shop.example/a"
    screen = _one(_seg(type="screen", event=None, name="Cart"))
    assert screen.event is not None and screen.event["event_type"] == "screen_view"
    no_url = _one(_seg(type="page", event=None))
    with pytest.raises(ValueError, match="page_url"):
        EVENT_ADAPTER.validate_python(no_url.event)


def test_identify_group_alias_keep_their_type_and_traits() -> None:
    ident = _one(
        _seg(
            type="identify",
            event=None,
            anonymousId="anon-1",
            traits={"plan": "pro", "address": {"city": "Oslo"}},
        )
    )
    assert ident.event is not None and ident.event["event_type"] == "identify"
    assert ident.event["payload"] == {
        "anonymous_id": "anon-1",
        "plan": "pro",
        "address.city": "Oslo",
    }
    group = _one(_seg(type="group", event=None, groupId=42))
    assert group.event is not None and group.event["payload"] == {"group_id": "42"}
    alias = _one(_seg(type="alias", event=None, previousId="old"))
    assert alias.event is not None and alias.event["payload"] == {"previous_id": "old"}


@pytest.mark.parametrize(
    ("fields", "code", "where"),
    [
        ({"userId": None}, "missing_user", "userId"),
        ({"userId": "a\nb"}, "invalid_user_id", "userId"),
        ({"userId": None, "anonymousId": "x" * 256}, "invalid_user_id", "anonymousId"),
        ({"messageId": "m" * 101}, "invalid_message_id", "messageId"),
        ({"type": "launch"}, "invalid_type", "type"),
        ({"event": None}, "missing_event", "event"),
        ({"timestamp": "yesterday"}, "invalid_timestamp", "timestamp"),
        ({"sentAt": 17}, "invalid_timestamp", "sentAt"),
        ({"properties": {"blob": "x" * 40_000}}, "message_too_large", ""),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(
    fields: dict[str, Any], code: str, where: str
) -> None:
    mapped = _one(_seg(**fields))
    assert mapped.event is None
    assert [(e.code, e.field) for e in mapped.errors] == [(code, where)]


def test_the_envelope_must_hold_a_batch() -> None:
    for body in ({}, {"batch": []}, {"batch": [{}] * (segment.MAX_BATCH_MESSAGES + 1)}):
        with pytest.raises(segment.InvalidEvent):
            segment.messages(body, None)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "event",
                "userId",
                "anonymousId",
                "messageId",
                "timestamp",
                "sentAt",
                "properties",
                "traits",
                "context",
                "name",
                "groupId",
                "previousId",
            ]
        ),
        json_values,
        max_size=10,
    )
)
def test_any_message_is_mapped_or_rejected_never_raises(message: dict[str, Any]) -> None:
    mapped = segment.map_message(0, message, NOW, Enricher())
    if mapped.event is None:
        assert mapped.errors
        return
    assert not mapped.errors
    if mapped.event["event_type"] in ("page_view", "bot_page_view") and not isinstance(
        mapped.event["payload"].get("page_url"), str
    ):
        return  # refused by the native rules, with its reason (test above)
    try:
        EVENT_ADAPTER.validate_python(mapped.event)
    except ValueError as exc:
        # Only the page URL of a page call is passed on as sent, for the native check.
        assert "page_url" in str(exc)


# -- Plausible -----------------------------------------------------------------------

SALT = b"s" * 32


def _pl(body: dict[str, Any], ip: str = "81.2.69.160", ua: str = CHROME) -> segment.Mapped:
    return plausible.map_event(body, NOW, salt=SALT, ip=ip, user_agent=ua, enricher=Enricher())


def test_short_and_long_keys_mean_the_same() -> None:
    short = _pl(
        {
            "n": "pageview",
            "u": "https://site.example/a#top",
            "d": "site.example",
            "r": "https://www.google.com/",
        }
    )
    long = _pl(
        {
            "name": "pageview",
            "url": "https://site.example/a#top",
            "domain": "site.example",
            "referrer": "https://www.google.com/",
        }
    )
    assert short.event is not None and long.event is not None
    assert short.event["payload"] == long.event["payload"]
    assert short.event["user_id"] == long.event["user_id"]
    assert short.event["event_type"] == "page_view"
    assert short.event["payload"] == {
        "page_url": "https://site.example/a",
        "domain": "site.example",
        "referrer": "https://www.google.com/",
        "source": "Google",
        "browser": "Chrome",
        "os": "Windows",
        "device": "desktop",
        "country": "GB",
    }
    EVENT_ADAPTER.validate_python(short.event)


def test_custom_events_props_and_revenue() -> None:
    mapped = _pl(
        {
            "n": "Signup",
            "u": "https://site.example/?utm_source=news&utm_medium=mail",
            "d": "site.example",
            "p": '{"plan":"pro"}',
            "$": '{"amount":"9.99","currency":"EUR"}',
            "i": False,
        }
    )
    assert mapped.event is not None and mapped.event["event_type"] == "signup"
    payload = mapped.event["payload"]
    assert payload["event_name"] == "Signup" and payload["plan"] == "pro"
    assert payload["revenue_amount"] == "9.99" and payload["revenue_currency"] == "EUR"
    assert payload["interactive"] is False
    assert payload["utm_source"] == payload["source"] == "news"
    assert payload["utm_medium"] == "mail"


def test_the_visitor_is_a_salted_hash_of_site_ip_and_agent() -> None:
    base = plausible.visitor_id(SALT, "a.example", "1.2.3.4", CHROME)
    assert base == plausible.visitor_id(SALT, "a.example", "1.2.3.4", CHROME)
    assert base != plausible.visitor_id(b"t" * 32, "a.example", "1.2.3.4", CHROME)
    assert base != plausible.visitor_id(SALT, "b.example", "1.2.3.4", CHROME)
    assert base != plausible.visitor_id(SALT, "a.example", "1.2.3.5", CHROME)
    mapped = _pl({"n": "pageview", "u": "https://a.example/", "d": "a.example"}, ip="1.2.3.4")
    assert "1.2.3.4" not in orjson.dumps(mapped.event).decode()  # the IP is never kept


def test_bots_are_counted_apart() -> None:
    bot = _pl(
        {"n": "pageview", "u": "https://a.example/", "d": "a.example"},
        ua="Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    )
    assert bot.event is not None and bot.event["event_type"] == "bot_page_view"
    assert bot.event["payload"]["bot"] is True and bot.event["payload"]["device"] == "bot"


@pytest.mark.parametrize("missing", ["n", "u", "d"])
def test_plausible_needs_name_url_and_domain(missing: str) -> None:
    body = {"n": "pageview", "u": "https://a.example/", "d": "a.example"}
    del body[missing]
    mapped = _pl(body)
    assert mapped.event is None and mapped.errors[0].code == "missing"


# -- enrichment ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("www.google.co.uk", "Google"),
        ("google.com", "Google"),
        ("t.co", "Twitter"),
        ("news.ycombinator.com", "Hacker News"),
        ("l.facebook.com", "Facebook"),
        ("blog.example.org", "blog.example.org"),
    ],
)
def test_referrer_sources_have_their_usual_names(host: str, name: str) -> None:
    assert source_name(host) == name


@pytest.mark.parametrize(
    ("ua", "device"),
    [
        (CHROME, "desktop"),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
            "mobile",
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 16_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
            "Gecko) Version/16.0 Mobile/15E148 Safari/604.1",
            "tablet",
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0 Mobile Safari/537.36",
            "mobile",
        ),
        ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "bot"),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "HeadlessChrome/120.0.0.0 Safari/537.36",
            "bot",
        ),
        ("", "bot"),
        ("curl/8.5.0", "bot"),
        ("python-requests/2.31", "bot"),
    ],
)
def test_devices_from_the_user_agent(ua: str, device: str) -> None:
    assert parse_agent(ua).device == device


def test_same_site_referrers_and_private_addresses_add_nothing() -> None:
    fields = Enricher().fields(
        Seen(page_url="https://a.example/b", referrer="https://a.example/", ip="10.0.0.1")
    )
    assert fields == {}
    assert Enricher().fields(Seen(ip="8.8.8.8")) == {"country": "US"}
    assert Enricher().fields(Seen(ip="not an ip")) == {}


def test_segment_context_enriches_with_what_the_end_user_sent() -> None:
    mapped = _one(
        _seg(
            context={
                "userAgent": CHROME,
                "ip": "81.2.69.160",
                "page": {"url": "https://s.example/", "referrer": "https://t.co/x"},
                "campaign": {"name": "spring", "source": "ads"},
            }
        ),
        Enricher(),
    )
    assert mapped.event is not None
    payload = mapped.event["payload"]
    assert payload["country"] == "GB" and payload["device"] == "desktop"
    assert payload["utm_campaign"] == "spring" and payload["source"] == "ads"
    assert payload["referrer"] == "https://t.co/x"
    assert "81.2.69.160" not in orjson.dumps(mapped.event).decode()


def test_time_window_applies_after_correction() -> None:
    # Far in the past after correction: mapped, then the ingestor's window refuses it.
    mapped = _one(_seg(timestamp=(NOW - timedelta(days=30)).isoformat()))
    assert mapped.event is not None and mapped.event["timestamp"] == NOW - timedelta(days=30)
