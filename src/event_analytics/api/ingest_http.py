"""POST /events and POST /events/batch: the hot path, as plain ASGI.

These two routes skip FastAPI's request machinery (dependency solving, Request objects,
several middleware layers: about a quarter of the CPU per event in a profile) and
answer with pre-shaped JSON. FastAPI still documents them (see ``events.py``), and
every other route goes through FastAPI as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from event_analytics import metrics
from event_analytics.api.body import INGEST_TYPES, ClientGone, header, read_limited, require_json
from event_analytics.api.problems import UnsupportedMediaType, problem, render_error
from event_analytics.api.security import (
    CORS_ALLOW_HEADERS,
    CORS_EXPOSE_HEADERS,
    Access,
    Guard,
)
from event_analytics.config import Settings
from event_analytics.ingest import Ingestor, ItemResult
from event_analytics.model import BodyTimeout, BodyTooLarge, EventAnalyticsError

ACCEPTED = "Page view event accepted and queued for processing"
DUPLICATE = "Duplicate event_id: already counted, nothing changed"
_JSON = [(b"content-type", b"application/json")]


@dataclass(frozen=True, slots=True)
class _Route:
    """What the request-timing middleware reads to label the route."""

    path: str


EVENTS_ROUTE = _Route("/events")
BATCH_ROUTE = _Route("/events/batch")
_ROUTES = {r.path: r for r in (EVENTS_ROUTE, BATCH_ROUTE)}
_EXPOSE = (b"access-control-expose-headers", CORS_EXPOSE_HEADERS.encode())
_PREFLIGHT = [
    (b"access-control-allow-methods", b"POST"),
    (b"access-control-allow-headers", CORS_ALLOW_HEADERS.encode()),
    (b"access-control-max-age", b"600"),
    (b"vary", b"Origin"),
]


def _with_cors(send: Send, origin: str) -> Send:
    """``send`` that lets the allowed browser origin read the answer (and its errors)."""
    extra = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin"),
             _EXPOSE]  # fmt: skip

    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return cors_send


class IngestEndpoints:
    """Answers the two ingest routes itself; passes everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        guard: Guard = scope["app"].state.guard
        if guard.cors:
            origin = header(scope, b"origin")
            if origin is not None and guard.origin_allowed(origin):
                if scope["method"] == "OPTIONS":
                    await _preflight(send, origin)
                    return
                send = _with_cors(send, origin)
        if scope["method"] != "POST":
            allow = {"Allow": "POST"}
            answer = problem(
                405, "method-not-allowed", "Method Not Allowed", "use POST", headers=allow
            )
            await answer(scope, receive, send)
            return
        handler = self._one if route is EVENTS_ROUTE else self._batch
        await self._guarded(handler, guard, scope, receive, send)

    async def _guarded(
        self, handler: Any, guard: Guard, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            # Keys, limits and origins before the body is read: a refused client costs
            # no body buffering and no parsing.
            if guard.write_active:
                refusal = await guard.admit(scope, Access.WRITE)
                if refusal is not None:
                    await refusal(scope, receive, send)
                    return
            status, body = await handler(scope, receive)
        except ClientGone:
            return
        except (EventAnalyticsError, UnsupportedMediaType) as exc:
            await render_error(exc)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": status, "headers": _JSON})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _state(scope: Scope) -> tuple[Settings, Ingestor]:
        state = scope["app"].state
        return state.settings, state.ingestor

    async def _one(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        settings, ingestor = self._state(scope)
        body = await _read_json(scope, receive, settings.max_body_bytes, settings.body_timeout_s)
        result = await ingestor.ingest_json(body)
        reply = {
            "success": True,
            "message": DUPLICATE if result.duplicate else ACCEPTED,
            "event_id": result.event_id,
            "duplicate": result.duplicate,
        }
        return (200 if result.duplicate else 201), orjson.dumps(reply)

    async def _batch(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        settings, ingestor = self._state(scope)
        body = await _read_json(scope, receive, settings.max_batch_bytes, settings.body_timeout_s)
        results = await ingestor.ingest_batch_json(body)
        return 200, orjson.dumps(batch_reply(results))


async def _preflight(send: Send, origin: str) -> None:
    headers = [(b"access-control-allow-origin", origin.encode("latin-1")), *_PREFLIGHT]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _read_json(scope: Scope, receive: Receive, limit: int, timeout_s: float) -> bytes:
    try:
        require_json(scope, INGEST_TYPES)
        return await read_limited(scope, receive, limit, timeout_s)
    except UnsupportedMediaType:
        metrics.event_rejected("unsupported_media_type")
        raise
    except BodyTooLarge:
        metrics.event_rejected("body_too_large")
        raise
    except BodyTimeout:
        metrics.event_rejected("body_timeout")
        raise


def batch_reply(results: list[ItemResult]) -> dict[str, Any]:
    """Counts by status, then one result per event in request order."""
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
    rows: list[dict[str, Any]] = []
    for r in results:
        counts[r.status] += 1
        row: dict[str, Any] = {"index": r.index, "event_id": r.event_id, "status": r.status}
        if r.errors:
            first = r.errors[0]
            row |= {"code": first.code, "field": first.field, "message": first.message}
            row["errors"] = [e.as_dict() for e in r.errors]
        rows.append(row)
    return {**counts, "results": rows}
