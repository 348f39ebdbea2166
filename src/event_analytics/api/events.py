"""Ingestion: POST /events."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from event_analytics import metrics
from event_analytics.api import deps
from event_analytics.api.body import read_limited, require_json
from event_analytics.api.problems import UnsupportedMediaType, problem_responses
from event_analytics.api.render import json_response
from event_analytics.model import BodyTooLarge

router = APIRouter(tags=["events"])


class EventAccepted(BaseModel):
    success: bool = True
    message: str
    event_id: str
    duplicate: bool


ACCEPTED = "Page view event accepted and queued for processing"
DUPLICATE = "Duplicate event_id: already counted, nothing changed"


@router.post(
    "/events",
    status_code=201,
    summary="Ingest one event",
    description=(
        "Validates and stores one event. **201** only after the storage engine "
        "acknowledged it; **200** with `duplicate: true` when this `event_id` was "
        "already counted (retries are safe). The body limit is enforced while reading."
    ),
    response_model=EventAccepted,
    responses={
        200: {"description": "Duplicate: already counted", "model": EventAccepted},
        **problem_responses(400, 413, 415, 422, 503),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Event"}}},
        }
    },
)
async def post_event(request: Request) -> Response:
    try:
        require_json(request)
        body = await read_limited(request, deps.settings(request).max_body_bytes)
    except UnsupportedMediaType:
        metrics.event_rejected("unsupported_media_type")
        raise
    except BodyTooLarge:
        metrics.event_rejected("body_too_large")
        raise
    result = await deps.ingestor(request).ingest_json(body)
    return json_response(
        {
            "success": True,
            "message": DUPLICATE if result.duplicate else ACCEPTED,
            "event_id": result.event_id,
            "duplicate": result.duplicate,
        },
        200 if result.duplicate else 201,
    )
