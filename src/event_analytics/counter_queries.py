"""Pure planning and shaping of counter queries (Redis buckets; DuckDB questions over the
archive are analytics/): which buckets to read, what to answer.

No I/O here: the API asks for a plan, hands it to ``store.reads``, and shapes the reply.
Ranges are half-open, ``[from, to)``, widened to whole buckets of the interval read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from event_analytics.errors import FieldError, InvalidQuery
from event_analytics.series import Series, UserSource
from event_analytics.timebucket import (
    Interval,
    bucket_count,
    buckets,
    ceil,
    floor,
    iso_z,
    last_buckets,
    to_utc,
)

# Redis HyperLogLogs have 16384 registers: standard error 1.04 / sqrt(16384) = 0.81%.
HLL_STANDARD_ERROR = 0.0081
REALTIME_MINUTES = 5
USERS_CAP = 1000
# Buckets in a range whose `from` is omitted, ending with the one holding `to`.
DEFAULT_POINTS = {Interval.MINUTE: 60, Interval.HOUR: 24, Interval.DAY: 30}
TOP_PAGES_DEFAULT_MINUTES = 1440  # the last 24 hours, read from minute buckets

# Query bounds: far from the ends of datetime, so whole buckets never overflow it.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)

Uniques = Literal["exact", "approx"]


@dataclass(frozen=True, slots=True)
class SeriesPlan:
    """A timeseries: its points, and the ``level`` buckets each point is the union of."""

    event_type: str
    interval: Interval
    start: datetime
    end: datetime
    points: list[datetime]
    level: Interval
    groups: list[list[datetime]]
    source: UserSource
    page_url: str | None


@dataclass(frozen=True, slots=True)
class PagesPlan:
    """Top pages: the buckets of one level that cover the range."""

    event_type: str
    level: Interval
    start: datetime
    end: datetime
    buckets: list[datetime]
    limit: int
    source: UserSource


def _invalid(code: str, field: str, message: str) -> InvalidQuery:
    return InvalidQuery([FieldError(code, field, message)])


def _utc(value: datetime, field: str) -> datetime:
    try:
        utc = to_utc(value)
    except OverflowError:  # an offset pushed it out of years 1..9999
        utc = EARLIEST.replace(year=1)
    if not EARLIEST <= utc < LATEST:
        raise _invalid(
            "out_of_range", field, f"{field} must be between {iso_z(EARLIEST)} and {iso_z(LATEST)}"
        )
    return utc


def _bounds(
    start: datetime | None, end: datetime | None, now: datetime, interval: Interval, points: int
) -> tuple[datetime, datetime]:
    to = _utc(end, "to") if end is not None else now
    if start is None:
        return floor(to, interval) - interval.delta * (points - 1), to
    frm = _utc(start, "from")
    if to <= frm:
        raise _invalid("empty_range", "from", "from must be earlier than to")
    return frm, to


def plan_series(
    event_type: str,
    interval: Interval,
    start: datetime | None,
    end: datetime | None,
    page_url: str | None,
    *,
    now: datetime,
    uniques: Uniques,
    max_points: int,
) -> SeriesPlan:
    """The buckets behind a timeseries, or InvalidQuery when the range is empty or too long."""
    frm, to = _bounds(start, end, now, interval, DEFAULT_POINTS[interval])
    count = bucket_count(frm, to, interval)
    if count > max_points:
        raise _invalid(
            "too_many_points",
            "from",
            f"the range has {count} {interval} points; at most {max_points} are allowed: "
            "narrow the range or choose a coarser interval",
        )
    points = buckets(frm, to, interval)
    level, groups = interval, [[p] for p in points]
    if page_url is not None and interval is Interval.DAY:
        # Page figures are kept per minute and hour: a day point is the union of its hours.
        level = Interval.HOUR
        groups = [buckets(p, p + interval.delta, Interval.HOUR) for p in points]
        if count * 24 > max_points:
            raise _invalid(
                "too_many_points",
                "from",
                f"a page's daily series reads its hours: at most {max_points // 24} days",
            )
    exact = interval is Interval.MINUTE or uniques == "exact"
    if page_url is not None:
        source = UserSource.PAGE if exact else UserSource.PAGE_HLL
    else:
        source = UserSource.SETS if exact else UserSource.HLL
    return SeriesPlan(
        event_type=event_type,
        interval=interval,
        start=points[0],
        end=points[-1] + interval.delta,
        points=points,
        level=level,
        groups=groups,
        source=source,
        page_url=page_url,
    )


def plan_top_pages(
    event_type: str,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    *,
    now: datetime,
    uniques: Uniques,
    max_points: int,
) -> PagesPlan:
    """Read minute buckets when the range has at most ``max_points`` of them, else hours."""
    frm, to = _bounds(start, end, now, Interval.MINUTE, TOP_PAGES_DEFAULT_MINUTES)
    for level in (Interval.MINUTE, Interval.HOUR):
        if bucket_count(frm, to, level) <= max_points:
            return PagesPlan(
                event_type=event_type,
                level=level,
                start=floor(frm, level),
                end=ceil(to, level),
                buckets=buckets(frm, to, level),
                limit=limit,
                source=(
                    UserSource.PAGE
                    if level is Interval.MINUTE or uniques == "exact"
                    else UserSource.PAGE_HLL
                ),
            )
    raise _invalid(
        "too_many_points",
        "from",
        f"top pages are read from hour buckets: a range covers at most {max_points} hours "
        f"({max_points / 24:g} days)",
    )


def method_fields(source: UserSource) -> dict[str, Any]:
    """``unique_users_method`` and its standard error (null when exact)."""
    if source.exact:
        return {"unique_users_method": "exact", "unique_users_standard_error": None}
    return {"unique_users_method": "hll", "unique_users_standard_error": HLL_STANDARD_ERROR}


def series_body(plan: SeriesPlan, series: Series) -> dict[str, Any]:
    """The timeseries response: gap-filled points and the range's union of users."""
    return {
        "event_type": plan.event_type,
        "interval": plan.interval.value,
        "from": iso_z(plan.start),
        "to": iso_z(plan.end),
        "page_url": plan.page_url,
        **method_fields(plan.source),
        "points": [
            {"timestamp": iso_z(p), "count": c, "unique_users": u}
            for p, (c, u) in zip(plan.points, series.points, strict=True)
        ],
        "total": {
            "count": sum(c for c, _ in series.points),
            "unique_users": series.total_users,
        },
    }


def pages_rows(top: list[tuple[str, int]], users: list[int]) -> list[dict[str, Any]]:
    return [
        {"page_url": url, "count": count, "unique_users": n}
        for (url, count), n in zip(top, users, strict=True)
    ]


def capped_fields(other: int) -> dict[str, Any]:
    """Whether some bucket read held more pages than EA_MAX_PAGES_PER_BUCKET: their events
    are counted (totals stay exact), but under no page, so the ranking may miss them."""
    return {"pages_capped": other > 0, "other_pages_count": other}


def top_pages_body(
    plan: PagesPlan, top: list[tuple[str, int]], users: list[int], other: int
) -> dict[str, Any]:
    return {
        "event_type": plan.event_type,
        "from": iso_z(plan.start),
        "to": iso_z(plan.end),
        "bucket_interval": plan.level.value,
        **method_fields(plan.source),
        "pages": pages_rows(top, users),
        **capped_fields(other),
    }


def realtime_minutes(now: datetime) -> list[datetime]:
    """The realtime window: the current minute and the ones before it, oldest first."""
    return last_buckets(now, REALTIME_MINUTES, Interval.MINUTE)


def realtime_body(
    event_type: str,
    now: datetime,
    minutes: list[datetime],
    series: Series,
    top: list[tuple[str, int]],
    users: list[int],
    other: int,
) -> dict[str, Any]:
    (prev_count, prev_users), (cur_count, cur_users) = series.points[-2:]
    return {
        "event_type": event_type,
        "timestamp": iso_z(now),
        "window": {
            "from": iso_z(minutes[0]),
            "to": iso_z(minutes[-1] + Interval.MINUTE.delta),
            "minutes": len(minutes),
        },
        **method_fields(UserSource.SETS),
        "active_users": series.total_users,
        "events": sum(c for c, _ in series.points),
        "current_minute": {
            "timestamp": iso_z(minutes[-1]),
            "count": cur_count,
            "unique_users": cur_users,
        },
        "previous_minute": {
            "timestamp": iso_z(minutes[-2]),
            "count": prev_count,
            "unique_users": prev_users,
        },
        "top_pages": pages_rows(top, users),
        **capped_fields(other),
    }


def series_cost(plan: SeriesPlan, entries: int, shards: int) -> int:
    """Admission's cost of a timeseries: the buckets it reads, each O(1), on every shard,
    and the (bucket, user) entries its exact unions merge (``Reads.series_figures``)."""
    return sum(len(group) for group in plan.groups) * shards + entries


def top_pages_cost(plan: PagesPlan, entries: int, shards: int) -> int:
    """Admission's cost of top pages: the (bucket, page) entries its ranking merges, and
    the figures of the ``limit`` pages it returns in every bucket of every shard."""
    return entries + plan.limit * len(plan.buckets) * shards
