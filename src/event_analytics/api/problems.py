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


def problem_body(
    status: int, slug: str, title: str, detail: str, errors: list[FieldError] | None = None
) -> bytes:
    """The JSON of one problem: what every problem+json answer carries (the HTTP
    protocol's refusals, written before any app runs, too: ``protocol.py``)."""
    body: dict[str, Any] = {
        "type": f"urn:event-analytics:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = [e.as_dict() for e in errors]
    return orjson.dumps(body)


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = problem_body(status, slug, title, detail, errors)
    return Response(body, status, headers=headers, media_type=PROBLEM_TYPE)


# The refusals that are no domain error (who may call what, which route and method
# exist, what the connection may send), by type slug: their status and title. Every
# 401/403/404/405/429 the API writes itself comes from here: ``refuse`` for the routes,
# ``refusal_body`` for the HTTP protocol's answers (``protocol.py``, written before any
# app runs); FastAPI's own 404/405 take their slug from here.
REFUSALS: dict[str, tuple[int, str]] = {
    "malformed-http": (400, "Malformed HTTP"),
    "unauthorized": (401, "Unauthorized"),
    "share-password-required": (401, "Shared link password required"),
    "forbidden": (403, "Forbidden"),
    "origin-not-allowed": (403, "Origin not allowed"),
    "share-link-scope": (403, "Not a shared link's route"),
    "share-no-password": (403, "Shared link has no password"),
    "site-limited-key": (403, "Key limited to sites"),
    "admin-closed": (403, "Admin routes closed"),
    "not-found": (404, "Not Found"),
    "method-not-allowed": (405, "Method Not Allowed"),
    "head-timeout": (408, "Request timeout"),
    "rate-limited": (429, "Too many requests"),
    "too-many-connections": (429, "Too many connections"),
    "head-too-large": (431, "Request head too large"),
    "overloaded": (503, "Overloaded"),
}
_SLUG_OF_STATUS = {REFUSALS[s][0]: s for s in ("not-found", "method-not-allowed")}


def refusal_body(slug: str, detail: str) -> tuple[int, bytes]:
    """The status and JSON body of one of the REFUSALS."""
    status, title = REFUSALS[slug]
    return status, problem_body(status, slug, title, detail)


def refuse(slug: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    """The problem+json answer of one of the REFUSALS."""
    status, body = refusal_body(slug, detail)
    return Response(body, status, headers=headers, media_type=PROBLEM_TYPE)


def internal_error() -> Response:
    """The answer to an unexpected error (logged by whoever caught it)."""
    detail = "an unexpected error; nothing was acknowledged, retry is safe"
    return problem(500, "internal-error", "Internal server error", detail)


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


def json_body(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI ``openapi_extra`` for a route that reads a JSON object body itself."""
    schema = {"type": "object", "required": required, "properties": properties}
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


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
        slug = _SLUG_OF_STATUS.get(exc.status_code, "http-error")
        title = str(exc.detail)
        return problem(exc.status_code, slug, title, title, headers=dict(exc.headers or {}))

    async def unexpected(_: Request, exc: Exception) -> Response:
        # FastAPI's ServerErrorMiddleware answers with this and re-raises; the error is
        # logged once, by steps.RequestSteps.
        return internal_error()

    # Starlette looks a handler up along the exception's MRO: the base class covers all.
    app.add_exception_handler(EventAnalyticsError, domain_error)
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
