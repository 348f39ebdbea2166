"""Analytics beyond the seed: time series, top pages, realtime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from event_analytics import counter_queries as queries
from event_analytics.api import deps
from event_analytics.api.problems import problem_responses
from event_analytics.api.render import json_response
from event_analytics.model import EVENT_TYPE_PATTERN, MAX_URL_LENGTH
from event_analytics.series import UserSource
from event_analytics.store.reads import BucketFigures, Sized
from event_analytics.timebucket import Interval

router = APIRouter(prefix="/analytics", tags=["analytics"])

EventType = Annotated[str, Query(pattern=EVENT_TYPE_PATTERN, description="Event type to report on")]
From = Annotated[
    datetime | None,
    Query(
        alias="from",
        description="Start, ISO 8601 (no offset = UTC; send `+` as `%2B`). Floored to a bucket.",
    ),
]
To = Annotated[
    datetime | None,
    Query(description="End, exclusive, ISO 8601; default now. Raised to a bucket boundary."),
]
Limit = Annotated[int, Query(ge=1, le=100, description="How many pages")]

METHOD_DOC = (
    "`unique_users_method` is `exact` (sets) or `hll` (HyperLogLog, "
    "`unique_users_standard_error` 0.0081 = 0.81%)."
)


class Figures(BaseModel):
    count: int
    unique_users: int


class Point(Figures):
    timestamp: str


class TimeSeries(BaseModel):
    event_type: str
    interval: Interval
    from_: str = Field(alias="from")
    to: str
    page_url: str | None
    unique_users_method: str
    unique_users_standard_error: float | None
    points: list[Point]
    total: Figures


class PageRow(Figures):
    page_url: str


class Capped(BaseModel):
    pages_capped: bool = Field(
        description="Some bucket read had more pages than EA_MAX_PAGES_PER_BUCKET: the "
        "events of the pages past it are counted (totals stay exact) but ranked under no "
        "page, so a page may be missing from the list or counted short"
    )
    other_pages_count: int = Field(description="The events of those pages (0 when not capped)")


class TopPages(Capped):
    event_type: str
    from_: str = Field(alias="from")
    to: str
    bucket_interval: Interval
    unique_users_method: str
    unique_users_standard_error: float | None
    pages: list[PageRow]


class Minute(Figures):
    timestamp: str


class Realtime(Capped):
    event_type: str
    timestamp: str
    window: dict[str, str | int]
    unique_users_method: str
    unique_users_standard_error: float | None
    active_users: int
    events: int
    current_minute: Minute
    previous_minute: Minute
    top_pages: list[PageRow]


@asynccontextmanager
async def _admitted(
    request: Request, known: int, size: Callable[[], Awaitable[int]]
) -> AsyncIterator[None]:
    """Hold a counter lane for a read whose cost is ``known`` plus what ``size`` finds
    with O(1) commands (ZCARDs, a bucket's figures; over EA_MAX_QUERY_COST: 422): sized at
    once when ``known`` is small (a few buckets, then maybe a cheap read), else only once
    the long-range lane has room (in a storm, a refused read costs the engine nothing)."""
    client = deps.client_id(request)
    if known <= deps.settings(request).cheap_read_cost:
        cost = known + await size()
        slot = deps.counter_lane(request, cost).slot(client, cost)
    else:
        slot = deps.heavy_reads(request).slot(client, known, size)
    async with slot:
        yield


@router.get(
    "/timeseries",
    summary="Counts and unique users per minute, hour or day over a range",
    description=(
        "Points for every bucket of `interval` in `[from, to)` (UTC, zeros included), "
        "at most 1440 of them by default (`EA_MAX_QUERY_POINTS`). `total.unique_users` is the "
        "number of distinct users over the whole range, not the sum of the points. "
        "Minute figures are exact; hour and day figures follow `EA_UNIQUES`. With "
        "`page_url`, only that page's events and users (a day is read from its hours, "
        "so at most 60 days). " + METHOD_DOC
    ),
    response_model=TimeSeries,
    responses=problem_responses(422, 503),
)
async def timeseries(
    request: Request,
    from_: From = None,
    to: To = None,
    event_type: EventType = "page_view",
    interval: Annotated[Interval, Query(description="Bucket size")] = Interval.MINUTE,
    page_url: Annotated[
        str | None, Query(max_length=MAX_URL_LENGTH, description="Only this page")
    ] = None,
) -> Response:
    settings = deps.settings(request)
    plan = queries.plan_series(
        event_type,
        interval,
        from_,
        to,
        page_url,
        now=datetime.now(UTC),
        uniques=settings.uniques,
        max_points=settings.max_query_points,
    )
    reads = deps.reads(request)
    # With exact users, a series of several points merges the members of every bucket
    # (the total's union): sized by the figures read first (O(1) per bucket).
    sized: list[BucketFigures] = []

    async def size() -> int:
        figures = await reads.series_figures(
            event_type, plan.level, plan.groups, plan.source, page_url
        )
        sized.append(figures)
        return figures.entries

    async with _admitted(request, queries.series_cost(plan, 0, reads.keys.shards), size):
        series = await reads.series(
            event_type, plan.level, plan.groups, plan.source, page_url, sized[0]
        )
    return json_response(queries.series_body(plan, series))


@router.get(
    "/top-pages",
    summary="Most viewed pages over a range, with unique users per page",
    description=(
        "Pages ordered by event count (then URL). Ranges up to 1440 minutes are read "
        "from minute buckets (exact unique users), longer ones (up to 1440 hours) from "
        "hour buckets (unique users per `EA_UNIQUES`); `from` and `to` in the answer "
        "show the whole buckets read. Default: the last 24 hours. " + METHOD_DOC
    ),
    response_model=TopPages,
    responses=problem_responses(422, 503),
)
async def top_pages(
    request: Request,
    from_: From = None,
    to: To = None,
    event_type: EventType = "page_view",
    limit: Limit = 10,
) -> Response:
    settings = deps.settings(request)
    plan = queries.plan_top_pages(
        event_type,
        from_,
        to,
        limit,
        now=datetime.now(UTC),
        uniques=settings.uniques,
        max_points=settings.max_query_points,
    )
    reads = deps.reads(request)
    # The figures of the pages returned are known from the plan; the entries to merge are
    # sized with O(1) commands before any merging (_admitted).
    sized: list[Sized] = []

    async def size() -> int:
        sized.append(await reads.ranked_entries(event_type, plan.level, plan.buckets))
        return sized[0].entries

    async with _admitted(request, queries.top_pages_cost(plan, 0, reads.keys.shards), size):
        top = await reads.top_pages(event_type, plan.level, plan.buckets, limit, sized[0])
        pages = [u for u, _ in top.pages]
        users = await reads.page_users(event_type, plan.level, plan.buckets, pages, plan.source)
    return json_response(queries.top_pages_body(plan, top.pages, users, top.other))


@router.get(
    "/realtime",
    summary="Active users and top pages of the last 5 minutes",
    description=(
        "`active_users`: distinct users in the current minute and the 4 before it (exact); "
        "the events of the current and the previous minute; the top pages of the window."
    ),
    response_model=Realtime,
    responses=problem_responses(422, 503),
)
async def realtime(
    request: Request, event_type: EventType = "page_view", limit: Limit = 10
) -> Response:
    now = datetime.now(UTC)
    minutes = queries.realtime_minutes(now)
    reads = deps.reads(request)
    # The two reads are independent: one round-trip wait instead of two (the ingest
    # worker answers this cheap read, and under a read storm each wait is for a core).
    series, top = await asyncio.gather(
        reads.series(event_type, Interval.MINUTE, [[m] for m in minutes], UserSource.SETS),
        reads.top_pages(event_type, Interval.MINUTE, minutes, limit),
    )
    pages = [u for u, _ in top.pages]
    users = await reads.page_users(event_type, Interval.MINUTE, minutes, pages)
    body = queries.realtime_body(event_type, now, minutes, series, top.pages, users, top.other)
    return json_response(body)
