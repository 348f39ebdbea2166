"""OpenAPI description of the drop-in ingest routes (Segment's /v1/*, Plausible's
/api/event), answered by the plain-ASGI path in ``compat.py``. Field by field: docs/api.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from event_analytics.adapters import segment
from event_analytics.api.events import body, post

# Segment's SDKs and the beacon send text/plain too.
_BODY_TYPES = ("application/json", "text/plain")


class SegmentMessage(BaseModel):
    """One message as Segment's spec has it (other fields are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["track", "page", "screen", "identify", "group", "alias"] | None = Field(
        default=None, description="In /v1/batch only; the path says it otherwise"
    )
    messageId: str | None = Field(default=None, max_length=100, description="The dedup key")
    userId: str | None = None
    anonymousId: str | None = None
    event: str | None = Field(default=None, description="track: the event name")
    name: str | None = None
    timestamp: str | None = None
    sentAt: str | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    writeKey: str | None = None


class SegmentBatch(BaseModel):
    model_config = ConfigDict(extra="allow")

    batch: list[SegmentMessage] = Field(min_length=1, max_length=segment.MAX_BATCH_MESSAGES)
    sentAt: str | None = None
    context: dict[str, Any] | None = None
    writeKey: str | None = None


class Dropped(BaseModel):
    property: str
    reason: str


class SegmentItem(BaseModel):
    index: int
    messageId: str | None
    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    code: str | None = None
    field: str | None = None
    message: str | None = None
    errors: list[dict[str, str]] | None = None
    dropped: list[Dropped] | None = None


class SegmentResult(BaseModel):
    success: bool
    accepted: int
    duplicate: int
    rejected: int
    results: list[SegmentItem]


class PlausibleEvent(BaseModel):
    """Plausible's event; the tracker's short keys (n u d r p $ i h) work too."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description='"pageview" or a custom event name')
    url: str
    domain: str
    referrer: str | None = None
    props: dict[str, Any] | str | None = None
    revenue: dict[str, Any] | str | None = None
    interactive: bool | None = None


class PlausibleAccepted(BaseModel):
    success: bool
    event_id: str
    dropped: list[Dropped] | None = None


def _segment_path(schemas: dict[str, Any], kind: str | None) -> dict[str, Any]:
    batch = kind is None
    return post(
        "segment",
        "segment_batch" if batch else f"segment_{kind}",
        "Segment batch (up to 2,500 messages, 500 KB)"
        if batch
        else f"Segment {kind} (one message, 32 KB)",
        "Segment's HTTP Tracking API, for its SDKs pointed here with `host=`. The "
        "write key is the HTTP Basic user or `writeKey` in the body. `messageId` is "
        "the dedup key: a resend is a `duplicate`. **200** only after the engine "
        "stored the events; one result per message (dropped properties listed). "
        "Over-size: **400**, as Segment answers. Mapping: docs/api.md."
        + ("" if batch else " A rejected message is a **422** problem."),
        body(schemas, SegmentBatch if batch else SegmentMessage, *_BODY_TYPES),
        {200: ("Stored (results per message)", body(schemas, SegmentResult))},
        (400, 415, 422, 503),
    )


def paths(schemas: dict[str, Any]) -> dict[str, Any]:
    """The drop-in operations; the schemas they name are added to ``schemas``."""
    segment_paths = {
        ("/v1/batch" if k is None else f"/v1/{k}"): _segment_path(schemas, k)
        for k in (None, *segment.TYPES)
    }
    plausible_path = post(
        "browser",
        "plausible_event",
        "Plausible's events API (the script tag sends here)",
        "Plausible's tracker (or /js/script.js) posts here, JSON or text/plain. No "
        "key: browsers hold no secret (EA_CORS_ORIGINS and address limits apply). "
        "The user is a visitor per day: a hash of a daily salt, the domain, the IP "
        "and the User-Agent; the IP itself is never stored. **202** once stored.",
        body(schemas, PlausibleEvent, *_BODY_TYPES),
        {202: ("Stored", body(schemas, PlausibleAccepted))},
        (400, 404, 413, 415, 422, 503),
    )
    return {**segment_paths, "/api/event": plausible_path}
