"""One number model (issue 13): /events and /events/batch accept and refuse exactly the
same values, big integers and inexact floats are refused with a reason, and a key sent
twice in one object is a 400, not a silent last-one-wins.

Refused before storage: one engine says all there is.
"""

from __future__ import annotations

import pytest

from tests.helpers import HTTP, event
from tests.servers import ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("engine", ["valkey"], indirect=True)]
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
def test_both_routes_agree_on_numbers(live: ServiceProcess, raw: bytes, code: str | None) -> None:
    one = HTTP.post(f"{live.url}/events", content=_with_number(raw), headers=JSON)
    batch_body = b'{"events": [' + _with_number(raw) + b"]}"
    batch = HTTP.post(f"{live.url}/events/batch", content=batch_body, headers=JSON)
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
def test_duplicate_keys_are_refused_on_both_routes(live: ServiceProcess, body: bytes) -> None:
    good = event()
    fill = [good["event_id"].encode()] * body.count(b'"event_id"') + [good["timestamp"].encode()]
    raw = body % tuple(fill)
    for path, content in (("/events", raw), ("/events/batch", b'{"events": [' + raw + b"]}")):
        r = HTTP.post(f"{live.url}{path}", content=content, headers=JSON)
        assert r.status_code == 400, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"].endswith(":duplicate-key"), r.text
    # And the envelope itself.
    twice = b'{"events": [], "events": [' + raw.replace(b"b.example", b"c.example") + b"]}"
    r = HTTP.post(f"{live.url}/events/batch", content=twice, headers=JSON)
    assert r.status_code == 400 and r.json()["type"].endswith(":duplicate-key"), r.text
