"""``GET /api/v1/sites/export``: the site page's view (site, range, filters) as CSV files
in a zip, one per panel plus the graph and the top row (``analytics/stats_export.py``),
each the answer of ``POST /api/v2/query`` to its query, run through the same planner.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from event_analytics.analytics import stats, stats_export
from event_analytics.analytics.stats_spec import StatsQueryError, parse_query
from event_analytics.analytics.stats_spec import date_range as stats_date_range
from event_analytics.api import deps
from event_analytics.api.problems import problem_responses
from event_analytics.api.stats import with_site_goals
from event_analytics.goals import check_site
from event_analytics.store.goals import GoalStore

router = APIRouter(tags=["stats"])


@router.get(
    "/api/v1/sites/export",
    summary="The site page's view as CSV files in a zip (Plausible's CSV export)",
    description=(
        "`top.csv` (the totals), `visitors.csv` (the graph's metrics per `interval`), one "
        "file per panel (pages, entry and exit pages, sources, referrers, UTM medium, "
        "source, campaign, content and term, countries, devices, browsers, operating "
        "systems: visitors per value) and `conversions.csv` when the site has goals. Each is "
        "the answer of `POST /api/v2/query` to its query; `date_range` as `GET /api/sites` "
        "takes it, `filters` a JSON array of v2 filters. At most "
        f"{stats_export.ROW_CAP} rows a file; `README.txt` says which files were cut."
    ),
    responses={
        200: {"content": {"application/zip": {}}, "description": "The zip"},
        **problem_responses(400, 422, 503, 504),
    },
)
async def get_export(
    request: Request,
    site_id: Annotated[str, Query(max_length=253, description="The site's domain")],
    range_: Annotated[str, Query(alias="date_range", max_length=64)] = "30d",
    filters: Annotated[str, Query(max_length=16384, description="v2 filters, JSON")] = "[]",
    interval: Annotated[str, Query(description="the graph's: hour, day, week, month")] = "day",
) -> Response:
    try:
        parsed: Any = orjson.loads(filters)
    except orjson.JSONDecodeError:
        example = '[["is", "visit:country", ["US"]]]'
        raise StatsQueryError(
            "filters", f"filters is not JSON: send a JSON array of v2 filters, e.g. {example}"
        ) from None
    if not isinstance(parsed, list):
        raise StatsQueryError("filters", "filters must be a JSON array of v2 filters")
    if interval not in stats_export.INTERVALS:
        raise StatsQueryError("interval", "interval must be one of hour, day, week, month")
    site = check_site(site_id)
    date_range: Any = range_.split(",") if "," in range_ else range_
    try:
        stats_date_range(date_range, datetime.now(UTC))
    except StatsQueryError as exc:  # its words are for the v2 body: say it for a query string
        raise StatsQueryError("date_range", f"{exc.message} (here: ?date_range=7d, or two ISO "
                              "dates or date-times joined by a comma)") from None  # fmt: skip
    store = deps.store(request)
    goals = await GoalStore(store.client, store.keys).list(site)
    now = datetime.now(UTC)
    # Every query is parsed before any runs: a bad filter is one 400, not a half-made zip.
    plan = stats_export.plan(site, date_range, parsed, interval, bool(goals))
    queries = [(name, body, await with_site_goals(request, parse_query(body, now)))
               for name, body in plan]  # fmt: skip
    settings = deps.settings(request)
    until = await deps.archived(request)
    files = []
    for name, body, query in queries:
        answer = await deps.query_engine(request).run(
            stats.run, query, settings.archive_path, until, settings.session_timeout_s
        )
        files.append((name, body, answer))
    day = now.date().isoformat()
    return Response(
        stats_export.zip_bytes(files, site),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{site}-{day}.zip"'},
    )
