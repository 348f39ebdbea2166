"""One number model (issue 13): /events and /events/batch accept and refuse exactly the
same values, big integers and inexact floats are refused with a reason, and a key sent
twice in one object is a 400, not a silent last-one-wins.

Refused before storage: one engine says all there is. The app in this process (``api``)
answers everything but the archive's check, which needs the service's archiver (``live``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from tests.helpers import HTTP, event, wait_for
from tests.inproc import InProcessService
from tests.readback import archived, total
from tests.servers import ServiceProcess

pytestmark = pytest.mark.parametrize("engine", ["valkey"], indirect=True)
JSON = {"content-type": "application/json"}

# Raw JSON number -> the reason code it is refused with, or None when accepted as is.
NUMBERS: list[tuple[bytes, str | None]] = [
    (b"1" + b"0" * 29, "property_out_of_range"),  # a 30-digit integer (batch stored 1e+30)
    (b"-9223372036854775809", "property_out_of_range"),
    (b"18446744073709551616", "property_out_of_range"),
    (b"1." + b"0" * 59_990 + b"1", "property_not_exact"),  # 60,000 digits (stored as 1.0)
    (b"0.12345678901234567890123", "property_not_exact"),
    (b"1e400", "property_out_of_range"),
    (b"-1e400", "property_out_of_range"),
    (b"1e-400", "property_not_exact"),  # underflows to 0.0
    (b"9223372036854775807", None),
    (b"-9223372036854775808", None),
    (b"0.1", None),
    (b"1.50", None),
    (b"-2.5e-300", None),
    (b"1.7976931348623157e308", None),
]


def _with_number(raw: bytes) -> bytes:
    body = HTTP.build_request("POST", "/", json=event()).content
    return body.replace(b'"payload":{', b'"payload":{"n":' + raw + b",")


@pytest.mark.parametrize(("raw", "code"), NUMBERS, ids=lambda v: str(v)[:24])
def test_both_routes_agree_on_numbers(api: InProcessService, raw: bytes, code: str | None) -> None:
    one = api.http.post(f"{api.url}/events", content=_with_number(raw), headers=JSON)
    batch_body = b'{"events": [' + _with_number(raw) + b"]}"
    batch = api.http.post(f"{api.url}/events/batch", content=batch_body, headers=JSON)
    assert batch.status_code == 200, batch.text
    row = batch.json()["results"][0]
    if code is None:
        assert one.status_code == 201, one.text
        assert row["status"] == "accepted", row
    else:
        assert one.status_code == 422, one.text
        assert one.json()["errors"][0]["code"] == code, one.text
        assert row["status"] == "rejected" and row["code"] == code, row


@pytest.mark.parametrize(
    "body",
    [
        b'{"event_id": "%s", "event_id": "%s", "user_id": "u", "timestamp": "%s", '
        b'"payload": {"page_url": "https://a.example/"}}',
        b'{"event_id": "%s", "user_id": "u", "timestamp": "%s", '
        b'"payload": {"page_url": "https://a.example/", "page_url": "https://b.example/"}}',
    ],
    ids=["top-level", "payload"],
)
def test_duplicate_keys_are_refused_on_both_routes(api: InProcessService, body: bytes) -> None:
    good = event()
    fill = [good["event_id"].encode()] * body.count(b'"event_id"') + [good["timestamp"].encode()]
    raw = body % tuple(fill)
    for path, content in (("/events", raw), ("/events/batch", b'{"events": [' + raw + b"]}")):
        r = api.http.post(f"{api.url}{path}", content=content, headers=JSON)
        assert r.status_code == 400, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"].endswith(":duplicate-key"), r.text
    # And the envelope itself.
    twice = b'{"events": [], "events": [' + raw.replace(b"b.example", b"c.example") + b"]}"
    r = api.http.post(f"{api.url}/events/batch", content=twice, headers=JSON)
    assert r.status_code == 400 and r.json()["type"].endswith(":duplicate-key"), r.text


# -- the drop-in routes: the same numbers through Segment's and Plausible's mappings -----
# There a property that cannot be kept is dropped visibly (the message is kept, the drop
# listed in its result); a number is kept only when it is stored as the number sent.
DROP_REASON = {"property_out_of_range": "out_of_range", "property_not_exact": "not_exact"}


def _exactly(raw: bytes) -> int | float:
    text = raw.decode()
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _segment_message(i: int, raw: bytes) -> bytes:
    message = (b'{"type": "track", "event": "Numbers", "userId": "num", "messageId": "n-%s-%d", '
               b'"properties": {"cart": {"n": %s}}}')  # fmt: skip
    return message % (str(uuid.uuid4()).encode(), i, raw)


# A Segment message is at most 32 KB (a Plausible body 64 KB): 20,000 digits here.
DROP_IN_NUMBERS = [(r if len(r) < 1000 else b"1." + b"0" * 20_000 + b"1", c) for r, c in NUMBERS]


def test_segment_keeps_a_number_only_as_sent(live: ServiceProcess) -> None:
    messages = b",".join(_segment_message(i, r) for i, (r, _) in enumerate(DROP_IN_NUMBERS))
    reply = HTTP.post(f"{live.url}/v1/batch", content=b'{"batch": [' + messages + b"]}",
                      headers=JSON)  # fmt: skip
    assert reply.status_code == 200, reply.text
    rows = reply.json()["results"]
    assert [r["status"] for r in rows] == ["accepted"] * len(NUMBERS), rows
    for (raw, code), row in zip(DROP_IN_NUMBERS, rows, strict=True):
        want = [] if code is None else [{"property": "cart.n", "reason": DROP_REASON[code]}]
        assert row.get("dropped", []) == want, (raw[:30], row)
    ids = {r["event_id"]: raw for r, (raw, _) in zip(rows, DROP_IN_NUMBERS, strict=True)}
    wait_for(lambda: set(ids) <= {r["event_id"] for r in archived(live.data_dir)}, 60)
    for record in archived(live.data_dir):
        if record["event_id"] in ids:
            raw = ids[record["event_id"]]
            stored = record["payload"].get("cart.n")
            code = dict(DROP_IN_NUMBERS)[raw]
            assert stored == (None if code else _exactly(raw)), (raw[:30], stored)
    # One message on its own route reads numbers the same way.
    one = _segment_message(99, b"1" + b"0" * 29).replace(b'"type": "track", ', b"")
    single = HTTP.post(f"{live.url}/v1/track", content=one, headers=JSON)
    assert single.status_code == 200, single.text
    assert single.json()["results"][0]["dropped"] == [{"property": "cart.n",
                                                      "reason": "out_of_range"}]  # fmt: skip


@pytest.mark.parametrize(("raw", "code"), DROP_IN_NUMBERS, ids=lambda v: str(v)[:24])
def test_plausible_props_and_revenue_read_numbers_as_sent(
    api: InProcessService, raw: bytes, code: str | None
) -> None:
    # Props as the tracker sends them (JSON text inside the body) and as an object.
    number = raw.decode()
    as_text = orjson.dumps({"n": "Buy", "u": "https://num.example/", "d": "num.example",
                            "p": f'{{"n": {number}}}',
                            "$": f'{{"amount": {number}, "currency": "EUR"}}'})  # fmt: skip
    as_object = (b'{"n": "Buy", "u": "https://num.example/", "d": "num.example", '
                 b'"props": {"n": %s}}' % raw)  # fmt: skip
    # A revenue amount is not a float: kept as exact decimal text when within its bounds
    # (18 digits before the point, 9 after), dropped as invalid_revenue otherwise.
    value = Decimal(number)
    money_ok = abs(value) < 10**18 and value == round(value, 9)
    money = [] if money_ok else [{"property": "revenue", "reason": "invalid_revenue"}]
    for body, extra in ((as_text, money), (as_object, [])):
        reply = api.http.post(f"{api.url}/api/event", content=body, headers=JSON)
        assert reply.status_code == 202, reply.text
        dropped = reply.json().get("dropped", [])
        want = [] if code is None else [{"property": "n", "reason": DROP_REASON[code]}]
        assert sorted(dropped, key=str) == sorted(want + extra, key=str), (raw[:30], dropped)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/batch", b'{"batch": [{"type": "track", "event": "E", "userId": "u",'
                      b' "userId": "v"}]}'),
        ("/v1/track", b'{"event": "E", "userId": "u", "properties": {"a": 1, "a": 2}}'),
        ("/v1/batch", b'{"batch": [], "batch": [{"type": "track", "event": "E", "userId": "u"}]}'),
        ("/api/event", b'{"n": "pageview", "u": "https://a.example/", "u": "https://b.example/",'
                       b' "d": "a.example"}'),
        ("/api/event", b'{"n": "Buy", "u": "https://a.example/", "d": "a.example",'
                       b' "p": "{\\"plan\\": \\"a\\", \\"plan\\": \\"b\\"}"}'),
    ],
    ids=["segment-message", "segment-properties", "segment-envelope", "plausible-body",
         "plausible-props-text"],
)  # fmt: skip
def test_duplicate_keys_are_refused_on_the_drop_in_routes(
    api: InProcessService, path: str, body: bytes
) -> None:
    since = datetime.now(UTC)
    r = api.http.post(f"{api.url}{path}", content=body, headers=JSON)
    assert r.status_code == 400, (path, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith(":duplicate-key"), r.text
    assert total(api, "e", since) == total(api, "page_view", since) == 0
    assert total(api, "buy", since) == 0
