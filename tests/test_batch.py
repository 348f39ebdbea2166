"""POST /events/batch: one result per event, valid ones stored, bad ones explained."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from tests.helpers import event, seed_key
from tests.inproc import InProcessService, Service

PROBLEM = "application/problem+json"


def batch(svc: Service, events: object, **kw: object) -> tuple[int, dict[str, object]]:
    r = svc.http.post(f"{svc.url}/events/batch", json={"events": events}, **kw)  # type: ignore[arg-type]
    return r.status_code, r.json()


def test_mixed_batch(api: InProcessService) -> None:
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    good = [event(user=f"u{i % 3}", ts=minute + timedelta(seconds=i)) for i in range(5)]
    old = event(ts=datetime.now(UTC) - timedelta(days=30))
    bad_user = event(user="has\ttab")
    status, body = batch(api, [*good, old, good[0], bad_user, "not an object"])
    assert status == 200
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (5, 1, 3)
    results = body["results"]
    assert [r["index"] for r in results] == list(range(9))
    assert [r["status"] for r in results] == ["accepted"] * 5 + [
        "rejected", "duplicate", "rejected", "rejected",
    ]  # fmt: skip
    assert results[5]["code"] == "timestamp_too_old" and results[5]["field"] == "events.5.timestamp"
    assert results[5]["event_id"] == old["event_id"]
    assert results[7]["code"] == "string_pattern_mismatch"
    assert results[7]["field"] == "events.7.user_id"
    assert results[8]["event_id"] is None and results[8]["code"] == "model_type"
    got = api.http.get(f"{api.url}/analytics/minute-buckets/{seed_key(minute)}").json()
    assert (got["count"], got["unique_users"]) == (5, 3)
    # The whole batch again: all duplicates or the same rejections, nothing counted twice.
    status, again = batch(api, [*good, old])
    assert (again["accepted"], again["duplicate"], again["rejected"]) == (0, 5, 1)
    assert (
        api.http.get(f"{api.url}/analytics/minute-buckets/{seed_key(minute)}").json()["count"] == 5
    )


def test_batch_and_single_share_dedup(api: InProcessService) -> None:
    body = event()
    assert api.http.post(f"{api.url}/events", json=body).status_code == 201
    _, reply = batch(api, [body])
    assert reply["results"][0]["status"] == "duplicate"


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"[]", 422, "missing"),
        (b'{"events": []}', 422, "too_short"),
        (b'{"events": {"a": 1}}', 422, "missing"),
        (b'{"evnts": []}', 422, "missing"),
        (b"{", 400, None),
    ],
)
def test_bad_envelopes(
    api: InProcessService, payload: bytes, status: int, code: str | None
) -> None:
    r = api.http.post(
        f"{api.url}/events/batch", content=payload, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    if code:
        assert r.json()["errors"][0]["code"] == code


def test_batch_limits(api: InProcessService) -> None:
    many = [event() for _ in range(1001)]
    status, body = batch(api, many)
    assert status == 422 and body["errors"][0]["code"] == "too_long"
    big = orjson.dumps({"events": [event(note="x" * 1000) for _ in range(1100)]})
    assert len(big) > 1024 * 1024
    r = api.http.post(
        f"{api.url}/events/batch", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    r = api.http.post(f"{api.url}/events/batch", content=b'{"events":[]}')
    assert r.status_code == 415
    assert api.http.get(f"{api.url}/events/batch").status_code == 405


def test_full_batch_of_1000(api: InProcessService) -> None:
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
    events = [
        event(user=f"u{i % 77}", ts=minute + timedelta(milliseconds=i * 50)) for i in range(1000)
    ]
    status, body = batch(api, events)
    assert status == 200 and body["accepted"] == 1000
    got = api.http.get(f"{api.url}/analytics/minute-buckets/{seed_key(minute)}").json()
    assert (got["count"], got["unique_users"]) == (1000, 77)
