"""What the ingest script is given: events reduced to shard, bucket and values."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, eq=False)
class Bucket:
    """One event type and minute of one shard: its names and expiry times.

    Made once per bucket (the Ingestor keeps them) and sent once per call, however many
    of the call's events fall in it. Compared by identity: it is a dict key per event.
    """

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
