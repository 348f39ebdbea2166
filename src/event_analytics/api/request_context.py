"""Request ids and the access log: the outermost middleware, so every log line has the id."""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from event_analytics.api.security import KEY_ID_SCOPE
from event_analytics.logs import request_id

log = logging.getLogger("event_analytics.access")
REQUEST_ID_HEADER = b"x-request-id"
# What a client may send as its own id: the usual UUID, hex and base64 ids, nothing that
# could break a log line or a header.
_VALID_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            text = bytes(value).decode("latin-1")
            return text if _VALID_ID.fullmatch(text) else None
    return None


class RequestContext:
    """Takes the client's ``X-Request-ID`` (or makes one), logs with it, echoes it back."""

    def __init__(self, app: ASGIApp, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        echo, token = begin(scope)
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                log_access(scope, status, time.perf_counter() - start)
            request_id.reset(token)


def begin(scope: Scope) -> tuple[tuple[bytes, bytes], contextvars.Token[str | None]]:
    """The request's id (the client's or a new one), set for logging: its echo header
    and the token that resets it."""
    rid = _incoming_id(scope) or os.urandom(8).hex()
    return (REQUEST_ID_HEADER, rid.encode("latin-1")), request_id.set(rid)


# Set on a request whose client address must not be logged: on the browser path the
# address is what identifies a visitor (it is hashed with a daily salt, never kept).
NO_ADDRESS_SCOPE = "ea.no_address"


def log_access(scope: Scope, status: int, seconds: float) -> None:
    """One access-log line; the route template, never the raw path or query (a page URL)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", "unmatched")
    client = None if scope.get(NO_ADDRESS_SCOPE) else scope.get("client")
    log.info(
        "request",
        extra={
            "method": scope["method"],
            "route": str(template),
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "client": client[0] if client else None,
            "key_id": scope.get(KEY_ID_SCOPE),
        },
    )
