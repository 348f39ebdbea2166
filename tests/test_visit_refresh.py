"""The visit cache's refresh (analytics/visit_refresh.py): after the day changes, a page
read yesterday is answered today from entries the refresh filled (no fill at the load);
lines appended in the hour are merged by the refresh, not by the next load; a busy engine
is left alone; every answer the model's and a run's without the cache."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from event_analytics.analytics import stats
from event_analytics.analytics.pool import QueryEngine
from event_analytics.analytics.stats_compare import comparison_range
from event_analytics.analytics.stats_spec import Comparison, StatsQuery, parse_query, with_goals
from event_analytics.analytics.visit_refresh import Refresher, moved
from tests import analytics_model
from tests.test_analytics_model import ENGINE, write
from tests.test_visits_model import SITE_GOALS, TIMEOUT, model_answer

DAY = datetime(2026, 11, 28, tzinfo=UTC)
TOP = ["visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration"]


def _rec(user: str, at: datetime, page: str = "/") -> dict[str, Any]:
    ts = at.isoformat().replace("+00:00", "Z")
    return {"event_id": str(uuid.uuid4()), "user_id": user, "timestamp": ts,
            "event_type": "page_view", "received_at": ts,
            "payload": {"domain": "a.example", "page_url": f"https://a.example{page}"}}  # fmt: skip


def _visits(day: datetime, hour: int, tag: str) -> list[dict[str, Any]]:
    """Visits of u0..u3 in that hour (one a bounce); a visit of u1 crossing the hour."""
    at = day + timedelta(hours=hour)
    out = [_rec(f"u{i}", at + timedelta(minutes=5 * i + s), f"/{tag}{s}")
           for i in range(4) for s in range(1 + i % 2)]  # fmt: skip
    return [*out, _rec("u1", at + timedelta(minutes=59), f"/{tag}-late")]


def _page(now: datetime) -> StatsQuery:
    """The site page's top row for "7d" as of ``now``, with the previous period."""
    body = {"site_id": "a.example", "metrics": TOP, "date_range": "7d",
            "include": {"comparisons": {"mode": "previous_period"}}}  # fmt: skip
    return with_goals(parse_query(body, now), SITE_GOALS)


def _answer(engine: QueryEngine, recs: list[dict[str, Any]], now: datetime, root: Path) -> None:
    q = _page(now)
    got = stats.run(engine, q, root, now, TIMEOUT)
    assert got["results"] == model_answer(recs, q, "previous_period")[0]
    assert got == stats.run(ENGINE, q, root, now, TIMEOUT)


def test_the_next_days_page_and_the_hours_lines_are_ready_before_the_load(
    tmp_path: Path,
) -> None:
    recs = [*_visits(DAY - timedelta(days=8), 10, "old"), *_visits(DAY, 20, "d"),
            *_visits(DAY, 23, "e")]  # fmt: skip
    root = write(tmp_path, recs, "parquet")
    engine = QueryEngine(max_concurrent=1, timeout_s=60, visit_cache_bytes=64 * 2**20)
    cache = engine.visit_cache
    clock = [DAY + timedelta(hours=23, minutes=30)]
    cache.clock = lambda: clock[0]
    refresher = Refresher(cache, lambda: engine.idle)

    def counts() -> tuple[int, int, int, int]:
        return cache.misses, cache.hits, cache.updates, cache.refreshes

    _answer(engine, recs, clock[0], root)  # yesterday evening: the range and its comparison
    assert counts() == (2, 0, 0, 0)
    # The next day: the hour being written has its first lines, and the refresh, after
    # midnight, fills the page's two ranges moved by a day.
    after = _visits(DAY + timedelta(days=1), 0, "n")[:3]
    analytics_model.archive(root, after)
    recs += after
    clock[0] = DAY + timedelta(days=1, minutes=10)
    assert not Refresher(cache, lambda: False).tick(clock[0])  # a query runs: nothing
    assert counts() == (2, 0, 0, 0)
    assert refresher.tick(clock[0]) == 2
    assert counts() == (4, 0, 0, 2)
    assert refresher.tick(clock[0]) == 0  # this hour's is done
    # The owner's first load of the day: read from the entries, nothing filled or merged.
    _answer(engine, recs, clock[0], root)
    assert counts() == (4, 2, 0, 2)
    # Lines appended in the hour: the next hour's refresh merges them into the entry the
    # owner read (the comparison's files did not change); the load after reads it as is.
    more = _visits(DAY + timedelta(days=1), 0, "m")[3:]
    analytics_model.archive(root, more)
    recs += more
    clock[0] += timedelta(hours=1)
    assert refresher.tick(clock[0]) == 1
    assert counts() == (4, 2, 1, 3)
    _answer(engine, recs, clock[0], root)
    assert counts() == (4, 4, 1, 3)
    engine.close()


def test_an_entry_no_query_read_lately_is_not_refreshed(tmp_path: Path) -> None:
    recs = _visits(DAY, 20, "d")
    root = write(tmp_path, recs, "jsonl")
    engine = QueryEngine(max_concurrent=1, timeout_s=60, visit_cache_bytes=64 * 2**20)
    cache = engine.visit_cache
    clock = [DAY + timedelta(hours=21)]
    cache.clock = lambda: clock[0]
    _answer(engine, recs, clock[0], root)
    misses = cache.misses
    later = DAY + timedelta(days=2, hours=1)  # more than a day since it was read
    assert Refresher(cache, lambda: engine.idle).tick(later) == 0
    assert (cache.misses, cache.refreshes) == (misses, 0)
    engine.close()


@pytest.mark.parametrize(
    ("body", "compare", "days"),
    [
        ("7d", False, 1), ("7d", True, 1), ("day", True, 1), ("30d", True, 1),
        (["2026-11-20", "2026-11-28"], False, 1),  # a custom range ending that day
        (["2026-11-20", "2026-11-27"], False, 0),  # one ending before it
        ("month", False, 0), ("month", True, 0), ("year", False, 0),
    ],
)  # fmt: skip
def test_what_moves_with_the_day(body: Any, compare: bool, days: int) -> None:
    """Read at DAY 23:30, refreshed two days later: a range ending with the day it was
    read (and its previous period) moves by the days passed; any other stays."""
    read_at = DAY + timedelta(hours=23, minutes=30)
    q = parse_query({"site_id": "a.example", "metrics": ["visits"], "date_range": body}, read_at)
    assert q.start is not None
    start, end = q.start, q.end
    if compare:
        start, end = comparison_range(Comparison("previous_period"), start, end)
    today = DAY + timedelta(days=2)
    assert moved(start, end, read_at, today) == timedelta(days=2 * days)
