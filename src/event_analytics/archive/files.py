"""Hourly JSONL files: paths, crash-safe appends, torn-line repair, listing and counting.

Layout (the seed's): ``ROOT/YYYY/MM/DD/events_YYYY-MM-DD-HH.jsonl``, partitioned by the
UTC hour of each event's timestamp, one JSON object per line.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from event_analytics.archive import record

ARCHIVE_GLOB = "[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]/events_*.jsonl"
_NAME = re.compile(r"^events_(\d{4}-\d{2}-\d{2}-\d{2})\.jsonl$")


def hour_path(root: Path, hour: datetime) -> Path:
    """The file holding events whose UTC timestamp falls in ``hour``."""
    return root / hour.strftime("%Y/%m/%d") / hour.strftime("events_%Y-%m-%d-%H.jsonl")


def hour_of(path: Path) -> datetime | None:
    """The UTC hour a file name stands for, or None if it is not an archive file."""
    match = _NAME.match(path.name)
    if match is None:
        return None
    return datetime.strptime(match[1], "%Y-%m-%d-%H").replace(tzinfo=UTC)


def event_id_of(line: bytes) -> str:
    """The event id of one archived line (fixed position: the record codec puts it first)."""
    return line[record.ID_START : record.ID_END].decode()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[int]:
    """Open ``path`` for appending under an exclusive flock, repairing a torn last line.

    Several archivers (different shards) may append to one hour file; the lock keeps
    their writes whole. A line without its newline can only be the tail of a write
    that crashed before its entries were acknowledged, so it is cut off: those
    entries are still pending in the stream and will be written again.
    """
    for _ in range(100):
        created = not path.exists()
        if created:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not _still_named(fd, path):
                continue  # expired (expiry.py unlinks under this lock): open the name again
            if created:
                fsync_dir(path.parent)  # the new name must survive a crash as well
            repair_tail(fd)
            yield fd
            return
        finally:
            os.close(fd)
    raise OSError(f"{path} was unlinked 100 times while being opened")


def _still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file ``fd`` holds: a file unlinked by the expiry
    job after we opened it (and before our lock) takes no more lines, which would be lost."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def repair_tail(fd: int) -> int:
    """Cut a torn last line off; returns the bytes removed."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    # Walk back to the last newline, in blocks.
    end = size
    while end > 0:
        start = max(0, end - 65536)
        block = os.pread(fd, end - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            keep = start + cut + 1
            break
        end = start
    else:
        keep = 0
    os.ftruncate(fd, keep)
    os.fsync(fd)
    return size - keep


def append(fd: int, data: bytes) -> None:
    """Append and fsync; on failure, cut back to the old size so no partial line stays."""
    before = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, before)
        raise


def present_ids(path: Path, wanted: set[str]) -> set[str]:
    """Which of ``wanted`` event ids already have a line in ``path`` (one streaming pass)."""
    if not wanted or not path.exists():
        return set()
    found: set[str] = set()
    with path.open("rb") as handle:
        for line in handle:
            event_id = event_id_of(line)
            if event_id in wanted:
                found.add(event_id)
    return found


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    path: Path
    relative: str
    hour: datetime
    size_bytes: int
    modified: float


def list_files(
    root: Path, start: datetime | None = None, end: datetime | None = None
) -> list[ArchiveFile]:
    """Archive files under ``root``, oldest hour first, optionally for hours in [start, end)."""
    if not root.is_dir():
        return []
    out = []
    for path in root.glob(ARCHIVE_GLOB):
        hour = hour_of(path)
        if hour is None or (start and hour < start) or (end and hour >= end):
            continue
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            out.append(
                ArchiveFile(path, str(path.relative_to(root)), hour, stat.st_size, stat.st_mtime)
            )
    return sorted(out, key=lambda f: f.hour)


def oldest_hour(root: Path) -> datetime | None:
    """The oldest hour with a file under ``root``, or None: day directories in order, up to
    the first that holds one (not a listing of the whole archive)."""
    for day in sorted(root.glob(ARCHIVE_GLOB.rsplit("/", 1)[0])):
        hours = [h for path in day.glob("events_*.jsonl") if (h := hour_of(path)) is not None]
        if hours:
            return min(hours)
    return None


def by_day(found: list[ArchiveFile]) -> list[tuple[datetime, list[ArchiveFile]]]:
    """Files grouped by UTC day, oldest first (rebuild and verify work a day at a time)."""
    days: dict[datetime, list[ArchiveFile]] = {}
    for f in found:
        days.setdefault(f.hour.replace(hour=0), []).append(f)
    return sorted(days.items())


def read_lines(paths: Iterable[Path]) -> Iterator[bytes]:
    """Every complete line of the given files (a torn tail is not an event)."""
    for path in paths:
        with path.open("rb") as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    yield line


class LineCounter:
    """Event counts per file, re-reading only what was appended since the last call.

    Called from worker threads (never on the event loop), so one count at a time.
    """

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[int, int]] = {}  # path -> (bytes counted, lines)
        self._lock = threading.Lock()

    def count(self, path: Path, size: int) -> int:
        with self._lock:
            return self._count(path, size)

    def _count(self, path: Path, size: int) -> int:
        done, lines = self._seen.get(path, (0, 0))
        if size < done:  # cut back (torn-line repair): count again from the start
            done, lines = 0, 0
        if size > done:
            with path.open("rb") as handle:
                handle.seek(done)
                chunk = handle.read(size - done)
            # Count whole lines only; a partial tail is counted when it is complete.
            whole = chunk.rfind(b"\n") + 1
            lines += chunk.count(b"\n", 0, whole)
            done += whole
        self._seen[path] = (done, lines)
        return lines
