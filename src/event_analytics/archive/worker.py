"""The archiver: each shard's event stream -> hourly JSONL files, exactly once.

Per batch: write the lines, fsync, and only then XACK + XDEL (one transaction), so an
acknowledged entry is always on disk. One archiver at a time owns a shard (a lease in
Redis), so two archivers never write the same entry concurrently. Whatever was pending
when an owner died, the next owner claims (XAUTOCLAIM) and writes only the events that
are not in their hour file yet: the archive never holds an event twice.

Beside that, off the write path (its own task, one hour per worker-thread call), it
writes the Parquet copies of closed hours that queries read instead of their JSONL
(archive/compact.py; EA_COMPACT, EA_COMPACT_AFTER_S).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from event_analytics import faults
from event_analytics.archive import compact, files
from event_analytics.archive.record import InvalidRecord, archive_line
from event_analytics.config import Settings
from event_analytics.errors import StorageUnavailable
from event_analytics.keys import Keys
from event_analytics.store.streams import Entry, NoGroup, StreamStore
from event_analytics.timebucket import Interval, floor, iso_z

log = logging.getLogger(__name__)
HEARTBEAT_S = 1.0
# With nothing to read, the next look is IDLE_SLEEP_S later, doubling with each look that
# finds nothing up to IDLE_MAX_S (and back to IDLE_SLEEP_S after any batch): a look is a
# lease renewal and a read per shard, and at 20 looks a second an idle archiver took
# ~1.1 CPU-s a minute (issue 22's measurement), more than the rest of an idle service.
# An event arriving after a quiet spell is archived at most IDLE_MAX_S later.
IDLE_SLEEP_S = 0.05
IDLE_MAX_S = 0.4
# After a small batch, wait this long before the next read, so that under a steady
# trickle batches grow: each batch costs a read, a write, an fsync and an ack whatever
# its size (with single events arriving, the archiver took ~1/4 of all CPU per event
# before, reading a few events at a time). The archive lags by at most this much more.
LINGER_S = 0.05
MAX_BACKOFF_S = 5.0
# How often the compactor looks for closed hours without a Parquet copy (a glob of the
# archive and a stat and a small read per hour file).
COMPACT_SCAN_S = 30.0


def _records(fields: dict[bytes, bytes]) -> list[tuple[datetime, bytes]]:
    """(UTC hour file, line to write there) of each event record of a stream entry: one
    ingest call's records, one per line."""
    raw = fields.get(b"e")
    if not raw:
        raise InvalidRecord("entry has no 'e' field")
    out: list[tuple[datetime, bytes]] = []
    for record in raw.split(b"\n"):
        parsed, line = archive_line(record)
        out.append((floor(parsed.timestamp, Interval.HOUR), line))
    return out


class Archiver:
    """Archives the streams of the shards it holds leases for, until ``stop`` is set."""

    def __init__(
        self, settings: Settings, streams: StreamStore, root: Path, name: str | None = None
    ) -> None:
        self.settings = settings
        # The crash tests' fault injection (faults.py): "" in production.
        self._crash_at = faults.archiver_crash_at()
        self.streams = streams
        self.keys: Keys = streams.keys
        self.root = root
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.owned: set[int] = set()
        # Shards whose pending entries (of any consumer) must be claimed and checked.
        self.recovering: set[int] = set()
        # Shards whose new entries may already be on disk (a group recreated from 0).
        self.checking: set[int] = set()
        # A batch that failed to write or to be acknowledged, retried as it is: re-reading
        # it from the pending list would count a delivery each time (-> dead letters).
        self.unfinished: dict[int, list[Entry]] = {}
        self.lease_ms = int(settings.archiver_lease_s * 1000)
        self.batch = settings.archiver_batch
        self._count = self.batch  # entries per read
        self.events_archived = 0
        self.hours_compacted = 0
        self.last_fsync: float | None = None
        self.last_error: str | None = None
        self.state = "starting"
        self._last_beat = 0.0

    # -- the loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        idle = IDLE_SLEEP_S
        compactor = asyncio.create_task(self._compact(stop)) if self.settings.compact else None
        try:
            while not stop.is_set():
                try:
                    before = self.events_archived
                    busy = await self._tick()
                    backoff = 0.1
                    if not busy:
                        await _wait(stop, idle)
                        # A quarter of the lease at most: a look renews the leases.
                        idle = min(2 * idle, IDLE_MAX_S, self.lease_ms / 4000)
                        continue
                    idle = IDLE_SLEEP_S
                    if self.events_archived - before < self.batch // 10:
                        await _wait(stop, LINGER_S)
                except (StorageUnavailable, OSError) as exc:
                    # Nothing was acknowledged: the same entries are retried, exactly once.
                    if isinstance(exc, StorageUnavailable):
                        # The engine may come back without our last acks (a replica promoted
                        # before it received them): until each stream is caught up, claim
                        # what is pending and skip what is already on disk.
                        self.recovering |= self.owned
                        self.checking |= self.owned
                    self._fail(exc)
                    with contextlib.suppress(StorageUnavailable):
                        await self._beat(force=True)
                    await _wait(stop, backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            if compactor is not None:
                # Waits for the hour being compacted, if any (its thread is not stopped).
                compactor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await compactor
            with contextlib.suppress(StorageUnavailable):
                for shard in list(self.owned):
                    await self.streams.release_lease(shard, self.name)
                await self.streams.forget(self.name)

    def _fail(self, exc: Exception) -> None:
        self.state = "blocked"
        self.last_error = f"{type(exc).__name__}: {exc}"
        cause = f" ({exc.__cause__!r}: {exc.__cause__})" if exc.__cause__ else ""
        log.warning("archiver blocked: %s%s", self.last_error, cause)

    async def _tick(self) -> bool:
        await self._beat()
        if await self.streams.paused():
            # A backup is copying the archive: write nothing (between batches, so nothing
            # is half done), keep the leases, and say so in the heartbeat it waits for.
            for shard in sorted(self.owned):
                if not await self.streams.renew_lease(shard, self.name, self.lease_ms):
                    self.owned.discard(shard)
            if self.state != "paused":
                self.state = "paused"
                await self._beat(force=True)
            return False
        busy = False
        for shard in sorted(self.owned):
            if not await self.streams.renew_lease(shard, self.name, self.lease_ms):
                log.warning("lost the lease of shard %d", shard)
                self.owned.discard(shard)
                continue
            if shard in self.unfinished:
                await self._archive(shard, self.unfinished[shard], check_files=True)
            try:
                if shard in self.recovering:
                    await self._recover(shard)
                    self.recovering.discard(shard)
                entries = await self.streams.read_new(shard, self.name, self._count)
            except NoGroup:
                # The engine lost the group (and maybe acks), also between taking the shard
                # and recovering it: re-read the stream from its start, checking the files,
                # until it is caught up. A new group has nothing pending to recover.
                await self.streams.ensure_group(shard)
                self.checking.add(shard)
                self.recovering.discard(shard)
                busy = True
                continue
            if entries:
                await self._archive(shard, entries, check_files=shard in self.checking)
                busy = True
            else:
                self.checking.discard(shard)
        if self.state != "running":
            await self._resume()
        return busy

    async def _resume(self) -> None:
        """State "running", the last error cleared, shown at once."""
        self.state = "running"
        self.last_error = None
        await self._beat(force=True)

    # -- Parquet copies of closed hours ------------------------------------------------

    async def _compact(self, stop: asyncio.Event) -> None:
        """Compact closed hours without a valid copy, one at a time, until ``stop``.

        Each hour is one call in a worker thread (DuckDB on one thread), so batches go on
        being written meanwhile; a crash mid-hour leaves no copy that queries read.
        """
        failed: dict[Path, int] = {}  # hour file -> its size when it could not be copied
        while not stop.is_set():
            before = datetime.now(UTC) - timedelta(seconds=self.settings.compact_after_s)
            try:
                todo = await asyncio.to_thread(compact.uncompacted, self.root, before)
            except OSError as exc:
                log.warning("compaction: cannot list %s: %s", self.root, exc)
                todo = []
            for path in todo:
                if stop.is_set():
                    break
                size = -1
                try:
                    size = path.stat().st_size
                    if failed.get(path) == size:
                        continue  # the same file failed before: not again until it grows
                    done = await asyncio.to_thread(compact.compact, path, self._compact_crash)
                except (OSError, ValueError, duckdb.Error) as exc:
                    log.warning("compaction of %s failed: %s", path, exc)
                    done = None
                if done is None:
                    failed[path] = size  # or no complete line yet
                else:
                    self.hours_compacted += 1
                    log.info("compacted %s (%d events) to Parquet", path.name, done.events)
            await _wait(stop, COMPACT_SCAN_S)

    def _compact_crash(self, point: str) -> None:
        self._crash_point(point, None, b"")

    # -- leases and heartbeats --------------------------------------------------------

    async def _beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_beat < HEARTBEAT_S:
            return
        self._last_beat = now
        await self.streams.heartbeat(self.name, self.status())
        live = await self.streams.archivers(
            fresh_s=3 * HEARTBEAT_S + self.settings.archiver_lease_s
        )
        # Share the shards: hold about S / (live archivers) of them.
        target = math.ceil(self.keys.shards / max(1, len(live)))
        for shard in range(self.keys.shards):
            if len(self.owned) >= target:
                break
            if shard not in self.owned and await self.streams.acquire_lease(
                shard, self.name, self.lease_ms
            ):
                await self.streams.ensure_group(shard)
                self.owned.add(shard)
                self.recovering.add(shard)  # a previous owner may have died mid-batch
                log.info("archiver %s took shard %d", self.name, shard)
        while len(self.owned) > target:
            shard = max(self.owned)
            self.owned.discard(shard)
            await self.streams.release_lease(shard, self.name)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "shards": sorted(self.owned),
            "events_archived": self.events_archived,
            "last_fsync": iso_z(datetime.fromtimestamp(self.last_fsync, UTC))
            if self.last_fsync
            else None,
            "last_error": self.last_error,
            "heartbeat": time.time(),
            "pid": os.getpid(),
        }

    # -- archiving --------------------------------------------------------------------

    async def _recover(self, shard: int) -> None:
        """Claim every pending entry of the shard and archive what is not on disk yet."""
        cursor: bytes | str = "0-0"
        while True:
            cursor, claimed = await self.streams.claim(shard, self.name, cursor, self.batch)
            entries: list[Entry] = []
            for entry, deliveries in claimed:
                if deliveries > self.settings.archiver_max_deliveries:
                    # Archivers keep dying on it: set it aside rather than loop forever.
                    reason = f"delivered {deliveries} times without being archived"
                    await self.streams.dead_letter(shard, entry, reason)
                    log.error("shard %d: entry %r dead-lettered: %s", shard, entry[0], reason)
                else:
                    entries.append(entry)
            if entries:
                log.info("shard %d: recovering %d pending entries", shard, len(entries))
                await self._archive(shard, entries, check_files=True)
            if cursor in (b"0-0", "0-0"):
                return

    async def _archive(self, shard: int, entries: list[Entry], check_files: bool) -> None:
        by_hour: dict[datetime, list[tuple[str, bytes]]] = defaultdict(list)
        keep: list[Entry] = []
        for entry in entries:
            eid, fields = entry
            if not fields:  # deleted from the stream meanwhile: nothing left to write
                keep.append(entry)
                continue
            try:
                records = _records(fields)
            except InvalidRecord as exc:
                # The whole entry (one call's records) is set aside, none of it written.
                await self.streams.dead_letter(shard, entry, str(exc))
                log.error("shard %d: entry %r dead-lettered: %s", shard, eid, exc)
                continue
            for hour, record in records:
                by_hour[hour].append((files.event_id_of(record), record))
            keep.append(entry)
        self.unfinished[shard] = keep  # retried as it is until acknowledged
        # An entry holds one ingest call's records: read about ``batch`` events next time.
        lines = sum(len(v) for v in by_hour.values())
        self._count = max(1, self.batch * len(entries) // max(lines, len(entries)))
        written = await asyncio.to_thread(self._write, by_hour, check_files)
        if self.state == "blocked":
            # Writing again: said before the ack can empty the stream, so that no status
            # shows the stream caught up by an archiver still blocked.
            await self._resume()
        if keep:
            await self.streams.ack(shard, keep, written)
        del self.unfinished[shard]
        self.events_archived += written

    def _write(self, by_hour: dict[datetime, list[tuple[str, bytes]]], check_files: bool) -> int:
        """Append each hour's lines and fsync; returns the lines written. Runs in a thread."""
        written = 0
        for hour, records in sorted(by_hour.items()):
            path = files.hour_path(self.root, hour)
            with files.locked(path) as fd:
                if check_files:
                    present = files.present_ids(path, {event_id for event_id, _ in records})
                    records = [r for r in records if r[0] not in present]
                # One event id once per batch too (a replayed stream may repeat one).
                unique = dict(records)
                data = b"".join(line + b"\n" for line in unique.values())
                if not data:
                    continue
                self._crash_point("mid_line", fd, data)
                files.append(fd, data)
                self.last_fsync = time.time()
                written += len(unique)
        self._crash_point("after_write", None, b"")
        return written

    def _crash_point(self, point: str, fd: int | None, data: bytes) -> None:
        """Fault injection for the crash tests: die by SIGKILL at ``point``."""
        if self._crash_at != point:
            return
        if fd is not None:
            os.write(fd, data[: max(1, len(data) // 2 + 7)])
            os.fsync(fd)
        faults.die()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
