"""The steps every HTTP request takes, whichever stack answers it: the request id (taken
from ``X-Request-ID`` or made) and its echo, the timing metric, the access log, and a
problem+json 500 for an unexpected error. Plus CORS, for both kinds of route: the
ingest routes' (EA_CORS_ORIGINS; POST, keyless browsers) and the read routes'
(EA_CORS_READ_ORIGINS; GET, Starlette's CORSMiddleware in FastAPI's stack).

Pure ASGI, the way Starlette writes middleware (``__call__(scope, receive, send)``,
``send`` wrapped once), so the three ways a request is answered share it: the fast
ingest routes (``ingest_http``, ``compat``), the hand-over to the query processes
(``forward``) and FastAPI (``app.App`` puts ``RequestSteps`` in front of all three).
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from event_analytics import telemetry
from event_analytics.api.body import ClientGone
from event_analytics.api.problems import internal_error
from event_analytics.api.security import KEY_ID_SCOPE
from event_analytics.logs import request_id

log = logging.getLogger(__name__)
access = logging.getLogger("event_analytics.access")
REQUEST_ID_HEADER = b"x-request-id"
# What a client may send as its own id: the usual UUID, hex and base64 ids, nothing that
# could break a log line or a header.
_VALID_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
# Timing labels use the matched route's template, never the raw path, so a client cannot
# create time series by requesting made-up URLs.
UNMATCHED = "unmatched"
# Logged and timed for a client that left before its answer (nginx's code for it).
CLIENT_CLOSED = 499
# Set on a request whose client address must not be logged: on the browser path the
# address is what identifies a visitor (it is hashed with a daily salt, never kept).
NO_ADDRESS_SCOPE = "ea.no_address"
# Set on a request another process times and logs (a read handed to the query
# processes): here it only gets its id and the 500.
ANSWERED_ELSEWHERE_SCOPE = "ea.answered_elsewhere"
Header = tuple[bytes, bytes]


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            text = bytes(value).decode("latin-1")
            return text if _VALID_ID.fullmatch(text) else None
    return None


def begin(scope: Scope) -> tuple[Header, contextvars.Token[str | None]]:
    """The request's id (the client's or a new one), set for logging: its echo header
    and the token that resets it."""
    rid = _incoming_id(scope) or os.urandom(8).hex()
    return (REQUEST_ID_HEADER, rid.encode("latin-1")), request_id.set(rid)


def route_template(scope: Scope) -> str:
    """The label of the route that answered (its template), ``unmatched`` when none."""
    route = scope.get("route")
    return str(getattr(route, "path_format", None) or getattr(route, "path", UNMATCHED))


def log_access(scope: Scope, status: int, seconds: float) -> None:
    """One access-log line; the route template, never the raw path or query (a page URL)."""
    client = None if scope.get(NO_ADDRESS_SCOPE) else scope.get("client")
    access.info(
        "request",
        extra={
            "method": scope["method"],
            "route": route_template(scope),
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "client": client[0] if client else None,
            "key_id": scope.get(KEY_ID_SCOPE),
        },
    )


class RequestSteps:
    """The outermost layer: id, timing, access log, 500. One ``send`` wrapper per request
    (each layer costs the hot path an await per message)."""

    def __init__(self, app: ASGIApp, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        echo, token = begin(scope)
        start = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientGone:
            status = CLIENT_CLOSED
        except Exception:
            # Logged here, once, whichever stack raised (FastAPI's ServerErrorMiddleware
            # has answered by then; the fast routes have not).
            log.exception("unhandled error on %s %s", scope["method"], route_template(scope))
            if not started:
                await internal_error()(scope, receive, send_with_id)
        finally:
            if not scope.get(ANSWERED_ELSEWHERE_SCOPE):
                seconds = time.perf_counter() - start
                telemetry.http_request(scope["method"], route_template(scope), status, seconds)
                if self.access_log:
                    log_access(scope, status, seconds)
            request_id.reset(token)


# -- CORS ------------------------------------------------------------------------------

# What a browser may send (the key, the id) and read (when to retry, the id).
CORS_ALLOW_HEADERS = ("authorization", "x-api-key", "x-request-id")
CORS_EXPOSE_HEADERS = ("retry-after", "x-request-id")
_INGEST_ALLOW = (*CORS_ALLOW_HEADERS, "content-type")
_EXPOSE = (b"access-control-expose-headers", ", ".join(CORS_EXPOSE_HEADERS).encode())
_PREFLIGHT = [
    (b"access-control-allow-methods", b"POST"),
    # Ingest bodies are JSON: a content-type the browser asks leave for.
    (b"access-control-allow-headers", ", ".join(sorted(_INGEST_ALLOW)).encode()),
    (b"access-control-max-age", b"600"),
    (b"vary", b"Origin"),
]


def with_cors(send: Send, origin: str) -> Send:
    """``send`` that lets the allowed browser origin read the answer (and its errors)."""
    extra = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin"),
             _EXPOSE]  # fmt: skip

    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return cors_send


async def preflight(send: Send, origin: str) -> None:
    """The answer to an allowed origin's OPTIONS: it may POST."""
    headers = [(b"access-control-allow-origin", origin.encode("latin-1")), *_PREFLIGHT]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def add_read_cors(app: Starlette, origins: tuple[str, ...]) -> None:
    """Let ``origins`` read the FastAPI routes (GET) from a browser, with a key."""
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=["GET"],
        allow_headers=list(CORS_ALLOW_HEADERS),
        expose_headers=list(CORS_EXPOSE_HEADERS),
    )
