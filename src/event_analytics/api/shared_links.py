"""Shared links (docs/api.md, "Shared links"): a read-only link to one site's stats.

``POST /api/v1/sites/shared-links`` makes one and shows its token once (in ``url``),
``GET ...?site_id=`` lists a site's links (no tokens: only their digests are kept),
``DELETE .../{link_id}?site_id=`` revokes one at once, ``POST .../unlock`` trades a
protected link's password for the unlock value its requests then carry. Managing links
takes the write scope when write keys are set (a link hands out reading, so a read key may
not make one), and a site-limited key may not: ReadGuard keeps these paths out of its
site-scoped list; unlocking takes the link's token (security._admit_share_token).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from event_analytics.api import deps
from event_analytics.api.body import read_json
from event_analytics.api.problems import json_body, problem_responses, refuse
from event_analytics.api.render import json_response
from event_analytics.api.security import SHARE_LINK_SCOPE, unauthorized
from event_analytics.dashboard import page
from event_analytics.errors import FieldError, InvalidInput
from event_analytics.goals import check_site
from event_analytics.passwords import MAX_LEN, MIN_LEN, unlock_value, verify_password
from event_analytics.store.shared_links import SharedLink, SharedLinkStore

router = APIRouter(prefix="/api/v1/sites/shared-links", tags=["shared links"])
pages = APIRouter(tags=["shared links"])
MAX_BODY = 4 * 1024
_PASSWORD = {"type": "string", "example": "correct horse battery"}
_BODY = json_body(
    ["site_id", "name"],
    {
        "site_id": {"type": "string", "example": "example.com"},
        "name": {"type": "string", "example": "Weekly report for the client"},
        "password": _PASSWORD
        | {
            "minLength": MIN_LEN,
            "maxLength": MAX_LEN,
            "description": "optional: the link's page asks for it",
        },
    },
)
_UNLOCK_BODY = json_body(["password"], {"password": _PASSWORD})

# One scrypt (16 MB, tens of ms) at a time, off the event loop: a burst of guesses queues
# here instead of taking the service's memory or its loop.
_SCRYPT = asyncio.Semaphore(1)


def _store(request: Request) -> SharedLinkStore:
    store = deps.store(request)
    return SharedLinkStore(store.client, store.keys)


def shown(link: SharedLink) -> dict[str, Any]:
    return {"id": link.id, "name": link.name, "site_id": link.site, "created_at": link.created_at,
            "password_protected": link.password_hash is not None}  # fmt: skip


@pages.get(
    "/share/{site}",
    summary="A shared link's page (HTML): the site's page, reading with the link's token",
    description=(
        "The site page of `/dashboard/<site>`; its script sends `?auth=` as `X-Share-Token`. "
        "The page holds no data, so it loads without a key."
    ),
    response_class=HTMLResponse,
    # 422: an `embed` that is not a boolean (FastAPI's own check, as problem+json).
    responses={
        200: {"content": {"text/html": {}}, "description": "The page"},
        **problem_responses(422),
    },
)
async def share_page(
    request: Request,
    site: str,
    embed: Annotated[
        bool, Query(description="framed in another page (EA_SHARE_EMBED_ORIGINS)")
    ] = False,
) -> HTMLResponse:
    del site  # the script reads the site from the path
    # Its static files and links are the dashboard's: resolve them from there.
    html = page("site.html").replace("<head>", '<head>\n  <base href="/dashboard/">', 1)
    headers = {"Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"}
    origins = deps.settings(request).share_embed_origins
    if embed and origins:
        headers["Content-Security-Policy"] = "frame-ancestors " + " ".join(origins)
    else:  # not asked, or not enabled: no page may frame it (clickjacking)
        headers["Content-Security-Policy"] = "frame-ancestors 'none'"
        headers["X-Frame-Options"] = "DENY"
    return HTMLResponse(html, headers=headers)


@router.post(
    "",
    status_code=201,
    summary="Make a read-only link to one site's stats",
    description=(
        "`url` (`/share/<site>?auth=<token>`, Plausible's shape) holds the token; it is shown "
        "only here: the service keeps its SHA-256. Its holder reads that site through "
        "`POST /api/v2/query`, `GET /api/v1/stats/*` and `GET /api/sites` with the token in "
        "`X-Share-Token`, and nothing else."
    ),
    responses=problem_responses(400, 413, 422),
    openapi_extra=_BODY,
)
async def create(request: Request) -> Response:
    fields = await read_json(
        request.scope, request.receive, MAX_BODY, deps.settings(request).body_timeout_s
    )
    if not isinstance(fields, dict):
        raise InvalidInput([FieldError("invalid_body", "body", "the body is a JSON object")])
    unknown = sorted(set(fields) - {"site_id", "name", "password"})
    if unknown:
        raise InvalidInput(
            [FieldError("unknown_field", unknown[0], "known fields: site_id, name, password")]
        )
    site = check_site(fields.get("site_id"))
    store = _store(request)
    async with _SCRYPT:
        link, token = await store.create(site, fields.get("name"), fields.get("password"))  # type: ignore[arg-type]
    url = f"/share/{quote(site, safe='')}?auth={token}"
    return json_response({**shown(link), "url": url, "token": token}, status=201)


@router.get(
    "",
    summary="A site's shared links (without their tokens)",
    responses=problem_responses(422),
)
async def list_links(
    request: Request, site_id: Annotated[str, Query(description="The site's domain")]
) -> Response:
    links = await _store(request).list(check_site(site_id))
    return json_response({"shared_links": [shown(link) for link in links]})


@router.delete(
    "/{link_id}",
    summary="Revoke a shared link: refused from the next request on",
    responses=problem_responses(404, 422),
)
async def revoke(
    request: Request,
    link_id: str,
    site_id: Annotated[str, Query(description="The site's domain")],
) -> Response:
    link = await _store(request).revoke(check_site(site_id), link_id)
    return json_response({"deleted": True, **shown(link)})


@router.post(
    "/unlock",
    summary="Give a shared link's password: the unlock value its requests then carry",
    description=(
        "With the link's token in `X-Share-Token`. The answer's `unlock` goes with every "
        "request of the link as `X-Share-Unlock` until `expires_at` (12 h), or until the link "
        "is revoked. A wrong password is 401 and reads nothing."
    ),
    responses=problem_responses(400, 401, 403, 413, 422),
    openapi_extra=_UNLOCK_BODY,
)
async def unlock(request: Request) -> Response:
    link: SharedLink | None = request.scope.get(SHARE_LINK_SCOPE)
    if link is None:  # admitted by a key, not by a link's token (security.ReadGuard)
        return unauthorized("send the shared link's token in X-Share-Token")
    if link.password_hash is None:
        return refuse(
            "share-no-password", "this shared link has no password: it reads without unlocking"
        )
    fields = await read_json(
        request.scope, request.receive, MAX_BODY, deps.settings(request).body_timeout_s
    )
    password = fields.get("password") if isinstance(fields, dict) else None
    if not isinstance(password, str) or len(password) > MAX_LEN:
        raise InvalidInput(
            [FieldError("invalid_password", "password", "password: the link's password, a string")]
        )
    async with _SCRYPT:
        right = await asyncio.to_thread(verify_password, password, link.password_hash)
    if not right:
        return unauthorized("wrong password for this shared link")
    value, expires = unlock_value(link.password_hash, link.id, time.time())
    expires_at = datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z")
    return json_response({"unlock": value, "expires_at": expires_at})
