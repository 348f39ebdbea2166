"""The seed's persistent-events endpoints: archive status and files.

Listing, stat-ing and counting archive files runs in a worker thread, never on the event
loop: a slow or busy disk (the archiver fsyncs onto it) must not stall ingest.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from event_analytics import expiry_totals
from event_analytics.api import deps
from event_analytics.api.problems import problem_responses
from event_analytics.archive.files import LineCounter, list_files
from event_analytics.destinations import status as delivery_status
from event_analytics.store.streams import archive_lag_s
from event_analytics.store.watch import EngineWatch
from event_analytics.timebucket import iso_z

router = APIRouter(prefix="/persistent", tags=["archive"])


def _for_operator(request: Request) -> bool:
    """Whether the answer may show the archive's absolute path and the archivers' pids.

    Not once EA_READ_KEYS is set: a read key is handed to dashboards and colleagues, who
    need the figures but not where the files lie on the host or which process to signal
    (a foothold for a local attacker). Without keys the service is the single operator's
    (127.0.0.1, ``make run``), who sees them.
    """
    settings = deps.settings(request)
    return not (settings.read_keys or settings.site_keys)


@router.get(
    "/status",
    summary="Archive status: stream backlog, lag, archivers, files on disk",
    description=(
        "`lag_seconds` is the age of the oldest event not archived yet (0 when caught up). "
        "`status` is `healthy` when at least one archiver is running, none is blocked and "
        "the engine takes events; else `archiver_not_running`, `blocked`, or the readiness "
        "reason that keeps events out (`engine_full`, `engine_may_evict`, `storage_full`, "
        "`archive_backlog_full`). `destinations.postgres` (with EA_POSTGRES_URL): the "
        "delivery's `state` (`running`, `unreachable`, `blocked`, `not_running`), "
        "`events_behind` and `seconds_behind` (age of the oldest undelivered event). "
        "`retention` (with EA_ARCHIVE_RETENTION_DAYS): the days kept, what the retention "
        "job deleted so far (hour files, events, PostgreSQL rows), its last pass, the "
        "first day it kept (`horizon`; null if the pass failed), why a day past the limit is "
        "`held_back`, if one is, the day a pass is deleting (`expiring`) and the "
        "`oldest_hour` left in the archive. "
        "`archive_dir` and each archiver's `pid` are shown only "
        "when no `EA_READ_KEYS` are set (not to read-key holders)."
    ),
    responses=problem_responses(503),
)
async def status(request: Request) -> dict[str, Any]:
    settings = deps.settings(request)
    streams = deps.streams(request)
    backlog = await streams.backlog()
    archivers = await streams.archivers(fresh_s=3 + settings.archiver_lease_s)
    found = await asyncio.to_thread(list_files, settings.archive_path)
    blocked = [a for a in archivers.values() if a.get("state") == "blocked"]
    fsyncs = [a["last_fsync"] for a in archivers.values() if a.get("last_fsync")]
    # Events cannot reach the archive while the engine refuses them (full, evicting,
    # out of disk, backlog over its bound): that is not healthy either.
    watch: EngineWatch = request.app.state.watch
    refusal = watch.not_ready()
    operator = _for_operator(request)
    if not archivers:
        state = "archiver_not_running"
    elif blocked:
        state = "blocked"
    elif refusal is not None:
        state = refusal.reason
    else:
        state = "healthy"
    destinations: dict[str, Any] = {}
    if settings.postgres_url:
        # Written by the delivery process about once a second; None: it never ran.
        destinations["postgres"] = await asyncio.to_thread(delivery_status.read_status, settings)
    retention: dict[str, Any] | None = None
    if settings.archive_retention_days:
        # Written by the retention job after each pass; None: it never ran.
        totals = await asyncio.to_thread(expiry_totals.read_totals, settings)
        retention = {"days": settings.archive_retention_days} | (
            asdict(totals) if totals else {"passes": 0}
        )
        if not operator:  # an OSError's text names paths on the host
            retention.pop("last_error", None)
    return {
        "status": state,
        "destinations": destinations,
        **({"retention": retention} if retention is not None else {}),
        "stats": {
            "stream_length": backlog["stream_length"],
            "pending_messages": backlog["pending"],
            "lag_seconds": round(archive_lag_s(backlog), 3),
            "events_archived": backlog["archived"],
            "dead_letters": backlog["dead_letters"],
            "files_count": len(found),
            "files_size_bytes": sum(f.size_bytes for f in found),
            "files_size_mb": round(sum(f.size_bytes for f in found) / 1_000_000, 3),
            "last_fsync": max(fsyncs) if fsyncs else None,
            "is_processor_running": bool(archivers),
            "running_consumers": len(archivers),
        },
        "archivers": [
            a if operator else {k: v for k, v in a.items() if k != "pid"}
            for a in sorted(archivers.values(), key=lambda a: str(a.get("name")))
        ],
        **({"archive_dir": str(settings.archive_path)} if operator else {}),
        "timestamp": iso_z(datetime.now(UTC)),
    }


@router.get("/files", summary="Archive files, oldest first, with their event counts")
async def files(request: Request) -> dict[str, Any]:
    root = deps.settings(request).archive_path
    counter: LineCounter = request.app.state.line_counter
    answer = await asyncio.to_thread(_files, root, counter)
    if not _for_operator(request):
        del answer["directory"]  # the files' paths stay, relative to it
    return answer


def _files(root: Path, counter: LineCounter) -> dict[str, Any]:
    found = list_files(root)
    rows = [
        {
            "path": f.relative,
            "hour": iso_z(f.hour),
            "size_bytes": f.size_bytes,
            # Counted incrementally: only bytes appended since the last call are read.
            "events": counter.count(f.path, f.size_bytes),
            "modified": iso_z(datetime.fromtimestamp(f.modified, UTC)),
        }
        for f in found
    ]
    return {
        "directory": str(root),
        "files": rows,
        "total_files": len(rows),
        "total_events": sum(r["events"] for r in rows),
        "total_size_bytes": sum(f.size_bytes for f in found),
    }
