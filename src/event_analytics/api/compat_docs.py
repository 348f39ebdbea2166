"""OpenAPI description of the drop-in ingest routes (Segment's /v1/*, Plausible's
/api/event), answered by the plain-ASGI path in ``compat.py``. Field by field: docs/api.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from event_analytics.adapters import segment
from event_analytics.api.problems import problem_responses


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


MODELS: tuple[type[BaseModel], ...] = (
    SegmentMessage,
    SegmentBatch,
    Dropped,
    SegmentItem,
    SegmentResult,
    PlausibleEvent,
    PlausibleAccepted,
)


def _json(name: str, *types: str) -> dict[str, Any]:
    schema = {"schema": {"$ref": f"#/components/schemas/{name}"}}
    return dict.fromkeys(types or ("application/json",), schema)


_SEGMENT_ERRORS = {str(k): v for k, v in problem_responses(400, 415, 422, 503).items()}


def _segment_path(kind: str | None) -> dict[str, Any]:
    batch = kind is None
    return {
        "post": {
            "tags": ["segment"],
            "summary": "Segment batch (up to 2,500 messages, 500 KB)"
            if batch
            else f"Segment {kind} (one message, 32 KB)",
            "operationId": "segment_batch" if batch else f"segment_{kind}",
            "description": (
                "Segment's HTTP Tracking API, for its SDKs pointed here with `host=`. The "
                "write key is the HTTP Basic user or `writeKey` in the body. `messageId` is "
                "the dedup key: a resend is a `duplicate`. **200** only after the engine "
                "stored the events; one result per message (dropped properties listed). "
                "Over-size: **400**, as Segment answers. Mapping: docs/api.md."
                + ("" if batch else " A rejected message is a **422** problem.")
            ),
            "requestBody": {
                "required": True,
                "content": _json(
                    "SegmentBatch" if batch else "SegmentMessage", "application/json", "text/plain"
                ),
            },
            "responses": {
                "200": {
                    "description": "Stored (results per message)",
                    "content": _json("SegmentResult"),
                },
                **_SEGMENT_ERRORS,
            },
        }
    }


PATHS: dict[str, Any] = {
    **{
        ("/v1/batch" if k is None else f"/v1/{k}"): _segment_path(k) for k in (None, *segment.TYPES)
    },
    "/api/event": {
        "post": {
            "tags": ["browser"],
            "summary": "Plausible's events API (the script tag sends here)",
            "operationId": "plausible_event",
            "description": (
                "Plausible's tracker (or /js/script.js) posts here, JSON or text/plain. No "
                "key: browsers hold no secret (EA_CORS_ORIGINS and address limits apply). "
                "The user is a visitor per day: a hash of a daily salt, the domain, the IP "
                "and the User-Agent; the IP itself is never stored. **202** once stored."
            ),
            "requestBody": {
                "required": True,
                "content": _json("PlausibleEvent", "application/json", "text/plain"),
            },
            "responses": {
                "202": {"description": "Stored", "content": _json("PlausibleAccepted")},
                **{str(k): v for k, v in problem_responses(400, 404, 413, 415, 422, 503).items()},
            },
        }
    },
}


def paths(schemas: dict[str, Any]) -> dict[str, Any]:
    """The drop-in operations; the schemas they name are added to ``schemas``."""
    for model in MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return PATHS
