"""Every Redis key name, in one place.

All keys of one shard share the hash tag ``{s}``, so one Lua call touches one
cluster slot. Users are assigned to shards by a stable hash of ``user_id``, so
the shards' user sets are disjoint and unique counts add up across shards.
Client strings never become key names: event types are validated names, and
users, pages and ids are only ever members or values.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime

from event_analytics.timebucket import Interval, label

ARCHIVER_GROUP = "archiver"
_LETTER = {Interval.MINUTE: "m", Interval.HOUR: "h", Interval.DAY: "d"}
# What the ingest script keeps per bucket; keep in step with store/ingest.lua.
_BUCKET_SUFFIXES = {
    Interval.MINUTE: ("count", "users"),
    Interval.HOUR: ("count", "hll"),
    Interval.DAY: ("count", "hll"),
}


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builders for one prefix and shard count."""

    prefix: str = "ea:"
    shards: int = 1

    def shard_of(self, user_id: str) -> int:
        """Stable shard of a user (crc32: identical in every process and language)."""
        if self.shards == 1:
            return 0
        return zlib.crc32(user_id.encode()) % self.shards

    def _base(self, shard: int) -> str:
        return f"{self.prefix}{{{shard}}}"

    def stream(self, shard: int) -> str:
        """The shard's event stream, read by the archiver."""
        return f"{self._base(shard)}:stream"

    def deadletter(self, shard: int) -> str:
        """Stream entries the archiver could not archive after several tries."""
        return f"{self._base(shard)}:deadletter"

    def archived(self, shard: int) -> str:
        """Counter of events archived from the shard's stream (bumped with each XACK)."""
        return f"{self._base(shard)}:archived"

    def archiver_lease(self, shard: int) -> str:
        """Which archiver owns the shard's stream now (a lease with a TTL)."""
        return f"{self._base(shard)}:archiver-lease"

    def archivers(self) -> str:
        """Hash of archiver name -> JSON heartbeat and status (no shard: read by the API)."""
        return f"{self.prefix}archivers"

    def seen(self, shard: int, hour: datetime) -> str:
        """Set of event ids whose timestamp falls in ``hour``: the dedup memory."""
        return f"{self._base(shard)}:seen:{label(hour, Interval.HOUR)}"

    def bucket(self, shard: int, event_type: str, interval: Interval, start: datetime) -> str:
        """Common stem of one bucket's keys, e.g. ``ea:{0}:page_view:m:2026-11-27T22:14``."""
        return f"{self._base(shard)}:{event_type}:{_LETTER[interval]}:{label(start, interval)}"

    def count(self, shard: int, event_type: str, interval: Interval, start: datetime) -> str:
        """Counter of events in a bucket (a string, INCR)."""
        return self.bucket(shard, event_type, interval, start) + ":count"

    def users(self, shard: int, event_type: str, interval: Interval, start: datetime) -> str:
        """Exact set of user ids in a minute bucket (SADD / SCARD)."""
        return self.bucket(shard, event_type, interval, start) + ":users"

    def hll(self, shard: int, event_type: str, interval: Interval, start: datetime) -> str:
        """HyperLogLog of user ids in an hour or day bucket (PFADD / PFCOUNT)."""
        return self.bucket(shard, event_type, interval, start) + ":hll"

    def event_keys(
        self, shard: int, event_type: str, minute: str, hour: str, day: str
    ) -> tuple[str, ...]:
        """The keys one event touches, in the ingest script's order, from ready labels.

        The hot path's version of seen()/count()/users()/hll(): labels are cut once from
        the timestamp (``2026-11-27T22:14``, ``2026-11-27T22``, ``2026-11-27``).
        """
        base = self._base(shard)
        m = f"{base}:{event_type}:m:{minute}"
        h = f"{base}:{event_type}:h:{hour}"
        d = f"{base}:{event_type}:d:{day}"
        return (
            f"{base}:seen:{hour}",
            f"{m}:count",
            f"{m}:users",
            f"{h}:count",
            f"{h}:hll",
            f"{d}:count",
            f"{d}:hll",
        )

    def bucket_keys(
        self, shard: int, event_type: str, interval: Interval, start: datetime
    ) -> tuple[str, ...]:
        """Every key one bucket may have (rebuild deletes exactly these before replaying)."""
        stem = self.bucket(shard, event_type, interval, start)
        return tuple(f"{stem}:{suffix}" for suffix in _BUCKET_SUFFIXES[interval])

    def all_pattern(self) -> str:
        """SCAN pattern matching every key of this prefix (tests, rebuild)."""
        return f"{self.prefix}*"
