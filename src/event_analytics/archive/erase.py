"""Erasing users' events from the archive: each hour file rewritten crash-safely.

An hour file holding events of the users is rewritten without them under the archive's
exclusive lock (``files.locked``: archivers and ``import`` wait, and reopen the name
afterwards): the kept lines go to a scratch file beside it, which is fsynced, renamed
over the hour file, and the directory fsynced. A kill at any instant leaves the old
hour or the new one, whole, under its name; a scratch file left behind is never read
(its name matches no archive glob) and is removed by the next erasure of that hour.

The hour's Parquet copy names the old file's inode (``compact.Covered``), so from the
rename on no query reads it; it is then replaced by a copy of the new file, or deleted
if the new file has no line left. A copy still holding erased lines after a crash
(renamed, not yet re-copied) is found by the next run (``stale_copies``) and replaced.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from event_analytics import faults
from event_analytics.archive import compact, files, holders, record

Crash = Callable[[str], None]
# Told (relative path, hour, event types of the removed lines) before an hour is renamed:
# a caller that re-derives state from the hours (forgetting.py) journals them, so a run
# killed after the rename still knows which hours and days to finish.
Note = Callable[[str, datetime, frozenset[str]], None]


@dataclass(frozen=True, slots=True)
class HourErased:
    """One rewritten hour: how many lines went, and where they were in the old file
    (a destination that delivered a prefix of the old file maps its offset with
    ``new_offset``)."""

    relative: str
    hour: datetime
    removed: int
    kept: int
    event_types: frozenset[str]  # of the removed events: their counters are rebuilt
    # (byte offset in the old file, length) of each removed line, in order.
    spans: tuple[tuple[int, int], ...] = field(repr=False)

    def new_offset(self, offset: int, lines: int) -> tuple[int, int]:
        """Where the first ``offset`` bytes (``lines`` lines) of the old file end in the
        new one: the removed lines that lay inside them no longer count."""
        gone_bytes = gone_lines = 0
        for start, length in self.spans:
            if start + length > offset:
                break
            gone_bytes += length
            gone_lines += 1
        return offset - gone_bytes, lines - gone_lines


def _scratch(path: Path) -> Path:
    """The rewrite's scratch file: hidden, and not ``*.jsonl`` (no reader lists it)."""
    return path.with_name(f".{path.name}.erase-tmp")


def _decoded(line: bytes) -> record.Record | None:
    try:
        return record.decode(line)
    except record.InvalidRecord:
        return None  # never archived by the service: no user to erase it for


def erase_hour(
    path: Path,
    users: Collection[str],
    relative: str,
    hour: datetime,
    crash: Crash,
    note: Note | None = None,
) -> HourErased | None:
    """Rewrite one hour file without the events of ``users``; None if it held none."""
    wanted = set(users)
    needles = holders.Needles.of(wanted)
    with files.locked(path) as fd:
        size = os.fstat(fd).st_size
        kept: list[bytes] = []
        spans: list[tuple[int, int]] = []
        types: set[str] = set()
        at = 0
        with open(fd, "rb", closefd=False) as handle:
            handle.seek(0)
            for line in handle:
                if at + len(line) > size:
                    break
                # A cheap test of the bytes first; the codec decides.
                got = _decoded(line) if needles.found_in(line) else None
                if got is not None and got.user_id in wanted:
                    spans.append((at, len(line)))
                    types.add(got.event_type)
                else:
                    kept.append(line)
                at += len(line)
        if not spans:
            return None
        if note is not None:
            note(relative, hour, frozenset(types))
        scratch = _scratch(path)
        with scratch.open("wb") as out:
            out.writelines(kept)
            out.flush()
            os.fsync(out.fileno())
        crash("erase_written")
        os.replace(scratch, path)
        crash("erase_renamed")
        files.fsync_dir(path.parent)
    if compact.parquet_path(path).exists():
        refresh_copy(path)
    return HourErased(relative, hour, len(spans), len(kept), frozenset(types), tuple(spans))


def refresh_copy(path: Path) -> None:
    """Replace the hour's Parquet copy by one of the file as it is now, or delete it."""
    if compact.compact(path) is None:  # no line left: no copy may stay
        for stale in (compact.parquet_path(path), path.with_suffix(".parquet.json")):
            stale.unlink(missing_ok=True)


def stale_copies(root: Path) -> list[Path]:
    """Hour files whose Parquet copy exists but no longer covers them (an erasure killed
    between its rename and the new copy): their old copy may hold erased events."""
    return [
        found.path
        for found in files.list_files(root)
        if compact.parquet_path(found.path).exists() and compact.covered(found.path) is None
    ]


@dataclass
class Progress:
    """How far an erasure is; written by its thread, read by whoever reports on it."""

    files_total: int = 0  # hour files in the archive, each looked at by the pre-pass
    files_to_read: int = 0  # the pre-pass's hits: hours that can hold the users' events
    files_read: int = 0  # of those, read line by line so far
    events_removed: int = 0


@dataclass
class EraseReport:
    hours: list[HourErased] = field(default_factory=list)
    files_scanned: int = 0  # every hour file (the pre-pass)
    files_read: int = 0  # the hours that could hold the users, read line by line
    copies_refreshed: int = 0

    @property
    def removed(self) -> int:
        return sum(h.removed for h in self.hours)


def erase(
    root: Path,
    users: Collection[str],
    crash: Crash | None = None,
    note: Note | None = None,
    progress: Progress | None = None,
) -> EraseReport:
    """Remove every event of ``users`` from the archive under ``root`` (``note``: told of
    each hour before its rename). Only the hours the pre-pass (holders.py) finds that can
    hold their events are read line by line."""
    die = crash or _crash_from_env()
    done = progress or Progress()
    report = EraseReport()
    found = files.list_files(root)
    report.files_scanned = done.files_total = len(found)
    for f in found:
        with contextlib.suppress(FileNotFoundError):  # deleted meanwhile (retention)
            _scratch(f.path).unlink(missing_ok=True)
    maybe = holders.hours_holding(found, users)
    done.files_to_read = len(maybe)
    for f in maybe:
        hour = erase_hour(f.path, users, f.relative, f.hour, die, note)
        report.files_read += 1
        done.files_read = report.files_read
        if hour is not None:
            report.hours.append(hour)
            done.events_removed += hour.removed
    for path in stale_copies(root):
        refresh_copy(path)
        report.copies_refreshed += 1
    return report


def _crash_from_env() -> Crash:
    point, hang = faults.erase_crash_at(), faults.erase_stop_at()

    def crash(at: str) -> None:
        if at == point:
            faults.die()
        if at == hang:
            faults.stop()

    return crash
