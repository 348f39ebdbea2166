"""``POST /api/import``: history into the archive over HTTP, as ``event-analytics import``.

The body's format is its Content-Type: ``application/x-ndjson`` (our own records, as
``export`` writes them), the same with ``; format=segment`` (Segment messages, one per
line), or ``text/csv`` (the export's columns). It is spooled to a temporary file as it
arrives (``EA_IMPORT_MAX_BYTES``, ``EA_IMPORT_BODY_TIMEOUT_S``), never held whole, and
imported only once it is complete, so a refused body imported nothing. The import runs
in a thread with an event loop and an engine connection of its own: its validation is
CPU work that must not stall the requests this loop serves. Access: the write scope
(or the read scope when only read keys are configured), as goal changes (security.py).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from event_analytics.api import deps
from event_analytics.api.body import header, spool_limited
from event_analytics.api.problems import problem_responses
from event_analytics.api.render import json_response
from event_analytics.api.security import IMPORT_PATH
from event_analytics.errors import FieldError, InvalidInput, UnsupportedMediaType
from event_analytics.importing import run_import

router = APIRouter(tags=["archive"])
NDJSON, CSV = "application/x-ndjson", "text/csv"
ACCEPTED = (NDJSON, f"{NDJSON}; format=segment", CSV)
_LINE = (
    '{"event_id":"123e4567-e89b-12d3-a456-426614174000","user_id":"user_1",'
    '"timestamp":"2026-01-05T10:00:00Z","event_type":"page_view",'
    '"payload":{"page_url":"https://example.com/"}}\n'
)
_SEGMENT = (
    '{"type":"page","anonymousId":"a1","messageId":"m-1","timestamp":"2026-01-05T10:00:00Z",'
    '"context":{"page":{"url":"https://example.com/"}}}\n'
)
_CSV = (
    "event_id,user_id,timestamp,event_type,page_url\n"
    "123e4567-e89b-12d3-a456-426614174001,user_1,2026-01-05T10:00:00Z,page_view,"
    "https://example.com/\n"
)
_TEXT = {"type": "string"}
_BODY = {
    "required": True,
    "content": {
        NDJSON: {"schema": _TEXT, "example": _LINE},
        f"{NDJSON}; format=segment": {"schema": _TEXT, "example": _SEGMENT},
        CSV: {"schema": _TEXT, "example": _CSV},
    },
}
_REPORT: dict[str, Any] = {
    "type": "object",
    "required": ["accepted", "duplicate", "rejected", "rejected_by_reason", "examples"],
    "properties": {
        "accepted": {"type": "integer", "description": "new events (archived or streamed)"},
        "duplicate": {"type": "integer", "description": "event ids already stored"},
        "rejected": {"type": "integer"},
        "rejected_by_reason": {"type": "object", "additionalProperties": {"type": "integer"}},
        "examples": {"type": "array", "items": {"type": "string"},
                     "description": "the first rejected lines: where, reason code, message"},
        "counted": {"type": "integer", "description": "appended and counted by the import"},
        "live": {"type": "integer", "description": "through the live path (days the live "
                 "window or the archiver's backlog reaches): the archiver writes them"},
        "recovered_days": {"type": "integer",
                           "description": "days a killed import left uncounted, rebuilt"},
    },
}  # fmt: skip


def body_format(raw: str | None) -> str:
    """The import format a Content-Type names (UnsupportedMediaType if none)."""
    media, _, params = (raw or "").partition(";")
    media = media.strip().lower()
    options = {
        k.strip().lower(): v.strip().strip('"').lower()
        for k, _, v in (p.partition("=") for p in params.split(";"))
        if k.strip()
    }
    fmt = options.get("format")
    if media == CSV and fmt in (None, "csv"):
        return "csv"
    if media in (NDJSON, "application/jsonl") and fmt in (None, "ndjson", "segment"):
        return fmt or "ndjson"
    raise UnsupportedMediaType(raw, ACCEPTED)


@router.post(
    IMPORT_PATH,
    summary="Import history (NDJSON records, Segment messages, CSV) into the archive",
    description=(
        "Events of any age the archive accepts go into the hour files of their own hours, "
        "exactly once by event id (a second import of the same body adds nothing; an event "
        "ingested live is a duplicate). The answer is `event-analytics import`'s report. "
        "Content-Type picks the format: `application/x-ndjson` (our records), "
        "`application/x-ndjson; format=segment`, `text/csv` (the export's columns). "
        "A body that cannot be read at all (a CSV header without the needed columns, no "
        "event in it) is a 422; a bad line is counted in the report. One import at a time: "
        "409 while another runs. See docs/deploy.md, Importing history."
    ),
    responses={
        200: {
            "description": "The import's report",
            "content": {"application/json": {"schema": _REPORT}},
        },
        **problem_responses(400, 408, 409, 413, 415, 422, 503),
    },
    openapi_extra={"requestBody": _BODY},
)
async def post_import(request: Request) -> Response:
    settings = deps.settings(request)
    encoding = (header(request.scope, b"content-encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(f"Content-Encoding {encoding}", ("identity encoding",))
    fmt = body_format(header(request.scope, b"content-type"))
    with tempfile.TemporaryDirectory(prefix="ea-import-") as tmp:
        path = Path(tmp) / f"body.{fmt}"
        with path.open("wb") as out:
            size = await spool_limited(
                request.scope,
                request.receive,
                out,
                settings.import_max_bytes,
                settings.import_body_timeout_s,
            )
        if size == 0:
            empty = FieldError("empty", "body", "the body is empty: send one event a line")
            raise InvalidInput([empty])
        report = await asyncio.to_thread(asyncio.run, run_import(settings, [("body", path, fmt)]))
    if report.rejected.get("missing_columns"):  # no row of the body can be read
        header_error = report.examples[0].split(": ", 2)[-1]
        raise InvalidInput([FieldError("missing_columns", "body", header_error)])
    return json_response(report.as_dict())
