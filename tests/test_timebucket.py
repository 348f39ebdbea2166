"""Pure time logic: UTC conversion and flooring, labels, seed keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from event_analytics.timebucket import (
    Interval,
    floor,
    iso_z,
    label,
    last_buckets,
    parse_seed_bucket_key,
    seed_bucket_key,
    to_utc,
)

offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: timezone(timedelta(minutes=m))
)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(instants, offsets)
def test_any_offset_lands_in_the_utc_minute(instant: datetime, tz: timezone) -> None:
    local = instant.astimezone(tz)
    minute = floor(to_utc(local), Interval.MINUTE)
    assert minute.tzinfo == UTC
    assert minute <= instant < minute + timedelta(minutes=1)
    assert minute == instant.replace(second=0, microsecond=0)


@given(instants)
def test_naive_is_utc(instant: datetime) -> None:
    assert to_utc(instant.replace(tzinfo=None)) == instant


@given(instants, st.sampled_from(list(Interval)))
def test_floor_is_idempotent_and_contains(instant: datetime, interval: Interval) -> None:
    start = floor(instant, interval)
    assert floor(start, interval) == start
    assert start <= instant < start + interval.delta


def test_year_one_with_positive_offset_overflows() -> None:
    with pytest.raises(OverflowError):
        to_utc(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))))


def test_labels() -> None:
    ts = datetime(2026, 11, 27, 22, 14, 59, 999, tzinfo=UTC)
    assert label(floor(ts, Interval.MINUTE), Interval.MINUTE) == "2026-11-27T22:14"
    assert label(floor(ts, Interval.HOUR), Interval.HOUR) == "2026-11-27T22"
    assert label(floor(ts, Interval.DAY), Interval.DAY) == "2026-11-27"
    assert iso_z(floor(ts, Interval.MINUTE)) == "2026-11-27T22:14:00Z"


def test_last_buckets_end_with_current_minute() -> None:
    now = datetime(2026, 11, 27, 0, 2, 30, tzinfo=UTC)
    got = last_buckets(now, 5, Interval.MINUTE)
    assert [iso_z(b) for b in got] == [
        "2026-11-26T23:58:00Z",
        "2026-11-26T23:59:00Z",
        "2026-11-27T00:00:00Z",
        "2026-11-27T00:01:00Z",
        "2026-11-27T00:02:00Z",
    ]


@given(instants, st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True))
def test_seed_key_round_trip(instant: datetime, event_type: str) -> None:
    minute = floor(instant, Interval.MINUTE)
    assert parse_seed_bucket_key(seed_bucket_key(event_type, minute)) == (event_type, minute)


@pytest.mark.parametrize(
    "key",
    ["page_view_2024-02-30_12:00", "page_view_2024-06-07_24:00", "page_view_2024-06-07_12:60",
     "page_view_2024-06-07T12:34", "_2024-06-07_12:34", "page_view_2024-06-07_12:34:00"],
)  # fmt: skip
def test_bad_seed_keys(key: str) -> None:
    assert parse_seed_bucket_key(key) is None
