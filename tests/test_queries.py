"""Pure query planning: ranges to buckets, limits, which structure answers unique users."""

from __future__ import annotations

import fnmatch
import itertools
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from event_analytics.counter_queries import (
    LATEST,
    PagesPlan,
    SeriesPlan,
    method_fields,
    plan_series,
    plan_top_pages,
    realtime_minutes,
    series_body,
)
from event_analytics.errors import InvalidQuery
from event_analytics.keys import Keys
from event_analytics.series import Series, UserSource
from event_analytics.timebucket import Interval, bucket_count, buckets, ceil, floor, iso_z, label

instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
NOW = datetime(2026, 11, 27, 22, 14, 30, tzinfo=UTC)


@given(instants, st.integers(0, 4 * 86400), st.sampled_from(list(Interval)))
def test_buckets_cover_the_range_exactly(start: datetime, seconds: int, interval: Interval) -> None:
    end = start + timedelta(seconds=seconds)
    got = buckets(start, end, interval)
    assert len(got) == bucket_count(start, end, interval)
    if seconds == 0:
        assert got == []
        return
    assert got[0] == floor(start, interval) <= start
    assert got[-1] < end <= got[-1] + interval.delta == ceil(end, interval)
    assert all(b - a == interval.delta for a, b in itertools.pairwise(got))


def _series(
    interval: Interval,
    frm: datetime | None,
    to: datetime | None,
    page: str | None = None,
    uniques: Literal["exact", "approx"] = "approx",
) -> SeriesPlan:
    return plan_series(
        "page_view", interval, frm, to, page, now=NOW, uniques=uniques, max_points=1440
    )


def test_default_range_ends_with_the_current_bucket() -> None:
    plan = _series(Interval.MINUTE, None, None)
    assert len(plan.points) == 60
    assert plan.points[-1] == datetime(2026, 11, 27, 22, 14, tzinfo=UTC)
    assert plan.end == datetime(2026, 11, 27, 22, 15, tzinfo=UTC)
    assert len(_series(Interval.HOUR, None, None).points) == 24
    assert len(_series(Interval.DAY, None, None).points) == 30


def test_range_is_half_open_and_widened_to_buckets() -> None:
    frm = datetime(2026, 11, 27, 10, 15, tzinfo=UTC)
    plan = _series(Interval.HOUR, frm, frm + timedelta(hours=2))
    assert [iso_z(p) for p in plan.points] == [
        "2026-11-27T10:00:00Z",
        "2026-11-27T11:00:00Z",
        "2026-11-27T12:00:00Z",
    ]
    aligned = _series(Interval.HOUR, frm.replace(minute=0), frm.replace(minute=0, hour=12))
    assert len(aligned.points) == 2
    # An offset is read as what it means in UTC.
    ist = timezone(timedelta(hours=5, minutes=30))
    local = _series(
        Interval.MINUTE, frm.astimezone(ist), (frm + timedelta(minutes=3)).astimezone(ist)
    )
    assert local.points[0] == frm and len(local.points) == 3


def test_the_point_limit_is_stated() -> None:
    frm = datetime(2026, 11, 26, 0, 0, tzinfo=UTC)
    assert len(_series(Interval.MINUTE, frm, frm + timedelta(days=1)).points) == 1440
    with pytest.raises(InvalidQuery) as err:
        _series(Interval.MINUTE, frm, frm + timedelta(days=1, minutes=1))
    assert err.value.errors[0].code == "too_many_points"
    assert "1441 minute points" in str(err.value) and "at most 1440" in str(err.value)
    with pytest.raises(InvalidQuery) as err:
        _series(Interval.MINUTE, frm, frm)
    assert err.value.errors[0].code == "empty_range"
    with pytest.raises(InvalidQuery) as err:
        _series(Interval.DAY, frm, LATEST + timedelta(days=1))
    assert err.value.errors[0].code == "out_of_range"


def test_unique_users_source() -> None:
    frm, to = NOW - timedelta(days=2), NOW
    assert _series(Interval.MINUTE, NOW - timedelta(hours=1), to).source is UserSource.SETS
    assert _series(Interval.HOUR, frm, to).source is UserSource.HLL
    assert _series(Interval.DAY, frm, to, uniques="exact").source is UserSource.SETS
    page = "https://e.com/"
    assert _series(Interval.MINUTE, frm, frm + timedelta(hours=1), page).source is UserSource.PAGE
    assert _series(Interval.HOUR, frm, to, page).source is UserSource.PAGE_HLL
    assert _series(Interval.DAY, frm, to, page, uniques="exact").source is UserSource.PAGE
    assert method_fields(UserSource.HLL) == {
        "unique_users_method": "hll",
        "unique_users_standard_error": 0.0081,
    }
    assert method_fields(UserSource.PAGE)["unique_users_method"] == "exact"
    assert method_fields(UserSource.PAGE_HLL)["unique_users_method"] == "hll"


def test_a_page_day_is_the_union_of_its_hours() -> None:
    frm = datetime(2026, 11, 20, tzinfo=UTC)
    plan = _series(Interval.DAY, frm, frm + timedelta(days=3), page="https://e.com/")
    assert plan.level is Interval.HOUR
    assert [len(g) for g in plan.groups] == [24, 24, 24]
    assert plan.groups[1][0] == frm + timedelta(days=1)
    with pytest.raises(InvalidQuery) as err:
        _series(Interval.DAY, frm - timedelta(days=61), frm, page="https://e.com/")
    assert "at most 60 days" in str(err.value)


def test_total_is_the_union_not_the_sum() -> None:
    frm = datetime(2026, 11, 27, 10, tzinfo=UTC)
    plan = _series(Interval.MINUTE, frm, frm + timedelta(minutes=2))
    body = series_body(plan, Series(points=[(3, 2), (4, 2)], total_users=3))
    assert body["total"] == {"count": 7, "unique_users": 3}
    assert body["from"] == "2026-11-27T10:00:00Z" and body["to"] == "2026-11-27T10:02:00Z"
    assert [p["timestamp"] for p in body["points"]] == [
        "2026-11-27T10:00:00Z",
        "2026-11-27T10:01:00Z",
    ]


def _pages(
    frm: datetime | None, to: datetime | None, uniques: Literal["exact", "approx"] = "approx"
) -> PagesPlan:
    return plan_top_pages("page_view", frm, to, 10, now=NOW, uniques=uniques, max_points=1440)


def test_top_pages_read_minutes_then_hours() -> None:
    frm = datetime(2026, 11, 26, 0, 30, tzinfo=UTC)
    minutes = _pages(frm, frm + timedelta(days=1))
    assert minutes.level is Interval.MINUTE and len(minutes.buckets) == 1440
    assert minutes.source is UserSource.PAGE
    hours = _pages(frm, frm + timedelta(days=1, seconds=1))
    assert hours.level is Interval.HOUR and hours.source is UserSource.PAGE_HLL
    assert hours.start == datetime(2026, 11, 26, 0, tzinfo=UTC)
    assert hours.end == datetime(2026, 11, 27, 1, tzinfo=UTC)
    assert _pages(frm, frm + timedelta(days=2), "exact").source is UserSource.PAGE
    default = _pages(None, None)
    assert default.level is Interval.MINUTE and len(default.buckets) == 1440
    assert default.end == datetime(2026, 11, 27, 22, 15, tzinfo=UTC)
    with pytest.raises(InvalidQuery) as err:
        _pages(frm - timedelta(days=61), frm)
    assert "at most 1440 hours (60 days)" in str(err.value)


def test_realtime_window() -> None:
    got = realtime_minutes(NOW)
    # The current minute and the four before it, oldest first.
    assert got == [datetime(2026, 11, 27, 22, m, tzinfo=UTC) for m in range(10, 15)]


def test_stems_name_the_bucket_keys() -> None:
    # ingest.lua appends bucket_keys()'s suffixes to stems(); rebuild deletes bucket_keys().
    keys = Keys("ea:", 4)
    minute = datetime(2026, 11, 27, 22, 14, tzinfo=UTC)
    starts = {i: floor(minute, i) for i in Interval}
    labels = [label(start, i) for i, start in starts.items()]
    stems = keys.stems(3, "click", *labels)
    assert keys.seen(3, 9876) == keys.seen_stem(3) + "9876" == "ea:{3}:seen:9876"
    for stem, (interval, start) in zip(stems, starts.items(), strict=True):
        assert stem == keys.bucket(3, "click", interval, start)
        assert all(k.startswith(stem + ":") for k in keys.bucket_keys(3, "click", interval, start))
    page_hll = keys.page_hll(3, "click", Interval.HOUR, starts[Interval.HOUR], "https://e.x/a b")
    (pattern,) = keys.bucket_key_patterns(3, "click", Interval.HOUR, starts[Interval.HOUR])
    assert fnmatch.fnmatchcase(page_hll, pattern)
    assert re.fullmatch(r"ea:\{3\}:click:h:2026-11-27T22:page_hll:[0-9a-f]{16}", page_hll)


PURE = [
    "config",
    "model",
    "errors",
    "timebucket",
    "keys",
    "series",
    "counter_queries",
    "archive.record",
    "goals",
    "revenue",
]


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module: str) -> None:
    # Layering: the pure modules never pull in the engine client, the store or HTTP.
    # A fresh interpreter, so what other tests imported does not count.
    code = (
        f"import sys, event_analytics.{module}\n"
        "io = ('redis', 'hiredis', 'fastapi', 'starlette', 'aiohttp', 'uvicorn')\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in io"
        " or n.startswith('event_analytics.store')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
