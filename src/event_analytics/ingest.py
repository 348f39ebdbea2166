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

from event_analytics import telemetry
from event_analytics.archive.record import Record, encode
from event_analytics.batcher import GroupCommit
from event_analytics.config import Settings
from event_analytics.decode import decode_event, decode_json
from event_analytics.errors import (
    FieldError,
    InvalidEvent,
    MalformedJSON,
    StorageUnavailable,
    too_many_event_types,
)
from event_analytics.keys import Keys
from event_analytics.model import EVENT_ADAPTER, EVENTS_ADAPTER, Event, errors_from_validation
from event_analytics.store import IngestWriter, Outcome, PreparedEvent
from event_analytics.store.claims import SWEEP_AFTER_S
from event_analytics.store.prepared import Buckets
from event_analytics.timebucket import iso_z, to_utc

log = logging.getLogger(__name__)


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

    def __init__(self, settings: Settings, store: IngestWriter) -> None:
        self.settings = settings
        self.store = store
        self.keys: Keys = store.keys
        self._skew = timedelta(seconds=settings.future_skew_s)
        self._max_age = timedelta(seconds=settings.max_age_s)
        self.batcher: GroupCommit | None = None
        self.buckets = Buckets(settings, self.keys)
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
        # Not ``while True``: redis-py (8.2) can swallow the cancel of a cluster HSCAN and
        # return normally, and the loop would then sleep on with its cancel pending and
        # close() wait forever (10 of 30 closes on a 3+3 cluster hung so). A round ends
        # by looking whether the task was asked to stop.
        me = asyncio.current_task()
        while me is None or not me.cancelling():
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

    def prepare(self, event: Event, now: datetime) -> PreparedEvent:
        """Bucket, values and the archived record for one valid event.

        This runs once per event on the hot path: buckets are cached (``Buckets``).
        """
        ts = self.check_time(event, now)
        shard = self.keys.shard_of(event.user_id)
        bucket = self.buckets.of(shard, event.event_type, ts)
        payload = event.payload.as_record()
        record = encode(Record(event.event_id, event.user_id, ts, event.event_type, payload, now))
        return PreparedEvent(
            shard, bucket, event.event_id.bytes, event.user_id, event.payload.page_url, record
        )

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
            telemetry.event_rejected(exc.errors[0].code, event.event_type)
            raise
        (outcome,) = await self._store([prepared])
        if outcome is Outcome.TOO_MANY_EVENT_TYPES:
            refused = InvalidEvent([self._too_many_types(event.event_type)])
            telemetry.event_rejected(refused.errors[0].code, event.event_type)
            raise refused
        telemetry.event_stored(event.event_type, duplicate=outcome is Outcome.DUPLICATE)
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
            telemetry.event_rejected(exc.slug.replace("-", "_"))
            raise
        except InvalidEvent as exc:
            telemetry.event_rejected(exc.errors[0].code)
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
        telemetry.batch_received(len(items))
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
            telemetry.event_stored(event_type, duplicate=duplicate, n=n)
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
        telemetry.event_rejected(exc.slug.replace("-", "_"))
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
    telemetry.event_rejected(errors[0].code)
    return ItemResult(index, event_id if isinstance(event_id, str) else None, "rejected", errors)
