"""Every Redis key name, in one place.

All keys of one shard share the hash tag ``{s}``, so one Lua call touches one
cluster slot. Users are assigned to shards by a stable hash of ``user_id``, so
the shards' user sets are disjoint and unique counts add up across shards.
Client strings never become key names: event types are validated names, and
users, pages and ids are only ever members or values. One exception, by necessity:
a per-page HyperLogLog is a key of its own, so its name carries a fixed-length hash
of the page URL (never the URL itself).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from event_analytics.config import Settings
from event_analytics.timebucket import Interval, label

ARCHIVER_GROUP = "archiver"
_LETTER = {Interval.MINUTE: "m", Interval.HOUR: "h", Interval.DAY: "d"}
# What the ingest script keeps per bucket: store/ingest.lua appends these suffixes to the
# stems (``stems``); tests/test_store.py checks the names it writes are these.
# Hour ``users``/``page_users`` and day ``users`` exist only with EA_UNIQUES=exact. Page
# structures are kept per minute and hour (a day's page figures are its hours' union).
_BUCKET_SUFFIXES = {
    Interval.MINUTE: ("count", "users", "pages", "page_users"),
    Interval.HOUR: ("count", "hll", "users", "pages", "page_users"),
    Interval.DAY: ("count", "hll", "users"),
}
# Families of per-page keys, ``<stem>:<family>:<url hash>``: one key per page, so they
# cannot be listed without the bucket's pages (see bucket_key_patterns).
_BUCKET_FAMILIES = {
    Interval.MINUTE: (),
    Interval.HOUR: ("page_hll",),
    Interval.DAY: (),
}


# Where a bucket's pages beyond EA_MAX_PAGES_PER_BUCKET are counted: a member of the pages
# (and page-user) sorted sets, like a URL. No page URL can be this (URLs are absolute).
OTHER_PAGE = "(other)"


@lru_cache(maxsize=4096)  # a call names each of its pages: the same few, again and again
def page_digest(page_url: str) -> str:
    """The fixed-length part of a page HLL's name: 64-bit BLAKE2b of the URL, in hex.

    Computed here (the ingest script is given it): Lua in the engine has no BLAKE2b.
    """
    return hashlib.blake2b(page_url.encode(), digest_size=8).hexdigest()


def _page_hll(hour_stem: str, page_url: str) -> str:
    return f"{hour_stem}:page_hll:{page_digest(page_url)}"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builders for one prefix and shard count."""

    prefix: str = "ea:"
    shards: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        return cls(settings.key_prefix, settings.shards)

    def shard_of(self, user_id: str) -> int:
        """Stable shard of a user (crc32: identical in every process and language)."""
        if self.shards == 1:
            return 0
        return zlib.crc32(user_id.encode()) % self.shards

    def id_shard(self, event_id: bytes) -> int:
        """The shard that remembers an event id (its 16 bytes), whichever user sends it."""
        if self.shards == 1:
            return 0
        return zlib.crc32(event_id) % self.shards

    def _base(self, shard: int) -> str:
        return f"{self.prefix}{{{shard}}}"

    def stream(self, shard: int) -> str:
        """The shard's event stream, read by the archiver."""
        return f"{self._base(shard)}:stream"

    def stream_extra(self, shard: int) -> str:
        """The stream's records beyond one per entry (an entry holds one call's records):
        events in the stream = XLEN + this. Bumped by the ingest script, lowered by acks."""
        return f"{self._base(shard)}:stream-extra"

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

    def archive_pause(self) -> str:
        """Set (with a TTL) while a backup copies the archive: archivers write nothing."""
        return f"{self.prefix}archive-pause"

    def import_unfinished(self) -> str:
        """Set of UTC days (YYYY-MM-DD) an import appended to and has not counted yet: a
        killed import leaves them, and the next one rebuilds their counters first."""
        return f"{self.prefix}import-unfinished"

    def seen(self, shard: int, generation: int) -> str:
        """Hash event id -> call token of the ids first stored in one dedup generation.

        A generation is ``generation * g`` to ``(generation + 1) * g`` seconds of the
        engine's clock (``g``: half the dedup window); the ingest script appends the
        number to ``seen_stem``.
        """
        return f"{self.seen_stem(shard)}{generation}"

    def seen_stem(self, shard: int) -> str:
        """The shard's dedup hashes without their generation: ``ea:{3}:seen:``."""
        return f"{self._base(shard)}:seen:"

    def event_types(self, shard: int) -> str:
        """Set of the event types the shard has counted (EA_MAX_EVENT_TYPES caps it).

        Per shard, under its hash tag, so the ingest script checks and grows it in the
        same atomic call as the write (one slot on a cluster). No expiry: a type, once
        taken, keeps working (store/ingest.lua)."""
        return f"{self._base(shard)}:types"

    def erased(self, shard: int) -> str:
        """Set of the user ids erased (``forget``) whose events the shard refuses.

        Per shard, under its hash tag: a user lives on one shard, so the ingest script
        checks its call's users in the same atomic call as the write (store/ingest.lua).
        No expiry: an erased user stays refused until an operator lifts it."""
        return f"{self._base(shard)}:erased"

    def erasures(self) -> str:
        """List of the audit records of erasures (JSON: when, user hashes, events per
        hour), newest last; kept in the engine so that a backup carries it too."""
        return f"{self.prefix}erasures"

    def erasing(self) -> str:
        """Hash hour file -> JSON (hour, event types) of the hours an erasure rewrote and
        has not finished re-deriving from (PostgreSQL, counters): a run killed halfway is
        finished by the next one (forgetting.py); deleted at the end of a run."""
        return f"{self.prefix}erasing"

    # -- erasure jobs (POST /api/v1/admin/forget, forget_worker.py): under one hash tag,
    # so forget_submit.lua touches one slot on a cluster. A job id is 32 hex digits the
    # service made (checked before it becomes part of a key name).

    def forget_queue(self) -> str:
        """List of erasure job ids, oldest first: the head is the job running (or next);
        a job leaves it only once it has ended (done or failed)."""
        return f"{self.prefix}{{forget}}:queue"

    def forget_job(self, job_id: str) -> str:
        """Hash of one erasure job: its state, counts so far, answer (store/forget_jobs.py)."""
        return f"{self.prefix}{{forget}}:job:{job_id}"

    def forget_lease(self) -> str:
        """The lease of the one worker that runs erasure jobs (one at a time)."""
        return f"{self.prefix}{{forget}}:lease"

    def backups(self) -> str:
        """List of the backups taken (JSON: directory, when, archive watermark), oldest
        first: an erasure names those that still hold the erased events."""
        return f"{self.prefix}backups"

    def outbox(self, shard: int) -> str:
        """Hash event id -> event, of ids claimed on this shard whose user lives on another
        shard, until the event is applied there (store/claims.py)."""
        return f"{self._base(shard)}:outbox"

    def replayed_stem(self, shard: int) -> str:
        """Markers ``<stem><call token>`` of replay calls (rebuild) already applied: a call
        sent again by the client library after a lost reply is applied once."""
        return f"{self._base(shard)}:replayed:"

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
        Neither a user id nor a page URL may contain NUL (both are validated).
        """
        return self.bucket(shard, event_type, interval, start) + ":page_users"

    def page_hll(
        self, shard: int, event_type: str, interval: Interval, start: datetime, page_url: str
    ) -> str:
        """HyperLogLog of one page's users in an hour bucket.

        An HLL is a key, so per-page HLLs need one key per page. Its name carries a
        64-bit BLAKE2b of the URL: fixed length and charset whatever the client sent.
        """
        return _page_hll(self.bucket(shard, event_type, interval, start), page_url)

    def stems(
        self, shard: int, event_type: str, minute: str, hour: str, day: str
    ) -> tuple[str, ...]:
        """The minute, hour and day stems of one bucket, as the ingest script takes them
        (store/ingest.lua appends the suffixes of ``bucket_keys``).

        The labels (``2026-11-27T22:14``, ``2026-11-27T22``, ``2026-11-27``) are cut once
        from the timestamp by the caller, and this runs once per bucket, not per event.
        """
        base = self._base(shard)
        return (
            f"{base}:{event_type}:m:{minute}",
            f"{base}:{event_type}:h:{hour}",
            f"{base}:{event_type}:d:{day}",
        )

    def bucket_keys(
        self, shard: int, event_type: str, interval: Interval, start: datetime
    ) -> tuple[str, ...]:
        """Every fixed-name key one bucket may have (rebuild deletes these before replaying).

        The bucket's per-page keys match ``bucket_key_patterns`` instead.
        """
        stem = self.bucket(shard, event_type, interval, start)
        return tuple(f"{stem}:{suffix}" for suffix in _BUCKET_SUFFIXES[interval])

    def bucket_keys_at(
        self, shard: int, event_type: str, interval: Interval, labels: Sequence[str]
    ) -> list[str]:
        """``bucket_keys`` of many buckets, from their labels (``timebucket.label``), which
        the caller cuts once for every shard: clearing a day names 1,440 minutes on each
        shard, and formatting each minute's date per shard cost most of a day's clear."""
        head = f"{self._base(shard)}:{event_type}:{_LETTER[interval]}:"
        suffixes = _BUCKET_SUFFIXES[interval]
        return [f"{head}{at}:{suffix}" for at in labels for suffix in suffixes]

    def counts_and_users_at(
        self, shard: int, event_type: str, interval: Interval, labels: Sequence[str]
    ) -> list[tuple[str, str]]:
        """``(count, users)`` of many buckets, from their labels (see ``bucket_keys_at``)."""
        head = f"{self._base(shard)}:{event_type}:{_LETTER[interval]}:"
        return [(f"{head}{at}:count", f"{head}{at}:users") for at in labels]

    def bucket_key_patterns(
        self, shard: int, event_type: str, interval: Interval, start: datetime
    ) -> tuple[str, ...]:
        """SCAN MATCH patterns of a bucket's per-page keys (hour: ``<stem>:page_hll:*``).

        A SCAN walks the whole keyspace, so rebuild names these keys after the pages
        the hour's ranking lists instead (``page_hll``); the patterns serve inspection.
        """
        stem = self.bucket(shard, event_type, interval, start)
        return tuple(f"{stem}:{family}:*" for family in _BUCKET_FAMILIES[interval])

    def ephemeral_patterns(self) -> list[str]:
        """Keys of running processes, not data (leases, archiver heartbeats, rate-limit
        windows): glob patterns of what a restore leaves out."""
        return [
            f"{self.prefix}{{*}}:archiver-lease",
            self.archivers(),
            self.archive_pause(),
            self.forget_lease(),
            f"{self.prefix}rl:*",
        ]

    def rate(self, kind: str, digest: str, window: int) -> str:
        """Requests in one rate-limit window of one API key or client address.

        ``digest`` is a fixed-length hash of the key or address, never the key itself;
        ``window`` is the window's number since the epoch, so each window has its own
        counter and an old one only waits for its TTL. No hash tag: on a cluster the
        counters spread over the slots.
        """
        return f"{self.prefix}rl:{kind}:{digest}:{window}"

    def salt(self, day: str) -> str:
        """The secret salt of one UTC day (``2026-11-27``) for browser visitor ids.

        Shared by every worker and node, so a visitor is one id wherever it lands; it
        expires just after its day, so ids of two days cannot be linked.
        """
        return f"{self.prefix}salt:{day}"

    # -- goals: three keys under one hash tag, so goal_put.lua / goal_delete.lua touch
    # one slot on a cluster. Sites are values (in the goals' JSON), never key names.

    def goals(self) -> str:
        """Hash goal id -> the goal as JSON (site, kind, name or pattern, currency)."""
        return f"{self.prefix}{{goals}}:goals"

    def goal_index(self) -> str:
        """Hash goal identity (site, kind, name or pattern) -> id: find-or-create's index."""
        return f"{self.prefix}{{goals}}:goal-index"

    def goal_ids(self) -> str:
        """Counter of goal ids ever given (INCR): an id is never reused."""
        return f"{self.prefix}{{goals}}:goal-ids"

    # -- shared links: one hash, SHA-256 of the link's token -> the link as JSON. The
    # token itself is never stored: a copy of the engine does not open the links.

    def shared_links(self) -> str:
        """Hash sha256(token) hex -> the shared link as JSON (id, site, name, created)."""
        return f"{self.prefix}{{shared}}:links"
