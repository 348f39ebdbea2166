"""POST /events and POST /events/batch: the hot path, as plain ASGI.

These two routes skip FastAPI's request machinery (dependency solving, Request objects,
and its whole middleware stack: each layer wraps ``send`` and adds awaits per request)
and answer with pre-shaped JSON. FastAPI still documents them (see ``events.py``), and
every other route goes through FastAPI as usual.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from event_analytics import telemetry
from event_analytics.api.body import ClientGone, header, read_ingest_body
from event_analytics.api.problems import problem, render_error
from event_analytics.api.request_context import begin, log_access
from event_analytics.api.security import (
    BATCH_PATH,
    CORS_ALLOW_HEADERS,
    CORS_EXPOSE_HEADERS,
    EVENTS_PATH,
    Access,
    Guard,
)
from event_analytics.config import Settings
from event_analytics.errors import EventAnalyticsError
from event_analytics.ingest import Ingestor, ItemResult
from event_analytics.logs import request_id

# The seed's clients read ``message`` (its Postman collection shows it), so the field
# stays; its text is informational, and true: the event is stored before the 201 (the
# seed said "Page view event accepted and queued for processing" for every type).
STORED = "{event_type} event stored"
DUPLICATE = "Duplicate event_id: already counted, nothing changed"
_JSON = (b"content-type", b"application/json")
# Logged and timed for a client that left before its answer (nginx's code for it).
CLIENT_CLOSED = 499
Header = tuple[bytes, bytes]
log = logging.getLogger(__name__)


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
    """Answers the two ingest routes. The app calls it before FastAPI's middleware stack
    (see ``app.App``), so it does that stack's work for them itself: the request id and
    its echo, the timing metric, the access log, a 500 for an unexpected error."""

    def __init__(self, access_log: bool = False) -> None:
        self.access_log = access_log

    async def __call__(
        self, route: IngestRoute, scope: Scope, receive: Receive, send: Send
    ) -> None:
        scope["route"] = route
        echo, token = begin(scope)
        start = time.perf_counter()
        sent = _Sent(send)
        status = 500
        try:
            status = await self._answer(route, scope, receive, sent, echo)
        except Exception:
            # What ServerErrorMiddleware does for the other routes: log it, answer 500.
            log.exception("unhandled error on %s", route.path)
            if not sent.started:
                detail = "an unexpected error; nothing was acknowledged, retry is safe"
                oops = problem(500, "internal-error", "Internal server error", detail)
                await _respond(oops, scope, receive, sent, echo)
        finally:
            seconds = time.perf_counter() - start
            telemetry.http_request(scope["method"], route.path, status, seconds)
            if self.access_log:
                log_access(scope, status, seconds)
            request_id.reset(token)

    async def _answer(
        self, route: IngestRoute, scope: Scope, receive: Receive, send: Send, echo: Header
    ) -> int:
        guard: Guard = scope["app"].state.guard
        if guard.cors or route.any_origin:
            origin = header(scope, b"origin")
            if origin is not None and (guard.origin_allowed(origin) or not guard.cors):
                if scope["method"] == "OPTIONS":
                    await _preflight(send, origin, echo)
                    return 204
                send = _with_cors(send, origin)
        if scope["method"] != "POST":
            allow = {"Allow": "POST"}
            answer = problem(
                405, "method-not-allowed", "Method Not Allowed", "use POST", headers=allow
            )
            return await _respond(answer, scope, receive, send, echo)
        try:
            # Keys, limits and origins before the body is read: a refused client costs
            # no body buffering and no parsing.
            if guard.write_active and route.admission is not Admission.BODY:
                keyless = route.admission is Admission.KEYLESS
                refusal = await guard.admit(scope, Access.WRITE, keyless=keyless)
                if refusal is not None:
                    return await _respond(refusal, scope, receive, send, echo)
            # An engine that may evict would forget what it acknowledges: refuse first.
            scope["app"].state.watch.check_writes()
            reply = await route.handler(scope, receive)
            if isinstance(reply, Response):
                return await _respond(reply, scope, receive, send, echo)
            status, body = reply
        except ClientGone:
            return CLIENT_CLOSED
        except EventAnalyticsError as exc:
            return await _respond(render_error(exc), scope, receive, send, echo)
        # With its length, uvicorn frames the body as is instead of chunking it.
        length = (b"content-length", b"%d" % len(body))
        headers = [_JSON, length, echo]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return status


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


class _Sent:
    """``send`` that remembers whether the response has started."""

    __slots__ = ("send", "started")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        self.started = True
        await self.send(message)


async def _respond(
    response: Response, scope: Scope, receive: Receive, send: Send, echo: Header
) -> int:
    """Send one of the shared (Starlette) answers with the request id; its status."""

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), echo]
        await send(message)

    await response(scope, receive, send_with_id)
    return response.status_code


async def _preflight(send: Send, origin: str, echo: Header) -> None:
    headers = [(b"access-control-allow-origin", origin.encode("latin-1")), *_PREFLIGHT, echo]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


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
