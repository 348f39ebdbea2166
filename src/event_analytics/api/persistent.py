"""The seed's persistent-events endpoints: archive status and files."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from event_analytics.api import deps
from event_analytics.api.problems import problem_responses
from event_analytics.archive_files import list_files
from event_analytics.timebucket import iso_z

router = APIRouter(prefix="/persistent", tags=["archive"])


@router.get(
    "/status",
    summary="Archive status: stream backlog and files on disk",
    responses=problem_responses(503),
)
async def status(request: Request) -> dict[str, Any]:
    settings = deps.settings(request)
    files = list_files(settings.archive_path)
    stream_length = await deps.store(request).stream_length()
    running = bool(request.app.state.archiver_running)
    return {
        "status": "healthy" if running else "archiver_not_running",
        "stats": {
            "stream_length": stream_length,
            "pending_messages": 0,
            "files_count": len(files),
            "files_size_mb": round(sum(f.size_bytes for f in files) / 1_000_000, 3),
            "is_processor_running": running,
        },
        "timestamp": iso_z(datetime.now(UTC)),
    }


@router.get("/files", summary="Archive files, oldest first")
async def files(request: Request) -> dict[str, Any]:
    root = deps.settings(request).archive_path
    found = list_files(root)
    return {
        "directory": str(root),
        "files": [
            {
                "path": f.path,
                "size_bytes": f.size_bytes,
                "modified": iso_z(datetime.fromtimestamp(f.modified, UTC)),
            }
            for f in found
        ],
        "total_files": len(found),
        "total_size_bytes": sum(f.size_bytes for f in found),
    }
