"""Dedup across shards: an event whose id lives on another shard than its user.

Users are split disjointly over the shards (unique counts add up), but an event_id must
count once whatever user a resend carries, so its dedup memory lives on the id's own
shard. One script call touches one shard, so such an event takes three steps
(docs/dedup.md): claim the id and park the event in the id shard's outbox (claim.lua,
one atomic call: from then on the event is durable), apply it on the user's shard
(ingest.lua, whose own dedup makes this idempotent), and delete the outbox entry. A
crash between steps leaves the outbox entry; a resend of the id, or the sweeper,
applies it again, which counts it at most once, and deletes it.

This module is pure: the calls and the outbox's encoding; store/redis.py runs them.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import orjson

from event_analytics.keys import Keys
from event_analytics.store.prepared import Bucket, PreparedEvent
from event_analytics.store.scripts import Call

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
