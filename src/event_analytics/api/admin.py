"""Admin routes: erasing people (GDPR art. 17) over HTTP, the admin scope only.

``POST /api/v1/admin/forget`` runs what ``event-analytics forget`` runs (forgetting.py)
and answers its audit record. ReadGuard admits only EA_ADMIN_KEYS here (never a read or
write key; closed while none is set).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from event_analytics.api import deps
from event_analytics.api.body import read_json
from event_analytics.api.problems import json_body, problem_responses
from event_analytics.api.render import json_response
from event_analytics.errors import FieldError, InvalidInput
from event_analytics.forgetting import MAX_USERS, check_users, forget

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])
MAX_BODY = 512 * 1024  # MAX_USERS ids of at most 255 characters, escaped
_BODY = json_body(
    ["user_ids"],
    {
        "user_ids": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_USERS,
            "items": {"type": "string", "minLength": 1, "maxLength": 255},
            "example": ["user_42"],
        }
    },
)


@router.post(
    "/forget",
    summary="Erase every event of some users, everywhere, and refuse theirs from now on",
    description=(
        "The archive's hour files are rewritten without their events (crash-safely), the "
        "Parquet copies replaced, PostgreSQL rows removed (when configured), the counters "
        "of the days concerned rebuilt; their later events are refused (`user_erased`). "
        "The answer is the audit record: ids as SHA-256, events removed per hour, and the "
        "backups taken before, which still hold the data. Running it again is safe. Needs "
        "an admin key (EA_ADMIN_KEYS)."
    ),
    responses=problem_responses(400, 403, 413, 422, 503),
    openapi_extra=_BODY,
)
async def forget_users(request: Request) -> Response:
    settings = deps.settings(request)
    fields = await read_json(request.scope, request.receive, MAX_BODY, settings.body_timeout_s)
    if not isinstance(fields, dict) or not isinstance(fields.get("user_ids"), list):
        raise InvalidInput(
            [FieldError("invalid_body", "user_ids", 'the body is {"user_ids": ["...", ...]}')]
        )
    unknown = sorted(set(fields) - {"user_ids"})
    if unknown:
        raise InvalidInput([FieldError("unknown_field", unknown[0], "known fields: user_ids")])
    try:
        users = check_users(fields["user_ids"])
    except ValueError as exc:
        raise InvalidInput([FieldError("invalid_user_ids", "user_ids", str(exc))]) from None
    report = await forget(settings, deps.store(request), users)
    return json_response(report.record())
