"""Validation beyond the schema (time bounds), key and record preparation, storage."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from event_analytics import metrics
from event_analytics.archive.record import Record, encode
from event_analytics.batcher import GroupCommit
from event_analytics.config import Settings
from event_analytics.decode import decode_event, decode_json
from event_analytics.keys import Keys
from event_analytics.model import (
    EVENT_ADAPTER,
    EVENTS_ADAPTER,
    Event,
    FieldError,
    InvalidEvent,
    MalformedJSON,
    StorageUnavailable,
    errors_from_validation,
    too_many_event_types,
)
from event_analytics.store import Bucket, Outcome, PreparedEvent, Store
from event_analytics.store.claims import SWEEP_AFTER_S
from event_analytics.timebucket import iso_z, to_utc

log = logging.getLogger(__name__)
# Buckets kept for reuse by prepare(): live traffic touches a few minutes, a rebuild a day.
_BUCKET_CACHE = 4096


@dataclass(frozen=True, slots=True)
class IngestResult:
    event_id: str
    duplicate: bool
    event_type: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A batch item an adapter already refused (its reasons), for ``ingest_items``."""

    errors: tuple[FieldError, ...]


@dataclass(slots=True)  # not frozen: that costs ~1 us per event of a batch
class ItemResult:
    """One event of a batch: accepted, duplicate, or rejected with its reasons."""

    index: int
    event_id: str | None
    status: str
    errors: tuple[FieldError, ...] = ()


class Ingestor:
    """Turns validated events into one atomic storage call per shard."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.keys: Keys = store.keys
        self._skew = timedelta(seconds=settings.future_skew_s)
        self._max_age = timedelta(seconds=settings.max_age_s)
        self.batcher: GroupCommit | None = None
        self._buckets: dict[tuple[int, str, str], Bucket] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def start_batching(self) -> None:
        """Share storage round trips between concurrent requests (inside a running loop).

        With several shards, also sweep the outboxes: events whose id was claimed on its
        own shard by a request that died before applying them (store/claims.py).
        """
        self.batcher = GroupCommit(self.store, max_batch=self.settings.max_batch_events)
        if self.keys.shards > 1:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.batcher is not None:
            await self.batcher.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_AFTER_S)
            try:
                if applied := await self.store.sweep_outbox():
                    log.info("applied %d events left claimed by a request that died", applied)
            except StorageUnavailable as exc:  # the next round retries
                log.warning("outbox sweep: %s", exc)

    # -- validation -------------------------------------------------------------------

    def check_time(self, event: Event, now: datetime) -> datetime:
        """The event's UTC timestamp, or InvalidEvent when outside the accepted window."""
        try:
            ts = to_utc(event.timestamp)
        except OverflowError:
            # Only at years 1 and 9999: a positive offset pushed it before year 1.
            offset = event.timestamp.utcoffset() or timedelta(0)
            raise (self._too_old(now) if offset > timedelta(0) else self._future(now)) from None
        if ts > now + self._skew:
            raise self._future(now)
        if ts < now - self._max_age:
            raise self._too_old(now)
        return ts

    def _too_old(self, now: datetime) -> InvalidEvent:
        earliest = iso_z(now - self._max_age)
        return InvalidEvent(
            [
                FieldError(
                    "timestamp_too_old",
                    "timestamp",
                    f"timestamp is older than the accepted {self.settings.max_age_s} s "
                    f"(earliest now: {earliest})",
                )
            ]
        )

    def _future(self, now: datetime) -> InvalidEvent:
        latest = iso_z(now + self._skew)
        return InvalidEvent(
            [
                FieldError(
                    "timestamp_in_future",
                    "timestamp",
                    f"timestamp is more than {self.settings.future_skew_s} s in the future "
                    f"(latest now: {latest})",
                )
            ]
        )

    # -- preparation ------------------------------------------------------------------

    def prepare(self, event: Event, now: datetime, *, replay: bool = False) -> PreparedEvent:
        """Bucket, values and the archived record for one valid event.

        ``replay`` (rebuild from the archive) skips the acceptance window, which applied
        when the event first arrived, and the record, which is not streamed again.
        This runs once per event on the hot path: names and expiry times are made once
        per bucket (``_bucket``), labels cut from one isoformat().
        """
        if replay:
            return self.prepare_archived(
                Record(
                    event.event_id,
                    event.user_id,
                    to_utc(event.timestamp),
                    event.event_type,
                    {"page_url": event.payload.page_url},
                )
            )
        ts = self.check_time(event, now)
        shard = self.keys.shard_of(event.user_id)
        bucket = self._bucket_of(shard, event.event_type, ts)
        payload = event.payload.as_record()
        record = encode(Record(event.event_id, event.user_id, ts, event.event_type, payload, now))
        return PreparedEvent(
            shard, bucket, event.event_id.bytes, event.user_id, event.payload.page_url, record
        )

    def prepare_archived(self, got: Record) -> PreparedEvent:
        """What replaying an archived record needs (rebuild): straight from the archive's
        codec, without an Event (it was validated when it arrived; building a pydantic
        model per line cost more than the rest of the replay on the Python side)."""
        shard = self.keys.shard_of(got.user_id)
        bucket = self._bucket_of(shard, got.event_type, got.timestamp)
        page = got.payload.get("page_url")
        return PreparedEvent(
            shard, bucket, got.event_id.bytes, got.user_id, page if page else None, b""
        )

    def _bucket_of(self, shard: int, event_type: str, ts: datetime) -> Bucket:
        """The bucket of a UTC timestamp (cached: labels cut from one isoformat())."""
        iso = ts.isoformat()  # YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00
        bucket = self._buckets.get((shard, event_type, iso[:16]))
        if bucket is None:
            bucket = self._bucket(shard, event_type, iso, ts)
        return bucket

    def _bucket(self, shard: int, event_type: str, iso: str, ts: datetime) -> Bucket:
        """Names and expiry times of one (shard, event type, minute), kept for reuse."""
        s = self.settings
        epoch = int(ts.timestamp())
        minute_end = epoch - epoch % 60 + 60
        hour_end = epoch - epoch % 3600 + 3600
        day_end = epoch - epoch % 86400 + 86400
        bucket = Bucket(
            event_type=event_type,
            stems=self.keys.stems(shard, event_type, iso[:16], iso[:13], iso[:10]),
            expire_at=(
                minute_end + s.minute_retention_s,
                hour_end + s.hour_retention_s,
                day_end + s.day_retention_s,
            ),
            exact=s.uniques == "exact",
            dedup_window_s=s.dedup_window_s,
        )
        if len(self._buckets) >= _BUCKET_CACHE:
            self._buckets.clear()  # old minutes: the live ones come back at once
        self._buckets[shard, event_type, iso[:16]] = bucket
        return bucket

    async def _store(self, prepared: list[PreparedEvent]) -> list[Outcome]:
        if self.batcher is not None:
            return await self.batcher.submit(prepared)
        return await self.store.ingest(prepared)

    # -- one event --------------------------------------------------------------------

    async def ingest(self, event: Event) -> IngestResult:
        """Store one event; returns only after the engine acknowledged it."""
        try:
            prepared = self.prepare(event, datetime.now(UTC))
        except InvalidEvent as exc:
            metrics.event_rejected(exc.errors[0].code, event.event_type)
            raise
        (outcome,) = await self._store([prepared])
        if outcome is Outcome.TOO_MANY_EVENT_TYPES:
            refused = InvalidEvent([self._too_many_types(event.event_type)])
            metrics.event_rejected(refused.errors[0].code, event.event_type)
            raise refused
        metrics.event_stored(event.event_type, duplicate=outcome is Outcome.DUPLICATE)
        duplicate = outcome is Outcome.DUPLICATE
        return IngestResult(str(event.event_id), duplicate, event.event_type)

    def _too_many_types(self, event_type: str) -> FieldError:
        return too_many_event_types(event_type, self.store.caps.event_types)

    async def ingest_json(self, body: bytes) -> IngestResult:
        """Decode, validate and store one event given as raw JSON."""
        try:
            # The same decoder and rules as a batch's events (one number model).
            event = decode_event(body)
        except MalformedJSON as exc:
            metrics.event_rejected(exc.slug.replace("-", "_"))
            raise
        except InvalidEvent as exc:
            metrics.event_rejected(exc.errors[0].code)
            raise
        return await self.ingest(event)

    # -- a batch ----------------------------------------------------------------------

    async def ingest_batch_json(
        self, body: bytes, admit: Callable[[int], Awaitable[None]] | None = None
    ) -> list[ItemResult]:
        """Validate each event of ``{"events": [...]}`` on its own; store the valid ones.

        One bad event never spoils the others. The envelope itself must be right:
        MalformedJSON or InvalidEvent (a problem with ``events``) otherwise.
        """
        items = _batch_items(body, self.settings.max_batch_events)
        if admit is not None:
            await admit(len(items))  # the event rate limits: may refuse the whole batch
        metrics.batch_received(len(items))
        return await self.ingest_items(items, datetime.now(UTC))

    async def ingest_items(
        self, items: Sequence[Any], now: datetime, where: str = "events"
    ) -> list[ItemResult]:
        """Validate and store a batch: each item an event dict or ``Refused`` already.

        The events of every ingest path (native batches, Segment's, Plausible's) pass
        here, so all get the same validation, time window, dedup and storage call.
        Errors name their place as ``<where>.<index>.<field>``.
        """
        results: list[ItemResult | None] = [None] * len(items)
        prepared: list[PreparedEvent] = []
        positions: list[tuple[int, Event]] = []
        valid = _all_valid(items)
        for index, item in enumerate(items):
            if isinstance(item, Refused):
                results[index] = _rejected(index, None, _in_batch(where, index, item.errors))
                continue
            event_id = item.get("event_id") if isinstance(item, dict) else None
            try:
                event = valid[index] if valid is not None else EVENT_ADAPTER.validate_python(item)
                prepared.append(self.prepare(event, now))
            except ValidationError as exc:
                errors = _in_batch(where, index, errors_from_validation(exc))
                results[index] = _rejected(index, event_id, errors)
                continue
            except InvalidEvent as exc:
                results[index] = _rejected(index, event_id, _in_batch(where, index, exc.errors))
                continue
            positions.append((index, event))
        outcomes = await self._store(prepared) if prepared else []
        stored: Counter[tuple[str, bool]] = Counter()
        for (index, event), outcome in zip(positions, outcomes, strict=True):
            if outcome is Outcome.TOO_MANY_EVENT_TYPES:
                errors = _in_batch(where, index, [self._too_many_types(event.event_type)])
                results[index] = _rejected(index, str(event.event_id), errors)
                continue
            new = outcome is Outcome.NEW
            stored[event.event_type, not new] += 1
            status = "accepted" if new else "duplicate"
            results[index] = ItemResult(index, str(event.event_id), status)
        for (event_type, duplicate), n in stored.items():
            metrics.event_stored(event_type, duplicate=duplicate, n=n)
        return [r for r in results if r is not None]


def _all_valid(items: Sequence[Any]) -> list[Event] | None:
    """Every item as an Event, validated in one call (one pass of pydantic over the list
    costs less than a call per item); None when any is refused: then each is validated
    on its own, for its own reasons."""
    if any(isinstance(item, Refused) for item in items):
        return None
    try:
        return EVENTS_ADAPTER.validate_python(items)
    except ValidationError:
        return None


def _batch_items(body: bytes, limit: int) -> list[Any]:
    try:
        envelope = decode_json(body)
    except MalformedJSON as exc:
        metrics.event_rejected(exc.slug.replace("-", "_"))
        raise
    items = envelope.get("events") if isinstance(envelope, dict) else None
    problem = None
    if not isinstance(items, list):
        problem = FieldError("missing", "events", 'the body must be {"events": [ ... ]}')
    elif not items:
        problem = FieldError("too_short", "events", "events must hold at least one event")
    elif len(items) > limit:
        problem = FieldError("too_long", "events", f"at most {limit} events per batch")
    if problem is not None:
        raise InvalidEvent([problem])
    assert isinstance(items, list)
    return items


def _in_batch(where: str, index: int, errors: Sequence[FieldError]) -> tuple[FieldError, ...]:
    if not where:  # a request of one message: its fields as they are
        return tuple(errors)
    return tuple(
        FieldError(e.code, f"{where}.{index}.{e.field}".rstrip("."), e.message) for e in errors
    )


def _rejected(index: int, event_id: Any, errors: tuple[FieldError, ...]) -> ItemResult:
    metrics.event_rejected(errors[0].code)
    return ItemResult(index, event_id if isinstance(event_id, str) else None, "rejected", errors)
