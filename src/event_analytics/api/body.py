"""Reading request bodies with the size limit enforced as bytes arrive."""

from __future__ import annotations

from fastapi import Request

from event_analytics.api.problems import UnsupportedMediaType
from event_analytics.model import BodyTooLarge, MalformedJSON

JSON_TYPES = ("application/json",)


def require_json(request: Request) -> None:
    """415 unless the Content-Type is application/json or a ``+json`` type."""
    raw = request.headers.get("content-type")
    media = (raw or "").split(";", 1)[0].strip().lower()
    if media not in JSON_TYPES and not media.endswith("+json"):
        raise UnsupportedMediaType(raw, JSON_TYPES)


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body, or BodyTooLarge as soon as it is known to exceed ``limit``.

    A declared Content-Length over the limit is refused before reading anything;
    a chunked body is refused at the first chunk that crosses the limit.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise MalformedJSON("invalid Content-Length header")
        if int(declared) > limit:
            raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
