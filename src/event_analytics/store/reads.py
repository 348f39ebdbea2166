"""Analytics reads: one read-only script call per shard, results summed over the shards.

Users are split disjointly across shards (keys.py), so per-shard unique counts, unions
included, add up exactly; event counts add up too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from event_analytics.keys import OTHER_PAGE, Keys
from event_analytics.model import QueryTooCostly
from event_analytics.series import Series, UserSource
from event_analytics.store.redis import Client, Store, engine_errors
from event_analytics.store.scripts import Call, Lua, call_per_shard, register
from event_analytics.timebucket import Interval


class Ranking(NamedTuple):
    """Top pages, and the events of pages past EA_MAX_PAGES_PER_BUCKET (not ranked)."""

    pages: list[tuple[str, int]]  # (URL, events), count desc then URL asc
    other: int  # events counted into keys.OTHER_PAGE; 0 = no bucket was capped


class Reads:
    """Range queries over the bucket structures written by ingest.lua.

    Top pages are bounded and split: the pages sets' sizes (ZCARD, O(1) each) are read
    first, a range holding more than ``max_cost`` entries is refused, and the merge runs
    in calls of at most ``chunk_entries`` entries each, one round after another, so no
    single call holds the engine for more than a few ms and ingest runs in between.
    """

    def __init__(
        self,
        store: Store,
        client: Client | None = None,
        max_cost: int = 500_000,
        chunk_entries: int = 2_000,
    ) -> None:
        # ``client``: another engine for reads (REDIS_READ_URL, e.g. a replica).
        self.client = client or store.client
        self.keys: Keys = store.keys
        self.max_cost = max_cost
        self.chunk_entries = chunk_entries
        self._series = register(self.client, Lua.SERIES)
        self._top_pages = register(self.client, Lua.TOP_PAGES)
        self._page_users = register(self.client, Lua.PAGE_USERS)
        self._minute_stats = register(self.client, Lua.MINUTE_STATS)

    async def _per_shard(self, script: Any, calls: Sequence[Call]) -> list[Any]:
        """One script call per shard, all in one round trip; the replies in shard order.

        Through call_per_shard: it works in cluster pipelines and survives NOSCRIPT.
        """
        async with engine_errors():
            return await call_per_shard(self.client, script, calls)

    async def minute_stats(
        self, event_type: str, minutes: Sequence[datetime]
    ) -> list[tuple[int, int]]:
        """(count, unique users) of each minute, summed over the disjoint user shards.

        One script call per shard reads all the minutes: on a cluster, a pipeline of
        single GET/SCARD commands costs the client ~0.1 ms each, 16 x more with 16 shards.
        """
        calls: list[Call] = []
        for shard in range(self.keys.shards):
            keys: list[str] = []
            for minute in minutes:
                keys.append(self.keys.count(shard, event_type, Interval.MINUTE, minute))
                keys.append(self.keys.users(shard, event_type, Interval.MINUTE, minute))
            calls.append((keys, []))
        replies = await self._per_shard(self._minute_stats, calls)
        out = [(0, 0)] * len(minutes)
        for reply in replies:
            for m in range(len(minutes)):
                count, users = out[m]
                out[m] = (count + int(reply[2 * m]), users + int(reply[2 * m + 1]))
        return out

    async def series(
        self,
        event_type: str,
        level: Interval,
        groups: Sequence[Sequence[datetime]],
        source: UserSource,
        page: str | None = None,
    ) -> Series:
        """Count and unique users of each group of ``level`` buckets, plus their union."""
        k = self.keys
        if source in (UserSource.PAGE, UserSource.PAGE_HLL):
            assert page is not None
        calls = []
        for shard in range(k.shards):
            keys: list[str] = []
            for group in groups:
                for start in group:
                    keys += self._pair(source, shard, event_type, level, start, page or "")
            calls.append((keys, [source.value, page or "", *(len(g) for g in groups)]))
        replies = await self._per_shard(self._series, calls)
        sums = [sum(column) for column in zip(*replies, strict=True)]
        points = [(sums[i], sums[i + 1]) for i in range(0, 2 * len(groups), 2)]
        return Series(points=points, total_users=sums[-1] if sums else 0)

    def _pair(
        self,
        source: UserSource,
        shard: int,
        event_type: str,
        level: Interval,
        start: datetime,
        page: str,
    ) -> tuple[str, str]:
        """The (count, users) keys series.lua reads for one bucket."""
        k = self.keys
        if source is UserSource.SETS:
            return k.count(shard, event_type, level, start), k.users(
                shard, event_type, level, start
            )
        if source is UserSource.HLL:
            return k.count(shard, event_type, level, start), k.hll(shard, event_type, level, start)
        pages = k.pages(shard, event_type, level, start)
        if source is UserSource.PAGE:
            return pages, k.page_users(shard, event_type, level, start)
        return pages, k.page_hll(shard, event_type, level, start, page)

    async def top_pages(
        self, event_type: str, level: Interval, starts: Sequence[datetime], limit: int
    ) -> Ranking:
        """The ``limit`` most counted pages over the buckets: count desc, then URL asc;
        and the events counted into OTHER_PAGE (buckets past EA_MAX_PAGES_PER_BUCKET).

        Raises QueryTooCostly past ``max_cost`` entries."""
        k = self.keys
        names = [[k.pages(s, event_type, level, b) for b in starts] for s in range(k.shards)]
        sizes = await self._sizes(names)
        cost = sum(map(sum, sizes))
        if cost > self.max_cost:
            raise QueryTooCostly(cost, self.max_cost)
        chunks = [_chunks(n, z, self.chunk_entries) for n, z in zip(names, sizes, strict=True)]
        # One call alone can rank by itself; several must send every page, or a page
        # ranked just below the limit in each could be missed although first in the sum.
        per_call_limit = limit if k.shards == 1 and len(chunks[0]) <= 1 else 0
        totals: Counter[str] = Counter()
        other = 0
        for round_ in range(max((len(c) for c in chunks), default=0)):
            # A round: at most one chunk per shard (on a cluster, shards on other masters
            # run in parallel); the next round only after this one answered.
            calls = [(c[round_], [per_call_limit, OTHER_PAGE]) for c in chunks if round_ < len(c)]
            for flat in await self._per_shard(self._top_pages, calls):
                other += int(flat[0])
                for i in range(1, len(flat), 2):
                    totals[_text(flat[i])] += int(flat[i + 1])
        top = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit]
        return Ranking(top, other)

    async def _sizes(self, names: list[list[str]]) -> list[list[int]]:
        """ZCARD of every key, per shard (O(1) each, pipelined)."""
        async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
            for shard_names in names:
                for name in shard_names:
                    pipe.zcard(name)
            flat = [int(n) for n in await pipe.execute()]
        out, at = [], 0
        for shard_names in names:
            out.append(flat[at : at + len(shard_names)])
            at += len(shard_names)
        return out

    async def page_users(
        self,
        event_type: str,
        level: Interval,
        starts: Sequence[datetime],
        pages: Sequence[str],
        source: UserSource = UserSource.PAGE,
    ) -> list[int]:
        """Distinct users of each page over the buckets: exact pairs, or page HLLs."""
        if not pages:
            return []
        k = self.keys
        if source is UserSource.PAGE_HLL:
            async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
                for page in pages:
                    for s in range(k.shards):
                        names = [k.page_hll(s, event_type, level, b, page) for b in starts]
                        # Not pipe.pfcount(): redis-py blocks it in cluster pipelines, though
                        # these keys share one hash tag (one slot) and route by the first.
                        pipe.execute_command("PFCOUNT", *names)
                counts = await pipe.execute()
            return [sum(counts[i : i + k.shards]) for i in range(0, len(counts), k.shards)]
        # One page per call: a call's work is that page's users over the buckets, not
        # every page's at once (distinct users need one call to see all buckets).
        out = []
        for page in pages:
            calls = [
                ([k.page_users(s, event_type, level, b) for b in starts], [page])
                for s in range(k.shards)
            ]
            replies = await self._per_shard(self._page_users, calls)
            out.append(sum(int(reply[0]) for reply in replies))
        return out

    async def minute_users(
        self, event_type: str, minutes: Sequence[datetime], cap: int
    ) -> list[list[str]]:
        """Up to ``cap`` user ids of each minute, sorted (SRANDMEMBER never sends a big set)."""
        k = self.keys
        async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
            for minute in minutes:
                for shard in range(k.shards):
                    pipe.srandmember(k.users(shard, event_type, Interval.MINUTE, minute), cap)
            replies = await pipe.execute()
        out = []
        for i in range(len(minutes)):
            chunk = replies[i * k.shards : (i + 1) * k.shards]
            out.append(sorted(_text(u) for shard in chunk for u in shard)[:cap])
        return out


def _chunks(names: list[str], sizes: list[int], budget: int) -> list[list[str]]:
    """Consecutive keys grouped so that each group holds at most ``budget`` entries (a
    key bigger than that alone); empty keys are left out."""
    out: list[list[str]] = []
    current: list[str] = []
    held = 0
    for name, size in zip(names, sizes, strict=True):
        if not size:
            continue
        if current and held + size > budget:
            out.append(current)
            current, held = [], 0
        current.append(name)
        held += size
    if current:
        out.append(current)
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
