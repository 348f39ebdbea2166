"""Liveness and readiness."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from event_analytics.api import deps
from event_analytics.api.problems import problem_responses
from event_analytics.api.render import json_response
from event_analytics.model import StorageUnavailable
from event_analytics.timebucket import iso_z

router = APIRouter(tags=["health"])


@router.get("/health/", summary="Liveness: the process answers")
async def health() -> dict[str, Any]:
    return {
        "status": "healthy",
        "timestamp": iso_z(datetime.now(UTC)),
        "service": "event-analytics",
    }


@router.get(
    "/health/ready",
    summary="Readiness: the engine answers, and how durable an acknowledgement is",
    responses=problem_responses(503),
)
async def ready(request: Request) -> Response:
    store = deps.store(request)
    body: dict[str, Any] = {"timestamp": iso_z(datetime.now(UTC))}
    try:
        engine = await store.engine_info()
    except StorageUnavailable as exc:
        body |= {"status": "unavailable", "engine": {"reachable": False, "error": str(exc)}}
        return json_response(body, 503, headers={"Retry-After": "1"})
    durable = engine["aof_enabled"] and engine["appendfsync"] == "always"
    engine |= {"reachable": True, "embedded": request.app.state.embedded}
    body |= {
        "status": "ready",
        "engine": engine,
        # What a 201 means: survives a crash of the engine's machine only with fsync always.
        "ack_durability": "fsync_always" if durable else "engine_policy",
    }
    return json_response(body)
