"""What the ingest script is given: events reduced to shard, bucket and values."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


@dataclass(frozen=True, slots=True, eq=False)
class Bucket:
    """One event type and minute of one shard: its names and expiry times.

    Made once per bucket (the Ingestor keeps them) and sent once per call, however many
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
