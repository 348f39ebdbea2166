"""OpenAPI description of POST /events and POST /events/batch, built from the models.

Both are answered by the plain-ASGI hot path in ``ingest_http.py``, which FastAPI's
routing never sees, so FastAPI cannot describe them. Their request and response schemas
are generated here from the objects that validate them (``model.EVENT_ADAPTER``, the
batch limit of ``Settings``), so /docs and the service cannot disagree (tests/test_openapi.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, create_model

from event_analytics.api.problems import problem_responses
from event_analytics.config import Settings
from event_analytics.model import EVENT_ADAPTER, Event

REF = "#/components/schemas/{model}"


class EventAccepted(BaseModel):
    success: bool = True
    message: str = Field(
        description="Informational (kept from the seed): `<event_type> event stored`, or "
        "for a duplicate that nothing changed. Read `duplicate` and the status, not this."
    )
    event_id: str
    duplicate: bool


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


def batch_adapter(settings: Settings) -> TypeAdapter[Any]:
    """``{"events": [...]}`` as ``ingest._batch_items`` takes it: 1 to
    ``max_batch_events`` events, each an ``Event``."""
    limit = settings.max_batch_events
    batch = create_model("EventBatch", events=(list[Event], Field(min_length=1, max_length=limit)))
    return TypeAdapter(batch)


def _json(schemas: dict[str, Any], what: TypeAdapter[Any] | type[BaseModel]) -> dict[str, Any]:
    """A JSON body of what ``what`` validates: its schema (and those it uses) put into
    ``schemas`` under their titles, and referenced from there."""
    adapter = what if isinstance(what, TypeAdapter) else TypeAdapter(what)
    schema = adapter.json_schema(ref_template=REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[schema["title"]] = schema
    return {"application/json": {"schema": {"$ref": REF.format(model=schema["title"])}}}


def paths(settings: Settings, schemas: dict[str, Any]) -> dict[str, Any]:
    """The two operations; the schemas they name are added to ``schemas``."""
    problems = {str(k): v for k, v in problem_responses(400, 413, 415, 422, 503).items()}
    limit = settings.max_batch_events
    return {
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
                "requestBody": {"required": True, "content": _json(schemas, EVENT_ADAPTER)},
                "responses": {
                    "201": {"description": "Stored", "content": _json(schemas, EventAccepted)},
                    "200": {
                        "description": "Duplicate: already counted",
                        "content": _json(schemas, EventAccepted),
                    },
                    **problems,
                },
            }
        },
        "/events/batch": {
            "post": {
                "tags": ["events"],
                "summary": f"Ingest up to {limit:,} events in one request",
                "operationId": "post_events_batch",
                "description": (
                    "Each event is validated on its own: one result per event, in request "
                    "order, `accepted`, `duplicate` or `rejected` (with `code`, `field`, "
                    "`message`). Valid events are stored even when others are refused. "
                    f"Limits: {limit:,} events, {settings.max_batch_bytes:,} bytes. On 503 "
                    "nothing or part was stored: resend the whole batch, duplicates are "
                    "recognised."
                ),
                "requestBody": {
                    "required": True,
                    "content": _json(schemas, batch_adapter(settings)),
                },
                "responses": {
                    "200": {
                        "description": "One result per event",
                        "content": _json(schemas, BatchResult),
                    },
                    **problems,
                },
            }
        },
    }
