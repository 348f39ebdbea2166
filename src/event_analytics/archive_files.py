"""Read-only view of the hourly JSONL archive on disk (for status and file listings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ARCHIVE_GLOB = "*/*/*/events_*.jsonl"


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    path: str
    size_bytes: int
    modified: float


def list_files(root: Path) -> list[ArchiveFile]:
    """Archive files under ``root`` (``YYYY/MM/DD/events_YYYY-MM-DD-HH.jsonl``), oldest first."""
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.glob(ARCHIVE_GLOB)):
        stat = path.stat()
        out.append(ArchiveFile(str(path.relative_to(root)), stat.st_size, stat.st_mtime))
    return out
