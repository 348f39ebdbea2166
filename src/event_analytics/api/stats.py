"""Plausible's Stats API v2 (``POST /api/v2/query``): visits, pageviews, bounce rate, visit
duration, goal conversions and revenue by dimension, with comparisons, from the archive
(docs/api.md, "Stats API"). The site's goals are read from the engine here and handed to
the planner as values (``with_site_goals``).

The body is parsed by ``analytics/stats_spec.py`` (a 400 names the field at fault, in
Plausible's style of message) and answered by DuckDB in the query engine's pool, off the
event loop, with the limits of the other archive queries (503 busy, 504 too long).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from event_analytics.analytics import site_list, stats
from event_analytics.analytics.stats_spec import (
    GOAL,
    GOAL_METRICS,
    StatsQuery,
    StatsQueryError,
    date_range,
    goal_conditions,
    parse_query,
    with_goals,
)
from event_analytics.api import deps
from event_analytics.api.body import read_json
from event_analytics.api.problems import problem_responses
from event_analytics.api.render import json_response
from event_analytics.api.security import allowed_sites, check_site_access
from event_analytics.store.goals import GoalStore

router = APIRouter(tags=["stats"])
MAX_BODY = 64 * 1024
_EXAMPLE: dict[str, Any] = {
    "site_id": "example.com",
    "metrics": ["visitors", "visits", "bounce_rate", "visit_duration"],
    "date_range": "7d",
    "dimensions": ["visit:source"],
    "filters": [["is", "visit:country", ["US", "DE"]]],
}
_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"type": "object", "required": ["site_id", "metrics", "date_range"]},
            "example": _EXAMPLE,
        }
    },
}


async def with_site_goals(request: Request, query: StatsQuery) -> StatsQuery:
    """The query with its site's goals from the engine, when it reads goals at all."""
    reads_goals = (
        GOAL in query.dimensions
        or any(goal_conditions(f) for f in query.filters)
        or bool(set(GOAL_METRICS) & set(query.metrics))
    )
    if not reads_goals:
        return query
    store = deps.store(request)
    goals = await GoalStore(store.client, store.keys).list(query.site_id.lower())
    return with_goals(query, goals)


@router.post(
    "/api/v2/query",
    summary="Plausible Stats API v2: metrics of visits by dimensions, filtered",
    description=(
        "Plausible's request and answer shapes; what differs is listed in docs/api.md. "
        "`meta.archived_until` is the receive time before which every accepted event is in "
        "the archive (so in this answer); `meta.method` is `exact`."
    ),
    responses=problem_responses(400, 413, 503, 504),
    openapi_extra={"requestBody": _BODY},
)
async def post_query(request: Request) -> Response:
    raw = await read_json(
        request.scope, request.receive, MAX_BODY, deps.settings(request).body_timeout_s
    )
    parsed = parse_query(raw, datetime.now(UTC))
    check_site_access(request.scope, parsed.site_id)
    query = await with_site_goals(request, parsed)
    settings = deps.settings(request)
    until = await deps.archived(request)
    answer = await deps.query_engine(request).run(
        stats.run, query, settings.archive_path, until, settings.session_timeout_s
    )
    return json_response(answer)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@router.get(
    "/api/sites",
    summary="The sites seen in the archive over a range, with their visitors and events",
    description=(
        "What the dashboard's site picker lists: every site (`site_id`, decided per event as "
        "docs/api.md says) with at least one event in the range, bots excluded, most events "
        "first (at most 1000). `date_range` is a Stats API v2 shortcut (`day`, `7d`, `30d`, "
        "`month`, `12mo`, `all`, ...) or two ISO dates joined by a comma. "
        "`meta.archived_until` as in `POST /api/v2/query`."
    ),
    responses=problem_responses(400, 422, 503, 504),
)
async def get_sites(
    request: Request,
    range_: Annotated[str, Query(alias="date_range", max_length=64)] = "30d",
) -> Response:
    raw: Any = range_.split(",") if "," in range_ else range_
    try:
        start, end = date_range(raw, datetime.now(UTC))
    except StatsQueryError as exc:  # its words are for the v2 body: say it for a query string
        raise StatsQueryError("date_range", f"{exc.message} (here: ?date_range=7d, or two ISO "
                              "dates or date-times joined by a comma)") from None  # fmt: skip
    settings = deps.settings(request)
    until = await deps.archived(request)
    answer = await deps.query_engine(request).run(
        site_list.run, settings.archive_path, start or EPOCH, end, until
    )
    sites = allowed_sites(request.scope)
    if sites is not None:  # a site-limited key lists only its own sites
        answer["sites"] = [s for s in answer["sites"] if s["site_id"].lower() in sites]
    return json_response(answer)


__all__ = ["StatsQueryError", "router"]
