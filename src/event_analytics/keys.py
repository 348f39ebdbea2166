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

_LETTER = {Interval.MINUTE: "m", Interval.HOUR: "h", Interval.DAY: "d"}
# What the ingest script keeps per bucket; keep in step with store/ingest.lua.
# Hour and day ``users`` sets exist only with EA_UNIQUES=exact; page structures are kept
# per minute and hour (day page figures are unions of the day's hours).
_BUCKET_SUFFIXES = {
    Interval.MINUTE: ("count", "users", "pages", "page_users"),
    Interval.HOUR: ("count", "hll", "users", "pages", "page_users"),
    Interval.DAY: ("count", "hll", "users"),
}
# Separates the page URL from the user id in ``page_users`` members. Neither a user id
# nor a page URL may contain it (both are validated), so a member splits one way only.
PAGE_USER_SEP = "\x00"


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
        """Exact set of user ids in a bucket (minutes always; hours and days if exact)."""
        return self.bucket(shard, event_type, interval, start) + ":users"

    def hll(self, shard: int, event_type: str, interval: Interval, start: datetime) -> str:
        """HyperLogLog of user ids in an hour or day bucket (PFADD / PFCOUNT)."""
        return self.bucket(shard, event_type, interval, start) + ":hll"

    def pages(self, shard: int, event_type: str, interval: Interval, start: datetime) -> str:
        """Sorted set page URL -> events in a minute or hour bucket (ZINCRBY)."""
        return self.bucket(shard, event_type, interval, start) + ":pages"

    def page_users(self, shard: int, event_type: str, interval: Interval, start: datetime) -> str:
        """Sorted set of ``<url> NUL <user>`` members, all scored 0, in a minute or hour bucket.

        Equal scores order members bytewise, so one page's users are one ZRANGEBYLEX
        range: exact unique users per page, with page URLs kept out of key names.
        """
        return self.bucket(shard, event_type, interval, start) + ":page_users"

    def event_keys(
        self, shard: int, event_type: str, minute: datetime, hour: datetime, day: datetime
    ) -> tuple[str, ...]:
        """The fixed block of 13 keys store/ingest.lua reads for one event, in its order.

        Built from three bucket stems: this runs for every event, on the hot path.
        """
        m = self.bucket(shard, event_type, Interval.MINUTE, minute)
        h = self.bucket(shard, event_type, Interval.HOUR, hour)
        d = self.bucket(shard, event_type, Interval.DAY, day)
        return (
            self.seen(shard, hour),
            f"{m}:count",
            f"{m}:users",
            f"{m}:pages",
            f"{m}:page_users",
            f"{h}:count",
            f"{h}:hll",
            f"{h}:users",
            f"{h}:pages",
            f"{h}:page_users",
            f"{d}:count",
            f"{d}:hll",
            f"{d}:users",
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
