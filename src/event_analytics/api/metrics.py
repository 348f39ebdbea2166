"""GET /metrics (Prometheus text format); requests are timed by ``steps.RequestSteps``."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from datetime import datetime

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from event_analytics import expiry_totals, telemetry
from event_analytics.destinations import status as delivery_status

router = APIRouter(tags=["metrics"])

# Set on app.state by the app factory: archive lag and dead letters at scrape time.
ArchiveProbe = Callable[[FastAPI], Awaitable[telemetry.ArchiveGauges | None]]
EngineProbe = Callable[[FastAPI], Awaitable[telemetry.EngineGauges | None]]


@router.get(
    "/metrics",
    summary="Prometheus metrics, summed over all worker processes",
    response_class=Response,
    responses={200: {"content": {telemetry.CONTENT_TYPE: {}}, "description": "Text format 0.0.4"}},
)
async def prometheus(request: Request) -> Response:
    archive: ArchiveProbe = request.app.state.archive_probe
    engine: EngineProbe = request.app.state.engine_probe
    body = telemetry.scrape(
        await archive(request.app),
        await engine(request.app),
        await _destinations(request),
        await _expiry(request),
    )
    return Response(body, media_type=telemetry.CONTENT_TYPE)


async def _expiry(request: Request) -> telemetry.ExpiryFigures | None:
    """The retention job's totals (0 before its first pass); None without retention."""
    settings = request.app.state.settings
    if not settings.archive_retention_days:
        return None
    found = await asyncio.to_thread(expiry_totals.read_totals, settings) or expiry_totals.Totals()
    oldest = math.nan
    with contextlib.suppress(TypeError, ValueError):  # None, or a file edited by hand
        oldest = datetime.fromisoformat(str(found.oldest_hour)).timestamp()
    return telemetry.ExpiryFigures(
        found.hours_deleted, found.events_deleted, found.postgres_rows_deleted, found.passes,
        settings.archive_retention_days, oldest,
    )  # fmt: skip


async def _destinations(request: Request) -> tuple[telemetry.DestinationGauges, ...]:
    settings = request.app.state.settings
    if not settings.postgres_url:
        return ()
    found = await asyncio.to_thread(delivery_status.read_status, settings)
    if found is None:
        nan = math.nan
        return (telemetry.DestinationGauges("postgres", False, nan, nan),)
    behind, seconds = found.get("events_behind"), found.get("seconds_behind")
    return (
        telemetry.DestinationGauges(
            "postgres",
            found.get("state") == "running",
            math.nan if behind is None else float(behind),
            math.nan if seconds is None else float(seconds),
        ),
    )
