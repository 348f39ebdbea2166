"""Goals over HTTP, in the shape of Plausible's Sites API (docs/api.md, "Goals").

``PUT /api/v1/sites/goals`` finds or creates, ``GET /api/v1/sites/goals?site_id=`` lists
(Plausible's cursor pagination: ``after``, ``before``, ``limit``), ``DELETE
/api/v1/sites/goals/{goal_id}`` deletes. Bodies are JSON or form fields (Plausible's own
examples send ``curl -d site_id=...``). Reading needs the read scope; creating and
deleting need the write scope (security.GOAL_WRITE_PATHS): a goal changes what every
reader's figures mean, so it takes the key that may change what the service stores.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from event_analytics.api import deps
from event_analytics.api.body import ClientGone, header, read_limited
from event_analytics.api.problems import problem_responses
from event_analytics.api.render import json_response
from event_analytics.api.security import check_site_access
from event_analytics.decode import parse_json
from event_analytics.errors import FieldError, InvalidInput, MalformedJSON, UnsupportedMediaType
from event_analytics.goals import Goal, check_site, new_goal
from event_analytics.store.goals import GoalStore

router = APIRouter(prefix="/api/v1/sites", tags=["goals"])
MAX_BODY = 16 * 1024
MAX_LIMIT = 1000  # Plausible's maximum (its default is 100)
FORM = "application/x-www-form-urlencoded"
FIELDS = frozenset({"site_id", "goal_type", "event_name", "page_path", "currency", "display_name"})
_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            media: {
                "schema": {
                    "type": "object",
                    "required": ["site_id", "goal_type"],
                    "properties": {
                        "site_id": {"type": "string", "example": "example.com"},
                        "goal_type": {"type": "string", "enum": ["event", "page"]},
                        "event_name": {"type": "string", "example": "Signup"},
                        "page_path": {"type": "string", "example": "/register/**"},
                        "currency": {"type": "string", "example": "USD"},
                        "display_name": {"type": "string"},
                    },
                }
            }
            for media in ("application/json", FORM)
        },
    }
}


def _store(request: Request) -> GoalStore:
    store = deps.store(request)
    return GoalStore(store.client, store.keys)


def shown(goal: Goal) -> dict[str, Any]:
    """A goal as Plausible's Sites API answers it, with our ``currency`` beside."""
    return {
        "id": goal.id,
        "display_name": goal.display_name,
        "goal_type": str(goal.kind),
        "event_name": goal.event_name,
        "page_path": goal.page_path,
        "currency": goal.currency,
    }


async def _fields(request: Request) -> dict[str, Any]:
    """The body's fields (JSON object or form), or a problem naming what is wrong."""
    raw = header(request.scope, b"content-type")
    media = (raw or "").split(";", 1)[0].strip().lower()
    if media not in ("application/json", FORM) and not media.endswith("+json"):
        raise UnsupportedMediaType(raw, ("application/json", FORM))
    settings = deps.settings(request)
    body = await read_limited(request.scope, request.receive, MAX_BODY, settings.body_timeout_s)
    if media == FORM:
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            raise MalformedJSON("the form body is not URL-encoded UTF-8") from None
        fields: dict[str, Any] = {}
        for name, text in pairs:
            if name in fields:
                raise InvalidInput([FieldError("duplicate", name, f"{name} is sent twice")])
            fields[name] = text
        return fields
    value = parse_json(body) if body else None
    if not isinstance(value, dict):
        raise InvalidInput([FieldError("invalid", "body", "the body must be a JSON object")])
    return value


def _unknown(fields: dict[str, Any], allowed: frozenset[str]) -> None:
    extra = sorted(set(fields) - allowed)
    if extra:
        raise InvalidInput(
            [FieldError("unknown_field", name, f"{name} is not a field here") for name in extra]
        )


@router.put(
    "/goals",
    summary="Find or create a goal (Plausible's Sites API)",
    description=(
        "Idempotent: a goal of the same site, `goal_type` and `event_name` or `page_path` is "
        "returned as it is (200); a new one is created (201). `page_path` takes `*` (any "
        "characters but `/`) and `**` (any characters). `currency` (event goals only) makes "
        "it a revenue goal. Needs a key with the write scope when write keys are set."
    ),
    responses={
        200: {"description": "The goal, found or created"},
        **problem_responses(400, 401, 403, 413, 415, 422, 503),
    },
    openapi_extra=_BODY_DOC,
)
async def put_goal(request: Request) -> Response:
    try:
        fields = await _fields(request)
    except ClientGone:
        return Response(status_code=400)
    _unknown(fields, FIELDS)
    check_site_access(request.scope, check_site(fields.get("site_id")))
    goal = new_goal(
        fields.get("site_id"),
        fields.get("goal_type"),
        event_name=fields.get("event_name"),
        page_path=fields.get("page_path"),
        currency_code=fields.get("currency"),
        display_name=fields.get("display_name"),
    )
    stored, _ = await _store(request).put(goal)
    return json_response({"domain": stored.site, **shown(stored)})


@router.get(
    "/goals",
    summary="A site's goals (Plausible's Sites API)",
    description=(
        "Newest first (Plausible's order). Pagination as Plausible's: `meta.after` (or "
        "`meta.before`) is the cursor of the next (previous) page, null when there is none; "
        "pass it back as `after` (`before`). `limit`: 1-1000, default 100."
    ),
    responses=problem_responses(401, 403, 422, 503),
)
async def list_goals(
    request: Request,
    site_id: Annotated[str, Query(description="The site's domain")],
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Goals per page")] = 100,
    after: Annotated[int | None, Query(ge=0, description="Cursor: goals after this one")] = None,
    before: Annotated[int | None, Query(ge=0, description="Cursor: goals before it")] = None,
) -> Response:
    if after is not None and before is not None:
        raise InvalidInput([FieldError("invalid", "before", "send after or before, not both")])
    # Newest first, as Plausible lists them: the cursors are goal ids in that order.
    check_site_access(request.scope, check_site(site_id))
    goals = (await _store(request).list(check_site(site_id)))[::-1]
    if before is not None:
        earlier = [g for g in goals if g.id > before]
        page = earlier[-limit:]
        more_before, more_after = len(earlier) > limit, len(earlier) < len(goals)
    else:
        later = [g for g in goals if after is None or g.id < after]
        page = later[:limit]
        more_before, more_after = len(later) < len(goals), len(later) > limit
    meta = {
        "after": str(page[-1].id) if page and more_after else None,
        "before": str(page[0].id) if page and more_before else None,
        "limit": limit,
    }
    return json_response({"goals": [shown(g) for g in page], "meta": meta})


@router.delete(
    "/goals/{goal_id}",
    summary="Delete a goal (Plausible's Sites API)",
    description=(
        "`site_id` in the query or the body (JSON or form), as Plausible takes it. 404 when "
        "the site has no such goal. Needs a key with the write scope when write keys are set."
    ),
    responses=problem_responses(400, 401, 403, 404, 413, 415, 422, 503),
)
async def delete_goal(
    request: Request,
    goal_id: int,
    site_id: Annotated[str | None, Query(description="The site's domain")] = None,
) -> Response:
    site: Any = site_id
    if site is None:
        if header(request.scope, b"content-type") is None:
            raise InvalidInput([FieldError("missing", "site_id", "site_id is required")])
        try:
            fields = await _fields(request)
        except ClientGone:
            return Response(status_code=400)
        _unknown(fields, frozenset({"site_id"}))
        if "site_id" not in fields:
            raise InvalidInput([FieldError("missing", "site_id", "site_id is required")])
        site = fields["site_id"]
    check_site_access(request.scope, check_site(site))
    await _store(request).delete(check_site(site), goal_id)
    return json_response({"deleted": True})
