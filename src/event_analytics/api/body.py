"""Reading raw ASGI request bodies: the content type, the size limit and the time limit."""

from __future__ import annotations

import asyncio

from starlette.types import Receive, Scope

from event_analytics.api.problems import UnsupportedMediaType
from event_analytics.model import BodyTimeout, BodyTooLarge, MalformedJSON

JSON_TYPES = ("application/json",)
# navigator.sendBeacon() with a string sends text/plain, the one type that needs no CORS
# preflight: the ingest routes read it as JSON.
INGEST_TYPES = ("application/json", "text/plain")


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (latin-1, as HTTP/1.1 sends them), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def require_json(scope: Scope, accepted: tuple[str, ...] = JSON_TYPES) -> None:
    """415 unless the Content-Type is one of ``accepted`` or a ``+json`` type."""
    raw = header(scope, b"content-type")
    media = (raw or "").split(";", 1)[0].strip().lower()
    if media not in accepted and not media.endswith("+json"):
        raise UnsupportedMediaType(raw, accepted)


async def read_limited(
    scope: Scope, receive: Receive, limit: int, timeout_s: float | None = None
) -> bytes:
    """The whole body, or BodyTooLarge as soon as it is known to exceed ``limit``.

    A declared Content-Length over the limit is refused before reading anything;
    a chunked body is refused at the first chunk that crosses the limit. The whole
    body must arrive within ``timeout_s`` (BodyTimeout): a client that trickles bytes
    would otherwise hold a connection and its buffer for as long as it likes.
    """
    declared = header(scope, b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise MalformedJSON("invalid Content-Length header")
        if int(declared) > limit:
            raise BodyTooLarge(limit)
    if timeout_s is None:
        return await _read(receive, limit)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read(receive, limit)
    except TimeoutError:
        raise BodyTimeout(timeout_s) from None


async def _read(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ClientGone(Exception):
    """The client disconnected before its body arrived: nothing to answer."""
