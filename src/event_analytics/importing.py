"""Import history into the archive: each event once by id, in its own hour's file.

Items are validated by the event model's rules a batch at a time (see Validation below),
then by time: not more than the live future skew ahead, not before ``EARLIEST``, nor
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

Validation: plain events (our own records, nearly all) by ``model.plain_event``, the
others by the model (``validate_events``); the reasons are the model's. A chunk is
counted while the next one is read and validated, so the engine and Python work at once.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from event_analytics import faults
from event_analytics.analytics.freshness import archived_until
from event_analytics.archive import files, rebuild
from event_analytics.archive.record import Record, encode
from event_analytics.config import Settings
from event_analytics.errors import ImportBusy, user_erased
from event_analytics.expiry import horizon
from event_analytics.import_read import Item, read
from event_analytics.ingest import Ingestor
from event_analytics.model import Event, PlainEvent, plain_event, validate_events
from event_analytics.store import IngestWriter, Outcome, PreparedEvent, import_marks
from event_analytics.store.errors import engine_errors
from event_analytics.store.streams import StreamStore
from event_analytics.timebucket import DAY, Interval, floor, iso_z, to_utc

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # a "sane year": older is a wrong clock
CHUNK = 50_000  # events held before they are written
VALIDATE_BATCH = 1000  # events per pydantic call
COUNT_BATCH = 2000  # events per ingest script call when counting appended events
# Count calls in flight at once (rebuild's MAX_INFLIGHT): a chunk's calls all at once held
# the cluster's masters in scripts long enough for new connections to time out.
COUNT_INFLIGHT = 3
LIVE_BATCH = 1000
YIELD_EVERY = 1000  # items read between turns of the event loop (a chunk's count runs)
EXAMPLES = 20  # rejected lines named in the report
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


async def run_import(settings: Settings, sources: list[tuple[str, Path, str]]) -> ImportReport:
    """Import files (display name, path, format) under the import lock, with an engine
    connection of its own: the whole of ``event-analytics import`` and ``POST /api/import``.
    Raises ImportBusy, OSError (a file), StorageUnavailable."""
    store = IngestWriter.from_settings(settings)
    try:
        importer = Importer(
            settings, Ingestor(settings, store), StreamStore(store.client, store.keys)
        )
        with run_lock(settings.archive_path), rare_collections():
            try:
                await importer.recover()
                for name, path, fmt in sources:
                    with path.open("rb") as handle:
                        await importer.add(name, read(handle, fmt))
                await importer.flush()
            finally:
                await importer.abandon()
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
    where: tuple[str, int]
    event: PlainEvent
    received_at: datetime | None


class Importer:
    """Feed it items (``add``), then ``flush``; ``recover`` first (see the module doc)."""

    def __init__(self, settings: Settings, ingestor: Ingestor, streams: StreamStore) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.store = ingestor.store
        self.streams = streams
        self.root = settings.archive_path
        self.report = ImportReport()
        self._known: dict[Path, _HourIds] = {}
        self._pending: list[tuple[tuple[str, int], dict[str, object], str | None]] = []
        self._skew = timedelta(seconds=settings.future_skew_s)
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

    async def add(self, name: str, items: Iterable[Item]) -> None:
        for item in items:
            if item.event is None:
                self.report.reject(f"{name}:{item.line}", item.code, item.message)
                continue
            self._pending.append(((name, item.line), item.event, item.received_at))
            if len(self._pending) >= CHUNK:
                await self._chunk()
            elif len(self._pending) % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let the last chunk's counting send its next batch

    async def flush(self) -> None:
        """Write what is pending, and wait until every event appended is counted."""
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
        pending, self._pending = self._pending, []
        valid = await self._validate(pending)
        await self._settle()
        # The one collection a chunk (rare_collections), of what is new since the last one
        # (generations 0 and 1): what survives goes to the oldest generation, not walked
        # again while the import runs; a full one walked every id of ``_known`` (its
        # sets) each time, 8 % of the import's time.
        gc.collect(1)
        # Read after validating (which takes a while): the live path's own clock check
        # is not involved, but the settled boundary should be as fresh as possible.
        settled = await archived_until(self.streams, self.settings.redis_timeout_s + 0.5)
        first_open_day = floor(settled - self._max_age, Interval.DAY)
        # By (year, month, day, hour): a tuple of four attributes costs a tenth of
        # ``ts.replace(minute=0, ...)`` (5 % of the import's time, once per event).
        by_hour: dict[tuple[int, int, int, int], list[_Valid]] = {}
        live: list[_Valid] = []
        for v in valid:
            ts = v.event.timestamp
            if ts < first_open_day:
                by_hour.setdefault((ts.year, ts.month, ts.day, ts.hour), []).append(v)
            else:
                live.append(v)
        await self._direct({datetime(*hour, tzinfo=UTC): vs for hour, vs in by_hour.items()})
        await self._live(live)

    async def _validate(
        self, pending: list[tuple[tuple[str, int], dict[str, object], str | None]]
    ) -> list[_Valid]:
        now = datetime.now(UTC)
        days = self.settings.archive_retention_days
        kept = horizon(now, days) if days is not None else EARLIEST
        out: list[_Valid] = []
        for start in range(0, len(pending), VALIDATE_BATCH):
            batch = pending[start : start + VALIDATE_BATCH]
            for where, got, received in self._events(batch):
                ts = got.timestamp
                if ts > now + self._skew:
                    self._reject(
                        where,
                        "timestamp_in_future",
                        f"more than {self.settings.future_skew_s} s ahead of {iso_z(now)}",
                    )
                elif ts < EARLIEST:
                    self._reject(where, "timestamp_too_old", f"before {iso_z(EARLIEST)}")
                elif ts < kept:
                    # The retention job would delete it, and may be deleting its day now.
                    self._reject(
                        where, "past_retention",
                        f"before {iso_z(kept)}, the first day EA_ARCHIVE_RETENTION_DAYS={days} "
                        "keeps",
                    )  # fmt: skip
                else:
                    out.append(_Valid(where, got, _received(received)))
            await asyncio.sleep(0)  # the last chunk's counting goes on meanwhile
        return out

    def _events(
        self, batch: list[tuple[tuple[str, int], dict[str, object], str | None]]
    ) -> Iterator[tuple[tuple[str, int], PlainEvent, str | None]]:
        """The batch's valid events, in order; the others are rejected with the model's
        reason. Plain ones without pydantic (``plain_event``), the rest in one call."""
        plain = [plain_event(value) for _, value, _ in batch]
        others = [value for (_, value, _), got in zip(batch, plain, strict=True) if got is None]
        checked = iter(validate_events(others) if others else [])
        for (where, _, received), got in zip(batch, plain, strict=True):
            if got is None:
                model = next(checked)
                if not isinstance(model, Event):
                    self._reject(where, model.code, f"{model.field}: {model.message}")
                    continue
                try:
                    got = PlainEvent.of(model)
                except OverflowError:
                    self._reject(where, "invalid_timestamp", "timestamp is out of range")
                    continue
            yield where, got, received

    def _reject(self, where: tuple[str, int], code: str, message: str) -> None:
        self.report.reject(f"{where[0]}:{where[1]}", code, message)

    # -- settled days: appended here, then counted --------------------------------------

    async def _direct(self, by_hour: dict[datetime, list[_Valid]]) -> None:
        erased = await self._erased({v.event.user_id for vs in by_hour.values() for v in vs})
        if erased:
            refusal = user_erased()
            for hour, events in list(by_hour.items()):
                for v in events:
                    if v.event.user_id in erased:
                        self._reject(v.where, refusal.code, refusal.message)
                by_hour[hour] = [v for v in events if v.event.user_id not in erased]
            by_hour = {hour: events for hour, events in by_hour.items() if events}
        if not by_hour:
            return
        days = {floor(hour, Interval.DAY) for hour in by_hour}
        await import_marks.mark(self.store, days)
        now = datetime.now(UTC)
        appended: list[_Valid] = []
        for hour, events in sorted(by_hour.items()):
            appended += self._append(files.hour_path(self.root, hour), events, now)
        if self._crash_after_append:
            faults.die()
        self._counting = asyncio.create_task(self._count_then_unmark(appended, days))

    async def _count_then_unmark(self, appended: list[_Valid], days: set[datetime]) -> None:
        await self._count(appended)
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

    def _append(self, path: Path, events: list[_Valid], now: datetime) -> list[_Valid]:
        """Append the events ``path`` lacks (one write and fsync); those appended."""
        with files.locked(path) as fd:
            known = self._ids(path, fd)
            out: list[bytes] = []
            new: list[_Valid] = []
            for v in events:
                event = v.event
                event_id = str(event.event_id)
                if event_id in known.ids:
                    self.report.duplicate += 1
                    continue
                known.ids.add(event_id)
                record = Record(
                    event.event_id, event.user_id, event.timestamp, event.event_type,
                    event.payload, v.received_at or now,
                )  # fmt: skip
                out.append(encode(record) + b"\n")
                new.append(v)
            if out:
                data = b"".join(out)
                files.append(fd, data)
                known.size += len(data)
                self.report.accepted += len(out)
        return new

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

    async def _count(self, appended: list[_Valid]) -> None:
        """Count what was appended, as a rebuild replays it (not streamed, no dedup: the
        archive had none of them, so the counters had none of them either)."""
        buckets, keys = self.ingestor.buckets, self.store.keys
        prepared = []
        for v in appended:
            event = v.event
            shard = keys.shard_of(event.user_id)
            bucket = buckets.of(shard, event.event_type, event.timestamp)
            prepared.append(
                PreparedEvent(
                    shard, bucket, event.event_id.bytes, event.user_id, event.page_url, b""
                )
            )
        slots = asyncio.Semaphore(COUNT_INFLIGHT)

        async def count(batch: list[PreparedEvent]) -> None:
            async with slots:
                flags = await self.store.ingest(batch, stream=False)
            self.report.counted += sum(1 for f in flags if f is Outcome.NEW)

        await asyncio.gather(
            *(count(prepared[i : i + COUNT_BATCH]) for i in range(0, len(prepared), COUNT_BATCH))
        )

    # -- the other days: the live path ---------------------------------------------------

    async def _live(self, events: list[_Valid]) -> None:
        for start in range(0, len(events), LIVE_BATCH):
            fresh = self._not_archived(events[start : start + LIVE_BATCH])
            now = datetime.now(UTC)
            prepared = [self._prepare_live(v, now) for v in fresh]
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
                        f"more than {limit} event types: {v.event.event_type} is new",
                    )

    def _prepare_live(self, v: _Valid, now: datetime) -> PreparedEvent:
        """As ``Ingestor.prepare``, without the live age limit (the caller checked time)."""
        event = v.event
        shard = self.store.keys.shard_of(event.user_id)
        bucket = self.ingestor.buckets.of(shard, event.event_type, event.timestamp)
        record = Record(
            event.event_id, event.user_id, event.timestamp, event.event_type,
            event.payload, v.received_at or now,
        )  # fmt: skip
        return PreparedEvent(
            shard, bucket, event.event_id.bytes, event.user_id, event.page_url, encode(record)
        )

    def _not_archived(self, chunk: list[_Valid]) -> list[_Valid]:
        """The events whose id is not in their hour file already (one lock per hour)."""
        by_path: dict[Path, list[_Valid]] = {}
        for v in chunk:
            hour = v.event.timestamp.replace(minute=0, second=0, microsecond=0)
            by_path.setdefault(files.hour_path(self.root, hour), []).append(v)
        out: list[_Valid] = []
        for path, events in by_path.items():
            if not path.exists():
                out += events
                continue
            with files.locked(path) as fd:
                ids = self._ids(path, fd).ids
            for v in events:
                if str(v.event.event_id) in ids:
                    self.report.duplicate += 1
                else:
                    out.append(v)
        return out


def _received(text: str | None) -> datetime | None:
    """An imported record's own ``received_at`` (None: unreadable or absent, then now)."""
    if not text:
        return None
    try:
        return to_utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        return None
