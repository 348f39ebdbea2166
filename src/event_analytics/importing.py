"""Import history into the archive: each event once by id, in its own hour's file.

Items are validated by the event model's rules (see Reading and validating below), then
by time: not more than the live future skew ahead, not before ``EARLIEST``, nor
(with EA_ARCHIVE_RETENTION_DAYS) before the first day retention keeps (expiry.py); no
other maximum age. Then each event takes one of two paths, by its UTC day:

- **Settled days** (the whole day is older than the live window as far as the archive
  has caught up: ``day end + max_age < archived_until``): no live copy of such an event
  can be accepted any more, and every copy accepted earlier is archived already. So its
  hour file, read under the archiver's exclusive lock (``files.locked``), tells whether
  it is there: only the new ones are appended (one append and fsync per hour and chunk)
  and then counted, by the same ingest script a rebuild replays through. Nothing is
  cleared, so nothing counted before is lost.
- **The other days** (the live window, and the edge day it starts in, and whatever
  the archiver has not caught up with): the live path, without its age limit. The
  engine's dedup memory and counting are atomic with the stream entry, and the
  archiver writes the hour file; the file is checked first, for a copy archived before
  the dedup memory forgot it. Appending such an event directly could write it twice (a
  live copy still in the stream would be archived as well), and rebuilding such a day
  from the archive would drop the live events not archived yet: neither happens.

Users on the suppression list (erased by ``forget``, ``keys.erased``) are refused on
both paths with ``user_erased``: the live path's script refuses them, and the settled
path asks their shards' lists before appending a chunk.

Reading and validating (``import_work.py``): an NDJSON file is cut into blocks of
``EA_IMPORT_BLOCK_BYTES`` that ``EA_IMPORT_WORKERS`` worker processes read, validate and
encode (archive lines, count calls), a few blocks ahead; this process takes their results
in the file's order and decides, alone, what is appended and counted: the same report and
the same archive whatever the number of workers (0: all in this process; CSV is always
read here). A chunk is counted while the next one is read and validated, so the engine
and Python work at once.

Crash safety: a chunk's settled days are marked in the engine before their events are
appended and unmarked once they are counted (``store/import_marks.py``). An import
killed in between leaves them marked; the next one rebuilds those days' counters from
the archive (``archive/rebuild.py``: they are settled, so that is exact) before its own
work, and finds the events it had appended as duplicates. One import runs at a time
(``run_lock``): two would otherwise rebuild and count the same day at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain, islice
from pathlib import Path

from event_analytics import faults
from event_analytics.analytics.freshness import archived_until
from event_analytics.archive import files, rebuild
from event_analytics.archive.record import Record, decode
from event_analytics.config import Settings
from event_analytics.errors import ImportBusy, user_erased
from event_analytics.expiry_totals import horizon
from event_analytics.import_pool import WorkerPool
from event_analytics.import_read import block_ranges, read
from event_analytics.import_work import (
    COUNT_BATCH,
    CSV_ROWS,
    EARLIEST,
    EXAMPLES,
    Block,
    Checker,
    Group,
)
from event_analytics.ingest import Ingestor
from event_analytics.store import IngestWriter, Outcome, PreparedEvent, import_marks
from event_analytics.store.errors import engine_errors
from event_analytics.store.scripts import Call
from event_analytics.store.streams import StreamStore
from event_analytics.timebucket import DAY, Interval, floor

CHUNK = 50_000  # events held before they are written
# Count calls in flight at once (rebuild's MAX_INFLIGHT): a chunk's calls all at once held
# the cluster's masters in scripts long enough for new connections to time out.
COUNT_INFLIGHT = 3
LIVE_BATCH = 1000
AHEAD = 2  # blocks in the workers' hands per worker (memory: a few blocks' results)
LOCK_NAME = ".import.lock"


@contextlib.contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """One import at a time per archive (a file lock: a killed holder releases it)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ImportBusy("another import into this archive is running") from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def rare_collections() -> Iterator[None]:
    """No automatic cyclic GC for an import's duration (it collects once a chunk,
    ``Importer._chunk``), then as before.

    An import holds a chunk or two of events (hundreds of thousands of objects) alive,
    and the collections that the allocations set off walked them again and again: with
    the default thresholds an import spent 46 us of CPU per event, with thresholds of
    (50,000, 20, 100) 29 (benchmarks/import_bench.py's file, 100,000 events), and still
    ~3.5 us per event of its ~23 more than with none (300,000 events, A/B in one run).
    One collection of the young generations per chunk walks each object about once; a
    garbage cycle (rare here: the import's objects are freed by their reference counts)
    is found at the next chunk, or, once it is in the oldest generation, after the
    import (the process's too, in the service). What was there before the import is
    frozen (not walked at all) and thawed after.
    """
    enabled = gc.isenabled()
    # unfreeze() thaws everything: what someone else froze stays frozen, so only an import
    # that found nothing frozen freezes (and thaws after).
    freezing = gc.get_freeze_count() == 0
    if freezing:
        gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        if freezing:
            gc.unfreeze()


async def run_import(
    settings: Settings, sources: list[tuple[str, Path, str]], workers: int | None = None
) -> ImportReport:
    """Import files (display name, path, format) under the import lock, with an engine
    connection of its own: the whole of ``event-analytics import`` and ``POST /api/import``.
    ``workers``: worker processes (default EA_IMPORT_WORKERS). Raises ImportBusy, OSError
    (a file), StorageUnavailable."""
    store = IngestWriter.from_settings(settings)
    try:
        importer = Importer(
            settings, Ingestor(settings, store), StreamStore(store.client, store.keys), workers
        )
        with run_lock(settings.archive_path), rare_collections():
            try:
                await importer.recover()
                for name, path, fmt in sources:
                    await importer.add_file(name, path, fmt)
                await importer.flush()
            finally:
                await importer.abandon()
                importer.close()
        return importer.report
    finally:
        await store.close()


@dataclass
class ImportReport:
    accepted: int = 0
    duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    live: int = 0  # of the accepted: through the live path (the archiver writes them)
    counted: int = 0  # of the accepted: appended here and counted here
    recovered_days: int = 0  # left unfinished by a killed import, rebuilt first

    def reject(self, where: str, code: str, message: str) -> None:
        self.rejected[code] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{where}: {code}: {message}")

    def take(self, name: str, base: int, block: Block) -> None:
        """A checked block's refusals (its lines follow ``base`` in file ``name``)."""
        self.rejected.update(block.rejected)
        for line, code, message in block.examples[: EXAMPLES - len(self.examples)]:
            self.examples.append(f"{name}:{base + line}: {code}: {message}")

    def as_dict(self) -> dict[str, object]:
        """The report as ``POST /api/import`` answers it."""
        return {
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "examples": self.examples,
            "counted": self.counted,
            "live": self.live,
            "recovered_days": self.recovered_days,
        }


@dataclass
class _HourIds:
    size: int = 0
    ids: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Valid:
    """An event of the live path (or one set apart from its group), from its archive line."""

    where: tuple[str, int]
    record: Record
    line: bytes  # the archive line, without its newline

    @classmethod
    def of(cls, name: str, base: int, group: Group, i: int) -> _Valid:
        line = group.line(i)
        return cls((name, base + group.lines[i]), decode(line), line)


_Part = tuple[Group, list[int] | None]  # a group, and which of its events (None: all)


class Importer:
    """Feed it files (``add_file``), then ``flush``; ``recover`` first (see the module
    doc); ``close`` at the end (the worker processes)."""

    def __init__(
        self,
        settings: Settings,
        ingestor: Ingestor,
        streams: StreamStore,
        workers: int | None = None,
    ) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.store = ingestor.store
        self.streams = streams
        self.root = settings.archive_path
        self.report = ImportReport()
        self.checker = Checker(settings)
        self.workers = settings.import_workers if workers is None else workers
        self._pool: WorkerPool | None = None
        self._known: dict[Path, _HourIds] = {}
        # The chunk being gathered: (file name, its line base, group) in the file's order.
        self._pending: list[tuple[str, int, Group]] = []
        self._pending_events = 0
        self._max_age = timedelta(seconds=settings.max_age_s)
        self._crash_after_append = faults.import_crash_after_append()  # the crash test's
        # The last chunk's counting (then unmarking), running while the next chunk is read
        # and validated: the engine works while Python does. One at a time (``_settle``).
        self._counting: asyncio.Task[None] | None = None

    async def recover(self) -> None:
        """Rebuild the counters of the days a killed import left unfinished."""
        days = await import_marks.marked(self.store)
        found = [f for day in days for f in files.list_files(self.root, day, day + DAY)]
        if found:
            await rebuild.rebuild(self.settings, self.store, found)
        await import_marks.unmark(self.store, days)
        self.report.recovered_days = len(days)

    async def add_file(self, name: str, path: Path, fmt: str) -> None:
        """Import one file (its events are written a chunk at a time, the last at
        ``flush``). Raises OSError."""
        base = 0
        async for block in self._blocks(path, fmt):
            self.report.take(name, base, block)
            base += block.lines
            self._pending += ((name, base - block.lines, g) for g in block.groups)
            self._pending_events += block.valid
            if self._pending_events >= CHUNK:
                await self._chunk()

    async def _blocks(self, path: Path, fmt: str) -> AsyncIterator[Block]:
        """The file's blocks checked, in order: by the workers when there are any and the
        file has more than one block, else here."""
        with path.open("rb") as handle:
            if fmt == "csv":
                items = read(handle, fmt)
                while batch := list(islice(items, CSV_ROWS)):
                    yield self.checker.check(batch, 0, self._kept())
                    await asyncio.sleep(0)  # the last chunk's counting goes on meanwhile
                return
            ranges = block_ranges(handle, self.settings.import_block_bytes)
            first = list(islice(ranges, 2))
            if not self.workers or len(first) < 2:
                for start, end in chain(first, ranges):
                    yield self.checker.file_block(str(path), start, end, fmt, self._kept())
                    await asyncio.sleep(0)
                return
            # A worker's death ends these waits with ImportWorkerLost (import_pool.py).
            pool = self._workers()
            for start, end in chain(first, ranges):
                pool.submit(path, start, end, fmt, self._kept())
                if pool.owed >= AHEAD * self.workers:
                    yield await pool.next()
            while pool.owed:
                yield await pool.next()

    def _kept(self) -> datetime:
        """The first day an event may be of: retention's first kept day, or EARLIEST."""
        days = self.settings.archive_retention_days
        return horizon(datetime.now(UTC), days) if days is not None else EARLIEST

    def _workers(self) -> WorkerPool:
        if self._pool is None:
            self._pool = WorkerPool(self.settings, self.workers)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (what they still had to do is dropped)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()

    async def flush(self) -> None:
        """Write what is pending, and wait until every event appended is counted."""
        if self._pending:
            await self._chunk()
        await self._settle()

    async def abandon(self) -> None:
        """Stop counting in the background (after an error: its days stay marked, the
        next import rebuilds them). Its own error, if it had one, is not raised: the
        error that stopped the import is the one to report."""
        if self._counting is not None:
            task, self._counting = self._counting, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _settle(self) -> None:
        """Wait for the last chunk's counting: its days are unmarked after it. A chunk's
        days are marked, appended and counted before the next chunk's are marked, so a
        day an uncounted event was appended to is always marked (and the marks, a set,
        are never removed under a later chunk that shares a day)."""
        if self._counting is not None:
            task, self._counting = self._counting, None
            await task

    async def _chunk(self) -> None:
        pending, self._pending, self._pending_events = self._pending, [], 0
        await self._settle()
        # The one collection a chunk (rare_collections), of what is new since the last one
        # (generations 0 and 1): what survives goes to the oldest generation, not walked
        # again while the import runs; a full one walked every id of ``_known`` (its
        # sets) each time, 8 % of the import's time.
        gc.collect(1)
        settled = await archived_until(self.streams, self.settings.redis_timeout_s + 0.5)
        first_open = int(floor(settled - self._max_age, Interval.DAY).timestamp()) // 3600
        await self._direct([p for p in pending if p[2].hour < first_open])
        await self._live([
            _Valid.of(name, base, g, i)
            for name, base, g in pending if g.hour >= first_open
            for i in range(len(g.ids))
        ])  # fmt: skip

    def _reject(self, where: tuple[str, int], code: str, message: str) -> None:
        self.report.reject(f"{where[0]}:{where[1]}", code, message)

    # -- settled days: appended here, then counted --------------------------------------

    async def _direct(self, groups: list[tuple[str, int, Group]]) -> None:
        if not groups:
            return
        erased = await self._erased(set().union(*(g.users for _, _, g in groups)))
        by_hour: dict[int, list[_Part]] = {}
        for name, base, g in groups:
            keep: list[int] | None = None
            if erased and not g.users.isdisjoint(erased):
                refusal = user_erased()
                keep = []
                for i in range(len(g.ids)):
                    if decode(g.line(i)).user_id in erased:
                        self._reject((name, base + g.lines[i]), refusal.code, refusal.message)
                    else:
                        keep.append(i)
            by_hour.setdefault(g.hour, []).append((g, keep))
        days = {datetime.fromtimestamp(hour // 24 * 86400, UTC) for hour in by_hour}
        await import_marks.mark(self.store, days)
        prepared: list[list[Call]] = []
        replayed: list[PreparedEvent] = []
        for hour, parts in sorted(by_hour.items()):
            path = files.hour_path(self.root, datetime.fromtimestamp(hour * 3600, UTC))
            self._append(path, parts, prepared, replayed)
        if self._crash_after_append:
            faults.die()
        self._counting = asyncio.create_task(self._count_then_unmark(prepared, replayed, days))

    async def _count_then_unmark(
        self, prepared: list[list[Call]], replayed: list[PreparedEvent], days: set[datetime]
    ) -> None:
        slots = asyncio.Semaphore(COUNT_INFLIGHT)

        async def send(calls: list[Call]) -> None:
            async with slots:
                replies = await self.store.send(calls)
            self.report.counted += sum(reply.count(Outcome.NEW) for reply in replies)

        await asyncio.gather(*(send(calls) for calls in prepared))
        await self._count(replayed)
        await import_marks.unmark(self.store, days)

    async def _erased(self, users: set[str]) -> set[str]:
        """Those of ``users`` on their shard's suppression list (one call per shard)."""
        by_shard: dict[int, list[str]] = {}
        for user in sorted(users):
            by_shard.setdefault(self.store.keys.shard_of(user), []).append(user)
        out: set[str] = set()
        async with engine_errors():
            for shard, members in by_shard.items():
                found = await self.store.client.smismember(self.store.keys.erased(shard), members)
                out.update(u for u, hit in zip(members, found, strict=True) if hit)
        return out

    def _append(
        self,
        path: Path,
        parts: list[_Part],
        prepared: list[list[Call]],
        replayed: list[PreparedEvent],
    ) -> None:
        """Append the events of ``parts`` that ``path`` lacks (one write and fsync); their
        counting goes to ``prepared`` (whole groups: the calls the workers made) or
        ``replayed`` (the rest, made here)."""
        with files.locked(path) as fd:
            known = self._ids(path, fd)
            if all(keep is None for _, keep in parts):
                ids = [event_id for g, _ in parts for event_id in g.ids]
                fresh = set(ids)
                if len(fresh) == len(ids) and known.ids.isdisjoint(fresh):
                    # The usual case, without a step per event: none of them is there.
                    known.ids |= fresh
                    self._write(fd, known, [g.data for g, _ in parts], len(ids))
                    prepared += (calls for g, _ in parts for calls in g.counts)
                    return
            out: list[bytes] = []
            new = 0
            for g, keep in parts:
                kept = []
                for i in range(len(g.ids)) if keep is None else keep:
                    event_id = g.ids[i]
                    if event_id in known.ids:
                        self.report.duplicate += 1
                        continue
                    known.ids.add(event_id)
                    kept.append(i)
                new += len(kept)
                if keep is None and len(kept) == len(g.ids):
                    out.append(g.data)
                    prepared += g.counts
                    continue
                for i in kept:
                    line = g.line(i)
                    out.append(line + b"\n")
                    replayed.append(self._replay(decode(line)))
            self._write(fd, known, out, new)

    def _write(self, fd: int, known: _HourIds, lines: list[bytes], events: int) -> None:
        if events:
            data = b"".join(lines)
            files.append(fd, data)
            known.size += len(data)
            self.report.accepted += events

    def _replay(self, rec: Record) -> PreparedEvent:
        """What counting an appended event takes, made here (not by a worker)."""
        shard = self.store.keys.shard_of(rec.user_id)
        bucket = self.ingestor.buckets.of(shard, rec.event_type, rec.timestamp)
        return PreparedEvent(shard, bucket, rec.event_id.bytes, rec.user_id, _page(rec), b"")

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

    async def _count(self, appended: list[PreparedEvent]) -> None:
        """Count what was appended, as a rebuild replays it (not streamed, no dedup: the
        archive had none of them, so the counters had none of them either)."""
        slots = asyncio.Semaphore(COUNT_INFLIGHT)

        async def count(batch: list[PreparedEvent]) -> None:
            async with slots:
                flags = await self.store.ingest(batch, stream=False)
            self.report.counted += sum(1 for f in flags if f is Outcome.NEW)

        await asyncio.gather(
            *(count(appended[i : i + COUNT_BATCH]) for i in range(0, len(appended), COUNT_BATCH))
        )

    # -- the other days: the live path ---------------------------------------------------

    async def _live(self, events: list[_Valid]) -> None:
        for start in range(0, len(events), LIVE_BATCH):
            fresh = self._not_archived(events[start : start + LIVE_BATCH])
            prepared = [self._prepare_live(v) for v in fresh]
            outcomes = await self.store.ingest(prepared) if prepared else []
            for v, outcome in zip(fresh, outcomes, strict=True):
                if outcome is Outcome.NEW:
                    self.report.accepted += 1
                    self.report.live += 1
                elif outcome is Outcome.DUPLICATE:
                    self.report.duplicate += 1
                elif outcome is Outcome.USER_ERASED:
                    refusal = user_erased()
                    self._reject(v.where, refusal.code, refusal.message)
                else:
                    limit = self.store.caps.event_types
                    self._reject(
                        v.where,
                        "too_many_event_types",
                        f"more than {limit} event types: {v.record.event_type} is new",
                    )

    def _prepare_live(self, v: _Valid) -> PreparedEvent:
        """As ``Ingestor.prepare``, without the live age limit (the caller checked time)."""
        rec = v.record
        shard = self.store.keys.shard_of(rec.user_id)
        bucket = self.ingestor.buckets.of(shard, rec.event_type, rec.timestamp)
        return PreparedEvent(shard, bucket, rec.event_id.bytes, rec.user_id, _page(rec), v.line)

    def _not_archived(self, chunk: list[_Valid]) -> list[_Valid]:
        """The events whose id is not in their hour file already (one lock per hour)."""
        by_path: dict[Path, list[_Valid]] = {}
        for v in chunk:
            hour = v.record.timestamp.replace(minute=0, second=0, microsecond=0)
            by_path.setdefault(files.hour_path(self.root, hour), []).append(v)
        out: list[_Valid] = []
        for path, events in by_path.items():
            if not path.exists():
                out += events
                continue
            with files.locked(path) as fd:
                ids = self._ids(path, fd).ids
            for v in events:
                if str(v.record.event_id) in ids:
                    self.report.duplicate += 1
                else:
                    out.append(v)
        return out


def _page(rec: Record) -> str | None:
    page = rec.payload.get("page_url")
    return page if isinstance(page, str) else None
