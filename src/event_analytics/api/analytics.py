"""Read endpoints of the seed: page views per minute and one minute bucket."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from event_analytics.api import deps
from event_analytics.api.problems import problem_responses
from event_analytics.api.render import json_response
from event_analytics.counter_queries import USERS_CAP
from event_analytics.errors import FieldError, InvalidQuery
from event_analytics.model import EVENT_TYPE_PATTERN
from event_analytics.timebucket import Interval, iso_z, last_buckets, parse_seed_bucket_key

router = APIRouter(prefix="/analytics", tags=["analytics"])


class MinuteRow(BaseModel):
    minute_timestamp: str
    count: int
    unique_users: int
    users: list[str] | None = Field(
        default=None, description="With include_users=true: the user ids, sorted"
    )
    truncated: bool | None = Field(
        default=None, description=f"With include_users=true: more than {USERS_CAP} users"
    )


@router.get(
    "/page_views_per_minute",
    summary="Events and exact unique users per minute, last N minutes",
    description=(
        "One row per minute, oldest first, for the `minutes` minutes ending with the "
        "current one (UTC), zeros included. `include_users=true` adds each minute's user "
        f"ids (at most {USERS_CAP}, with `truncated: true` when there are more)."
    ),
    response_model=list[MinuteRow],
    response_model_exclude_none=True,
    responses=problem_responses(422, 503),
)
async def page_views_per_minute(
    request: Request,
    minutes: Annotated[int, Query(ge=1, le=1440, description="How many minutes")] = 5,
    event_type: Annotated[
        str, Query(pattern=EVENT_TYPE_PATTERN, description="Event type to report on")
    ] = "page_view",
    include_users: Annotated[bool, Query(description="Add the user ids of each minute")] = False,
) -> Response:
    buckets = last_buckets(datetime.now(UTC), minutes, Interval.MINUTE)
    stats = await deps.reads(request).minute_stats(event_type, buckets)
    rows: list[dict[str, Any]] = [
        {"minute_timestamp": iso_z(b), "count": c, "unique_users": u}
        for b, (c, u) in zip(buckets, stats, strict=True)
    ]
    if include_users:
        samples = await deps.reads(request).minute_users(event_type, buckets, USERS_CAP)
        for row, users in zip(rows, samples, strict=True):
            row["users"] = users
            row["truncated"] = row["unique_users"] > len(users)
    return json_response(rows)


@router.get(
    "/minute-buckets/{minute_key}",
    summary="Count and unique users of one minute bucket",
    description=(
        "`minute_key` is `<event_type>_YYYY-MM-DD_HH:MM` in UTC, e.g. "
        "`page_view_2024-06-07_12:34`. The response also carries the seed's "
        "`{minute_key: count}` field."
    ),
    responses={
        200: {"description": "The bucket (zeros when nothing was counted in it)"},
        **problem_responses(422, 503),
    },
)
async def minute_bucket(
    request: Request,
    minute_key: Annotated[str, Path(max_length=100, examples=["page_view_2024-06-07_12:34"])],
) -> dict[str, Any]:
    parsed = parse_seed_bucket_key(minute_key)
    if parsed is None:
        raise InvalidQuery(
            [
                FieldError(
                    "invalid_bucket_key",
                    "minute_key",
                    "expected <event_type>_YYYY-MM-DD_HH:MM, e.g. page_view_2024-06-07_12:34",
                )
            ]
        )
    event_type, minute = parsed
    ((count, uniques),) = await deps.reads(request).minute_stats(event_type, [minute])
    return {
        minute_key: count,
        "bucket_key": minute_key,
        "event_type": event_type,
        "minute_timestamp": iso_z(minute),
        "count": count,
        "unique_users": uniques,
    }
