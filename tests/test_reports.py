"""Timeseries, top pages, realtime and user lists, over HTTP: against the app in-process
(``api``), and against the service processes where EA_UNIQUES=exact or the archiver is
part of the check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from event_analytics.keys import Keys
from event_analytics.series import UserSource
from event_analytics.store import IngestWriter
from event_analytics.store.reads import Reads
from event_analytics.timebucket import Interval, floor
from tests.backends import Backend
from tests.direct import ingest
from tests.helpers import IST, event, hll_close, wait_for, z
from tests.inproc import InProcessService, Service
from tests.servers import HTTP, ServiceProcess

PROBLEM = "application/problem+json"
HOME, A, A_SUB = "https://example.com/", "https://example.com/a", "https://example.com/a/b"


def get(svc: Service, path: str, **params: Any) -> dict[str, Any]:
    r = svc.http.get(f"{svc.url}/analytics/{path}", params=params, timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture
def base() -> datetime:
    """A whole hour well in the past (so no minute turns under the test's feet)."""
    return floor(datetime.now(UTC) - timedelta(hours=3), Interval.HOUR)


def test_timeseries_is_gap_filled_and_total_is_a_union(
    api: InProcessService, base: datetime
) -> None:
    sent = [("a", 0, HOME), ("b", 0, A), ("a", 2, A), ("c", 2, HOME)]
    bodies = [event(user=u, ts=base + timedelta(minutes=m, seconds=5), url=p) for u, m, p in sent]
    # Another type is counted apart; an IST offset lands in its UTC minute.
    bodies.append(event(user="d", event_type="click", url=None, ts=base.astimezone(IST)))
    for b in bodies:
        assert api.http.post(f"{api.url}/events", json=b).status_code == 201
    got = get(api, "timeseries", **{"from": z(base), "to": z(base + timedelta(minutes=4))})
    assert got["event_type"] == "page_view" and got["interval"] == "minute"
    assert got["from"] == z(base) and got["to"] == z(base + timedelta(minutes=4))
    assert got["unique_users_method"] == "exact" and got["unique_users_standard_error"] is None
    assert [(p["count"], p["unique_users"]) for p in got["points"]] == [
        (2, 2),
        (0, 0),
        (2, 2),
        (0, 0),
    ]
    assert [p["timestamp"] for p in got["points"]][1] == z(base + timedelta(minutes=1))
    assert got["total"] == {"count": 4, "unique_users": 3}  # a, b, c: not 2 + 2
    click = get(api, "timeseries", event_type="click", interval="hour", **{"from": z(base)})
    assert click["points"][0]["count"] == 1
    assert sum(p["count"] for p in click["points"]) == 1
    # A page's own figures, at every interval (a day reads the day's hours).
    for interval in ("minute", "hour", "day"):
        page = get(
            api, "timeseries", interval=interval, page_url=A,
            **{"from": z(base), "to": z(base + timedelta(minutes=4))},
        )  # fmt: skip
        assert page["total"]["count"] == 2, interval
        assert hll_close(page["total"]["unique_users"], 2)
        method = "exact" if interval == "minute" else "hll"
        assert page["page_url"] == A and page["unique_users_method"] == method


def test_hour_and_day_method_follows_ea_uniques(
    api: InProcessService, exact_app: InProcessService, base: datetime
) -> None:
    assert all(_ingest(api, [event(user=f"u{i % 7}", ts=base) for i in range(20)]))
    for interval in ("hour", "day"):
        params = {"interval": interval, "from": z(base), "to": z(base + timedelta(minutes=1))}
        approx = get(api, "timeseries", **params)
        assert approx["unique_users_method"] == "hll"
        assert approx["unique_users_standard_error"] == 0.0081
        assert hll_close(approx["points"][0]["unique_users"], 7)
        exact = get(exact_app, "timeseries", **params)
        assert exact["unique_users_method"] == "exact"
        assert exact["unique_users_standard_error"] is None
        assert exact["points"][0]["unique_users"] == exact["total"]["unique_users"] == 7
        assert exact["total"]["count"] == approx["total"]["count"] == 20


def _ingest(svc: Service, bodies: list[dict[str, Any]], **kw: Any) -> list[bool]:
    """Ingest straight into ``svc``'s engine (single node or cluster), as it would."""
    return ingest(svc.env, bodies, **kw)


@pytest.mark.parametrize(
    ("params", "code", "words"),
    [
        ({"from": "2026-01-01T00:00Z", "to": "2026-01-02T00:01Z"}, "too_many_points", "1440"),
        ({"from": "2026-01-02T00:00Z", "to": "2026-01-01T00:00Z"}, "empty_range", "earlier"),
        ({"interval": "week"}, "enum", "minute"),
        ({"event_type": "Page View"}, "string_pattern_mismatch", "pattern"),
        ({"from": "yesterday"}, "datetime_from_date_parsing", "datetime"),
        ({"to": "9999-12-31T23:59:59Z"}, "out_of_range", "9000"),
    ],
)  # fmt: skip
def test_bad_timeseries_query_is_422(
    api: InProcessService, params: dict[str, str], code: str, words: str
) -> None:
    r = api.http.get(f"{api.url}/analytics/timeseries", params=params)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["errors"][0]["code"] == code
    assert words in body["detail"]


def test_top_pages_order_counts_and_users(api: InProcessService, base: datetime) -> None:
    views = [(A, "x"), (A, "x"), (A, "y"), (HOME, "x"), (HOME, "z"), (HOME, "w"), (A_SUB, "x")]
    bodies = [
        event(user=u, url=p, ts=base + timedelta(minutes=i % 3, seconds=i))
        for i, (p, u) in enumerate(views)
    ]
    bodies.append(event(user="q", event_type="click", url=A_SUB, ts=base))
    assert all(_ingest(api, bodies))
    window = {"from": z(base), "to": z(base + timedelta(hours=1))}
    got = get(api, "top-pages", **window)
    assert got["bucket_interval"] == "minute" and got["unique_users_method"] == "exact"
    # A's users x, y; A/b shares A's prefix and must not leak into it. Ties: by URL.
    assert got["pages"] == [
        {"page_url": HOME, "count": 3, "unique_users": 3},
        {"page_url": A, "count": 3, "unique_users": 2},
        {"page_url": A_SUB, "count": 1, "unique_users": 1},
    ]
    assert [p["page_url"] for p in get(api, "top-pages", limit=1, **window)["pages"]] == [HOME]
    clicks = get(api, "top-pages", event_type="click", **window)["pages"]
    assert clicks == [{"page_url": A_SUB, "count": 1, "unique_users": 1}]
    # Longer than a day: read from hour buckets, unique users per page from HLLs.
    long = {"from": z(base - timedelta(days=2)), "to": z(base + timedelta(hours=1))}
    hours = get(api, "top-pages", **long)
    assert hours["bucket_interval"] == "hour" and hours["unique_users_method"] == "hll"
    assert [(p["page_url"], p["count"]) for p in hours["pages"]] == [
        (p["page_url"], p["count"]) for p in got["pages"]
    ]
    for approx, exact in zip(hours["pages"], got["pages"], strict=True):
        assert hll_close(approx["unique_users"], exact["unique_users"])
    r = api.http.get(f"{api.url}/analytics/top-pages", params={"limit": 101})
    assert r.status_code == 422


def test_realtime(api: InProcessService) -> None:
    now = datetime.now(UTC)
    sent = [("a", 0, HOME), ("b", 0, A), ("a", 1, A), ("c", 3, HOME), ("old", 9, HOME)]
    bodies = [event(user=u, url=p, ts=now - timedelta(minutes=m)) for u, m, p in sent]
    for b in bodies:
        assert api.http.post(f"{api.url}/events", json=b).status_code == 201
    got = get(api, "realtime")
    # The window is stated in the answer: compare against what falls inside it.
    lo = datetime.fromisoformat(got["window"]["from"])
    hi = datetime.fromisoformat(got["window"]["to"])
    assert got["window"]["minutes"] == 5 and hi - lo == timedelta(minutes=5)
    inside = [b for b in bodies if lo <= datetime.fromisoformat(b["timestamp"]) < hi]
    assert got["active_users"] == len({b["user_id"] for b in inside})
    assert got["events"] == len(inside)
    current = [
        b for b in inside if datetime.fromisoformat(b["timestamp"]) >= hi - timedelta(minutes=1)
    ]
    assert got["current_minute"]["count"] == len(current)
    assert got["current_minute"]["timestamp"] == z(hi - timedelta(minutes=1))
    assert got["previous_minute"]["timestamp"] == z(hi - timedelta(minutes=2))
    counts: dict[str, int] = {}
    for b in inside:
        counts[b["payload"]["page_url"]] = counts.get(b["payload"]["page_url"], 0) + 1
    assert {p["page_url"]: p["count"] for p in got["top_pages"]} == counts
    assert get(api, "realtime", event_type="signup")["active_users"] == 0


def test_include_users_is_capped(api: InProcessService) -> None:
    minute = floor(datetime.now(UTC), Interval.MINUTE) - timedelta(minutes=2)
    crowd = [event(user=f"c{i:04d}", ts=minute) for i in range(1005)]
    pair = [event(user=u, ts=minute - timedelta(minutes=1)) for u in ("b", "a", "b")]
    assert all(_ingest(api, crowd + pair))
    plain = get(api, "page_views_per_minute", minutes=5)
    assert all(set(row) == {"minute_timestamp", "count", "unique_users"} for row in plain)  # type: ignore[union-attr]
    rows = {
        r["minute_timestamp"]: r
        for r in get(api, "page_views_per_minute", minutes=5, include_users="true")
    }  # type: ignore[union-attr,index]
    big, small = rows.get(z(minute)), rows.get(z(minute - timedelta(minutes=1)))
    if big is None or small is None:  # the minute turned twice since `minute`: very slow machine
        pytest.skip("the 5-minute window moved past the events")
    assert big["count"] == 1005 and big["unique_users"] == 1005
    assert big["truncated"] is True and len(big["users"]) == 1000 == len(set(big["users"]))
    assert big["users"] == sorted(big["users"]) and set(big["users"]) <= {
        b["user_id"] for b in crowd
    }
    assert small == {
        "minute_timestamp": z(minute - timedelta(minutes=1)),
        "count": 3,
        "unique_users": 2,
        "users": ["a", "b"],
        "truncated": False,
    }


def test_hour_unique_users_are_the_union_of_its_minutes(
    api: InProcessService, exact_app: InProcessService, base: datetime
) -> None:
    # 1,000 users in each of 60 minutes: 900 regulars every minute, plus 100 new ones.
    regulars = [f"r{i}" for i in range(900)]
    bodies = []
    for m in range(60):
        ts = base + timedelta(minutes=m, seconds=30)
        users = regulars + [f"n{m}_{i}" for i in range(100)]
        bodies += [event(user=u, ts=ts, url=HOME if i % 2 else A) for i, u in enumerate(users)]
    distinct, summed = 900 + 60 * 100, 60 * 1000
    assert all(_ingest(api, bodies, uniques="exact"))
    window = {"from": z(base), "to": z(base + timedelta(hours=1))}
    minutes = get(exact_app, "timeseries", **window)
    assert all(p["unique_users"] == 1000 for p in minutes["points"])
    assert sum(p["unique_users"] for p in minutes["points"]) == summed
    assert minutes["total"] == {"count": summed, "unique_users": distinct}
    exact_hour = get(exact_app, "timeseries", interval="hour", **window)
    assert exact_hour["points"][0]["unique_users"] == distinct
    approx_hour = get(api, "timeseries", interval="hour", **window)
    assert approx_hour["unique_users_method"] == "hll"
    for figure in (approx_hour["points"][0]["unique_users"], approx_hour["total"]["unique_users"]):
        assert hll_close(figure, distinct), figure
        assert figure < summed / 5
    approx_day = get(api, "timeseries", interval="day", **window)
    assert hll_close(approx_day["total"]["unique_users"], distinct)
    pages = get(api, "top-pages", **window)["pages"]
    assert {p["page_url"]: p["unique_users"] for p in pages} == {A: 450 + 3000, HOME: 450 + 3000}
    # Over more than a day, top pages read hours: per-page HyperLogLogs, unions of 60 minutes.
    long = {"from": z(base - timedelta(days=2)), "to": z(base + timedelta(hours=1))}
    hourly = get(api, "top-pages", **long)
    assert hourly["unique_users_method"] == "hll"
    assert all(hll_close(p["unique_users"], 3450) for p in hourly["pages"]), hourly
    page = get(api, "timeseries", interval="hour", page_url=A, **window)
    assert page["total"]["count"] == summed // 2 and hll_close(page["total"]["unique_users"], 3450)


def test_control_characters_in_page_url_are_refused(api: InProcessService) -> None:
    r = api.http.post(f"{api.url}/events", json=event(url="https://example.com/a\x00b"))
    assert r.status_code == 422
    assert r.json()["errors"][0]["code"] == "invalid_url"


def _reads(db: Backend, shards: int, prefix: str, work: Callable[[Reads], Any]) -> Any:
    async def main() -> Any:
        settings = db.settings(shards=shards, key_prefix=prefix)
        store = IngestWriter.from_settings(settings)
        try:
            return await work(Reads(store))
        finally:
            await store.close()

    return asyncio.run(main())


def test_shards_add_up_to_one_shard(db: Backend, base: datetime) -> None:
    users = [f"user{i}" for i in range(300)]
    bodies = [
        event(
            user=users[(i * 7) % 300],
            url=f"https://example.com/p{i % 13}",
            ts=base + timedelta(minutes=i % 5),
        )
        for i in range(1500)
    ]
    minutes = [base + timedelta(minutes=m) for m in range(5)]

    async def query(reads: Reads) -> tuple[Any, ...]:
        sets = await reads.series(
            "page_view", Interval.MINUTE, [[m] for m in minutes], UserSource.SETS
        )
        page = await reads.series(
            "page_view", Interval.HOUR, [[base]], UserSource.PAGE, "https://example.com/p3"
        )
        top = await reads.top_pages("page_view", Interval.MINUTE, minutes, 5)
        users = await reads.page_users(
            "page_view", Interval.MINUTE, minutes, [u for u, _ in top.pages]
        )
        return sets, page, top, users

    results = []
    for shards, prefix in ((1, "one:"), (4, "four:")):
        assert all(ingest(db.env, bodies, shards=shards, prefix=prefix))
        results.append(_reads(db, shards, prefix, query))
    assert results[0] == results[1]
    sets = results[0][0]
    assert sets.total_users == 300 and sum(c for c, _ in sets.points) == 1500


def test_bucket_keys_list_every_key_ingest_writes(db: Backend, base: datetime) -> None:
    # rebuild deletes Keys.bucket_keys() before replaying: every bucket key must be listed.
    bodies = [event(user="a", ts=base), event(user="b", event_type="signup", url=None, ts=base)]
    # A prefix of its own: the session's archivers keep their leases under "ea:".
    assert all(ingest(db.env, bodies, uniques="exact", shards=1, prefix="bk:"))
    keys = Keys("bk:")
    listed = {
        key
        for etype in ("page_view", "signup")
        for interval in Interval
        for key in keys.bucket_keys(0, etype, interval, floor(base, interval))
    }
    patterns = keys.bucket_key_patterns(0, "page_view", Interval.HOUR, floor(base, Interval.HOUR))
    # Per-shard bookkeeping (the stream, its extra-records counter, the event types taken)
    # is not a bucket.
    streams = (":stream", ":stream-extra", ":types")
    written = {k for k in db.scan("bk:*") if ":seen:" not in k and not k.endswith(streams)}
    per_page = {k for p in patterns for k in db.scan(p)}
    assert written - per_page <= listed
    assert len(per_page) == 1  # the page's hour HLL
    assert len(written) == 12 + 8 + 1  # page_view: every structure; signup: none of a page's


def test_the_exact_app_runs_no_archiver_of_its_own(
    live: ServiceProcess, exact_app: InProcessService
) -> None:
    """Both share the engine and prefix: a second archiver would take a share of the
    streams into its own files, and tests of ``live`` would miss their events."""
    from event_analytics.archive.worker import HEARTBEAT_S

    def archivers() -> set[str]:
        status = HTTP.get(f"{live.url}/persistent/status", timeout=10).json()
        return {str(a["name"]) for a in status["archivers"]}

    seen: set[str] = set()
    wait_for(lambda: bool(archivers()))  # the flush removed the heartbeats
    # Heartbeats come every HEARTBEAT_S: watching three of them sees every archiver.
    deadline = time.monotonic() + 3 * HEARTBEAT_S
    while time.monotonic() < deadline:
        seen |= archivers()
        time.sleep(0.2)
    assert len(seen) == 1, seen
