"""Revenue at ingest (pure): the exact decimal form, and each path that reaches it —
Plausible's revenue object, Segment's revenue/currency properties, native flat fields."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import duckdb
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from event_analytics import revenue
from event_analytics.adapters import plausible, segment
from event_analytics.decode import decode_json, parse_json
from event_analytics.errors import InvalidEvent
from event_analytics.model import validate_event

NOW = datetime(2026, 11, 27, 22, 14, 5, tzinfo=UTC)
DB = duckdb.connect()


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("1322.22", "1322.22"),
        ("1.5e3", "1500"),
        ("-4.50", "-4.5"),
        ("0.000", "0"),
        ("-0", "0"),
        (".5", "0.5"),
        ("+2", "2"),
        ("1e-9", "0.000000001"),
        ("1.5000000000000", "1.5"),
        ("999999999999999999.999999999", "999999999999999999.999999999"),
        (1322, "1322"),
        (15.99, "15.99"),
    ],
)
def test_amounts_are_kept_as_their_exact_decimal_text(sent: Any, kept: str) -> None:
    assert revenue.amount(sent) == kept


@pytest.mark.parametrize(
    "sent",
    ["1e-10", "1000000000000000000", "NaN", "Infinity", " 1", "1,5", "", "0x10", "1e99999999999",
     True, None, [], {}, 10**18, "9" * 65],
)  # fmt: skip
def test_amounts_out_of_bounds_or_not_numbers_are_refused(sent: Any) -> None:
    assert revenue.amount(sent) is None


def test_currencies_are_three_letters_upper_cased() -> None:
    assert revenue.currency("usd") == "USD" and revenue.currency("EUR") == "EUR"
    for bad in ("US", "USDT", "ÜSD", "U1D", 840, None):
        assert revenue.currency(bad) is None


@given(st.decimals(allow_nan=False, allow_infinity=False, places=9,
                   min_value=Decimal("-1e18") + Decimal("1e-9"),
                   max_value=Decimal("1e18") - Decimal("1e-9")))  # fmt: skip
def test_every_bounded_amount_survives_exactly_into_duckdbs_decimal(value: Decimal) -> None:
    # As sent in JSON text (exponent or not) and as a string: the kept text is the
    # same number, and DuckDB's CAST to the planner's type reads it without rounding.
    for spelling in (str(value), format(value, "f"), format(value, "e")):
        kept = revenue.amount(spelling)
        assert kept is not None and Decimal(kept) == value, spelling
        cast = DB.execute(f"SELECT CAST(? AS {revenue.SQL_TYPE})", [kept]).fetchone()
        assert cast is not None and cast[0] == value


AMOUNTS = st.decimals(allow_nan=False, allow_infinity=False, places=9, min_value=-(10**6),
                      max_value=10**6)  # fmt: skip


@given(st.lists(st.tuples(st.sampled_from(["USD", "EUR", None]), AMOUNTS), max_size=30))
def test_amount_sql_sums_exactly_per_currency(rows: list[tuple[str | None, Decimal]]) -> None:
    # What the planner sums: revenue.amount_sql over archived payloads, per currency,
    # equals the exact decimal sum of what was sent (events without revenue are NULL).
    payloads = []
    for code, value in rows:
        payload: dict[str, Any] = {"page_url": "https://a.example/"}
        if code is not None:
            payload |= {"revenue_amount": revenue.amount(str(value)), "revenue_currency": code}
        payloads.append((orjson.dumps(payload).decode(),))
    DB.execute("CREATE OR REPLACE TEMP TABLE rec (payload JSON)")
    if payloads:
        DB.executemany("INSERT INTO rec VALUES (?)", payloads)
    got = DB.execute(
        f"SELECT {revenue.currency_sql('payload')} AS c, sum({revenue.amount_sql('payload')}) "
        "FROM rec WHERE c IS NOT NULL GROUP BY c ORDER BY c"
    ).fetchall()
    want: dict[str, Decimal] = {}
    for code, value in rows:
        if code is not None:
            want[code] = want.get(code, Decimal(0)) + value
    assert got == sorted(want.items())


def test_amount_sql_reads_legacy_numbers_and_skips_bad_text() -> None:
    # Plausible revenue archived before this shape: a JSON number, a lower-case code.
    rows = [
        '{"revenue_amount": 15.99, "revenue_currency": "usd"}',
        '{"revenue_amount": "lots", "revenue_currency": "USD"}',
        '{"page_url": "x"}',
    ]
    got = DB.execute(
        f"SELECT {revenue.currency_sql('p')}, {revenue.amount_sql('p')} "
        "FROM (SELECT unnest(?)::JSON AS p)",
        [rows],
    ).fetchall()
    assert got == [("USD", Decimal("15.99")), ("USD", None), (None, None)]


# -- Plausible's events API: {"amount", "currency"}, as an object or as JSON text ------


def _plausible(money: Any) -> plausible.Mapped:
    body = parse_json(
        b'{"n": "Purchase", "u": "https://shop.example/thanks", "d": "shop.example", "$": %s}'
        % money
    )
    return plausible.map_event(body, NOW, salt=b"s" * 32, ip="1.2.3.4", user_agent="t",
                               enricher=None)  # fmt: skip


@pytest.mark.parametrize(
    ("money", "amount", "currency"),
    [
        (b'{"currency": "USD", "amount": 1322.22}', "1322.22", "USD"),
        (b'{"currency": "usd", "amount": "1322.22"}', "1322.22", "USD"),
        # More digits than a float holds: exact here, where a property would be dropped.
        (b'{"currency": "EUR", "amount": 12345678901234567.25}', "12345678901234567.25", "EUR"),
        (b'"{\\"amount\\": \\"9.990\\", \\"currency\\": \\"GBP\\"}"', "9.99", "GBP"),
    ],
)
def test_plausible_revenue_is_kept_exact(money: bytes, amount: str, currency: str) -> None:
    mapped = _plausible(money)
    assert mapped.event is not None and mapped.dropped == []
    payload = mapped.event["payload"]
    assert (payload["revenue_amount"], payload["revenue_currency"]) == (amount, currency)
    assert validate_event(mapped.event).payload.as_record()["revenue_amount"] == amount


@pytest.mark.parametrize(
    ("money", "reason"),
    [
        (b'{"currency": "USD", "amount": "lots"}', "invalid_revenue"),
        (b'{"currency": "USD", "amount": 0.0000000001}', "invalid_revenue"),
        (b'{"currency": "USD"}', "invalid_revenue"),
        (b'{"currency": "dollars", "amount": 5}', "invalid_currency"),
        (b'{"amount": 5}', "invalid_currency"),
        (b"5", "invalid_revenue"),
    ],
)
def test_plausible_bad_revenue_is_dropped_with_its_reason(money: bytes, reason: str) -> None:
    mapped = _plausible(money)
    assert mapped.event is not None  # the event itself is kept, as with a bad property
    assert [d.as_dict() for d in mapped.dropped] == [{"property": "revenue", "reason": reason}]
    assert "revenue_amount" not in mapped.event["payload"]
    assert "revenue_currency" not in mapped.event["payload"]


# -- Segment: properties.revenue and properties.currency (USD when absent) --------------


def _segment(properties: dict[str, Any], kind: str = "track") -> segment.Mapped:
    message = {"type": kind, "event": "Order Completed", "userId": "u1", "messageId": "m-1",
               "properties": properties}  # fmt: skip
    return segment.map_message(0, message, NOW, None)


def test_segment_revenue_and_currency_become_the_revenue_fields() -> None:
    body = parse_json(b'{"revenue": 25.00, "currency": "eur", "order_id": "o1"}')
    mapped = _segment(body)
    assert mapped.event is not None and mapped.dropped == []
    want = {"revenue_amount": "25", "revenue_currency": "EUR",
            "event_name": "Order Completed", "order_id": "o1"}  # fmt: skip
    assert mapped.event["payload"] == want
    no_currency = _segment({"revenue": "19.99"})
    assert no_currency.event is not None
    assert no_currency.event["payload"]["revenue_currency"] == "USD"  # Segment's default


def test_segment_bad_revenue_is_dropped_and_a_posing_property_is_reserved() -> None:
    mapped = _segment({"revenue": "free", "currency": "USD", "revenue_amount": "5"})
    assert mapped.event is not None
    assert [d.as_dict() for d in mapped.dropped] == [
        {"property": "revenue", "reason": "invalid_revenue"},
        {"property": "revenue_amount", "reason": "reserved"},
    ]
    assert "revenue_amount" not in mapped.event["payload"]
    validate_event(mapped.event)  # what the adapter keeps is always a valid event
    # A currency without revenue is an ordinary property.
    plain = _segment({"currency": "USD"})
    assert plain.event is not None and plain.event["payload"]["currency"] == "USD"


# -- native events: payload.revenue_amount + payload.revenue_currency ---------------------


def _native(payload: bytes) -> dict[str, Any]:
    body = (b'{"event_id": "123e4567-e89b-12d3-a456-426614174000", "user_id": "u", '
            b'"timestamp": "2026-11-27T22:00:00Z", "event_type": "purchase", "payload": %s}'
            % payload)  # fmt: skip
    value = decode_json(body)
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize(
    ("payload", "amount"),
    [
        (b'{"revenue_amount": 19.99, "revenue_currency": "usd"}', "19.99"),
        (b'{"revenue_amount": "19.990", "revenue_currency": "USD"}', "19.99"),
        (b'{"revenue_amount": 0.123456789, "revenue_currency": "USD"}', "0.123456789"),
        (b'{"revenue_amount": 100, "revenue_currency": "USD"}', "100"),
    ],
)
def test_native_revenue_fields_are_stored_exact(payload: bytes, amount: str) -> None:
    record = validate_event(_native(payload)).payload.as_record()
    assert record == {"revenue_amount": amount, "revenue_currency": "USD"}


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        (b'{"revenue_amount": "abc", "revenue_currency": "USD"}', "invalid_revenue",
         "payload.revenue_amount"),
        (b'{"revenue_amount": 1e30, "revenue_currency": "USD"}', "invalid_revenue",
         "payload.revenue_amount"),
        (b'{"revenue_amount": 5, "revenue_currency": "dollar"}', "invalid_currency",
         "payload.revenue_currency"),
        (b'{"revenue_amount": 5}', "incomplete_revenue", "payload"),
        (b'{"revenue_currency": "USD"}', "incomplete_revenue", "payload"),
    ],
)  # fmt: skip
def test_native_bad_revenue_is_refused_naming_the_field(
    payload: bytes, code: str, field: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate_event(_native(payload))
    assert [(e.code, e.field) for e in caught.value.errors] == [(code, field)]
    assert "{" not in caught.value.errors[0].message  # no placeholder left in the text
