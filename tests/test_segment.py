"""Segment's HTTP Tracking API with Segment's own Python SDK (segment-analytics-python),
pointed at the real service with ``host=``: every message counted exactly once, retries
included; the endpoints' answers, keys and limits over plain HTTP."""

from __future__ import annotations

import base64
import gzip
import logging
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from segment.analytics import Client
from segment.analytics.request import APIError

from event_analytics.adapters.segment import event_id
from tests.backends import Backend, own_engine_env
from tests.helpers import HTTP, wait_for
from tests.inproc import InProcessService, in_process
from tests.lossy_proxy import LossyProxy
from tests.readback import archived, total
from tests.servers import ServiceProcess, stopped_after

NAMES = ["Order Completed", "Signed Up", "Product Viewed"]
WRITE_KEY = "segment-write-key-0123456789"


def _traffic(rng: random.Random, n: int) -> list[tuple[str, dict[str, object]]]:
    """(kind, kwargs) of n SDK calls: tracks of a few names and pages, users as emails."""
    calls: list[tuple[str, dict[str, object]]] = []
    for i in range(n):
        user = f"user{rng.randrange(8)}@example.com"
        if rng.random() < 0.3:
            url = f"https://shop.example/p/{rng.randrange(4)}"
            calls.append(("page", {"user_id": user, "name": "Product", "properties": {"url": url}}))
        else:
            props = {"order": {"id": i, "total": rng.randrange(100)}, "coupon": "X"}
            calls.append(
                ("track", {"user_id": user, "event": rng.choice(NAMES), "properties": props})
            )
    return calls


def _model(calls: list[tuple[str, dict[str, object]]]) -> Counter[str]:
    expected: Counter[str] = Counter()
    for kind, kw in calls:
        if kind == "page":
            expected["page_view"] += 1
        else:
            expected[str(kw["event"]).lower().replace(" ", "_")] += 1
    return expected


def _send(client: Client, calls: list[tuple[str, dict[str, object]]]) -> list[str]:
    ids = []
    for kind, kw in calls:
        message_id = str(uuid.uuid4()) if len(ids) % 2 else f"msg-{uuid.uuid4().hex[:12]}"
        ok, _ = getattr(client, kind)(message_id=message_id, **kw)
        assert ok
        ids.append(message_id)
    return ids


def _counts(svc: ServiceProcess, since: datetime) -> Counter[str]:
    return Counter(
        {
            t: total(svc, t, since)
            for t in ["page_view"] + [n.lower().replace(" ", "_") for n in NAMES]
        }
    )


def test_python_sdk_in_sync_mode_counts_each_message_once(live: ServiceProcess) -> None:
    since = datetime.now(UTC)
    calls = _traffic(random.Random(1), 40)
    client = Client("any-key", host=live.url, sync_mode=True)
    ids = _send(client, calls)
    assert _counts(live, since) == _model(calls)
    # The same messageIds again (what a retry sends): duplicates, nothing changes.
    again = Client("any-key", host=live.url, sync_mode=True)
    for (kind, kw), message_id in zip(calls[:10], ids, strict=False):
        getattr(again, kind)(message_id=message_id, **kw)
    assert _counts(live, since) == _model(calls)


def test_python_sdk_gzip_bodies(live: ServiceProcess) -> None:
    since = datetime.now(UTC)
    calls = _traffic(random.Random(5), 20)
    _send(Client("any-key", host=live.url, sync_mode=True, gzip=True), calls)
    assert _counts(live, since) == _model(calls)
    bomb = gzip.compress(b'{"batch": [' + b" " * 2_000_000 + b"]}")  # 2 MB inflated
    reply = HTTP.post(
        f"{live.url}/v1/batch",
        content=bomb,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert reply.status_code == 400 and "larger than" in reply.json()["detail"]
    brotli = HTTP.post(
        f"{live.url}/v1/batch",
        content=b"{}",
        headers={"content-type": "application/json", "content-encoding": "br"},
    )
    assert brotli.status_code == 415


def test_python_sdk_batching_thread_retries_lost_answers_exactly_once(
    live: ServiceProcess, caplog: pytest.LogCaptureFixture
) -> None:
    since = datetime.now(UTC)
    calls = _traffic(random.Random(2), 250)
    caplog.set_level(logging.CRITICAL, logger="segment")  # its retry warnings are expected
    # The first 3 uploads reach the service and are stored, but their answers are lost:
    # the SDK retries those batches (same messageIds), as it would after a network drop.
    with LossyProxy(live.port, lose=3) as proxy:
        client = Client(
            "any-key", host=proxy.url, upload_size=50, max_retries=6, upload_interval=0.05
        )
        _send(client, calls)
        client.flush()
        client.join()
    assert proxy.lost == 3 and proxy.forwarded > 3 + 250 // 50 - 1  # retries happened
    assert _counts(live, since) == _model(calls)


def test_mapped_fields_reach_the_archive(live: ServiceProcess) -> None:
    run = uuid.uuid4().hex[:8]  # the session's archive holds other tests' events too
    errors: list[object] = []
    client = Client(
        "any-key", host=live.url, sync_mode=True, on_error=lambda e, _: errors.append(e)
    )
    client.track(
        "ada@example.com",
        "Order Completed",
        # Segment's revenue and currency: the payload's exact revenue fields.
        {"product": {"sku": "A1"}, "x": "y" * 2000, "revenue": 1322.22, "currency": "eur"},
        message_id=f"order-{run}",
        context={
            "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone "
            "OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 "
            "Mobile/15E148 Safari/604.1",
            "ip": "81.2.69.160",
        },
    )
    client.identify("ada@example.com", {"plan": "pro"}, message_id=f"ident-{run}")
    assert not errors, errors  # both sends answered 200
    reply = HTTP.post(
        f"{live.url}/v1/track", json={"userId": "u", "event": "E", "properties": {"x": "y" * 2000}}
    )
    assert reply.status_code == 200
    assert reply.json()["results"][0]["dropped"] == [{"property": "x", "reason": "too_long"}]
    mine = {str(event_id(f"order-{run}")), str(event_id(f"ident-{run}"))}
    # Until both are in the files (bounded). Reading the files once after the streams'
    # backlog read empty missed both records in some full-suite runs: not explained yet.
    wait_for(lambda: mine <= {str(r["event_id"]) for r in archived(live.data_dir)}, 60)
    found = archived(live.data_dir)
    records = {str(r["event_type"]): r for r in found if r["event_id"] in mine}
    order = records["order_completed"]
    assert order["user_id"] == "ada@example.com"
    assert order["payload"] == {
        "revenue_amount": "1322.22",
        "revenue_currency": "EUR",
        "event_name": "Order Completed",
        "browser": "Mobile Safari",
        "os": "iOS",
        "device": "mobile",
        "country": "GB",
        "product.sku": "A1",
    }
    assert records["identify"]["payload"] == {"plan": "pro"}
    assert "81.2.69.160" not in str(records)


def test_batch_answers_one_result_per_message(api: InProcessService) -> None:
    now = datetime.now(UTC).isoformat()
    batch = [
        {
            "type": "track",
            "event": "Signed Up",
            "userId": "a",
            "messageId": "b-1",
            "timestamp": now,
        },
        {"type": "track", "event": "Signed Up", "messageId": "b-2"},
        {"type": "page", "anonymousId": "anon", "messageId": "b-3"},
        {"type": "track", "event": "Signed Up", "userId": "a", "messageId": "b-1"},
        {"type": "screen", "userId": "a", "name": "Home", "timestamp": "2001-01-01T00:00:00Z"},
    ]
    reply = api.http.post(f"{api.url}/v1/batch", json={"batch": batch})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["success"] is True
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (1, 1, 3)
    got = [(r["messageId"], r["status"], r.get("code")) for r in body["results"]]
    assert got == [
        ("b-1", "accepted", None),
        ("b-2", "rejected", "missing_user"),
        ("b-3", "rejected", "missing_page_url"),
        ("b-1", "duplicate", None),
        (None, "rejected", "timestamp_too_old"),
    ]
    assert body["results"][1]["field"] == "batch.1.userId"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b'{"batch": []}', 422),
        # Over 500 KB: 400, as Segment answers (the SDKs do not retry it).
        (b'{"batch": [' + b'{"type":"track","event":"E","userId":"u"},' * 13000 + b"{}]}", 400),
        (b'{"batch": [' + b"{}," * 2500 + b"{}]}", 422),  # over 2,500 messages
    ],
)
def test_bad_requests_are_problems_not_5xx(api: InProcessService, body: bytes, status: int) -> None:
    reply = api.http.post(
        f"{api.url}/v1/batch", content=body, headers={"content-type": "application/json"}
    )
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"


@pytest.fixture(params=["embedded", "cluster"])
def keyed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServiceProcess]:
    env = own_engine_env(request, "segkey:") | {"EA_WRITE_KEYS": WRITE_KEY}
    with stopped_after(ServiceProcess(tmp_path / "data", env)) as svc:
        yield svc


@pytest.mark.slow
def test_write_key_as_basic_user_or_in_the_body(keyed: ServiceProcess) -> None:
    since = datetime.now(UTC)
    Client(WRITE_KEY, host=keyed.url, sync_mode=True).track("u1", "Signed Up")  # Basic
    message = {"userId": "u2", "event": "Signed Up"}
    assert (
        HTTP.post(f"{keyed.url}/v1/track", json={**message, "writeKey": WRITE_KEY}).status_code
        == 200
    )
    basic = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    assert (
        HTTP.post(
            f"{keyed.url}/v1/track", json=message, headers={"Authorization": f"Basic {basic}"}
        ).status_code
        == 200
    )
    assert HTTP.post(f"{keyed.url}/v1/track", json=message).status_code == 401
    wrong = HTTP.post(f"{keyed.url}/v1/track", json={**message, "writeKey": "wrong-key-123456789"})
    assert wrong.status_code == 401
    with pytest.raises(APIError) as info:
        Client("not-the-key-0123456789", host=keyed.url, sync_mode=True).track("u3", "Signed Up")
    assert info.value.status == 401
    assert total(keyed, "signed_up", since) == 3


def test_the_routes_are_the_paths_security_knows() -> None:
    from event_analytics.api import compat
    from event_analytics.api.security import KEYLESS_PATHS, SEGMENT_PATHS

    assert set(compat.ROUTES) == SEGMENT_PATHS | KEYLESS_PATHS


@pytest.fixture
def event_limited(db: Backend, tmp_path: Path) -> Iterator[InProcessService]:
    """The app in this process (tests.inproc) on each engine, emptied: the limits are the
    app's and the engine's counters; no worker or socket needed."""
    settings = db.settings(
        data_dir=tmp_path / "data",
        key_prefix="segrl:",
        event_limit_per_address=5,
        rate_limit_window_s=3600,
    )
    with in_process(settings, db.env | {"EA_KEY_PREFIX": "segrl:"}) as svc:
        yield svc


def test_event_rate_limits_count_messages(event_limited: InProcessService) -> None:
    since = datetime.now(UTC)
    msgs = [{"type": "track", "event": "E", "userId": "u", "messageId": f"r-{i}"} for i in range(4)]
    assert (
        event_limited.http.post(f"{event_limited.url}/v1/batch", json={"batch": msgs}).status_code
        == 200
    )
    over = event_limited.http.post(f"{event_limited.url}/v1/batch", json={"batch": msgs[:2]})
    assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
    body = b'{"n":"pageview","u":"https://a.example/","d":"a.example"}'
    one = event_limited.http.post(
        f"{event_limited.url}/api/event", content=body, headers={"content-type": "text/plain"}
    )
    assert one.status_code == 202  # the fifth event
    again = event_limited.http.post(
        f"{event_limited.url}/api/event", content=body, headers={"content-type": "text/plain"}
    )
    assert again.status_code == 429
    assert total(event_limited, "e", since) == 4
