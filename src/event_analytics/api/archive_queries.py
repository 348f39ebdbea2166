"""Product analytics over the archive: funnels, retention and breakdown queries (POST).

The questions are validated by ``analytics/spec.py`` (a 422 names the field and the
reason), answered by DuckDB in the query engine's pool, off the event loop.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from event_analytics.analytics import funnel, query, retention
from event_analytics.analytics.pool import QueryEngine
from event_analytics.analytics.spec import FunnelSpec, QuerySpec, RetentionSpec
from event_analytics.api import deps
from event_analytics.api.admission import archive_read
from event_analytics.api.problems import problem_responses
from event_analytics.api.render import json_response
from event_analytics.config import Settings

router = APIRouter(prefix="/analytics", tags=["explore"])
ERRORS = problem_responses(400, 422, 503, 504)
FRESHNESS = (
    " `archived_until` is the receive time before which every accepted event is in the "
    "archive (so in this answer); `method` is `exact`."
)


def make_engine(settings: Settings) -> QueryEngine:
    return QueryEngine(
        max_concurrent=settings.analytics_max_concurrent,
        timeout_s=settings.analytics_timeout_s,
        memory_limit=settings.analytics_memory_limit,
        threads=settings.analytics_threads,
        visit_cache_bytes=settings.visit_cache_bytes,
        spill_dir=settings.spill_path,
    )


@router.post(
    "/funnel",
    summary="Funnel: users reaching each step in order within a window",
    description="Semantics and a worked example: docs/api.md." + FRESHNESS,
    responses=ERRORS,
)
async def post_funnel(request: Request, spec: FunnelSpec) -> Response:
    until = await deps.archived(request)
    root = deps.settings(request).archive_path
    async with archive_read(request, [funnel.span(spec)], "from"):
        answer = await deps.query_engine(request).run(funnel.run, spec, root, until)
    return json_response(answer)


@router.post(
    "/retention",
    summary="Retention: cohorts by period and the share returning k periods later",
    description="Semantics and a worked example: docs/api.md." + FRESHNESS,
    responses=ERRORS,
)
async def post_retention(request: Request, spec: RetentionSpec) -> Response:
    until = await deps.archived(request)
    root = deps.settings(request).archive_path
    found = retention.span(spec)
    async with archive_read(request, [found] if found else [], "from"):
        answer = await deps.query_engine(request).run(retention.run, spec, root, until)
    return json_response(answer)


@router.post(
    "/query",
    summary="Breakdown query: metrics by dimensions over a date range, filtered",
    description="In the spirit of Plausible's Stats API v2; docs/api.md." + FRESHNESS,
    responses=ERRORS,
)
async def post_query(request: Request, spec: QuerySpec) -> Response:
    until = await deps.archived(request)
    root = deps.settings(request).archive_path
    now = datetime.now(UTC)
    async with archive_read(request, [spec.time_range(now)], "date_range"):
        answer = await deps.query_engine(request).run(query.run, spec, root, until, now)
    return json_response(answer)
