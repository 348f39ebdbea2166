"""Pure time logic: UTC normalisation, bucket flooring and labels, ranges."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

_SEED_KEY = re.compile(
    r"^(?P<type>[a-z][a-z0-9_]{0,63})_(?P<date>\d{4}-\d{2}-\d{2})_(?P<hh>\d{2}):(?P<mm>\d{2})$"
)


class Interval(StrEnum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"

    @property
    def delta(self) -> timedelta:
        return {Interval.MINUTE: MINUTE, Interval.HOUR: HOUR, Interval.DAY: DAY}[self]


def to_utc(ts: datetime) -> datetime:
    """Read a naive timestamp as UTC; convert an aware one to UTC.

    Raises OverflowError when the UTC instant falls outside years 1..9999
    (e.g. ``0001-01-01T00:00:00+05:30``); callers treat that as out of range.
    """
    if ts.tzinfo is None or ts.utcoffset() is None:
        return ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def floor(ts: datetime, interval: Interval) -> datetime:
    """The start of the bucket holding ``ts`` (which must be UTC)."""
    if interval is Interval.MINUTE:
        return ts.replace(second=0, microsecond=0)
    if interval is Interval.HOUR:
        return ts.replace(minute=0, second=0, microsecond=0)
    return ts.replace(hour=0, minute=0, second=0, microsecond=0)


def ceil(ts: datetime, interval: Interval) -> datetime:
    """The first bucket boundary at or after ``ts`` (UTC)."""
    start = floor(ts, interval)
    return start if start == ts else start + interval.delta


def bucket_count(start: datetime, end: datetime, interval: Interval) -> int:
    """How many buckets of ``interval`` cover ``[start, end)``."""
    if end <= start:
        return 0
    return (ceil(end, interval) - floor(start, interval)) // interval.delta


def buckets(start: datetime, end: datetime, interval: Interval) -> list[datetime]:
    """The starts of the buckets covering ``[start, end)``, oldest first."""
    first = floor(start, interval)
    return [first + interval.delta * i for i in range(bucket_count(start, end, interval))]


def label(bucket: datetime, interval: Interval) -> str:
    """The bucket's name inside key names, e.g. ``2026-11-27T22:14``."""
    if interval is Interval.MINUTE:
        return bucket.strftime("%Y-%m-%dT%H:%M")
    if interval is Interval.HOUR:
        return bucket.strftime("%Y-%m-%dT%H")
    return bucket.strftime("%Y-%m-%d")


def iso_z(ts: datetime) -> str:
    """RFC 3339 UTC with a ``Z``, seconds precision when there are no fractions."""
    text = ts.astimezone(UTC).replace(tzinfo=None).isoformat()
    return text + "Z"


def last_buckets(now: datetime, count: int, interval: Interval) -> list[datetime]:
    """The ``count`` buckets ending with the one holding ``now``, oldest first."""
    current = floor(now, interval)
    return [current - interval.delta * i for i in range(count - 1, -1, -1)]


def parse_seed_bucket_key(key: str) -> tuple[str, datetime] | None:
    """Parse the seed's ``page_view_YYYY-MM-DD_HH:MM`` into (event_type, minute), or None."""
    match = _SEED_KEY.match(key)
    if match is None:
        return None
    try:
        minute = datetime.strptime(
            f"{match['date']} {match['hh']}:{match['mm']}", "%Y-%m-%d %H:%M"
        ).replace(tzinfo=UTC)
    except ValueError:
        return None
    return match["type"], minute


def seed_bucket_key(event_type: str, minute: datetime) -> str:
    """The seed's bucket name for a minute: ``page_view_2024-06-07_12:34``."""
    return f"{event_type}_{minute.strftime('%Y-%m-%d_%H:%M')}"
