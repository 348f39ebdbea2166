"""Validation beyond the schema (time bounds), key and record preparation, storage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from event_analytics.config import Settings
from event_analytics.keys import Keys
from event_analytics.model import Event, FieldError, InvalidEvent, decode_event
from event_analytics.store import PreparedEvent, Store
from event_analytics.timebucket import Interval, bucket_end_epoch, floor, iso_z, to_utc


@dataclass(frozen=True, slots=True)
class IngestResult:
    event_id: str
    duplicate: bool


class Ingestor:
    """Turns validated events into one atomic storage call per shard."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.keys: Keys = store.keys
        self._skew = timedelta(seconds=settings.future_skew_s)
        self._max_age = timedelta(seconds=settings.max_age_s)

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
        return InvalidEvent(
            [
                FieldError(
                    "timestamp_too_old",
                    "timestamp",
                    f"timestamp is older than the accepted {self.settings.max_age_s} s "
                    f"(earliest now: {iso_z(now - self._max_age)})",
                )
            ]
        )

    def _future(self, now: datetime) -> InvalidEvent:
        return InvalidEvent(
            [
                FieldError(
                    "timestamp_in_future",
                    "timestamp",
                    f"timestamp is more than {self.settings.future_skew_s} s in the future "
                    f"(latest now: {iso_z(now + self._skew)})",
                )
            ]
        )

    def prepare(self, event: Event, now: datetime) -> PreparedEvent:
        """Key names, expiry times and the archived record for one valid event."""
        ts = self.check_time(event, now)
        s = self.settings
        shard = self.keys.shard_of(event.user_id)
        minute, hour, day = (floor(ts, i) for i in Interval)
        etype = event.event_type
        keys = self.keys.event_keys(shard, etype, minute, hour, day, event.payload.page_url)
        record = orjson.dumps(
            {
                "event_id": str(event.event_id),
                "user_id": event.user_id,
                "timestamp": iso_z(ts),
                "event_type": etype,
                "payload": event.payload.model_dump(exclude_none=True),
                "received_at": iso_z(now),
            }
        )
        hour_end = bucket_end_epoch(hour, Interval.HOUR)
        # And 9 arguments per event, also in the script's order.
        args = (
            event.event_id.bytes,
            event.user_id,
            event.payload.page_url or "",
            1 if s.uniques == "exact" else 0,
            # An id is remembered for as long as an event with its timestamp is accepted.
            hour_end + s.dedup_window_s + 60,
            bucket_end_epoch(minute, Interval.MINUTE) + s.minute_retention_s,
            hour_end + s.hour_retention_s,
            bucket_end_epoch(day, Interval.DAY) + s.day_retention_s,
            record,
        )
        return PreparedEvent(shard=shard, keys=keys, args=args)

    async def ingest(self, event: Event) -> IngestResult:
        """Store one event; returns only after the engine acknowledged it."""
        prepared = self.prepare(event, datetime.now(UTC))
        (new,) = await self.store.ingest([prepared])
        return IngestResult(event_id=str(event.event_id), duplicate=not new)

    async def ingest_json(self, body: bytes) -> IngestResult:
        """Decode, validate and store one event given as raw JSON."""
        return await self.ingest(decode_event(body))
