"""Erasing a person (GDPR art. 17): every event of some users, everywhere, for good.

In this order, so that nothing of theirs can come back and nothing of anyone else's is
lost:

1. The users join their shards' erased sets (``keys.erased``): from then on the ingest
   script refuses their events, a retry of an id it stored before included, in the same
   atomic call as any write (``user_erased``).
2. What the streams held at that instant is archived first (the archiver's own work,
   waited for): their events taken before step 1 are then all in hour files.
3. Every archiver pauses (the pause ``backup`` uses): the archive does not grow while it
   is rewritten and the counters rebuilt.
4. The hour files holding their events are rewritten without them (archive/erase.py:
   write, fsync, rename, fsync the directory; Parquet copies replaced). Each hour is put
   on record in the engine (``keys.erasing``: its path, the event types removed) before
   its rename, so the hours a killed run rewrote are re-derived by the next run below,
   though it finds nothing left to remove in them.
5. PostgreSQL, when configured: each hour on record is re-delivered from its new file
   in one transaction with its delivery record (destinations/postgres.py ``resync``).
6. The counters of the days those hours are in are rebuilt from the archive and the
   unarchived stream (archive/rebuild.py, ``with_stream``), live traffic meanwhile
   counted once. Then the hours come off the record.
7. An audit record (when, the ids as SHA-256, events removed per hour, the backups that
   still hold the data) is kept in the engine (``keys.erasures``) and returned.

Running it again for the same users finishes what a killed run left (each step is
idempotent) and removes nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from event_analytics.archive import erase, files, rebuild
from event_analytics.config import Settings
from event_analytics.errors import EventAnalyticsError
from event_analytics.model import USER_ID_PATTERN
from event_analytics.store import IngestWriter
from event_analytics.store.errors import engine_errors
from event_analytics.store.pause import PauseFailed, archivers_paused
from event_analytics.store.streams import StreamStore, id_at_most
from event_analytics.timebucket import DAY, Interval, floor, iso_z

MAX_USERS = 1000  # per call: the erased sets are read by every ingest call
_USER = re.compile(USER_ID_PATTERN)


class ForgetError(EventAnalyticsError):
    """An erasure that could not run to its end (the text says what was done); running
    it again finishes it."""

    status, slug, title = 503, "erasure-not-finished", "Erasure not finished"
    retry_after_s = 10

    def detail(self) -> str:
        return str(self)


def check_users(users: Sequence[str]) -> list[str]:
    """The distinct user ids, or ValueError saying which one is not a user id."""
    if not users:
        raise ValueError("name at least one user id")
    if len(users) > MAX_USERS:
        raise ValueError(f"at most {MAX_USERS} user ids per erasure")
    for n, user in enumerate(users, start=1):
        if not isinstance(user, str) or not _USER.match(user):
            raise ValueError(f"user id number {n} is not a user id (1-255 printable characters)")
    return sorted(set(users))


def user_hash(user: str) -> str:
    """How an erased id appears in the audit record: its SHA-256 (whoever holds the id
    can find its erasure; the record alone names nobody)."""
    return hashlib.sha256(user.encode()).hexdigest()


@dataclass
class Progress(erase.Progress):
    """How far an erasure is (a job's state shows it): its step, and the file pass's
    counts (archive/erase.py)."""

    phase: str = "queued"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ForgetReport:
    at: str
    users: list[str]  # hashes
    events_removed: int
    hours: dict[str, int]  # hour file -> events removed
    files_scanned: int
    files_read: int
    postgres_rows_removed: int | None
    days_rebuilt: int
    backups_holding_data: list[dict[str, Any]]

    def record(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "user_sha256": self.users,
            "events_removed": self.events_removed,
            "hours": self.hours,
            "files_scanned": self.files_scanned,
            "files_read": self.files_read,
            "postgres_rows_removed": self.postgres_rows_removed,
            "days_rebuilt": self.days_rebuilt,
            "backups_holding_data": self.backups_holding_data,
        }


async def suppress(store: IngestWriter, users: Sequence[str]) -> None:
    """Put the users on their shards' erased sets (ingest refuses them from now on)."""
    by_shard: dict[int, list[str]] = {}
    for user in users:
        by_shard.setdefault(store.keys.shard_of(user), []).append(user)
    async with engine_errors():
        for shard, members in by_shard.items():
            await store.client.sadd(store.keys.erased(shard), *members)


async def stream_tips(store: IngestWriter) -> list[bytes]:
    """Each shard's last stream entry id (b"" for an empty stream)."""
    out = []
    async with engine_errors():
        for shard in range(store.keys.shards):
            last: Any = await store.client.xrevrange(store.keys.stream(shard), count=1)
            out.append(last[0][0] if last else b"")
    return out


async def _unarchived_up_to(store: IngestWriter, tips: list[bytes]) -> bool:
    """Whether some shard's stream still holds an entry at or before its tip (the
    archiver deletes what it archived: the first entry left is the oldest unarchived)."""
    async with engine_errors():
        for shard, tip in enumerate(tips):
            if not tip:
                continue
            first: Any = await store.client.xrange(store.keys.stream(shard), count=1)
            if first and id_at_most(first[0][0], tip):
                return True
    return False


async def wait_archived(store: IngestWriter, tips: list[bytes], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while await _unarchived_up_to(store, tips):
        if time.monotonic() > deadline:
            raise ForgetError(
                f"the archiver did not archive the events streamed before the erasure within "
                f"{wait_s:.0f} s (is it running? GET /persistent/status): {_NOTHING_ELSE}"
            )
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def paused(settings: Settings, streams: StreamStore, wait_s: float) -> AsyncIterator[None]:
    """Every live archiver paused (between batches) for the block's duration. A pause
    held by another owner (a backup, or a killed erasure's until its TTL) is waited for,
    within ``wait_s``."""
    owner = f"forget-{os.getpid()}-{time.time_ns()}"
    ttl_ms = int(settings.backup_pause_ttl_s * 1000)
    fresh_s = 3 + settings.archiver_lease_s
    deadline = time.monotonic() + wait_s
    while True:
        entered = False
        try:
            async with archivers_paused(streams, owner, ttl_ms, fresh_s, wait_s):
                entered = True
                yield
            return
        except PauseFailed as exc:
            if not entered and exc.kind == "busy" and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                continue
            raise ForgetError(_PAUSE_FAILED[exc.kind].format(", ".join(exc.waiting))) from None


_NOTHING_ELSE = "the users are refused from now on; run forget again to finish"
_PAUSE_FAILED = {
    "busy": f"a backup or another erasure held the archive pause throughout: {_NOTHING_ELSE}",
    "not_paused": "archivers {} did not pause in time: " + _NOTHING_ELSE,
    "expired": f"the archive pause expired during the erasure: {_NOTHING_ELSE}",
}


async def backups(store: IngestWriter) -> list[dict[str, Any]]:
    """The backups on record (``backup`` adds each one it finishes), oldest first."""
    async with engine_errors():
        raw = await store.client.lrange(store.keys.backups(), 0, -1)
    out = []
    for blob in raw:
        with contextlib.suppress(orjson.JSONDecodeError):
            found = orjson.loads(blob)
            if isinstance(found, dict):
                out.append(found)
    return out


def _postgres(settings: Settings, hours: dict[str, datetime]) -> int:
    """Re-deliver each rewritten hour (relative path -> hour) from its file as it is
    now; the rows removed."""
    from event_analytics.destinations import postgres
    from event_analytics.destinations.delivery import settled_size

    assert settings.postgres_url
    removed = 0
    conn = postgres.connect(settings.postgres_url)
    try:
        postgres.ensure_schema(conn)
        for relative, hour in sorted(hours.items()):
            path = settings.archive_path / relative
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # deleted since (retention takes its rows too)
            size = settled_size(path)
            found = files.ArchiveFile(path, relative, hour, stat.st_size, stat.st_mtime)
            gone, written = postgres.resync(conn, found, stat.st_size if size is None else size)
            removed += gone - written
    finally:
        conn.close()
    return removed


async def _journal(
    store: IngestWriter, relative: str, hour: datetime, types: frozenset[str]
) -> None:
    blob = orjson.dumps({"hour": iso_z(hour), "types": sorted(types)})
    async with engine_errors():
        await store.client.hset(store.keys.erasing(), relative, blob)


async def journaled(store: IngestWriter) -> dict[str, tuple[datetime, set[str]]]:
    """The hours rewritten and not yet re-derived from (this run's and a killed one's):
    relative path -> (hour, event types of the removed events)."""
    async with engine_errors():
        raw = await store.client.hgetall(store.keys.erasing())
    out: dict[str, tuple[datetime, set[str]]] = {}
    for relative, blob in raw.items():
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            got = orjson.loads(blob)
            name = relative.decode() if isinstance(relative, bytes) else relative
            out[name] = (datetime.fromisoformat(got["hour"]), set(got["types"]))
    return out


async def forget(
    settings: Settings,
    store: IngestWriter,
    users: Sequence[str],
    wait_s: float = 60.0,
    progress: Progress | None = None,
) -> ForgetReport:
    """Erase ``users`` (checked by ``check_users``) everywhere; the audit record.
    ``progress`` is kept up to date as it goes."""
    users = check_users(users)
    done = progress or Progress()
    streams = StreamStore(store.client, store.keys)
    done.phase = "suppressing"
    await suppress(store, users)
    started = datetime.now(UTC)
    done.phase = "waiting_for_archiver"
    await wait_archived(store, await stream_tips(store), wait_s)
    loop = asyncio.get_running_loop()

    def note(relative: str, hour: datetime, types: frozenset[str]) -> None:
        # From erase's thread, before the hour's rename: on record in the engine first.
        asyncio.run_coroutine_threadsafe(_journal(store, relative, hour, types), loop).result()

    done.phase = "pausing_archivers"
    async with paused(settings, streams, wait_s):
        done.phase = "rewriting_hours"
        erased = await asyncio.to_thread(
            erase.erase, settings.archive_path, users, None, note, done
        )
        pending = await journaled(store)
        rows = None
        if settings.postgres_url and pending:
            done.phase = "postgres"
            hours = {relative: hour for relative, (hour, _) in pending.items()}
            rows = await asyncio.to_thread(_postgres, settings, hours)
        types: dict[datetime, set[str]] = {}
        for hour, kinds in pending.values():
            types.setdefault(floor(hour, Interval.DAY), set()).update(kinds)
        days = sorted(types)
        done.phase = "rebuilding_counters"
        found: list[files.ArchiveFile] = []
        for day in days:
            found.extend(files.list_files(settings.archive_path, day, day + DAY))
        await rebuild.rebuild(settings, store, found, with_stream=True, also_clear=types)
    done.phase = "recording"
    report = ForgetReport(
        at=iso_z(started),
        users=[user_hash(u) for u in users],
        events_removed=erased.removed,
        hours={h.relative: h.removed for h in erased.hours},
        files_scanned=erased.files_scanned,
        files_read=erased.files_read,
        postgres_rows_removed=rows,
        days_rebuilt=len(days),
        backups_holding_data=await backups(store),
    )
    async with engine_errors():
        await store.client.rpush(store.keys.erasures(), orjson.dumps(report.record()))
        if pending:  # re-derived: a later run has nothing of these hours to finish
            await store.client.hdel(store.keys.erasing(), *pending)
    done.phase = "done"
    return report
