"""Admission by cost (issue 23), decided before the work: the estimates against what the
reads really touch, a cheap counter read answered while the long-range lane is full, and
the per-client share held by the Stats APIs and exports too.

The archive estimate is checked against a model of the files written (Hypothesis) and
against ``hour_files`` (what a query then reads); the counter estimate against the
(bucket, page) entries a model of the events sent says the engine holds. The lanes are
held through their own ``slot`` on the app's loop: the requests are real, the app real.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_analytics.analytics.snapshot import estimate, hour_files
from event_analytics.api.heavy import HeavyReads
from event_analytics.archive import compact
from event_analytics.archive.files import hour_path
from event_analytics.series import UserSource
from event_analytics.store.reads import BucketFigures
from event_analytics.timebucket import Interval
from tests.backends import Backend
from tests.helpers import event
from tests.inproc import InProcessService, in_process

FIRST = datetime(2026, 3, 1, 5, tzinfo=UTC)
HOURS = 6
SITE = "shop.example"
OVERSIZED = 100_000
COUNTER_BUDGET = 100_000


def _line(hour: datetime, n: int) -> bytes:
    ts = (hour + timedelta(seconds=n)).isoformat()[:-6] + "Z"
    record = {"event_id": str(uuid.uuid4()), "user_id": f"u{n}", "timestamp": ts,
              "event_type": "page_view", "payload": {"page_url": f"/p{n % 3}"},
              "received_at": ts}  # fmt: skip
    return orjson.dumps(record) + b"\n"


# Per hour: absent, or (lines, lines compacted first: 0 = not compacted).
HOUR = st.none() | st.tuples(st.integers(1, 8), st.integers(0, 8))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(HOUR, min_size=HOURS, max_size=HOURS),
    first=st.integers(-1, HOURS),
    last=st.integers(0, HOURS + 1),
    offset=st.integers(0, 3599),
)
def test_the_archive_estimate_is_what_a_query_reads(
    plan: list[tuple[int, int] | None], first: int, last: int, offset: int
) -> None:
    """Files and bytes from the listing = the model of what was written (a compacted hour
    is its Parquet copy plus the JSONL appended after it) = what ``hour_files`` hands the
    query, for any range (an hour is read when the range touches it)."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        want_files = want_bytes = 0
        start = FIRST + timedelta(hours=first, seconds=offset)
        end = FIRST + timedelta(hours=last)
        for h, hour_plan in enumerate(plan):
            if hour_plan is None:
                continue
            lines, compacted = hour_plan
            hour = FIRST + timedelta(hours=h)
            path = hour_path(root, hour)
            path.parent.mkdir(parents=True, exist_ok=True)
            head = b"".join(_line(hour, n) for n in range(compacted))
            path.write_bytes(head)
            if compacted:
                assert compact.compact(path) is not None
            tail = b"".join(_line(hour, n) for n in range(compacted, compacted + lines))
            with path.open("ab") as out:
                out.write(tail)
            if not start.replace(minute=0, second=0) <= hour < end:
                continue
            if compacted:
                want_files += 1
                want_bytes += compact.parquet_path(path).stat().st_size
            want_files += 1
            want_bytes += len(tail)
        found = estimate(root, start, end)
        assert (found.files, found.bytes) == (want_files, want_bytes)
        with hour_files(root, start, end) as read:
            paths = read.parquet + read.parquet_old + read.jsonl
            assert len(paths) == found.files
            assert sum(Path(p).stat().st_size for p in paths) == found.bytes


@pytest.fixture(scope="module")
def lanes_app(
    engine: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessService]:
    """The app with two slots a counter lane and a budget of COUNTER_BUDGET, two archive
    slots, and no wait for any."""
    data_dir = tmp_path_factory.mktemp(f"lanes-{engine.kind}") / "data"
    config = engine.settings(
        data_dir=data_dir, key_prefix=engine.prefix, max_heavy_reads=2, heavy_read_wait_s=0,
        counter_read_budget=COUNTER_BUDGET, analytics_max_concurrent=2,
        analytics_max_scan_bytes=OVERSIZED,
    )  # fmt: skip
    with in_process(config, engine.env) as svc:
        yield svc


@pytest.fixture
def app(lanes_app: InProcessService, db: Backend) -> InProcessService:
    return lanes_app


class _Held:
    """A lane's slot held on the app's own loop until ``release``."""

    def __init__(self, svc: InProcessService, lane: HeavyReads, client: str, cost: int) -> None:
        self.svc = svc
        self._slot: AbstractAsyncContextManager[None] = lane.slot(client, cost)

    def __enter__(self) -> _Held:
        asyncio.run_coroutine_threadsafe(self._slot.__aenter__(), self.svc.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        done = self._slot.__aexit__(None, None, None)
        asyncio.run_coroutine_threadsafe(done, self.svc.loop).result(30)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _send(svc: InProcessService, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 1000):
        r = svc.http.post("/events/batch", json={"events": events[i : i + 1000]})
        assert r.status_code == 200 and r.json()["accepted"] == len(events[i : i + 1000]), r.text


MINUTES = 20
# A series this long is sized in the long-range lane (its buckets alone cost more than
# EA_CHEAP_READ_COST, 240), the MINUTES written at its start.
SERIES_MINUTES = 300


def _sent_in_minutes(svc: InProcessService) -> tuple[datetime, list[dict[str, Any]]]:
    """Page views over MINUTES minutes inside one clock hour (no hour bucket stands in):
    their first minute, and the events sent."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now.replace(minute=0) - timedelta(hours=2) + timedelta(minutes=5)
    sent = [
        event(ts=start + timedelta(minutes=m, seconds=7), url=f"https://example.com/{p}",
              user=f"user-{(m * 7 + p * 3 + k) % 11}")
        for m in range(MINUTES) for p in range(m % 9 + 1) for k in range(1 + p % 2)
    ]  # fmt: skip
    _send(svc, sent)
    return start, sent


def _pages_in_minutes(svc: InProcessService) -> tuple[datetime, int]:
    """``_sent_in_minutes``: their first minute, and the distinct (shard, minute, page)
    entries of the events sent (the model of what top pages merges)."""
    start, sent = _sent_in_minutes(svc)
    keys = svc.app.state.reads.keys
    model = {
        (keys.shard_of(e["user_id"]), e["timestamp"][:16], e["payload"]["page_url"]) for e in sent
    }
    return start, len(model)


def _members(svc: InProcessService, sent: list[dict[str, Any]], page: str | None = None) -> int:
    """The model of what an exact series over the minutes sent merges: its distinct
    (shard, minute, user) entries (of ``page`` only, with one)."""
    keys = svc.app.state.reads.keys
    return len({
        (keys.shard_of(e["user_id"]), e["timestamp"][:16], e["user_id"])
        for e in sent if page in (None, e["payload"]["page_url"])
    })  # fmt: skip


def test_the_top_pages_estimate_is_the_entries_the_engine_holds(app: InProcessService) -> None:
    """Entries sized before the merge = the distinct (shard, minute, page) of the events
    sent (the model)."""
    start, entries = _pages_in_minutes(app)
    starts = [start + timedelta(minutes=m) for m in range(MINUTES)]
    sized = asyncio.run_coroutine_threadsafe(
        app.app.state.reads.ranked_entries("page_view", Interval.MINUTE, starts), app.loop
    ).result(30)
    assert sized.entries == entries


def test_the_series_estimate_is_the_members_the_engine_holds(app: InProcessService) -> None:
    """Entries sized before an exact series merges = the model's distinct (shard, minute,
    user) of the events sent, of every user and of one page's; a series of one bucket
    (no union) and one of hour HyperLogLogs merge none."""
    start, sent = _sent_in_minutes(app)
    minutes = [[start + timedelta(minutes=m)] for m in range(MINUTES)]
    hours = [[start.replace(minute=0)], [start.replace(minute=0) + timedelta(hours=1)]]
    page = "https://example.com/3"
    reads = app.app.state.reads

    def entries(level: Interval, groups: list[list[datetime]], source: UserSource,
                page: str | None = None) -> int:  # fmt: skip
        sized = reads.series_figures("page_view", level, groups, source, page)
        figures: BucketFigures = asyncio.run_coroutine_threadsafe(sized, app.loop).result(30)
        return figures.entries

    assert entries(Interval.MINUTE, minutes, UserSource.SETS) == _members(app, sent)
    assert entries(Interval.MINUTE, minutes, UserSource.PAGE, page) == _members(app, sent, page)
    assert entries(Interval.MINUTE, minutes[:1], UserSource.SETS) == 0
    assert entries(Interval.HOUR, hours, UserSource.HLL) == 0


def _admitted_at(svc: InProcessService, path: str, params: dict[str, Any], cost: int) -> Any:
    """Another client holds the counter lane's budget but for ``cost`` less one: the read
    is refused for the budget (503 reads-busy, a slot free beside it), naming ``cost``;
    held but for ``cost`` exactly, it is answered: its JSON."""
    lane = svc.app.state.heavy_reads
    with _Held(svc, lane, "address:10.3.3.3", COUNTER_BUDGET - cost + 1):
        r = svc.http.get(path, params=params)
        assert r.status_code == 503, r.text
        assert r.json()["type"].endswith(":reads-busy") and r.headers["retry-after"] == "1"
        assert (
            f"cost {COUNTER_BUDGET - cost + 1} of the {COUNTER_BUDGET} entries allowed at "
            f"once, and this one needs {cost} more;" in r.json()["detail"]
        ), r.text
    with _Held(svc, lane, "address:10.3.3.3", COUNTER_BUDGET - cost):
        r = svc.http.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()


def test_an_exact_series_is_admitted_by_its_estimated_cost(app: InProcessService) -> None:
    """A minute series over SERIES_MINUTES minutes (the MINUTES written among them) costs
    its buckets on each shard plus the members its total's union merges (the model), to
    the entry (``_admitted_at``)."""
    start, sent = _sent_in_minutes(app)
    cost = SERIES_MINUTES * app.app.state.reads.keys.shards + _members(app, sent)
    params = {"from": _iso(start), "to": _iso(start + timedelta(minutes=SERIES_MINUTES)),
              "interval": "minute"}  # fmt: skip
    body = _admitted_at(app, "/analytics/timeseries", params, cost)
    assert body["total"]["count"] == len(sent)


def test_a_counter_read_is_admitted_by_its_estimated_cost(app: InProcessService) -> None:
    """Top pages over MINUTES minutes, limit 100, costs the entries it merges (the model)
    plus 100 figures a minute on each shard, to the entry (``_admitted_at``)."""
    start, entries = _pages_in_minutes(app)
    cost = entries + 100 * MINUTES * app.app.state.reads.keys.shards
    params = {"from": _iso(start), "to": _iso(start + timedelta(minutes=MINUTES)), "limit": 100}
    assert len(_admitted_at(app, "/analytics/top-pages", params, cost)["pages"]) == 9


def test_a_cheap_read_is_answered_while_the_long_range_lane_is_full(app: InProcessService) -> None:
    """The counter lane's two slots are held (long reads of two clients): a day's top
    pages is refused at once (503 reads-busy, nothing done), a one-minute series and the
    realtime figures are answered, from the cheap lane."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    minute = now - timedelta(minutes=1)
    _send(app, [event(ts=minute, user=f"c{i}") for i in range(5)])
    lane = app.app.state.heavy_reads
    with _Held(app, lane, "address:10.1.1.1", 10), _Held(app, lane, "address:10.1.1.2", 10):
        r = app.http.get("/analytics/top-pages", params={"limit": 100})
        assert r.status_code == 503, r.text
        assert r.json()["type"].endswith(":reads-busy") and r.headers["retry-after"] == "1"
        one = {"from": _iso(minute), "to": _iso(minute + timedelta(minutes=1))}
        r = app.http.get("/analytics/timeseries", params=one)
        assert r.status_code == 200, r.text
        assert r.json()["total"]["count"] == 5
        assert app.http.get("/analytics/realtime").status_code == 200


STATS = [
    ("POST", "/api/v2/query", {"json": {"site_id": SITE, "metrics": ["visitors"],
                                        "date_range": "7d"}}),
    ("GET", "/api/v1/stats/aggregate", {"params": {"site_id": SITE, "period": "7d"}}),
    ("GET", "/api/v1/stats/realtime/visitors", {"params": {"site_id": SITE}}),
    ("GET", "/api/v1/sites/export", {"params": {"site_id": SITE, "date_range": "7d"}}),
    ("GET", "/api/sites", {"params": {"date_range": "7d"}}),
    ("GET", "/api/export", {"params": {"from": "2026-01-01", "to": "2026-01-08"}}),
    ("GET", "/api/export/manifest", {"params": {"from": "2026-01-01", "to": "2026-01-08"}}),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "args"), STATS, ids=[s[1] for s in STATS])
def test_one_client_cannot_hold_every_stats_slot(
    app: InProcessService, method: str, path: str, args: dict[str, Any]
) -> None:
    """Two archive slots: while this client (the test's address) holds one, its Stats API
    read or export is refused (503 analytics-busy, its share); while another client holds
    one, the same read is answered, twice in a row (the first gave its slot back)."""
    lane = app.app.state.archive_reads
    me = "address:127.0.0.1"
    with _Held(app, lane, me, 1):
        r = app.http.request(method, path, **args)
        assert r.status_code == 503, r.text
        assert r.json()["type"].endswith(":analytics-busy"), r.text
        assert "this client already runs 1 of the 2" in r.json()["detail"]
    with _Held(app, lane, "address:10.2.2.2", 1):
        r = app.http.request(method, path, **args)
        assert r.status_code == 200, r.text
        # Its slot was given back when it ended (a streamed export's too): again.
        assert app.http.request(method, path, **args).status_code == 200


def test_an_archive_query_over_the_scan_bound_is_a_422_before_it_runs(
    app: InProcessService,
) -> None:
    """An hour of 2020 holding more bytes than EA_ANALYTICS_MAX_SCAN_BYTES: a funnel or
    query over it is refused 422 query_too_costly naming the bytes, files and bound; a
    range beside it is answered."""
    hour = datetime(2020, 1, 1, tzinfo=UTC)
    path = hour_path(app.settings.archive_path, hour)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    size = n = 0
    while size <= OVERSIZED:
        lines.append(_line(hour, n))
        size, n = size + len(lines[-1]), n + 1
    path.write_bytes(b"".join(lines))
    try:
        funnel = {"from": "2020-01-01T00:00:00Z", "to": "2020-01-01T01:00:00Z",
                  "steps": [{"event_type": "page_view"}, {"event_type": "page_view"}]}  # fmt: skip
        query = {"date_range": ["2020-01-01T00:00:00Z", "2020-01-01T01:00:00Z"],
                 "metrics": ["events"]}  # fmt: skip
        for route, body, field in (("/analytics/funnel", funnel, "from"),
                                   ("/analytics/query", query, "date_range")):  # fmt: skip
            r = app.http.post(route, json=body)
            assert r.status_code == 422, r.text
            (error,) = r.json()["errors"]
            assert error["code"] == "query_too_costly" and error["field"] == field
            assert f"{size} bytes in 1 archive file," in error["message"]
            assert str(OVERSIZED) in error["message"]
        beside = {**query, "date_range": ["2020-01-01T01:00:00Z", "2020-01-01T02:00:00Z"]}
        assert app.http.post("/analytics/query", json=beside).status_code == 200
    finally:
        path.unlink()
