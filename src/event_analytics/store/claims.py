"""Dedup across shards: an event whose id lives on another shard than its user.

Users are split disjointly over the shards (unique counts add up), but an event_id must
count once whatever user a resend carries, so its dedup memory lives on the id's own
shard. One script call touches one shard, so such an event takes three steps
(docs/dedup.md): claim the id and park the event in the id shard's outbox (claim.lua,
one atomic call: from then on the event is durable), apply it on the user's shard
(ingest.lua, whose own dedup makes this idempotent), and delete the outbox entry. A
crash between steps leaves the outbox entry; a resend of the id, or the sweeper,
applies it again, which counts it at most once, and deletes it.

``CrossShard`` runs the steps and the sweeper; the calls and the outbox's encoding are
pure functions here.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from event_analytics.errors import StorageOutcomeUnknown, StorageUnavailable
from event_analytics.keys import Keys
from event_analytics.store.connect import Client
from event_analytics.store.errors import engine_errors
from event_analytics.store.prepared import (
    DEDUP_GENERATIONS,
    Bucket,
    Outcome,
    PreparedEvent,
    dedup_generation_s,
)
from event_analytics.store.scripts import Call, Lua, call_per_shard, register

# Applies events on their users' shards (the writer's per-shard ingest calls): one
# outcome, or the failure of its shard, per event.
Apply = Callable[[Sequence[PreparedEvent]], Awaitable[list[Outcome | Exception]]]

# Events per call: two arguments each, and Lua's unpack() has a stack limit.
CHUNK = 1000
# The sweeper applies outbox entries claimed longer ago than this (younger ones are
# most likely being applied by the request that claimed them).
SWEEP_AFTER_S = 5.0


def encode(event: PreparedEvent, claimed_at: float) -> bytes:
    """An outbox entry: all step 2 needs to apply the event, and when it was claimed."""
    b = event.bucket
    return orjson.dumps(
        [claimed_at, event.shard, b.stems, b.expire_at, b.exact, b.dedup_window_s,
         event.user_id, event.page_url, event.record.decode(), b.event_type]
    )  # fmt: skip


def decode(event_id: bytes, blob: bytes) -> tuple[float, PreparedEvent]:
    """(claimed_at, event) of an outbox entry."""
    at, shard, stems, expire_at, exact, window, user, page, record, *rest = orjson.loads(blob)
    # Entries parked before the event type was stored: it is the minute stem's third
    # field from the end (``<prefix>{s}:<type>:m:<day>T<hh>:<mm>``).
    event_type = rest[0] if rest else stems[0].rsplit(":", 4)[1]
    bucket = Bucket(event_type, tuple(stems), tuple(expire_at), exact, window)
    return at, PreparedEvent(shard, bucket, event_id, user, page, record.encode())


def claim_calls(
    keys: Keys, events: Sequence[PreparedEvent], gen_s: int, older: int, now: float
) -> list[tuple[list[int], Call]]:
    """The claim calls for ``events``: (indexes into ``events``, call), per id shard."""
    by_shard: dict[int, list[int]] = defaultdict(list)
    for i, event in enumerate(events):
        by_shard[keys.id_shard(event.event_id)].append(i)
    calls: list[tuple[list[int], Call]] = []
    for shard, indexes in by_shard.items():
        for start in range(0, len(indexes), CHUNK):
            chunk = indexes[start : start + CHUNK]
            args: list[Any] = [gen_s, older, secrets.token_bytes(8), len(chunk)]
            for i in chunk:
                args += (events[i].event_id, encode(events[i], now))
            calls.append((chunk, ([keys.seen_stem(shard), keys.outbox(shard)], args)))
    return calls


class CrossShard:
    """The three steps of events whose id lives on another shard than their user, and
    the sweeper of outbox entries a request left behind."""

    def __init__(self, client: Client, keys: Keys, apply: Apply) -> None:
        self.client = client
        self.keys = keys
        self._apply = apply
        self._claim_script = register(client, Lua.CLAIM)
        self._unclaim_script = register(client, Lua.UNCLAIM)

    async def ingest(
        self, events: Sequence[PreparedEvent], cross: list[int]
    ) -> list[Outcome | Exception]:
        """``events``, of which those at ``cross`` have their id on another shard than
        their user: the others applied at once, these in the three steps."""
        crossing = set(cross)
        local = [i for i in range(len(events)) if i not in crossing]
        results: list[Outcome | Exception] = [Outcome.DUPLICATE] * len(events)
        local_flags, claimed = await asyncio.gather(
            self._apply([events[i] for i in local]),
            self._claim([events[i] for i in cross]),
        )
        for i, flag in zip(local, local_flags, strict=True):
            results[i] = flag
        # Step 2: apply what was claimed now, and what an earlier claim left unconfirmed.
        apply: list[tuple[int, PreparedEvent]] = []
        for i, reply in zip(cross, claimed, strict=True):
            if isinstance(reply, Exception):
                results[i] = reply
            elif isinstance(reply, bytes):
                apply.append((i, decode(events[i].event_id, reply)[1]))
            else:
                results[i] = Outcome.NEW if reply == 1 else Outcome.DUPLICATE
                if reply == 1:
                    apply.append((i, events[i]))
        applied = await self._apply([e for _, e in apply])
        done: list[bytes] = []
        refused: list[PreparedEvent] = []
        for (i, event), outcome in zip(apply, applied, strict=True):
            if isinstance(outcome, Exception):
                # Claimed, so stored (in the outbox): counted once its shard answers.
                results[i] = StorageOutcomeUnknown(
                    f"event stored, its user's shard did not answer yet ({outcome})"
                )
            elif outcome.refused:
                # Its user's shard takes no new type, or its user was erased: the claim
                # is undone, so the id is not remembered for an event never counted.
                results[i] = outcome
                refused.append(event)
            else:
                done.append(event.event_id)
        await self._commit(done)
        await self._unclaim(refused)
        return results

    async def _claim(self, events: Sequence[PreparedEvent]) -> list[int | bytes | Exception]:
        """Step 1 for events whose id lives on another shard: claim.lua's reply per event."""
        gen_s = dedup_generation_s(events[0].bucket.dedup_window_s)
        calls = claim_calls(self.keys, events, gen_s, DEDUP_GENERATIONS, time.time())

        async def one(call: Call) -> list[Any]:
            async with engine_errors(write=True):
                replies = await call_per_shard(self.client, self._claim_script, [call])
            return list(replies[0])

        outcomes = await asyncio.gather(*(one(c) for _, c in calls), return_exceptions=True)
        results: list[int | bytes | Exception] = [0] * len(events)
        for (indexes, _), outcome in zip(calls, outcomes, strict=True):
            for n, i in enumerate(indexes):
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, Exception):
                        raise outcome
                    results[i] = outcome
                else:
                    results[i] = outcome[n]
        return results

    async def _commit(self, event_ids: Sequence[bytes]) -> None:
        """Step 3: forget the outbox entries of applied events. Best effort: an entry left
        behind is applied again (idempotently) by a resend or the sweeper."""
        if not event_ids:
            return
        by_shard: dict[int, list[bytes]] = defaultdict(list)
        for event_id in event_ids:
            by_shard[self.keys.id_shard(event_id)].append(event_id)
        with contextlib.suppress(StorageUnavailable):
            async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
                for shard, ids in by_shard.items():
                    for start in range(0, len(ids), CHUNK):
                        chunk = ids[start : start + CHUNK]
                        pipe.execute_command("HDEL", self.keys.outbox(shard), *chunk)
                await pipe.execute()

    async def _unclaim(self, events: Sequence[PreparedEvent]) -> None:
        """Forget the claims of events their user's shard refused (unclaim.lua). Best
        effort like _commit: an entry left behind is refused again by the sweeper."""
        if not events:
            return
        by_shard: dict[int, list[bytes]] = defaultdict(list)
        for event in events:
            by_shard[self.keys.id_shard(event.event_id)].append(event.event_id)
        gen_s = dedup_generation_s(events[0].bucket.dedup_window_s)
        calls: list[Call] = []
        for shard, ids in by_shard.items():
            for start in range(0, len(ids), CHUNK):
                calls.append(
                    (
                        [self.keys.seen_stem(shard), self.keys.outbox(shard)],
                        [gen_s, DEDUP_GENERATIONS, *ids[start : start + CHUNK]],
                    )
                )
        with contextlib.suppress(StorageUnavailable):
            async with engine_errors(write=True):
                await call_per_shard(self.client, self._unclaim_script, calls)

    async def sweep_outbox(self, older_than_s: float = SWEEP_AFTER_S) -> int:
        """Apply the outbox entries claimed more than ``older_than_s`` ago (a request that
        died between the steps), at most 1,000 per shard; the number applied."""
        cutoff = time.time() - older_than_s
        due: list[PreparedEvent] = []
        for shard in range(self.keys.shards):
            async with engine_errors():
                reply: Any = await self.client.hscan(self.keys.outbox(shard), 0, count=1000)
            rows: dict[bytes, bytes] = reply[1]
            for event_id, blob in rows.items():
                at, event = decode(event_id, blob)
                if at <= cutoff:
                    due.append(event)
        applied = await self._apply(due)
        done: list[bytes] = []
        refused: list[PreparedEvent] = []
        for event, outcome in zip(due, applied, strict=True):
            if isinstance(outcome, Outcome) and outcome.refused:
                refused.append(event)
            elif not isinstance(outcome, Exception):
                done.append(event.event_id)
        await self._commit(done)
        await self._unclaim(refused)
        return len(done)
