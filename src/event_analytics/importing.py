"""Import history into the archive: each event once by id, in its own hour's file.

Every item is validated by the event model, then by time: not more than the live
future skew ahead, not before ``EARLIEST``, nor (with EA_ARCHIVE_RETENTION_DAYS) before
the first day retention keeps (expiry.py); no other maximum age. Then:

- Events older than the live window (``max_age_s``) are appended straight to their
  hour file under the archiver's exclusive lock (``files.locked``), fsynced, after
  checking the ids that file already holds (read once per run and hour, then only what
  was appended since). The live path refuses such events, so no live copy can follow.
- Events inside the live window go through the live ingest path (``Ingestor``): its
  dedup memory (as long as that window by default) remembers them, so a later live
  resend is a duplicate, and the archiver writes them. Their hour file is checked first
  too, so an event archived before the dedup memory was lost is still a duplicate.

The counters of the days the direct path touched (accepted or already there: a run
killed after appending is finished by the next one) are rebuilt from the archive by
``archive/rebuild.py``. A killed run is resumed by running it again: what it wrote is
found by id. Parquet copies stay right: a copy covers only the JSONL bytes it was made
from, and lines appended after it are read from the JSONL (``archive/compact.py``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from event_analytics.archive import files, rebuild
from event_analytics.archive.record import Record, encode
from event_analytics.config import Settings
from event_analytics.expiry import horizon
from event_analytics.import_read import Item
from event_analytics.ingest import Ingestor
from event_analytics.model import EVENT_ADAPTER, errors_from_validation
from event_analytics.timebucket import DAY, Interval, floor, iso_z, to_utc

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # a "sane year": older is a wrong clock
CHUNK = 50_000  # events held before they are written
LIVE_BATCH = 1000
EXAMPLES = 20  # rejected lines named in the report


@dataclass
class ImportReport:
    accepted: int = 0
    duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    days: set[datetime] = field(default_factory=set)  # direct-path days to rebuild

    def reject(self, where: str, code: str, message: str) -> None:
        self.rejected[code] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{where}: {code}: {message}")


@dataclass
class _HourIds:
    size: int = 0
    ids: set[str] = field(default_factory=set)


class Importer:
    def __init__(self, settings: Settings, ingestor: Ingestor) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.root = settings.archive_path
        self.report = ImportReport()
        self._known: dict[Path, _HourIds] = {}
        self._direct: dict[datetime, list[tuple[str, bytes]]] = {}  # by hour
        self._live: list[tuple[str, dict[str, object]]] = []
        self._pending = 0
        self._skew = timedelta(seconds=settings.future_skew_s)
        self._max_age = timedelta(seconds=settings.max_age_s)
        # Read once per chunk, not per event (a clock read per event showed in profiles);
        # stale by at most one chunk's time, far below the skew and the window.
        self._now = datetime.now(UTC)

    async def add(self, name: str, items: Iterable[Item]) -> None:
        for item in items:
            where = f"{name}:{item.line}"
            if item.event is None:
                self.report.reject(where, item.code, item.message)
                continue
            await self._one(where, item.event, _received(item.received_at))
            if self._pending >= CHUNK:
                await self.flush()
                self._now = datetime.now(UTC)

    async def _one(
        self, where: str, value: dict[str, object], received_at: datetime | None
    ) -> None:
        try:
            event = EVENT_ADAPTER.validate_python(value)
        except ValidationError as exc:
            first = errors_from_validation(exc)[0]
            self.report.reject(where, first.code, f"{first.field}: {first.message}")
            return
        now = self._now
        try:
            ts = to_utc(event.timestamp)
        except OverflowError:
            self.report.reject(where, "invalid_timestamp", "timestamp is out of range")
            return
        if ts > now + self._skew:
            self.report.reject(
                where,
                "timestamp_in_future",
                f"more than {self.settings.future_skew_s} s ahead of {iso_z(now)}",
            )
            return
        if ts < EARLIEST:
            self.report.reject(where, "timestamp_too_old", f"before {iso_z(EARLIEST)}")
            return
        days = self.settings.archive_retention_days
        if days is not None and ts < (kept := horizon(now, days)):
            # The retention job would delete it, and may be deleting its day right now.
            self.report.reject(
                where, "past_retention",
                f"before {iso_z(kept)}, the first day EA_ARCHIVE_RETENTION_DAYS={days} keeps",
            )  # fmt: skip
            return
        self._pending += 1
        if ts >= now - self._max_age:
            self._live.append((where, value))
            return
        payload = event.payload.as_record()
        line = encode(
            Record(event.event_id, event.user_id, ts, event.event_type, payload, received_at or now)
        )
        hour = ts.replace(minute=0, second=0, microsecond=0)
        lines = self._direct.get(hour)
        if lines is None:
            lines = self._direct[hour] = []
            self.report.days.add(floor(ts, Interval.DAY))
        lines.append((str(event.event_id), line + b"\n"))

    async def flush(self) -> None:
        for hour, lines in sorted(self._direct.items()):
            self._append(files.hour_path(self.root, hour), lines)
        self._direct.clear()
        await self._flush_live()
        self._pending = 0

    def _append(self, path: Path, lines: list[tuple[str, bytes]]) -> None:
        with files.locked(path) as fd:
            known = self._ids(path, fd)
            out: list[bytes] = []
            for event_id, line in lines:
                if event_id in known.ids:
                    self.report.duplicate += 1
                    continue
                known.ids.add(event_id)
                out.append(line)
            if out:
                data = b"".join(out)
                files.append(fd, data)
                known.size += len(data)
                self.report.accepted += len(out)

    def _ids(self, path: Path, fd: int) -> _HourIds:
        """The ids in ``path`` (open and locked as ``fd``): read once, then its growth."""
        size = os.fstat(fd).st_size
        known = self._known.get(path)
        if known is None or size < known.size:
            known = self._known[path] = _HourIds()
        if size > known.size:
            with path.open("rb") as handle:
                handle.seek(known.size)
                for line in handle:
                    if line.endswith(b"\n"):
                        known.ids.add(files.event_id_of(line))
            known.size = size
        return known

    async def _flush_live(self) -> None:
        for start in range(0, len(self._live), LIVE_BATCH):
            chunk = self._live[start : start + LIVE_BATCH]
            fresh = self._not_archived(chunk)
            results = await self.ingestor.ingest_items(
                [value for _, value in fresh], datetime.now(UTC), "line"
            )
            for (where, _), result in zip(fresh, results, strict=True):
                if result.status == "accepted":
                    self.report.accepted += 1
                elif result.status == "duplicate":
                    self.report.duplicate += 1
                else:
                    first = result.errors[0]
                    self.report.reject(where, first.code, first.message)
        self._live.clear()

    def _not_archived(
        self, chunk: list[tuple[str, dict[str, object]]]
    ) -> list[tuple[str, dict[str, object]]]:
        """The live-window events whose id is not in their hour file already."""
        out = []
        for where, value in chunk:
            event = EVENT_ADAPTER.validate_python(value)
            path = files.hour_path(self.root, floor(to_utc(event.timestamp), Interval.HOUR))
            if path.exists():
                with files.locked(path) as fd:
                    if str(event.event_id) in self._ids(path, fd).ids:
                        self.report.duplicate += 1
                        continue
            out.append((where, value))
        return out

    async def rebuild_days(self) -> rebuild.RebuildReport | None:
        """Rebuild the counters of the days the direct path wrote to or found events in."""
        found: list[files.ArchiveFile] = []
        for day in sorted(self.report.days):
            found.extend(files.list_files(self.root, day, day + DAY))
        if not found:
            return None
        return await rebuild.rebuild(self.settings, self.ingestor.store, found)


def _received(text: str | None) -> datetime | None:
    """An imported record's own ``received_at`` (None: unreadable or absent, then now)."""
    if not text:
        return None
    try:
        return to_utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        return None
