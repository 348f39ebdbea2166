"""Admin routes: erasing people (GDPR art. 17) over HTTP, the admin scope only.

``POST /api/v1/admin/forget`` puts the users on the suppression list at once (their
later events are refused from the answer on) and queues a job that runs what
``event-analytics forget`` runs (forgetting.py) in the service's erasure worker
(forget_worker.py), never on this event loop: on a large archive an erasure outlasts
any client's timeout. It answers 202 with the job and its Location;
``GET /api/v1/admin/forget/{job_id}`` tells how far it is, and its audit record once
done. Jobs run one at a time, in the order they came; a request while one runs is
queued, not refused (store/forget_jobs.py). ReadGuard admits only EA_ADMIN_KEYS here
(never a read or write key; closed while none is set).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from event_analytics.api import deps
from event_analytics.api.body import read_json
from event_analytics.api.problems import json_body, problem_responses
from event_analytics.api.render import json_response
from event_analytics.errors import ErasureJobNotFound, FieldError, InvalidInput
from event_analytics.forgetting import MAX_USERS, check_users, suppress, user_hash
from event_analytics.store.forget_jobs import KEEP_S, MAX_QUEUED, STATES, ForgetJobs

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
_NULLABLE_TEXT = {"anyOf": [{"type": "string"}, {"type": "null"}]}
_JOB: dict[str, Any] = {
    "type": "object",
    "required": ["id", "state", "submitted_at", "user_sha256", "progress"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "state": {"type": "string", "enum": list(STATES)},
        "submitted_at": {"type": "string"},
        "started_at": _NULLABLE_TEXT,
        "finished_at": _NULLABLE_TEXT,
        "user_sha256": {"type": "array", "items": {"type": "string"}},
        "attempts": {"type": "integer"},
        "position": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "progress": {"type": "object"},
        "result": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        "error": _NULLABLE_TEXT,
    },
}
_JOB_JSON = {"application/json": {"schema": _JOB}}


def _jobs(request: Request) -> ForgetJobs:
    store = deps.store(request)
    return ForgetJobs(store.client, store.keys)


@router.post(
    "/forget",
    status_code=202,
    summary="Erase every event of some users, everywhere, and refuse theirs from now on",
    description=(
        "Their later events are refused from this answer on (`user_erased`); the erasure "
        "itself runs as a job in the background: the archive's hour files that hold their "
        "events are rewritten without them (crash-safely), the Parquet copies replaced, "
        "PostgreSQL rows removed (when configured), the counters of the days concerned "
        "rebuilt. **202** with the job (`Location`: its URL); poll "
        "`GET /api/v1/admin/forget/{job_id}` until `state` is `done` (its `result` is the "
        "audit record: ids as SHA-256, events removed per hour, the backups taken before, "
        "which still hold the data) or `failed` (its `error` says why; send it again to "
        "finish). One job runs at a time, in the order they came: a request while one "
        f"runs is queued (at most {MAX_QUEUED} jobs; beyond, `503`). A job survives a "
        "restart of the service. Needs an admin key (EA_ADMIN_KEYS)."
    ),
    responses={
        202: {
            "description": "Queued: the job, its URL in `Location`",
            "content": _JOB_JSON,
            "headers": {"Location": {"schema": {"type": "string"}}},
        },
        **problem_responses(400, 403, 413, 422, 503),
    },
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
    # Refused from now on, before the job waits its turn (the job does it again).
    await suppress(deps.store(request), users)
    job = await _jobs(request).submit(users, [user_hash(u) for u in users])
    return json_response(
        job.as_dict(), status=202, headers={"Location": f"{router.prefix}/forget/{job.id}"}
    )


@router.get(
    "/forget/{job_id}",
    summary="An erasure job: queued, running (counts so far), done (the audit record) or failed",
    description=(
        "`progress` counts as it goes: `phase`, `files_total` (hour files, each looked at "
        "by a cheap pre-pass), `files_to_read` (those that can hold the users' events), "
        "`files_read`, `events_removed`. Once `done`, `result` is the audit record; once "
        f"`failed`, `error` says why. Kept {KEEP_S // 86400} days after it ends (the audit "
        "record stays in the engine for good). Needs an admin key (EA_ADMIN_KEYS)."
    ),
    responses={
        200: {"description": "The job", "content": _JOB_JSON},
        **problem_responses(403, 404, 422, 503),
    },
)
async def forget_job(
    request: Request,
    job_id: Annotated[str, Path(max_length=64, examples=["3b9c1f0e8a7d4c2b9e6f5a4d3c2b1a09"])],
) -> Response:
    job = await _jobs(request).get(job_id)
    if job is None:
        raise ErasureJobNotFound(
            f"no erasure job with this id (an ended job is kept {KEEP_S // 86400} days)"
        )
    return json_response(job.as_dict())
