"""POST /events and POST /events/batch: the hot path, as plain ASGI.

These two routes (and the drop-in ones of ``compat.py``) skip FastAPI's request
machinery (routing, dependency solving, Request objects, its middleware stack: each
layer wraps ``send`` and adds awaits per request) and answer with pre-shaped JSON. The
steps every request takes (request id, timing, access log, the 500) are the ones
FastAPI's routes take too (``steps.RequestSteps``); keys and limits are the same
``security.Guard``. FastAPI still documents them (see ``events.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from event_analytics.api.body import header, read_ingest_body
from event_analytics.api.problems import refuse, render_error
from event_analytics.api.security import BATCH_PATH, EVENTS_PATH, Access, Guard
from event_analytics.api.steps import preflight, with_cors
from event_analytics.config import Settings
from event_analytics.errors import EventAnalyticsError
from event_analytics.ingest import Ingestor, ItemResult

# The seed's clients read ``message`` (its Postman collection shows it), so the field
# stays; its text is informational, and true: the event is stored before the 201 (the
# seed said "Page view event accepted and queued for processing" for every type).
STORED = "{event_type} event stored"
DUPLICATE = "Duplicate event_id: already counted, nothing changed"
_JSON = (b"content-type", b"application/json")


# What a handler answers: status and JSON body, or a whole (refusal) response.
Reply = tuple[int, bytes] | Response
Handler = Callable[[Scope, Receive], Awaitable[Reply]]


class Admission(Enum):
    """When a route's key is checked."""

    HEADER = "header"  # from the headers, before the body is read
    BODY = "body"  # by the handler once it read the body (Segment's writeKey)
    KEYLESS = "keyless"  # no key (browsers hold no secret); origins and limits apply


@dataclass(frozen=True, slots=True)
class IngestRoute:
    """One plain-ASGI ingest route. ``path`` is what the request-timing middleware reads
    to label it; ``any_origin``: CORS for every origin unless EA_CORS_ORIGINS narrows it."""

    path: str
    handler: Handler
    admission: Admission = Admission.HEADER
    any_origin: bool = False


async def answer(route: IngestRoute, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one of the ingest routes. ``app.App`` calls it behind ``steps.RequestSteps``
    (the request id, timing, access log and the 500) and before FastAPI's routing."""
    guard: Guard = scope["app"].state.guard
    if guard.cors or route.any_origin:
        origin = header(scope, b"origin")
        if origin is not None and (guard.origin_allowed(origin) or not guard.cors):
            if scope["method"] == "OPTIONS":
                await preflight(send, origin)
                return
            send = with_cors(send, origin)
    if scope["method"] != "POST":
        await refuse("method-not-allowed", "use POST", {"Allow": "POST"})(scope, receive, send)
        return
    try:
        # Keys, limits and origins before the body is read: a refused client costs
        # no body buffering and no parsing.
        if guard.write_active and route.admission is not Admission.BODY:
            keyless = route.admission is Admission.KEYLESS
            refusal = await guard.admit(scope, Access.WRITE, keyless=keyless)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        # An engine that may evict would forget what it acknowledges: refuse first.
        scope["app"].state.watch.check_writes()
        reply = await route.handler(scope, receive)
    except EventAnalyticsError as exc:
        await render_error(exc)(scope, receive, send)
        return
    if isinstance(reply, Response):
        await reply(scope, receive, send)
        return
    status, body = reply
    # With its length, uvicorn frames the body as is instead of chunking it.
    headers = [_JSON, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def ingest_state(scope: Scope) -> tuple[Settings, Ingestor]:
    state = scope["app"].state
    return state.settings, state.ingestor


async def _one(scope: Scope, receive: Receive) -> Reply:
    settings, ingestor = ingest_state(scope)
    body = await read_ingest_body(scope, receive, settings.max_body_bytes, settings.body_timeout_s)
    guard: Guard = scope["app"].state.guard
    if guard.counts_events:
        await guard.take_events(scope, 1)
    result = await ingestor.ingest_json(body)
    reply = {
        "success": True,
        "message": DUPLICATE if result.duplicate else STORED.format(event_type=result.event_type),
        "event_id": result.event_id,
        "duplicate": result.duplicate,
    }
    return (200 if result.duplicate else 201), orjson.dumps(reply)


async def _batch(scope: Scope, receive: Receive) -> Reply:
    settings, ingestor = ingest_state(scope)
    body = await read_ingest_body(scope, receive, settings.max_batch_bytes, settings.body_timeout_s)
    guard: Guard = scope["app"].state.guard

    async def admit(n: int) -> None:
        await guard.take_events(scope, n)

    results = await ingestor.ingest_batch_json(body, admit if guard.counts_events else None)
    return 200, orjson.dumps(batch_reply(results))


EVENTS_ROUTE = IngestRoute(EVENTS_PATH, _one)
BATCH_ROUTE = IngestRoute(BATCH_PATH, _batch)
ROUTES = {r.path: r for r in (EVENTS_ROUTE, BATCH_ROUTE)}


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
