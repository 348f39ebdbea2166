"""What the ingest script is given: events reduced to shard, bucket and values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

from event_analytics.config import Settings
from event_analytics.keys import Keys

# Dedup memory is kept in generations of (window / this) seconds: an id is remembered for
# the window at least and one generation more at most (so 1.5 x the window's ids at most),
# for one lookup per generation and call. ingest.lua, claim.lua and unclaim.lua are given
# both numbers; this module is their one source.
DEDUP_GENERATIONS = 2


def dedup_generation_s(window_s: int) -> int:
    """Seconds per dedup generation: the window in DEDUP_GENERATIONS parts, rounded up."""
    return -(-window_s // DEDUP_GENERATIONS)


# Buckets kept for reuse: live traffic touches a few minutes, a rebuild a day.
_BUCKET_CACHE = 4096


@dataclass(frozen=True, slots=True, eq=False)
class Bucket:
    """One event type and minute of one shard: its names and expiry times.

    Made once per bucket (``Buckets`` keeps them) and sent once per call, however many
    of the call's events fall in it. Compared by identity: it is a dict key per event.
    """

    event_type: str  # for the shard's set of event types (EA_MAX_EVENT_TYPES)
    stems: tuple[str, ...]  # minute, hour and day stems (Keys.stems)
    expire_at: tuple[int, ...]  # of the same three, unix seconds
    # The rules of the Ingestor that made it (one Ingestor's events per call):
    exact: bool  # EA_UNIQUES=exact: also exact user sets for hours and days
    dedup_window_s: int  # an event id is remembered at least this long


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """An event reduced to what the ingest script needs: its shard, bucket and values."""

    shard: int  # the user's shard
    bucket: Bucket
    event_id: bytes
    user_id: str
    page_url: str | None
    record: bytes  # the archived JSON; b"" on replay


@dataclass(frozen=True, slots=True)
class Caps:
    """Cardinality caps the ingest script enforces, atomically with the write."""

    # Distinct event types per shard (a new type past it is refused, 422).
    event_types: int = 1000
    # Distinct pages per minute and hour bucket (more count into keys.OTHER_PAGE).
    pages_per_bucket: int = 10_000


class Outcome(IntEnum):
    """What the ingest script did with one event (its reply, per event)."""

    DUPLICATE = 0  # its id was stored before: nothing changed
    NEW = 1  # counted (and streamed)
    TOO_MANY_EVENT_TYPES = 2  # a new type on a shard at Caps.event_types: nothing written
    USER_ERASED = 3  # its user was erased (keys.erased): nothing written, id not kept

    @property
    def refused(self) -> bool:
        """Nothing of the event was written and its id is not remembered."""
        return self in (Outcome.TOO_MANY_EVENT_TYPES, Outcome.USER_ERASED)


class Buckets:
    """The Bucket of (shard, event type, UTC minute) under one Settings, cached.

    Shared by live ingest and the rebuild from the archive, so both count an event in
    the same keys with the same expiry. This runs once per event on the hot path: names
    and expiry times are made once per bucket, labels cut from one isoformat().
    """

    def __init__(self, settings: Settings, keys: Keys) -> None:
        self.settings = settings
        self.keys = keys
        self._buckets: dict[tuple[int, str, float], Bucket] = {}

    def of(self, shard: int, event_type: str, ts: datetime) -> Bucket:
        """The bucket of a UTC timestamp (aware)."""
        # Looked up by the epoch minute: isoformat() per event cost twice timestamp(),
        # and a whole import's counting is this lookup per event. Named from isoformat()
        # once per bucket.
        minute = ts.timestamp() // 60
        bucket = self._buckets.get((shard, event_type, minute))
        if bucket is None:
            bucket = self._make(shard, event_type, minute, ts)
        return bucket

    def _make(self, shard: int, event_type: str, minute: float, ts: datetime) -> Bucket:
        """Names and expiry times of one (shard, event type, minute), kept for reuse."""
        s = self.settings
        iso = ts.isoformat()  # YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00
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
        self._buckets[shard, event_type, minute] = bucket
        return bucket
