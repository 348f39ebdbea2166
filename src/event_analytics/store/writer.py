"""The ingest writer: events applied to their shards by ingest.lua, one atomic call per
shard and all calls in one round trip (cross-shard ids through ``claims.CrossShard``).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from event_analytics.config import Settings
from event_analytics.keys import OTHER_PAGE, Keys, page_digest
from event_analytics.store import claims
from event_analytics.store.connect import Client, connect, engine_info
from event_analytics.store.errors import engine_errors
from event_analytics.store.ingest_call import IngestCall
from event_analytics.store.prepared import (
    DEDUP_GENERATIONS,
    Bucket,
    Caps,
    Outcome,
    PreparedEvent,
    dedup_generation_s,
)
from event_analytics.store.scripts import Call, Lua, call_per_shard, register

# Calls of more events than this write per distinct key (one INCRBY, one variadic SADD...),
# smaller ones per event. Measured with benchmarks/script_cost.py, interleaved, engine CPU
# per event, per event / per key: 1: 478 / 480, 493 / 449; 2: 266 / 275, 225 / 225;
# 4: 181 / 174, 168 / 135; 8: 115 / 108, 109 / 86; 16: 70 / 59, 66 / 58 µs. From 4 events
# up the aggregated path's bookkeeping pays; below it is a wash.
AGGREGATE_ABOVE = 4


class IngestWriter:
    """The ingest writer over one connection pool; reads, streams and health checks use
    its client and Keys."""

    def __init__(
        self,
        client: Client,
        keys: Keys,
        aggregate_above: int = AGGREGATE_ABOVE,
        caps: Caps = Caps(),  # noqa: B008 (frozen)
    ) -> None:
        self.client = client
        self.keys = keys
        self.aggregate_above = aggregate_above
        self.caps = caps
        self._ingest_script = register(client, Lua.INGEST)
        self._cross = claims.CrossShard(client, keys, lambda events: self._each(events, True))

    @classmethod
    def from_settings(
        cls, settings: Settings, aggregate_above: int = AGGREGATE_ABOVE
    ) -> IngestWriter:
        """The one factory: the client of the engine the settings choose, and its Keys.

        ``aggregate_above``: for measurements and tests of the script's two paths.
        """
        caps = Caps(settings.max_event_types, settings.max_pages_per_bucket)
        return cls(connect(settings), Keys.from_settings(settings), aggregate_above, caps)

    async def close(self) -> None:
        await self.client.aclose()

    async def ingest(
        self, events: Sequence[PreparedEvent], *, stream: bool = True
    ) -> list[Outcome]:
        """Apply events atomically per shard; each event's Outcome (NEW is truthy, the
        others are not).

        Each shard's events go in ONE script call, and all calls in one round trip.
        ``stream=False`` replays archived events: counted, but not streamed again.
        """
        if stream and self.keys.shards > 1:
            outcomes = await self.ingest_each(events)  # ids may live on other shards
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    raise outcome
            return [o for o in outcomes if not isinstance(o, Exception)]
        by_shard, calls = self._calls(events, stream)
        async with engine_errors(write=True):
            replies = await call_per_shard(self.client, self._ingest_script, calls)
        results: list[Outcome] = [Outcome.DUPLICATE] * len(events)
        for indexes, reply in zip(by_shard.values(), replies, strict=True):
            for i, flag in zip(indexes, reply, strict=True):
                results[i] = Outcome(flag)
        return results

    async def ingest_each(
        self, events: Sequence[PreparedEvent], *, stream: bool = True
    ) -> list[Outcome | Exception]:
        """Like ingest(), but a shard that fails fails only its own events.

        The group-commit batcher mixes many requests' events: on a cluster, a master in
        failover must not refuse the requests whose shards live on healthy masters. So
        each shard's call runs on its own (concurrently); an event of a failed shard
        gets that shard's StorageUnavailable in place of its flag.

        An event whose id lives on another shard than its user is claimed there first
        (store/claims.py): dedup by id whatever user a resend carries.
        """
        if not stream or self.keys.shards == 1:
            return await self._each(events, stream)
        cross = [i for i, e in enumerate(events) if self.keys.id_shard(e.event_id) != e.shard]
        if not cross:
            return await self._each(events, stream)
        return await self._cross.ingest(events, cross)

    async def _each(
        self, events: Sequence[PreparedEvent], stream: bool
    ) -> list[Outcome | Exception]:
        """One ingest call per user shard, concurrently; a failed shard fails its events."""
        if not events:
            return []
        by_shard, calls = self._calls(events, stream)

        async def one(call: Call) -> list[Any]:
            async with engine_errors(write=True):
                replies = await call_per_shard(self.client, self._ingest_script, [call])
            return list(replies[0])

        outcomes = await asyncio.gather(*(one(c) for c in calls), return_exceptions=True)
        results: list[Outcome | Exception] = [Outcome.DUPLICATE] * len(events)
        for indexes, outcome in zip(by_shard.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                for i in indexes:
                    results[i] = outcome
            else:
                for i, flag in zip(indexes, outcome, strict=True):
                    results[i] = Outcome(flag)
        return results

    async def sweep_outbox(self, older_than_s: float = claims.SWEEP_AFTER_S) -> int:
        """Apply the outbox entries of events claimed more than ``older_than_s`` ago
        (``claims.CrossShard.sweep_outbox``); the number applied."""
        return await self._cross.sweep_outbox(older_than_s)

    def _calls(
        self, events: Sequence[PreparedEvent], stream: bool
    ) -> tuple[dict[int, list[int]], list[Call]]:
        """Group events by shard: one script call (keys, args) per shard (``ingest_calls``)."""
        return ingest_calls(self.keys, self.caps, self.aggregate_above, events, stream)

    async def send(self, calls: Sequence[Call]) -> list[list[int]]:
        """The flags of calls made by ``ingest_calls`` elsewhere (an import's worker
        processes prepare them), all in one round trip."""
        async with engine_errors(write=True):
            return await call_per_shard(self.client, self._ingest_script, calls)

    async def stream_length(self) -> int:
        """Events in all shards' streams (not yet trimmed by the archiver)."""
        async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
            for shard in range(self.keys.shards):
                pipe.xlen(self.keys.stream(shard))
                pipe.get(self.keys.stream_extra(shard))  # an entry holds a call's records
            return sum(int(n or 0) for n in await pipe.execute())

    async def engine_info(self) -> dict[str, Any]:
        """Reachability and durability facts for /health/ready (``connect.engine_info``)."""
        return await engine_info(self.client)


def ingest_calls(
    keys: Keys,
    caps: Caps,
    aggregate_above: int,
    events: Sequence[PreparedEvent],
    stream: bool,
) -> tuple[dict[int, list[int]], list[Call]]:
    """Group events by shard: one script call (keys, args) per shard.

    Per call each distinct bucket's names and each distinct page once, per event five
    values (``IngestCall``; store/ingest.lua documents the layout). ``stream=False``
    (replay) counts without dedup and without streaming.
    """
    by_shard: dict[int, list[int]] = defaultdict(list)
    for index, event in enumerate(events):
        by_shard[event.shard].append(index)
    calls: list[Call] = []
    for shard, indexes in by_shard.items():
        buckets: dict[Bucket, int] = {}
        pages: dict[str, int] = {}
        bucket_stems: list[str] = []
        bucket_args: list[str | int] = []
        page_args: list[str] = []
        event_args: list[str | bytes | int] = []
        for i in indexes:
            event = events[i]
            b = buckets.get(event.bucket)
            if b is None:
                b = buckets[event.bucket] = len(buckets) + 1
                bucket_stems.extend(event.bucket.stems)
                bucket_args.append(event.bucket.event_type)
                bucket_args.extend(event.bucket.expire_at)
            p = 0
            if event.page_url:
                p = pages.get(event.page_url, 0)
                if not p:
                    p = pages[event.page_url] = len(pages) + 1
                    page_args += (event.page_url, page_digest(event.page_url))
            event_args += (event.event_id, event.user_id, p, b, event.record)
        rules = events[indexes[0]].bucket
        call = IngestCall(
            stream=keys.stream(shard),
            # Live: dedup by id. Replay: a marker of the call, applied once.
            dedup_stem=keys.seen_stem(shard) if stream else keys.replayed_stem(shard),
            stream_extra=keys.stream_extra(shard),
            event_types=keys.event_types(shard),
            erased=keys.erased(shard),
            events=len(indexes),
            buckets=len(buckets),
            pages=len(pages),
            live=stream,
            exact=rules.exact,
            aggregate=len(indexes) > aggregate_above,
            # The window in DEDUP_GENERATIONS generations, plus the one being filled.
            generation_s=dedup_generation_s(rules.dedup_window_s),
            generations=DEDUP_GENERATIONS,
            # Lets the script recognise its own earlier write if this very call is sent
            # again (a client-side retry after a lost reply): never a false duplicate.
            token=secrets.token_bytes(8),
            max_event_types=caps.event_types,
            max_pages=caps.pages_per_bucket,
            other_page=OTHER_PAGE,
            other_page_digest=page_digest(OTHER_PAGE),
            bucket_stems=bucket_stems,
            bucket_args=bucket_args,
            page_args=page_args,
            event_args=event_args,
        )
        calls.append(call.call())
    return by_shard, calls
