"""The seed's endpoints and every bad-input case, over HTTP: in-process against the app
(``api``) on each engine, and against the service process (``live``) where the archiver or
a socket is part of the check."""

from __future__ import annotations

import collections
import select
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from event_analytics.timebucket import Interval
from tests.backends import Backend
from tests.helpers import HTTP, IST, event, seed_key
from tests.inproc import InProcessService, Service
from tests.servers import ServiceProcess

PROBLEM = "application/problem+json"


def post(svc: Service, body: object, **kw: object) -> httpx.Response:
    return svc.http.post(f"{svc.url}/events", json=body, **kw)  # type: ignore[arg-type]


def bucket(svc: Service, key: str) -> dict[str, object]:
    r = svc.http.get(f"{svc.url}/analytics/minute-buckets/{key}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_health_and_ready(api: InProcessService) -> None:
    r = api.http.get(f"{api.url}/health/")
    assert r.status_code == 200
    assert r.json()["status"] == "healthy" and r.json()["service"] == "event-analytics"
    ready = api.http.get(f"{api.url}/health/ready").json()
    assert ready["status"] == "ready"
    assert ready["engine"]["reachable"] is True
    # The fixture engines run appendfsync always; readiness must report the policy it found.
    assert ready["engine"]["appendfsync"] == "always"
    assert ready["ack_durability"] == "fsync_always"


def test_seed_postman_event_shape(api: InProcessService) -> None:
    body = event(user="user_1", url="https://example.com/page-1")
    r = post(api, body)
    assert r.status_code == 201, r.text
    assert r.json() == {
        "success": True,
        "message": "page_view event stored",
        "event_id": body["event_id"],
        "duplicate": False,
    }


@pytest.mark.parametrize("event_type", ["signup", "purchase", "page_view"])
def test_the_message_is_true_for_every_event_type(api: InProcessService, event_type: str) -> None:
    """The seed's ``message`` field is kept, and says what happened to this event: stored
    (before the 201), of its type. It said "Page view event accepted and queued for
    processing" for every type, and nothing is queued (issue 21, item 6)."""
    url = None if event_type != "page_view" else "https://example.com/m"
    body = event(user="msg_user", url=url, event_type=event_type)
    first, again = post(api, body), post(api, body)
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert first.json()["message"] == f"{event_type} event stored"
    assert again.json()["message"] == "Duplicate event_id: already counted, nothing changed"


def test_duplicate_changes_nothing(live: ServiceProcess, db: Backend) -> None:
    body = event(user="dup_user")
    assert post(live, body).status_code == 201
    client = db.client()
    tag = f"ea:{{{db.keys().shard_of('dup_user')}}}:"

    def counters() -> dict[str, object]:
        # Counters, user sets and dedup sets; the stream is drained by the archiver.
        names = db.scan(f"{tag}page_view:*") + db.scan(f"{tag}seen:*")
        return {k: (client.type(k), client.dump(k)) for k in names}

    before = counters()
    assert len(before) == 11  # seen; minute x4; hour count, hll, pages, page hll; day x2
    again = post(live, body)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert counters() == before
    client.close()
    assert _archived(live, {body["event_id"]}) == {body["event_id"]: 1}


def test_a_resend_with_another_hour_or_body_is_a_duplicate(live: ServiceProcess) -> None:
    # An event_id counts once whatever a resend changes (here its hour and page): 200
    # duplicate, not counted, not archived again. The first body wins (docs/api.md).
    now = datetime.now(UTC).replace(microsecond=0)
    first = event(user="dup_hour", ts=now - timedelta(minutes=1))
    assert post(live, first).status_code == 201
    for hours in (2, 30):
        again = {**first, "timestamp": (now - timedelta(hours=hours)).isoformat()}
        again["payload"] = {"page_url": "https://example.com/another"}
        r = post(live, again)
        assert r.status_code == 200 and r.json()["duplicate"] is True
        r = HTTP.post(f"{live.url}/events/batch", json={"events": [again]})
        assert r.json()["results"][0]["status"] == "duplicate"
    assert _archived(live, {first["event_id"]}) == {first["event_id"]: 1}


def test_offset_lands_in_utc_minute(api: InProcessService) -> None:
    utc_ts = (datetime.now(UTC) - timedelta(minutes=2)).replace(second=30, microsecond=0)
    assert post(api, event(ts=utc_ts.astimezone(IST))).status_code == 201
    # Naive = UTC.
    assert post(api, event(ts=utc_ts.replace(tzinfo=None).isoformat())).status_code == 201
    got = bucket(api, seed_key(utc_ts))
    assert got["count"] == 2
    assert got[seed_key(utc_ts)] == 2
    # The IST wall-clock minute (5 h 30 min later) must stay empty.
    wrong = utc_ts.replace(tzinfo=None) + timedelta(hours=5, minutes=30)
    assert bucket(api, seed_key(wrong.replace(tzinfo=UTC)))["count"] == 0


def test_page_views_per_minute(api: InProcessService) -> None:
    now = datetime.now(UTC)
    sent = {0: ["a", "b", "a"], 2: ["c"]}
    for ago, users in sent.items():
        for user in users:
            ts = now - timedelta(minutes=ago)
            assert post(api, event(user=user, ts=ts)).status_code == 201
    # A click is another type: not a page view.
    assert post(api, event(event_type="click", url=None)).status_code == 201
    rows = api.http.get(f"{api.url}/analytics/page_views_per_minute", params={"minutes": 5}).json()
    # The minute may have turned since `now`: locate rows by timestamp.
    by_minute = {r["minute_timestamp"]: (r["count"], r["unique_users"]) for r in rows}
    assert len(rows) == 5
    assert [r["minute_timestamp"] for r in rows] == sorted(by_minute)
    for ago, users in sent.items():
        minute = (now - timedelta(minutes=ago)).replace(second=0, microsecond=0)
        key = minute.strftime("%Y-%m-%dT%H:%M:%SZ")
        if key in by_minute:
            assert by_minute[key] == (len(users), len(set(users)))
    assert sum(c for c, _ in by_minute.values()) <= 4
    assert (
        api.http.get(f"{api.url}/analytics/page_views_per_minute?minutes=1441").status_code == 422
    )


def test_minute_bucket_of_other_type_and_bad_key(api: InProcessService) -> None:
    ts = datetime.now(UTC) - timedelta(minutes=1)
    assert post(api, event(event_type="signup", url=None, ts=ts)).status_code == 201
    assert bucket(api, seed_key(ts, "signup"))["count"] == 1
    for bad in ["page_view_2024-13-07_12:34", "nonsense", "Page_View_2024-06-07_12:34"]:
        r = api.http.get(f"{api.url}/analytics/minute-buckets/{bad}")
        assert r.status_code == 422, bad
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["errors"][0]["code"] == "invalid_bucket_key"


def test_old_minutes_are_retained(api: InProcessService, db: Backend) -> None:
    ts = datetime.now(UTC) - timedelta(days=6, hours=23)
    assert post(api, event(ts=ts)).status_code == 201
    assert bucket(api, seed_key(ts))["count"] == 1
    keys = db.keys()
    client = db.client()
    ttl = client.ttl(keys.count(keys.shard_of("user_1"), "page_view", Interval.MINUTE, ts))
    client.close()
    # Kept 7 days after the minute ends: at least 60 minutes remain for a 6d23h-old event.
    assert 55 * 60 < ttl <= 62 * 60


def _archived(svc: ServiceProcess, ids: set[str]) -> collections.Counter[str]:
    """How often each of ``ids`` is in the service's archive, once all are (bounded wait).

    The session's service keeps one archive for all tests: only our ids are counted.
    """
    deadline = time.monotonic() + 20
    while True:
        files = sorted((svc.data_dir / "persistent_events").glob("*/*/*/*.jsonl"))
        found = collections.Counter(
            orjson.loads(ln)["event_id"] for f in files for ln in f.read_text().splitlines()
        )
        seen = collections.Counter({i: found[i] for i in ids if found[i]})
        if len(seen) == len(ids) or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def test_persistent_endpoints_answer(live: ServiceProcess) -> None:
    body = event()
    assert post(live, body).status_code == 201
    assert _archived(live, {body["event_id"]}) == {body["event_id"]: 1}
    status = HTTP.get(f"{live.url}/persistent/status").json()
    assert status["status"] == "healthy"
    assert status["stats"]["running_consumers"] == 1
    assert status["stats"]["stream_length"] == 0
    assert status["stats"]["files_count"] >= 1
    files = HTTP.get(f"{live.url}/persistent/files").json()
    on_disk = sum(
        len((live.data_dir / "persistent_events" / f["path"]).read_text().splitlines())
        for f in files["files"]
    )
    assert files["total_events"] == on_disk >= 1


def test_openapi_docs(api: InProcessService) -> None:
    spec = api.http.get(f"{api.url}/openapi.json").json()
    assert "Event" in spec["components"]["schemas"]
    post_spec = spec["paths"]["/events"]["post"]
    assert post_spec["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Event"
    )
    for path in ("/docs", "/redoc"):
        assert api.http.get(f"{api.url}{path}").status_code == 200


def assert_nothing_stored(db: Backend) -> None:
    """No counter, user set, dedup set or stream entry (the archiver's own keys aside)."""
    assert db.scan("ea:{*}:*:m:*") == [] and db.scan("ea:{*}:seen:*") == []
    keys = db.keys()
    client = db.client()
    for shard in range(keys.shards):
        assert client.xlen(keys.stream(shard)) == 0 and client.get(keys.archived(shard)) is None
    client.close()


def _problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def _codes(body: dict[str, object]) -> set[str]:
    return {e["code"] for e in body["errors"]}  # type: ignore[attr-defined]


BAD_EVENTS = {
    "bad_uuid": (lambda e: e.update(event_id="not-a-uuid"), "uuid_parsing"),
    "user_with_newline": (lambda e: e.update(user_id="a\nb"), "string_pattern_mismatch"),
    "user_with_nul": (lambda e: e.update(user_id="a\x00b"), "string_pattern_mismatch"),
    "user_empty": (lambda e: e.update(user_id=""), "string_pattern_mismatch"),
    "user_too_long": (lambda e: e.update(user_id="u" * 256), "string_pattern_mismatch"),
    "timestamp_unix": (lambda e: e.update(timestamp=1717763696), "invalid_timestamp"),
    "timestamp_garbage": (lambda e: e.update(timestamp="yesterday"), "invalid_timestamp"),
    "far_future": (lambda e: e.update(timestamp="9999-12-31T23:59:59Z"), "timestamp_in_future"),
    "far_future_offset": (
        lambda e: e.update(timestamp="9999-12-31T23:59:59-05:00"),
        "timestamp_in_future",
    ),
    "year_one": (lambda e: e.update(timestamp="0001-01-01T00:00:00Z"), "timestamp_too_old"),
    "year_one_offset": (
        lambda e: e.update(timestamp="0001-01-01T00:00:00+05:30"),
        "timestamp_too_old",
    ),
    "eight_days_old": (
        lambda e: e.update(timestamp=(datetime.now(UTC) - timedelta(days=8)).isoformat()),
        "timestamp_too_old",
    ),
    "ten_minutes_ahead": (
        lambda e: e.update(timestamp=(datetime.now(UTC) + timedelta(minutes=10)).isoformat()),
        "timestamp_in_future",
    ),
    "no_page_url": (lambda e: e["payload"].pop("page_url"), "missing_page_url"),
    "ftp_url": (lambda e: e["payload"].update(page_url="ftp://example.com/x"), "invalid_url"),
    "relative_url": (lambda e: e["payload"].update(page_url="/page-1"), "invalid_url"),
    "long_url": (
        lambda e: e["payload"].update(page_url="https://example.com/" + "a" * 2048),
        "url_too_long",
    ),
    "bad_event_type": (lambda e: e.update(event_type="Page View"), "string_pattern_mismatch"),
    "nested_property": (lambda e: e["payload"].update(extra={"a": 1}), "invalid_property_value"),
    "missing_user": (lambda e: e.pop("user_id"), "missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_EVENTS))
def test_bad_event_is_422_and_stores_nothing(api: InProcessService, db: Backend, case: str) -> None:
    body = event()
    mutate, code = BAD_EVENTS[case]
    mutate(body)
    problem = _problem(post(api, body), 422)
    assert code in _codes(problem), problem
    assert_nothing_stored(db)


def test_any_valid_host_is_accepted(api: InProcessService) -> None:
    # The seed's regex refused .example and every TLD longer than 6 letters.
    for url in [
        "https://shop.example/checkout",
        "https://my.photography/a?b=c#d",
        "http://localhost:8080/x",
        "https://xn--bcher-kva.example/",
        "http://127.0.0.1/p",
    ]:
        assert post(api, event(url=url)).status_code == 201, url


@pytest.mark.parametrize(
    "raw",
    [b"{", b"not json", b'{"event_id": }', b"\xff\xfe"],
)
def test_malformed_json_is_400(api: InProcessService, raw: bytes) -> None:
    r = api.http.post(
        f"{api.url}/events", content=raw, headers={"content-type": "application/json"}
    )
    _problem(r, 400)


@pytest.mark.parametrize("body", [b"[]", b"null", b"42", b'"x"'])
def test_json_that_is_not_an_object_is_422(api: InProcessService, body: bytes) -> None:
    r = api.http.post(
        f"{api.url}/events", content=body, headers={"content-type": "application/json"}
    )
    _problem(r, 422)


@pytest.mark.parametrize("ctype", [None, "text/html", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(api: InProcessService, ctype: str | None) -> None:
    headers = {"content-type": ctype} if ctype else {}
    r = api.http.post(f"{api.url}/events", content=orjson.dumps(event()), headers=headers)
    body = _problem(r, 415)
    assert "application/json" in str(body["detail"])


def test_body_just_over_limit_is_413(api: InProcessService) -> None:
    body = event(note="x" * 1000)
    raw = orjson.dumps(body)
    raw = raw[:-1] + b" " * (64 * 1024 + 1 - len(raw)) + b"}"
    r = api.http.post(
        f"{api.url}/events", content=raw, headers={"content-type": "application/json"}
    )
    _problem(r, 413)


def _send_until_answer(port: int, head: bytes, chunk: bytes, total: int) -> tuple[bytes, int]:
    """Send ``head`` then up to ``total`` bytes; stop when the server answers. -> (reply, sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = 0
    reply = b""
    try:
        sock.sendall(head)
        while sent < total:
            readable, _writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                break
            try:
                sent += sock.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        while b"\r\n\r\n" not in reply:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    finally:
        sock.close()
    return reply, sent


def test_20mb_body_refused_before_it_is_read(live: ServiceProcess) -> None:
    total = 20 * 1024 * 1024
    head = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(total).encode() + b"\r\n\r\n"
    )
    reply, sent = _send_until_answer(live.port, head, b"a" * 65536, total)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert PROBLEM.encode() in reply
    assert sent < total  # answered long before the client finished sending


def test_20mb_chunked_body_refused_while_reading(live: ServiceProcess, db: Backend) -> None:
    total = 20 * 1024 * 1024
    head = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"a" * 16384
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    reply, sent = _send_until_answer(live.port, head, chunk, total)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < total
    assert_nothing_stored(db)


def test_unknown_path_is_problem_json(api: InProcessService) -> None:
    _problem(api.http.get(f"{api.url}/nope"), 404)
    _problem(api.http.delete(f"{api.url}/events"), 405)


def test_event_id_forms_are_one_event(api: InProcessService) -> None:
    # The same UUID written in upper case is the same event.
    eid, ts = uuid.uuid4(), datetime.now(UTC)
    assert post(api, event(event_id=str(eid), ts=ts)).status_code == 201
    r = post(api, event(event_id=str(eid).upper(), ts=ts))
    assert r.status_code == 200 and r.json()["duplicate"] is True
