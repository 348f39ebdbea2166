"""Retention (EA_ARCHIVE_RETENTION_DAYS): old hours leave the archive, PostgreSQL and the
counters, by a job that runs by itself (``event-analytics expire``, started by ``serve``).

What goes: every hour of each UTC day that ended before the horizon, now minus the limit
floored to a day. Whole days, so that a day's counters (its count, its unique users) never
stand for a part of it; an hour is kept up to a day past the limit. A day is held back,
with every later one, while the streams may still hold events of it, while one of its
hour files has lines not yet delivered to PostgreSQL, or is being written (its lock).

Per day, in this order, so that a kill at any instant leaves a state the next pass finishes
(the hour files go last, and they are what tells a pass which days to do):

1. the day's counters: every bucket of every event type the engine counts;
2. the day's rows in PostgreSQL (its partition dropped); the delivery records stay, so
   the delivery process does not send the files still there again;
3. the hour files, each under the writers' lock: the Parquet copy, then the JSONL;
4. after the days: the delivery records (and any row) of hours before the first day kept.

Each pass adds what it deleted to totals kept in ``DATA_DIR/expiry.json`` (written, fsynced,
renamed), with the oldest hour left in the archive, which /persistent/status and /metrics
read (an alert rule fires while that hour is well past the limit: the job is held back,
failing or not running).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from event_analytics import faults
from event_analytics.archive import files
from event_analytics.config import Settings
from event_analytics.destinations import postgres, postgres_expiry
from event_analytics.destinations.delivery import settled_size
from event_analytics.errors import StorageUnavailable
from event_analytics.expiry_totals import Totals, horizon, read_totals, write_totals
from event_analytics.store import IngestWriter
from event_analytics.store.clear import clear_day
from event_analytics.store.streams import StreamStore
from event_analytics.timebucket import DAY, iso_z

log = logging.getLogger(__name__)
LOCK_WAIT_S = 30.0
# Beside the hour file: what compaction leaves (compact.py), the lock file last.
_COMPACT_SUFFIXES = (".parquet", ".parquet.json", ".parquet.tmp", ".prefix.tmp",
                     ".parquet.json.tmp")  # fmt: skip


@dataclass
class Preview:
    """What a pass would delete now (``expire --dry-run``); nothing is deleted or counted."""

    horizon: str  # the first day the pass would keep
    days: list[tuple[str, int, int]] = field(default_factory=list)  # day, hour files, events
    held_back: str | None = None


class HeldBack(Exception):
    """A day (and every later one) must stay for now; the text says why."""


class Expiry:
    """One pass at a time over the archive, the engine and PostgreSQL."""

    def __init__(self, settings: Settings, store: IngestWriter) -> None:
        assert settings.archive_retention_days, "EA_ARCHIVE_RETENTION_DAYS is not set"
        self.settings = settings
        self.days = settings.archive_retention_days
        self.store = store
        self.streams = StreamStore(store.client, store.keys)
        self.root = settings.archive_path
        self.totals = read_totals(settings) or Totals()
        self._sizes: dict[Path, int] = {}  # the settled size of each hour file checked
        self._crash_at = faults.expiry_crash_at()

    async def run(self, stop: asyncio.Event) -> None:
        """A pass now and every EA_ARCHIVE_RETENTION_EVERY_S until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(StorageUnavailable, psycopg.Error, OSError):
                await self.run_pass()  # logged and kept in the totals by run_pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.archive_retention_every_s)

    async def run_pass(self, now: datetime | None = None) -> Totals:
        """Delete every day before the horizon that may go; returns the totals."""
        first_kept = horizon(now or datetime.now(UTC), self.days)
        self.totals.passes += 1
        self.totals.last_pass = iso_z(datetime.now(UTC))
        self.totals.held_back = self.totals.last_error = self.totals.horizon = None
        self.totals.deleted_days = []
        try:
            with self._postgres() as conn:
                first_kept = await self._days(first_kept, conn)
                self.totals.horizon = iso_z(first_kept)
                if conn is not None:
                    self._forget_records(conn, first_kept)
        except (StorageUnavailable, psycopg.Error, OSError) as exc:
            self.totals.last_error = f"{type(exc).__name__}: {describe(exc, self.settings)}"
            log.warning("expiry pass stopped: %s", self.totals.last_error)
            raise
        finally:
            # What is on disk, whatever the pass did: the figure an alert watches, since a
            # pass that fails or holds a day back leaves hours past the limit.
            with contextlib.suppress(OSError):
                oldest = files.oldest_hour(self.root)
                self.totals.oldest_hour = iso_z(oldest) if oldest else None
            write_totals(self.settings, self.totals)
        return self.totals

    async def preview(self, now: datetime | None = None) -> Preview:
        """The days a pass would delete now, and the day it would hold back, if any: the
        same checks, reading only (PostgreSQL's tables are created if missing)."""
        first_kept = horizon(now or datetime.now(UTC), self.days)
        seen = Preview(iso_z(first_kept))
        with self._postgres() as conn:
            for day, day_files in files.by_day(files.list_files(self.root, end=first_kept)):
                try:
                    await self._check(day, day_files, conn)
                except HeldBack as why:
                    seen.held_back, seen.horizon = f"{day:%Y-%m-%d}: {why}", iso_z(day)
                    break
                sizes = {f.path: self._sizes[f.path] for f in day_files}
                events = await asyncio.to_thread(_events_of, sizes)
                seen.days.append((f"{day:%Y-%m-%d}", len(day_files), events))
        return seen

    @contextlib.contextmanager
    def _postgres(self) -> Iterator[psycopg.Connection[Any] | None]:
        if not self.settings.postgres_url:
            yield None
            return
        with postgres.connect(self.settings.postgres_url) as conn:
            postgres.ensure_schema(conn)
            yield conn

    async def _days(self, first_kept: datetime, conn: psycopg.Connection[Any] | None) -> datetime:
        """Delete the days before ``first_kept``, oldest first; the first day kept."""
        days = files.by_day(files.list_files(self.root, end=first_kept))
        if self.totals.expiring not in {f"{day:%Y-%m-%d}" for day, _ in days}:
            self.totals.expiring = None  # no file of it is left: a pass finished it
        for day, day_files in days:
            try:
                await self._day(day, day_files, conn)
            except HeldBack as why:
                self.totals.held_back = f"{day:%Y-%m-%d}: {why}"
                log.info("expiry: day %s kept for now: %s", f"{day:%Y-%m-%d}", why)
                return day
            self.totals.deleted_days.append(f"{day:%Y-%m-%d}")
            log.info("expiry: deleted %s (%d hour files)", f"{day:%Y-%m-%d}", len(day_files))
        return first_kept

    async def _day(
        self,
        day: datetime,
        day_files: list[files.ArchiveFile],
        conn: psycopg.Connection[Any] | None,
    ) -> None:
        await self._check(day, day_files, conn)
        self.totals.expiring = f"{day:%Y-%m-%d}"
        write_totals(self.settings, self.totals)  # before any of the day goes
        await self._counters(day)
        self._crash_point("after_counters")
        if conn is not None:
            self.totals.postgres_rows_deleted += postgres_expiry.delete_day(conn, day)
            self._crash_point("after_postgres")
        for i, found in enumerate(day_files):
            # In a worker thread: it may wait a while for a writer's or the compactor's lock.
            events = await asyncio.to_thread(_delete_hour, found, self._sizes[found.path])
            self.totals.hours_deleted += 1
            self.totals.events_deleted += events
            if i == 0:
                self._crash_point("mid_files")
        _remove_empty_dirs(day_files[0].path.parent, self.root)
        self.totals.expiring = None

    async def _check(
        self, day: datetime, found: list[files.ArchiveFile], conn: psycopg.Connection[Any] | None
    ) -> None:
        """Raise HeldBack unless every hour of ``day`` is complete and delivered."""
        backlog = await self.streams.backlog()
        oldest_ms = backlog["oldest_unarchived_ms"]
        # An entry received at t carries events no older than t - EA_MAX_AGE_S.
        if oldest_ms and oldest_ms / 1000 - self.settings.max_age_s < (day + DAY).timestamp():
            raise HeldBack("the streams hold events not archived yet that may belong to it")
        self._sizes = {}
        done = postgres.progress(conn) if conn is not None else {}
        for f in found:
            size = settled_size(f.path)
            if size is None:
                raise HeldBack(f"{f.relative} is being written")
            if conn is not None and size > 0:
                at = done.get(f.relative)
                if at is None or at.offset < size:
                    raise HeldBack(f"{f.relative} is not delivered to PostgreSQL yet")
            self._sizes[f.path] = size

    async def _counters(self, day: datetime) -> None:
        keys = self.store.keys
        types: set[str] = set()
        for shard in range(keys.shards):
            members = await self.store.client.smembers(keys.event_types(shard))
            types |= {m.decode() if isinstance(m, bytes) else str(m) for m in members}
        for event_type in sorted(types):
            await clear_day(self.store, day, event_type)

    def _forget_records(self, conn: psycopg.Connection[Any], first_kept: datetime) -> None:
        """Delivery records and rows of hours before the first day kept with no file left
        (a pass killed after a day's files went, or rows of hours never archived)."""
        left = files.list_files(self.root, end=first_kept)
        upto = min([first_kept, *(f.hour.replace(hour=0) for f in left)])
        self.totals.postgres_rows_deleted += postgres_expiry.forget_before(conn, upto)

    def _crash_point(self, point: str) -> None:
        if self._crash_at == point:
            faults.die()


def describe(exc: BaseException, settings: Settings) -> str:
    """An error's text for the status and the command line (no URL or password)."""
    if isinstance(exc, psycopg.Error) and settings.postgres_url:
        return postgres.describe(exc, settings.postgres_url).split(": ", 1)[-1]
    return str(exc)


def _delete_hour(found: files.ArchiveFile, size: int) -> int:
    """Delete an hour file and its Parquet copy under the writers' and the compactor's
    locks (each waited for up to LOCK_WAIT_S); its events. HeldBack if a lock stays taken
    or the file is no longer ``size`` bytes (written to since it was found delivered)."""
    path = found.path
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0  # a pass before this one deleted it, after its counters and rows
    lock_fd = os.open(path.with_suffix(".parquet.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _wait_lock(fd):
            raise HeldBack(f"{found.relative} is being written")
        if os.fstat(fd).st_size != size:
            raise HeldBack(f"{found.relative} was written to since it was checked")
        if not _wait_lock(lock_fd):
            raise HeldBack(f"{found.relative} is being compacted")
        events = _count_lines(fd, size)
        for suffix in _COMPACT_SUFFIXES:
            path.with_suffix(suffix).unlink(missing_ok=True)
        # The JSONL last: while it is there, the next pass finds this hour again.
        path.unlink()
        path.with_suffix(".parquet.lock").unlink(missing_ok=True)
        files.fsync_dir(path.parent)
        return events
    finally:
        os.close(lock_fd)
        os.close(fd)


def _wait_lock(fd: int) -> bool:
    """An exclusive flock, waited for up to LOCK_WAIT_S (a writer holds it for one batch,
    the compactor for one hour's copy): whether it is held."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def _events_of(sizes: dict[Path, int]) -> int:
    """The lines in the first ``size`` bytes of each file (none of a file that is gone)."""
    total = 0
    for path, size in sizes.items():
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            total += _count_lines(fd, size)
        finally:
            os.close(fd)
    return total


def _count_lines(fd: int, size: int) -> int:
    lines = pos = 0
    while pos < size:  # in blocks: an hour file may be far larger than memory
        chunk = os.pread(fd, min(size - pos, 1 << 20), pos)
        if not chunk:
            break
        lines += chunk.count(b"\n")
        pos += len(chunk)
    return lines


def _remove_empty_dirs(directory: Path, root: Path) -> None:
    """The day's directory and its month's and year's, where nothing is left in them."""
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (or gone): the parents are not empty either
        directory = directory.parent
