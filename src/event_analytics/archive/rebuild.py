"""Rebuild every counter from the archive, a UTC day at a time, replacing what is there.

Each archived event is replayed through the same atomic ingest script as live traffic
(without appending it to the stream again), so rebuilt aggregates are exactly the live
ones by construction. Before a day is replayed, the keys of its buckets (per event type
found) are deleted: running it twice, or again after a crash halfway, gives the same
result. Replay does not dedup (the archive holds each event once) and leaves the live
dedup memory alone: it is keyed by arrival, not by the events' days.

Beside live traffic (``with_stream``, for ``forget``, with every archiver paused so the
archive does not grow meanwhile): each shard's keys of a day are deleted in one atomic
call that names the last entry of its stream, and the events streamed up to it that are
not archived yet are replayed as well. Live events counted after the deletion are
counted once, by ingest; those before it once, by the replay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from event_analytics import faults
from event_analytics.archive import files, record
from event_analytics.config import Settings
from event_analytics.store import IngestWriter, PreparedEvent
from event_analytics.store.clear import clear_day, clear_day_at
from event_analytics.store.prepared import Buckets
from event_analytics.store.streams import id_at_most
from event_analytics.timebucket import DAY, Interval, floor, to_utc

BATCH = 2000
MAX_INFLIGHT = 3


@dataclass
class RebuildReport:
    days: int = 0
    files: int = 0
    events: int = 0
    duplicates: int = 0
    unreadable: int = 0
    batches: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


Span = tuple[datetime | None, datetime | None]


def day_range(start: datetime | None, end: datetime | None) -> Span:
    """Widen [start, end) to whole UTC days: a day bucket is only right when all of it is."""
    lo = floor(to_utc(start), Interval.DAY) if start else None
    if end is None:
        return lo, None
    hi = floor(to_utc(end), Interval.DAY)
    return lo, hi if hi == to_utc(end) else hi + DAY


def prepare_archived(buckets: Buckets, got: record.Record) -> PreparedEvent:
    """What replaying an archived record needs: straight from the archive's codec, without
    an Event (it was validated when it arrived; building a pydantic model per line cost
    more than the rest of the replay on the Python side). Not streamed again: no record."""
    shard = buckets.keys.shard_of(got.user_id)
    bucket = buckets.of(shard, got.event_type, got.timestamp)
    page = got.payload.get("page_url")
    return PreparedEvent(
        shard, bucket, got.event_id.bytes, got.user_id, page if page else None, b""
    )


async def rebuild(
    settings: Settings,
    store: IngestWriter,
    found: list[files.ArchiveFile],
    advance: Callable[[int], None] = lambda _: None,
    with_stream: bool = False,
    also_clear: Mapping[datetime, Iterable[str]] | None = None,
) -> RebuildReport:
    """Replay ``found`` (whole days) into the store. ``advance(bytes)`` reports progress;
    ``with_stream``: the streams' unarchived events of those days too (see above);
    ``also_clear``: event types cleared on a day even if its files hold none of them (an
    erasure removed their last events)."""
    buckets = Buckets(settings, store.keys)
    crash_after = faults.rebuild_crash_after_batches()  # the crash tests' (faults.py)
    report = RebuildReport(files=len(found))
    started = time.perf_counter()
    inflight: set[asyncio.Task[None]] = set()
    for day, day_files in files.by_day(found):
        report.days += 1
        cleared: set[str] = set()
        # An id twice in one day's files (copied in by hand, or archived under the old
        # per-hour dedup) counts once, as the live service counts it now.
        ids: set[bytes] = set()
        tips: dict[str, list[bytes]] = {}  # event type -> each shard's stream tip at its clear
        batch: list[PreparedEvent] = []
        for event_type in sorted((also_clear or {}).get(day, ())):
            await _clear(store, day, event_type, cleared, tips if with_stream else None)
        for f in day_files:
            for line in files.read_lines([f.path]):
                try:
                    got = record.decode(line)
                except record.InvalidRecord:
                    report.unreadable += 1  # verify skips it too
                    continue
                prepared = prepare_archived(buckets, got)
                if prepared.event_id in ids:
                    report.duplicates += 1
                    continue
                ids.add(prepared.event_id)
                if got.event_type not in cleared:
                    await _clear(store, day, got.event_type, cleared, tips if with_stream else None)
                batch.append(prepared)
                if len(batch) >= BATCH:
                    await _flush(store, batch, report, inflight)
                    batch = []
                    _crash_point(crash_after, report)
            advance(f.size_bytes)
        if tips:
            streamed = await _streamed(store, buckets, day, tips, ids)
            for start in range(0, len(streamed), BATCH):
                await _flush(store, streamed[start : start + BATCH], report, inflight)
        await _flush(store, batch, report, inflight)
        # A day is finished before the next one's keys are cleared.
        await _drain(inflight)
        _crash_point(crash_after, report)
    report.seconds = time.perf_counter() - started
    return report


async def _clear(
    store: IngestWriter,
    day: datetime,
    event_type: str,
    cleared: set[str],
    tips: dict[str, list[bytes]] | None,
) -> None:
    """Delete a day's buckets of a type (with ``tips``: noting each stream's tip)."""
    if tips is not None:
        tips[event_type] = await clear_day_at(store, day, event_type)
    else:
        await clear_day(store, day, event_type)
    cleared.add(event_type)


async def _streamed(
    store: IngestWriter,
    buckets: Buckets,
    day: datetime,
    tips: dict[str, list[bytes]],
    ids: set[bytes],
) -> list[PreparedEvent]:
    """The events of ``day`` (of the cleared types) streamed up to each shard's tip and
    not in the day's files (``ids``): counted before the clear, archived after it."""
    out: list[PreparedEvent] = []
    for shard in range(store.keys.shards):
        stream = store.keys.stream(shard)
        last = max((t[shard] for t in tips.values()), default=b"")
        start: bytes | str = "-"
        while last:
            entries: Any = await store.client.xrange(stream, min=start, max=last, count=BATCH)
            if not entries:
                break
            for entry_id, fields in entries:
                for line in (fields.get(b"e") or b"").split(b"\n"):
                    try:
                        got = record.decode(line)
                    except record.InvalidRecord:
                        continue  # the archiver dead-letters it: never counted from here
                    tip = tips.get(got.event_type, [b""] * (shard + 1))[shard]
                    if floor(got.timestamp, Interval.DAY) != day or not id_at_most(entry_id, tip):
                        continue
                    prepared = prepare_archived(buckets, got)
                    if prepared.event_id not in ids:
                        ids.add(prepared.event_id)
                        out.append(prepared)
            start = b"(" + entries[-1][0]
    return out


def _crash_point(limit: int, report: RebuildReport) -> None:
    """Fault injection for the crash tests: SIGKILL after ``limit`` batches (0: never)."""
    report.batches += 1
    if limit and report.batches >= limit:
        faults.die()


async def _flush(
    store: IngestWriter,
    batch: list[PreparedEvent],
    report: RebuildReport,
    inflight: set[asyncio.Task[None]],
) -> None:
    """Send a batch without waiting for it: reading and preparing the next one (Python)
    overlaps with the engine running this one. At most MAX_INFLIGHT at a time."""
    if not batch:
        return

    async def run() -> None:
        flags = await store.ingest(batch, stream=False)
        report.events += sum(flags)  # not ``+= sum(await ...)``: tasks run concurrently

    inflight.add(asyncio.create_task(run()))
    if len(inflight) >= MAX_INFLIGHT:
        done, _ = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
        inflight.difference_update(done)
        for task in done:
            task.result()  # an engine error stops the rebuild


async def _drain(inflight: set[asyncio.Task[None]]) -> None:
    if inflight:
        done, _ = await asyncio.wait(inflight)
        inflight.clear()
        for task in done:
            task.result()
