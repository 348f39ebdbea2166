"""OpenAPI description of POST /events and POST /events/batch, built from the models.

Both are answered by the plain-ASGI hot path in ``ingest_http.py``, which FastAPI's
routing never sees, so FastAPI cannot describe them. Their request and response schemas
are generated here from the objects that validate them (``model.EVENT_ADAPTER``, the
batch limit of ``Settings``), so /docs and the service cannot disagree (tests/test_openapi.py).
``body`` and ``post`` describe any plain-ASGI ingest route (``compat_docs`` uses them).
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


def body(
    schemas: dict[str, Any], what: TypeAdapter[Any] | type[BaseModel], *types: str
) -> dict[str, Any]:
    """A body of what ``what`` validates, as each of ``types`` (JSON by default): its
    schema (and those it uses) put into ``schemas`` under their titles, referenced there."""
    adapter = what if isinstance(what, TypeAdapter) else TypeAdapter(what)
    schema = adapter.json_schema(ref_template=REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[schema["title"]] = schema
    ref = {"schema": {"$ref": REF.format(model=schema["title"])}}
    return dict.fromkeys(types or ("application/json",), ref)


def post(
    tag: str,
    operation_id: str,
    summary: str,
    description: str,
    request: dict[str, Any],
    answers: dict[int, tuple[str, dict[str, Any]]],
    problems: tuple[int, ...],
) -> dict[str, Any]:
    """One plain-ASGI ingest route's POST: ``request`` and each answer's content as
    ``body`` makes them, then its problem+json answers (``problem_responses``)."""
    responses: dict[str, Any] = {
        str(status): {"description": text, "content": content}
        for status, (text, content) in answers.items()
    }
    responses |= {str(k): v for k, v in problem_responses(*problems).items()}
    return {
        "post": {
            "tags": [tag],
            "summary": summary,
            "operationId": operation_id,
            "description": description,
            "requestBody": {"required": True, "content": request},
            "responses": responses,
        }
    }


def paths(settings: Settings, schemas: dict[str, Any]) -> dict[str, Any]:
    """The two operations; the schemas they name are added to ``schemas``."""
    problems = (400, 413, 415, 422, 503)
    limit = settings.max_batch_events
    accepted = body(schemas, EventAccepted)
    return {
        "/events": post(
            "events",
            "post_event",
            "Ingest one event",
            "Validates and stores one event. **201** only after the storage engine "
            "acknowledged it; **200** with `duplicate: true` when this `event_id` was "
            "already counted (retries are safe). The body limit (64 KiB by default) "
            "is enforced while reading.",
            body(schemas, EVENT_ADAPTER),
            {201: ("Stored", accepted), 200: ("Duplicate: already counted", accepted)},
            problems,
        ),
        "/events/batch": post(
            "events",
            "post_events_batch",
            f"Ingest up to {limit:,} events in one request",
            "Each event is validated on its own: one result per event, in request "
            "order, `accepted`, `duplicate` or `rejected` (with `code`, `field`, "
            "`message`). Valid events are stored even when others are refused. "
            f"Limits: {limit:,} events, {settings.max_batch_bytes:,} bytes. On 503 "
            "nothing or part was stored: resend the whole batch, duplicates are "
            "recognised.",
            body(schemas, batch_adapter(settings)),
            {200: ("One result per event", body(schemas, BatchResult))},
            problems,
        ),
    }
