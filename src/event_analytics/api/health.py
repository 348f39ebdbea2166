"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from event_analytics.api import deps
from event_analytics.api.problems import problem_responses
from event_analytics.api.render import json_response
from event_analytics.config import Settings
from event_analytics.errors import ClusterForming, EngineRefused, StorageUnavailable
from event_analytics.store.watch import EngineWatch
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
    settings = deps.settings(request)
    body: dict[str, Any] = {
        "timestamp": iso_z(datetime.now(UTC)),
        "access": access_summary(settings),
    }
    try:
        # One deadline for the whole probe (it makes several calls): a hung engine turns
        # readiness red within the per-command timeout, not a multiple of it.
        async with asyncio.timeout(settings.redis_timeout_s):
            engine = await store.engine_info()
            watch: EngineWatch = request.app.state.watch
            await watch.refresh()
    except (StorageUnavailable, TimeoutError) as exc:
        error = str(exc) or "storage did not answer in time"
        body |= {
            "status": "unavailable",
            # engine_unreachable; engine_refused (it answers, but keeps us out);
            # cluster_forming (it answers, but does not serve all slots yet).
            "reason": getattr(exc, "reason", "engine_unreachable"),
            "engine": {"reachable": isinstance(exc, EngineRefused | ClusterForming),
                       "error": error},
        }  # fmt: skip
        if isinstance(exc, EngineRefused | ClusterForming):
            body["detail"] = exc.detail()  # what to change, or to wait for
            return json_response(body, 503, headers=exc.headers())
        return json_response(body, 503, headers={"Retry-After": "1"})
    durable = engine["aof_enabled"] and engine["appendfsync"] == "always"
    engine |= {"reachable": True, "embedded": request.app.state.embedded}
    engine |= watch.facts()
    body |= {
        "status": "ready",
        "engine": engine,
        # What a 201 means: survives a crash of the engine's machine only with fsync always.
        "ack_durability": "fsync_always" if durable else "engine_policy",
    }
    refusal = watch.not_ready()
    if refusal is not None:
        body |= {"status": "unavailable", "reason": refusal.reason, "detail": refusal.detail()}
        return json_response(body, 503, headers=refusal.headers())
    return json_response(body)


def access_summary(settings: Settings) -> dict[str, Any]:
    """Who may call the service, said plainly: off by default, for the single-user run."""
    write = "api_key" if settings.write_keys else "open"
    read = "api_key" if settings.read_keys or settings.site_keys else "open"
    out: dict[str, Any] = {
        "write": write,
        "read": read,
        "rate_limits": {
            "per_key": settings.rate_limit_per_key or None,
            "per_address": settings.rate_limit_per_address or None,
            "events_per_key": settings.event_limit_per_key or None,
            "events_per_address": settings.event_limit_per_address or None,
            "window_s": settings.rate_limit_window_s,
        },
        "cors_origins": list(settings.cors_origins),
    }
    open_scopes = [name for name, mode in (("send events", write), ("read analytics", read))
                   if mode == "open"]  # fmt: skip
    if open_scopes:
        out["warning"] = (
            f"no API keys for: {' and '.join(open_scopes)}; anyone who can reach this "
            "address may do that (set EA_WRITE_KEYS / EA_READ_KEYS before exposing it)"
        )
    return out
