"""Plausible's legacy Stats API v1 (``GET /api/v1/stats/realtime/visitors``, ``aggregate``,
``timeseries``, ``breakdown``): translated into the v2 request by ``analytics/stats_v1.py``
and answered by the v2 planner, in v1's shapes (docs/api.md, "Stats API v1").

A bad parameter is a 400 problem+json naming the v1 parameter, in Plausible's words.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from event_analytics.analytics import stats, stats_v1
from event_analytics.analytics.stats_spec import StatsQueryError, parse_query
from event_analytics.api import deps
from event_analytics.api.problems import problem_responses
from event_analytics.api.render import json_response
from event_analytics.api.security import check_site_access
from event_analytics.api.stats import with_site_goals

router = APIRouter(tags=["stats"])
_PREFIX = "/api/v1/stats"
_COMMON = (
    "Parameters as Plausible's v1: `site_id`, `period` (12mo, 6mo, month, 30d, 7d, day, "
    "custom with `date=YYYY-MM-DD,YYYY-MM-DD`), `date`, `metrics` (comma-separated), "
    "`filters` (`visit:browser==Firefox;visit:country!=US`, `|` for or, `~` contains). "
    "Answered by the v2 planner; see docs/api.md."
)


async def _answer(request: Request, kind: stats_v1.Kind) -> Response:
    params = dict(request.query_params)
    v1 = stats_v1.translate(kind, params)
    check_site_access(request.scope, str(v1.body["site_id"]))
    settings = deps.settings(request)
    now = datetime.now(UTC)
    if kind == "realtime":
        site = v1.body["site_id"]
        count = await deps.query_engine(request).run(
            stats.current_visitors, site, settings.archive_path, now
        )
        return json_response(count)
    try:
        query = await with_site_goals(request, parse_query(v1.body, now))
    except StatsQueryError as exc:  # a v2 field's fault is the v1 parameter's it came from
        raise StatsQueryError(stats_v1.v1_field(exc.errors[0].field), exc.message) from None
    until = await deps.archived(request)
    answer = await deps.query_engine(request).run(
        stats.run, query, settings.archive_path, until, settings.session_timeout_s
    )
    return json_response(stats_v1.answer(v1, answer))


_ERRORS = problem_responses(400, 503, 504)
_HELP = {
    "site_id": "the site's domain",
    "period": "12mo, 6mo, month, 30d (default), 7d, day or custom",
    "date": "YYYY-MM-DD (moves today), or YYYY-MM-DD,YYYY-MM-DD with period=custom",
    "metrics": "comma-separated metric names (default visitors)",
    "filters": "v1 filters: visit:browser==Firefox;visit:country!=US, | for or, ~ contains",
    "compare": "previous_period",
    "interval": "date or month",
    "property": "the dimension to break down by, e.g. visit:source",
    "limit": "rows per page, 1-1000 (default 100)",
    "page": "page number from 1",
}


def _parameters(kind: stats_v1.Kind) -> dict[str, Any]:
    """The query parameters of ``kind`` for the OpenAPI description (read by hand here,
    as v1's names and errors are Plausible's, not FastAPI's)."""
    return {
        "parameters": [
            {"name": name, "in": "query", "required": name == "site_id"
             or (kind == "breakdown" and name == "property"),
             "description": _HELP[name], "schema": {"type": "string"}}
            for name in sorted(stats_v1.PARAMS[kind])
        ]
    }  # fmt: skip


@router.get(f"{_PREFIX}/realtime/visitors", summary="Plausible Stats API v1: current visitors",
            description="Visitors with an event in the last 5 minutes: a bare number.",
            responses=_ERRORS, openapi_extra=_parameters("realtime"))  # fmt: skip
async def realtime(request: Request) -> Response:
    return await _answer(request, "realtime")


@router.get(f"{_PREFIX}/aggregate", summary="Plausible Stats API v1: aggregate",
            description=_COMMON + " `compare=previous_period` adds `change`.",
            responses=_ERRORS, openapi_extra=_parameters("aggregate"))  # fmt: skip
async def aggregate(request: Request) -> Response:
    return await _answer(request, "aggregate")


@router.get(f"{_PREFIX}/timeseries", summary="Plausible Stats API v1: timeseries",
            description=_COMMON + " `interval`: date or month.", responses=_ERRORS,
            openapi_extra=_parameters("timeseries"))  # fmt: skip
async def timeseries(request: Request) -> Response:
    return await _answer(request, "timeseries")


@router.get(f"{_PREFIX}/breakdown", summary="Plausible Stats API v1: breakdown",
            description=_COMMON + " `property` (required), `limit` (1-1000, 100), `page`.",
            responses=_ERRORS, openapi_extra=_parameters("breakdown"))  # fmt: skip
async def breakdown(request: Request) -> Response:
    return await _answer(request, "breakdown")
