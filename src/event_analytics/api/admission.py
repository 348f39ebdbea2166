"""Admission of archive queries by the bytes they will scan, estimated from the archive's
listing before the query starts (analytics/snapshot.estimate): over
EA_ANALYTICS_MAX_SCAN_BYTES a 422 query_too_costly, else a slot and that much of the
archive lane's budget for the client (api/heavy.py), or a 503 after a bounded wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import Request

from event_analytics.analytics.snapshot import Scan, estimate
from event_analytics.api import deps
from event_analytics.errors import QueryTooCostly

Span = tuple[datetime | None, datetime]


def scan(request: Request, spans: Sequence[Span]) -> Scan:
    """The files and bytes of the ranges a query reads (each range's files once per read)."""
    root = deps.settings(request).archive_path
    found = [estimate(root, start, end) for start, end in spans]
    return Scan(sum(s.files for s in found), sum(s.bytes for s in found))


@asynccontextmanager
async def archive_read(
    request: Request, spans: Sequence[Span], field: str = "date_range"
) -> AsyncIterator[Scan]:
    """Hold the archive lane for a query reading ``spans``; ``field`` is the request's
    field a 422 names (the one that sets the range)."""
    settings = deps.settings(request)
    # The listing stats a file or three per hour: off the loop (720 hours for 30 days).
    cost = await asyncio.to_thread(scan, request, spans)
    bound = settings.analytics_max_scan_bytes
    if cost.bytes > bound:
        files = f"{cost.files} archive file{'' if cost.files == 1 else 's'}"
        raise QueryTooCostly(
            cost.bytes, bound, f"bytes in {files}", field,
            "ask for a shorter date range (EA_ANALYTICS_MAX_SCAN_BYTES)",
        )  # fmt: skip
    async with deps.archive_reads(request).slot(deps.client_id(request), cost.bytes):
        yield cost
