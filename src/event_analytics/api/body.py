"""Reading raw ASGI request bodies: the content type, and the size limit as bytes arrive."""

from __future__ import annotations

from starlette.types import Receive, Scope

from event_analytics.api.problems import UnsupportedMediaType
from event_analytics.model import BodyTooLarge, MalformedJSON

JSON_TYPES = ("application/json",)


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (latin-1, as HTTP/1.1 sends them), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def require_json(scope: Scope) -> None:
    """415 unless the Content-Type is application/json or a ``+json`` type."""
    raw = header(scope, b"content-type")
    media = (raw or "").split(";", 1)[0].strip().lower()
    if media not in JSON_TYPES and not media.endswith("+json"):
        raise UnsupportedMediaType(raw, JSON_TYPES)


async def read_limited(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, or BodyTooLarge as soon as it is known to exceed ``limit``.

    A declared Content-Length over the limit is refused before reading anything;
    a chunked body is refused at the first chunk that crosses the limit.
    """
    declared = header(scope, b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise MalformedJSON("invalid Content-Length header")
        if int(declared) > limit:
            raise BodyTooLarge(limit)
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
