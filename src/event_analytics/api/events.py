"""OpenAPI description of POST /events and POST /events/batch.

Both are answered by the plain-ASGI hot path in ``ingest_http.py``; this module only
says what they take and give, so /docs and /redoc show them like every other route.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from event_analytics.api.problems import problem_responses
from event_analytics.model import Event


class EventAccepted(BaseModel):
    success: bool = True
    message: str
    event_id: str
    duplicate: bool


class EventBatch(BaseModel):
    events: list[Event] = Field(min_length=1, max_length=1000)


class BatchItem(BaseModel):
    index: int
    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    code: str | None = Field(default=None, description="first reason, when rejected")
    field: str | None = None
    message: str | None = None
    errors: list[dict[str, str]] | None = None


class BatchResult(BaseModel):
    accepted: int
    duplicate: int
    rejected: int
    results: list[BatchItem]


MODELS: tuple[type[BaseModel], ...] = (Event, EventAccepted, EventBatch, BatchItem, BatchResult)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


PATHS: dict[str, Any] = {
    "/events": {
        "post": {
            "tags": ["events"],
            "summary": "Ingest one event",
            "operationId": "post_event",
            "description": (
                "Validates and stores one event. **201** only after the storage engine "
                "acknowledged it; **200** with `duplicate: true` when this `event_id` was "
                "already counted (retries are safe). The body limit (64 KiB by default) "
                "is enforced while reading."
            ),
            "requestBody": {"required": True, "content": _json("Event")},
            "responses": {
                "201": {"description": "Stored", "content": _json("EventAccepted")},
                "200": {
                    "description": "Duplicate: already counted",
                    "content": _json("EventAccepted"),
                },
                **{str(k): v for k, v in problem_responses(400, 413, 415, 422, 503).items()},
            },
        }
    },
    "/events/batch": {
        "post": {
            "tags": ["events"],
            "summary": "Ingest up to 1,000 events in one request",
            "operationId": "post_events_batch",
            "description": (
                "Each event is validated on its own: one result per event, in request "
                "order, `accepted`, `duplicate` or `rejected` (with `code`, `field`, "
                "`message`). Valid events are stored even when others are refused. "
                "Limits: 1,000 events, 1 MiB. On 503 nothing or part was stored: resend "
                "the whole batch, duplicates are recognised."
            ),
            "requestBody": {"required": True, "content": _json("EventBatch")},
            "responses": {
                "200": {"description": "One result per event", "content": _json("BatchResult")},
                **{str(k): v for k, v in problem_responses(400, 413, 415, 422, 503).items()},
            },
        }
    },
}
