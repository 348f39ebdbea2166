"""Deleting one UTC day of derived state: what rebuild clears before it replays that day."""

from __future__ import annotations

from datetime import datetime

from event_analytics.store.cluster import by_key
from event_analytics.store.errors import engine_errors
from event_analytics.store.scripts import Call, Lua, call_per_shard, register
from event_analytics.store.writer import IngestWriter
from event_analytics.timebucket import HOUR, MINUTE, Interval, label

UNLINK_CHUNK = 500


async def _day_keys(store: IngestWriter, day: datetime, event_type: str) -> list[list[str]]:
    """Each shard's names of the day's keys of ``event_type``. The labels are cut once for
    every shard (``Keys.bucket_keys_at``) and the pages read in one round trip: formatting
    each minute's date per shard, and a round trip per shard, cost most of a clear."""
    keys = store.keys
    minutes = [label(day + MINUTE * m, Interval.MINUTE) for m in range(24 * 60)]
    hours = [day + HOUR * h for h in range(24)]
    hour_labels = [label(hour, Interval.HOUR) for hour in hours]
    day_label = [label(day, Interval.DAY)]
    pages = await _page_keys(store, event_type, hours)
    return [
        [
            *keys.bucket_keys_at(shard, event_type, Interval.MINUTE, minutes),
            *keys.bucket_keys_at(shard, event_type, Interval.HOUR, hour_labels),
            *keys.bucket_keys_at(shard, event_type, Interval.DAY, day_label),
            *pages[shard],
        ]
        for shard in range(keys.shards)
    ]


async def clear_day_at(store: IngestWriter, day: datetime, event_type: str) -> list[bytes]:
    """``clear_day``, each shard's keys deleted in one atomic call that also reads the
    id of its stream's last entry: per shard, that id (b"" for an empty stream). The
    events streamed up to it were counted in what was deleted; later ones were not."""
    script = register(store.client, Lua.CLEAR_DAY)
    names = await _day_keys(store, day, event_type)
    calls: list[Call] = [
        ([store.keys.stream(shard), *names[shard]], []) for shard in range(store.keys.shards)
    ]
    async with engine_errors():
        tips = await call_per_shard(store.client, script, calls)
    return [tip if isinstance(tip, bytes) else str(tip).encode() for tip in tips]


async def clear_day(store: IngestWriter, day: datetime, event_type: str) -> None:
    """Delete one day's buckets of ``event_type``.

    The dedup memory stays: it is keyed by arrival, not by the events' days, and replay
    neither reads nor writes it (the archive holds each event once).
    """
    names = await _day_keys(store, day, event_type)
    async with engine_errors():
        # All names of one shard share its hash tag: one slot per UNLINK on a cluster too.
        # (execute_command: a cluster pipeline's unlink() is a coroutine that splits keys.)
        # Each shard's are sent to its slot's node by name: left to route them, the
        # cluster client hashes every name (~6,000 a shard) to learn that one slot. A
        # MOVED after a failover is still followed (a retried command is routed by its
        # keys). All shards in one pipeline: one round trip per node, not per shard.
        routes = [await by_key(store.client, shard_names[0]) for shard_names in names]
        async with store.client.pipeline(transaction=False) as pipe:
            for shard_names, route in zip(names, routes, strict=True):
                for i in range(0, len(shard_names), UNLINK_CHUNK):
                    chunk = shard_names[i : i + UNLINK_CHUNK]
                    pipe.execute_command("UNLINK", *chunk, **route)
            await pipe.execute()


async def _page_keys(
    store: IngestWriter, event_type: str, hours: list[datetime]
) -> list[list[str]]:
    """Each shard's per-page keys of these hours (one HLL per page), named after the pages
    their rankings list: a page the archive lacks must not keep its users (SCAN would have
    to walk every key of the engine to find them)."""
    keys = store.keys
    shards, n = range(keys.shards), len(hours)
    async with engine_errors(), store.client.pipeline(transaction=False) as pipe:
        for shard in shards:
            for hour in hours:
                pipe.zrange(keys.pages(shard, event_type, Interval.HOUR, hour), 0, -1)
        ranked: list[list[bytes]] = await pipe.execute()
    return [
        [
            keys.page_hll(shard, event_type, Interval.HOUR, hour, page.decode())
            for hour, pages in zip(hours, ranked[shard * n : (shard + 1) * n], strict=True)
            for page in pages
        ]
        for shard in shards
    ]
