"""RFC 9457 problem details: every error the API sends, and the handlers that build them."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from event_analytics.errors import EventAnalyticsError, FieldError

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": f"urn:event-analytics:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = [e.as_dict() for e in errors]
    return Response(orjson.dumps(body), status, headers=headers, media_type=PROBLEM_TYPE)


PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        },
    },
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    titles = {
        400: "Malformed JSON",
        401: "API key missing or unknown (only when keys are configured)",
        403: "API key without the needed scope, or a browser origin not allowed",
        404: "Not found",
        408: "The body did not arrive in time",
        409: "Another import is running; retry after the Retry-After header",
        413: "Body too large",
        415: "Unsupported media type",
        422: "Invalid input",
        429: "Rate limit exceeded; retry after the Retry-After header",
        503: "Storage unavailable, or too many analytics queries; retry after Retry-After",
        504: "The analytics query ran past its time limit",
    }
    return {
        s: {"description": titles[s], "content": {PROBLEM_TYPE: {"schema": PROBLEM_SCHEMA}}}
        for s in statuses
    }


def _location(loc: tuple[Any, ...]) -> str:
    # FastAPI locs look like ("query", "minutes"): keep the name a client sent.
    parts = [str(p) for p in loc[1:]] if len(loc) > 1 else [str(p) for p in loc]
    return ".".join(parts)


def render_error(exc: EventAnalyticsError) -> Response:
    """The problem+json answer for one of our domain errors: the facts it carries."""
    if exc.status >= 500:
        log.warning("%s: %s", exc.slug, exc)
    return problem(exc.status, exc.slug, exc.title, exc.detail(), exc.errors, exc.headers())


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json."""

    async def domain_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, EventAnalyticsError)
        return render_error(exc)

    async def request_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            FieldError(code=e["type"], field=_location(tuple(e["loc"])), message=e["msg"])
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        return problem(422, "invalid-input", "Invalid input", detail, errors)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        title = str(exc.detail)
        return problem(exc.status_code, slug, title, title, headers=dict(exc.headers or {}))

    # Starlette looks a handler up along the exception's MRO: the base class covers all.
    app.add_exception_handler(EventAnalyticsError, domain_error)
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
