"""Deleting one UTC day of derived state: what rebuild clears before it replays that day."""

from __future__ import annotations

from datetime import datetime

from event_analytics.store.errors import engine_errors
from event_analytics.store.scripts import Call, Lua, call_per_shard, register
from event_analytics.store.writer import IngestWriter
from event_analytics.timebucket import HOUR, MINUTE, Interval

UNLINK_CHUNK = 500


async def _day_keys(store: IngestWriter, shard: int, day: datetime, event_type: str) -> list[str]:
    keys = store.keys
    names: list[str] = []
    for m in range(24 * 60):
        names += keys.bucket_keys(shard, event_type, Interval.MINUTE, day + MINUTE * m)
    hours = [day + HOUR * h for h in range(24)]
    for hour in hours:
        names += keys.bucket_keys(shard, event_type, Interval.HOUR, hour)
    names += keys.bucket_keys(shard, event_type, Interval.DAY, day)
    names += await _page_keys(store, shard, event_type, hours)
    return names


async def clear_day_at(store: IngestWriter, day: datetime, event_type: str) -> list[bytes]:
    """``clear_day``, each shard's keys deleted in one atomic call that also reads the
    id of its stream's last entry: per shard, that id (b"" for an empty stream). The
    events streamed up to it were counted in what was deleted; later ones were not."""
    script = register(store.client, Lua.CLEAR_DAY)
    calls: list[Call] = [
        ([store.keys.stream(shard), *await _day_keys(store, shard, day, event_type)], [])
        for shard in range(store.keys.shards)
    ]
    async with engine_errors():
        tips = await call_per_shard(store.client, script, calls)
    return [tip if isinstance(tip, bytes) else str(tip).encode() for tip in tips]


async def clear_day(store: IngestWriter, day: datetime, event_type: str) -> None:
    """Delete one day's buckets of ``event_type``.

    The dedup memory stays: it is keyed by arrival, not by the events' days, and replay
    neither reads nor writes it (the archive holds each event once).
    """
    keys = store.keys
    for shard in range(keys.shards):
        names = await _day_keys(store, shard, day, event_type)
        # All names of one shard share its hash tag: one slot per UNLINK on a cluster too.
        # (execute_command: a cluster pipeline's unlink() is a coroutine that splits keys.)
        async with engine_errors(), store.client.pipeline(transaction=False) as pipe:
            for i in range(0, len(names), UNLINK_CHUNK):
                pipe.execute_command("UNLINK", *names[i : i + UNLINK_CHUNK])
            await pipe.execute()


async def _page_keys(
    store: IngestWriter, shard: int, event_type: str, hours: list[datetime]
) -> list[str]:
    """The per-page keys of these hours (one HLL per page), named after the pages their
    rankings list: a page the archive lacks must not keep its users (SCAN would have to
    walk every key of the engine to find them)."""
    keys = store.keys
    pages_keys = [keys.pages(shard, event_type, Interval.HOUR, h) for h in hours]
    async with engine_errors(), store.client.pipeline(transaction=False) as pipe:
        for name in pages_keys:
            pipe.zrange(name, 0, -1)
        ranked: list[list[bytes]] = await pipe.execute()
    return [
        keys.page_hll(shard, event_type, Interval.HOUR, hour, page.decode())
        for hour, pages in zip(hours, ranked, strict=True)
        for page in pages
    ]
