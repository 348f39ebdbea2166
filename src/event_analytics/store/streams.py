"""Redis side of the archive: consumer groups, claims, acks, leases, heartbeats, status."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
from redis import exceptions as rx

from event_analytics.keys import ARCHIVER_GROUP, Keys
from event_analytics.store.cluster import by_key
from event_analytics.store.connect import Client
from event_analytics.store.errors import engine_errors
from event_analytics.store.scripts import Lua, register

Entry = tuple[bytes, dict[bytes, bytes]]  # (stream id, fields)
ACK_CHUNK = 1000


def records_in(fields: dict[bytes, bytes]) -> int:
    """How many event records a stream entry holds (one per line of its ``e`` field)."""
    return max(1, fields.get(b"e", b"").count(b"\n") + 1)


def _entries(reply: Any) -> list[Entry]:
    """The entries of a one-stream XREADGROUP reply (RESP2, the protocol we connect with)."""
    if not reply:
        return []
    return [(eid, fields or {}) for eid, fields in reply[0][1]]


def entry_ms(entry_id: bytes | str) -> int:
    """Milliseconds since the epoch at which a stream entry was added (its id's first part)."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.split("-", 1)[0])


def id_at_most(entry_id: bytes, tip: bytes) -> bool:
    """Whether stream entry ``entry_id`` comes at or before ``tip`` (b"": none does);
    ``ms-seq`` compared as numbers."""
    if not tip:
        return False
    a, _, b = entry_id.partition(b"-")
    c, _, d = tip.partition(b"-")
    return (int(a), int(b or 0)) <= (int(c), int(d or 0))


def archive_lag_s(backlog: dict[str, int], now_s: float | None = None) -> float:
    """Age in seconds of the oldest event not archived yet, from ``backlog()`` (0 when
    caught up, and never negative when this host's clock is behind the engine's)."""
    oldest = backlog["oldest_unarchived_ms"]
    if not oldest:
        return 0.0
    return max(0.0, (time.time() if now_s is None else now_s) - oldest / 1000)


class StreamStore:
    """The archiver's and the status endpoint's operations on the shards' event streams."""

    def __init__(self, client: Client, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._renew = register(client, Lua.LEASE_RENEW)
        self._release = register(client, Lua.LEASE_RELEASE)
        self._ack = register(client, Lua.STREAM_ACK)
        self._dead_letter = register(client, Lua.DEAD_LETTER)

    async def ensure_group(self, shard: int) -> bool:
        """Create the consumer group (from the stream's start) if missing; True if created."""
        async with engine_errors():
            try:
                await self.client.xgroup_create(
                    self.keys.stream(shard), ARCHIVER_GROUP, id="0", mkstream=True
                )
            except rx.ResponseError as exc:
                if "BUSYGROUP" in str(exc):
                    return False
                raise
            return True

    async def read_new(self, shard: int, consumer: str, count: int) -> list[Entry]:
        """Entries never delivered to any archiver (raises NoGroup when the group is gone)."""
        stream = self.keys.stream(shard)
        async with engine_errors():
            try:
                reply = await self.client.execute_command(
                    "XREADGROUP", "GROUP", ARCHIVER_GROUP, consumer, "COUNT", count,
                    "STREAMS", stream, ">",
                    **await by_key(self.client, stream),
                )  # fmt: skip
            except rx.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    raise NoGroup(shard) from exc
                raise
        return _entries(reply)

    async def claim(
        self, shard: int, consumer: str, start: bytes | str, count: int
    ) -> tuple[bytes | str, list[tuple[Entry, int]]]:
        """Take the next pending entries of the group, whoever had them (XAUTOCLAIM).

        The caller holds the shard's lease, so every other holder is dead. Returns the
        cursor for the next call (``0-0`` when done) and the entries with their
        delivery counts (this claim included). Raises NoGroup when the group is gone.
        """
        stream = self.keys.stream(shard)
        async with engine_errors():
            try:
                reply = await self.client.xautoclaim(
                    stream, ARCHIVER_GROUP, consumer, 0, start, count=count
                )
            except rx.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    raise NoGroup(shard) from exc
                raise
            cursor, rows = reply[0], reply[1]
            entries: list[Entry] = [(eid, fields or {}) for eid, fields in rows if eid]
            if not entries:
                return cursor, []
            info = await self.client.xpending_range(
                stream, ARCHIVER_GROUP, entries[0][0], entries[-1][0], len(entries) * 2,
                consumername=consumer,
            )  # fmt: skip
        deliveries = {p["message_id"]: int(p["times_delivered"]) for p in info}
        return cursor, [(entry, deliveries.get(entry[0], 1)) for entry in entries]

    async def ack(self, shard: int, entries: Sequence[Entry], archived: int) -> None:
        """Acknowledge, delete and count archived entries, atomically (one slot)."""
        keys = [self.keys.stream(shard), self.keys.archived(shard), self.keys.stream_extra(shard)]
        # Bounded chunks: Lua's unpack() has a stack limit, and the batch size is a setting.
        for start in range(0, len(entries), ACK_CHUNK):
            chunk = entries[start : start + ACK_CHUNK]
            count = archived if start == 0 else 0
            ids = [eid for eid, _ in chunk]
            records = [records_in(fields) for _, fields in chunk]
            async with engine_errors():
                await self._ack(keys=keys, args=[ARCHIVER_GROUP, count, len(chunk), *ids, *records])

    async def dead_letter(self, shard: int, entry: Entry, reason: str) -> None:
        """Move one entry to the shard's dead-letter stream, atomically with its ack."""
        eid, fields = entry
        record: list[bytes] = [b"id", eid, b"reason", reason.encode()]
        for name, value in fields.items():
            record += [name, value]
        keys = [self.keys.stream(shard), self.keys.deadletter(shard), self.keys.stream_extra(shard)]
        args: list[str | bytes | int] = [ARCHIVER_GROUP, eid, records_in(fields), *record]
        async with engine_errors():
            await self._dead_letter(keys=keys, args=args)

    async def pause(self, owner: str, ttl_ms: int) -> bool:
        """Ask every archiver to stop writing (``backup``); False if one already asked."""
        async with engine_errors():
            return bool(await self.client.set(self.keys.archive_pause(), owner, nx=True, px=ttl_ms))

    async def renew_pause(self, owner: str, ttl_ms: int) -> bool:
        """Extend our pause (False: it expired, or is another backup's)."""
        async with engine_errors():
            return bool(await self._renew(keys=[self.keys.archive_pause()], args=[owner, ttl_ms]))

    async def resume(self, owner: str) -> None:
        async with engine_errors():
            if await self.client.get(self.keys.archive_pause()) == owner.encode():
                await self.client.delete(self.keys.archive_pause())

    async def paused(self) -> bool:
        async with engine_errors():
            return bool(await self.client.exists(self.keys.archive_pause()))

    async def acquire_lease(self, shard: int, owner: str, ttl_ms: int) -> bool:
        async with engine_errors():
            return bool(
                await self.client.set(self.keys.archiver_lease(shard), owner, nx=True, px=ttl_ms)
            )

    async def renew_lease(self, shard: int, owner: str, ttl_ms: int) -> bool:
        async with engine_errors():
            return bool(
                await self._renew(keys=[self.keys.archiver_lease(shard)], args=[owner, ttl_ms])
            )

    async def release_lease(self, shard: int, owner: str) -> None:
        async with engine_errors():
            await self._release(keys=[self.keys.archiver_lease(shard)], args=[owner])

    async def heartbeat(self, name: str, status: dict[str, Any]) -> None:
        async with engine_errors():
            await self.client.hset(self.keys.archivers(), name, orjson.dumps(status))

    async def forget(self, name: str) -> None:
        async with engine_errors():
            await self.client.hdel(self.keys.archivers(), name)

    async def archivers(self, fresh_s: float) -> dict[str, dict[str, Any]]:
        """Archivers whose last heartbeat is recent; stale entries are removed."""
        async with engine_errors():
            raw = await self.client.hgetall(self.keys.archivers())
            now = time.time()
            live: dict[str, dict[str, Any]] = {}
            stale = []
            for name, blob in raw.items():
                status = orjson.loads(blob)
                if now - float(status.get("heartbeat", 0)) <= fresh_s:
                    live[name.decode() if isinstance(name, bytes) else name] = status
                else:
                    stale.append(name)
            if stale:
                await self.client.hdel(self.keys.archivers(), *stale)
        return live

    async def backlog(self) -> dict[str, int]:
        """Events in the streams, pending entries, oldest unarchived entry, archived events
        and dead letters, summed over the shards."""
        shards = range(self.keys.shards)
        async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
            for shard in shards:
                stream = self.keys.stream(shard)
                pipe.xlen(stream)
                pipe.xpending(stream, ARCHIVER_GROUP)
                pipe.xrange(stream, "-", "+", count=1)
                pipe.get(self.keys.archived(shard))
                pipe.xlen(self.keys.deadletter(shard))
                pipe.get(self.keys.stream_extra(shard))
            replies = await pipe.execute(raise_on_error=False)
        out = {"stream_length": 0, "pending": 0, "archived": 0, "dead_letters": 0}
        oldest: int | None = None
        for i in range(0, len(replies), 6):
            length, pending, first, archived, dead, extra = replies[i : i + 6]
            out["stream_length"] += int(length) + int(extra or 0)  # events, not entries
            # No group yet (nothing archived ever) reads as an error: nothing is pending.
            out["pending"] += 0 if isinstance(pending, Exception) else int(pending["pending"])
            out["archived"] += int(archived or 0)
            out["dead_letters"] += int(dead)
            if first:
                ms = entry_ms(first[0][0])
                oldest = ms if oldest is None else min(oldest, ms)
        out["oldest_unarchived_ms"] = oldest or 0
        return out


class NoGroup(Exception):
    """The consumer group is gone (the engine lost it, e.g. a restart without persistence)."""

    def __init__(self, shard: int) -> None:
        super().__init__(f"consumer group missing on shard {shard}")
        self.shard = shard
