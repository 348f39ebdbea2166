"""GET /api/export: raw events of a range from the archive, streamed; and its manifest.

The body is produced by ``archive/export.py`` one hour file at a time in a worker
thread (Starlette iterates a plain iterator off the event loop), so a large export
neither holds its events in memory nor stalls ingest. Only files the archive lists
under its own root are read: no parameter becomes a path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from event_analytics.api import deps
from event_analytics.api.admission import archive_read
from event_analytics.api.problems import problem_responses
from event_analytics.api.render import json_response
from event_analytics.api.security import allowed_sites, check_site_access
from event_analytics.archive import export
from event_analytics.errors import FieldError, InvalidQuery, SiteForbidden
from event_analytics.timebucket import to_utc

router = APIRouter(prefix="/api/export", tags=["export"])
HTTP_FORMATS = ("ndjson", "csv")  # Parquet needs a seekable file: the export command
MEDIA = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
MAX_SITE = 253

From = Annotated[str | None, Query(alias="from", description="ISO 8601, UTC if naive; inclusive")]
To = Annotated[str | None, Query(alias="to", description="ISO 8601, UTC if naive; exclusive")]
Site = Annotated[
    str | None, Query(description="only events whose payload.domain or page host is this")
]


def _time(name: str, text: str | None) -> datetime:
    if not text:
        raise _bad("missing_parameter", name, f"{name} is required, e.g. 2026-11-27T10:00:00Z")
    try:
        return to_utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):  # e.g. year 1 with an offset east of UTC
        raise _bad(
            "invalid_time",
            name,
            "expected an ISO 8601 date or date-time within years 1-9999 UTC, e.g. 2026-11-27",
        ) from None


def _bad(code: str, field: str, message: str) -> InvalidQuery:
    return InvalidQuery([FieldError(code, field, message)])


def _manifest(start: str | None, end: str | None, fmt: str, site: str | None) -> export.Manifest:
    begin, until = _time("from", start), _time("to", end)
    if until <= begin:
        raise _bad("invalid_range", "to", "to must be later than from")
    if fmt not in HTTP_FORMATS:
        raise _bad(
            "invalid_format",
            "format",
            "format must be ndjson or csv here; Parquet: the export command (--format parquet)",
        )
    if site is not None and not 0 < len(site) <= MAX_SITE:
        raise _bad("invalid_site", "site", f"site must be 1 to {MAX_SITE} characters")
    return export.Manifest(begin, until, cast(export.Format, fmt), site)


def _check_site(request: Request, site: str | None) -> None:
    """A site-limited key exports one of its sites, named: all sites would be others' too."""
    if site is None:
        if allowed_sites(request.scope) is not None:
            raise SiteForbidden("this API key may export only its own sites: name one with ?site=")
        return
    check_site_access(request.scope, site)


@router.get(
    "",
    summary="Raw events of a range from the archive (NDJSON or CSV), streamed",
    description=(
        "One archived event per line (NDJSON: the archive's own record encoding), or CSV "
        "with a header (columns: docs/deploy.md). Hour by hour, oldest first; open hours "
        "as far as they are written. `GET /api/export/manifest` with the same parameters "
        "gives per-hour counts and checksums to check the download against."
    ),
    response_class=StreamingResponse,
    responses={
        200: {"content": {m: {} for m in MEDIA.values()}, "description": "The events"},
        **problem_responses(422, 503),
    },
)
async def download(
    request: Request, start: From = None, end: To = None, format: str = "ndjson", site: Site = None
) -> Response:
    _check_site(request, site)
    manifest = _manifest(start, end, format, site)
    root = deps.settings(request).archive_path
    name = f"events_{manifest.start:%Y%m%dT%H%M%SZ}_{manifest.end:%Y%m%dT%H%M%SZ}.{format}"
    # Admitted before the answer starts (a refusal is still a 503), held while it streams.
    held = AsyncExitStack()
    await held.enter_async_context(archive_read(request, [(manifest.start, manifest.end)], "from"))
    return _Held(
        export.stream(root, manifest),
        held,
        media_type=MEDIA[format],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


class _Held(StreamingResponse):
    """A streamed answer that gives its archive slot back when it ends, however it ends
    (sent, failed, or its client gone before the first byte)."""

    def __init__(self, content: Iterator[bytes], held: AsyncExitStack, **kw: Any) -> None:
        super().__init__(content, **kw)
        self._held = held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._held.aclose()


@router.get(
    "/manifest",
    summary="The manifest of the same export: per-hour counts and checksums, totals",
    description=(
        "What `GET /api/export` with these parameters sends now: per hour `events`, "
        "`ids_checksum` and the `sha256` of the hour's bytes; totals. An open hour grows: "
        "compare closed hours, or fetch the manifest right after the download."
    ),
    responses=problem_responses(422, 503),
)
async def manifest(
    request: Request, start: From = None, end: To = None, format: str = "ndjson", site: Site = None
) -> Response:
    _check_site(request, site)
    made = _manifest(start, end, format, site)
    root = deps.settings(request).archive_path

    def run() -> dict[str, Any]:
        for _ in export.stream(root, made):
            pass
        return made.as_dict()

    async with archive_read(request, [(made.start, made.end)], "from"):
        answer = await asyncio.to_thread(run)
    return json_response(answer)
