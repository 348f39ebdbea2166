"""Analytics reads: one read-only script call per shard, results summed over the shards.

Users are split disjointly across shards (keys.py), so per-shard unique counts, unions
included, add up exactly; event counts add up too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from event_analytics.errors import QueryTooCostly
from event_analytics.keys import OTHER_PAGE, Keys
from event_analytics.series import Series, UserSource
from event_analytics.store.connect import Client
from event_analytics.store.errors import engine_errors
from event_analytics.store.ranking import TRY_SHARE, WHOLE_BELOW, Ranking, rank
from event_analytics.store.rounds import Held, members, script_rounds
from event_analytics.store.scripts import Lua, register
from event_analytics.store.writer import IngestWriter
from event_analytics.timebucket import Interval, floor, label

# Buckets per figures.lua call: ~2 us each (GET + SCARD in Lua, measured on Valkey 8),
# so ~1 ms a call.
FIGURES_PER_CALL = 500
# (bucket, page) figures per figures.lua call in "pages" mode: one ZMSCORE a bucket,
# ~0.1 us a page, and a ZLEXCOUNT only where the page has events.
PAGE_FIGURES_PER_CALL = 4_000
MINUTES_PER_HOUR = 60
# Pages whose users are read at the same time (several engine connections, each call
# bounded as before).
PAGES_AT_ONCE = 8
T = TypeVar("T")


class Sized(NamedTuple):
    """The ``:pages`` keys of a ranking, per shard, and their ZCARDs."""

    names: list[list[str]]
    sizes: list[list[int]]

    @property
    def entries(self) -> int:
        """The (bucket, page) entries the ranking merges."""
        return sum(map(sum, self.sizes))


class BucketFigures(NamedTuple):
    """What a series reads before its unions: per page (one without a page), per shard,
    the (count, users) keys of each bucket and their figures; and the (bucket, user)
    entries its exact unions merge (0 with HyperLogLogs or without a union)."""

    names: list[list[list[tuple[str, str]]]]
    figures: list[list[list[tuple[int, int]]]]
    entries: int


class Reads:
    """Range queries over the bucket structures written by ingest.lua.

    Every read is bounded and split: what a read must merge is sized first with O(1)
    commands (ZCARD, SCARD, ZLEXCOUNT), a read holding more than ``max_cost`` entries is
    refused (QueryTooCostly), and the merge runs in calls of at most ``chunk_entries``
    entries each, one round after another (store/rounds.py), so no single call holds the
    engine for more than a few ms and ingest runs in between.
    """

    def __init__(
        self,
        store: IngestWriter,
        client: Client | None = None,
        max_cost: int = 500_000,
        chunk_entries: int = 10_000,
        *,
        read_only: bool = False,
        whole_below: int = WHOLE_BELOW,
        try_share: int = TRY_SHARE,
    ) -> None:
        # ``client``: another engine for reads (REDIS_READ_URL, e.g. a replica).
        # ``read_only``: scripts as EVALSHA_RO, which a cluster client sends to replicas.
        self.client = client or store.client
        self.keys: Keys = store.keys
        self.max_cost = max_cost
        self.chunk_entries = chunk_entries
        self.read_only = read_only
        # The ranking's thresholds (store/ranking.py); tests lower them.
        self.whole_below = whole_below
        self.try_share = try_share
        self._figures = register(self.client, Lua.FIGURES)
        self._members = register(self.client, Lua.MEMBERS)
        self._ranked = register(self.client, Lua.RANKED)

    async def minute_stats(
        self, event_type: str, minutes: Sequence[datetime]
    ) -> list[tuple[int, int]]:
        """(count, unique users) of each minute, summed over the disjoint user shards."""
        # The labels cut once for every shard (verify asks for a day's 1,440 minutes).
        labels = [label(m, Interval.MINUTE) for m in minutes]
        pairs = [
            self.keys.counts_and_users_at(s, event_type, Interval.MINUTE, labels)
            for s in range(self.keys.shards)
        ]
        figures = await self._bucket_figures(UserSource.SETS, "", pairs)
        return [
            (sum(f[b][0] for f in figures), sum(f[b][1] for f in figures))
            for b in range(len(minutes))
        ]

    async def _bucket_figures(
        self, source: UserSource, page: str, pairs: list[list[tuple[str, str]]]
    ) -> list[list[tuple[int, int]]]:
        """(count, users) of each bucket of each shard (figures.lua): O(1) per bucket, in
        calls of at most FIGURES_PER_CALL and chunk_entries // 2 buckets."""
        step = max(1, min(FIGURES_PER_CALL, self.chunk_entries // 2))
        calls = [
            [
                (
                    [name for pair in shard_pairs[i : i + step] for name in pair],
                    [source.value, page],
                )
                for i in range(0, len(shard_pairs), step)
            ]
            for shard_pairs in pairs
        ]
        replies = await script_rounds(self.client, self._figures, calls, read_only=self.read_only)
        out = []
        for shard_replies in replies:
            flat = [int(v) for reply in shard_replies for v in reply]
            out.append([(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)])
        return out

    async def _page_figures(
        self, pages: Sequence[str], pairs: list[list[tuple[str, str]]]
    ) -> list[list[list[tuple[int, int]]]]:
        """Per page, per shard, (count, users) of each bucket of exact page figures: one
        ZMSCORE per bucket for all the pages (figures.lua, "pages"), not a call per page
        (top pages over a day of minutes asked 1,440 buckets for each page returned). At
        most FIGURES_PER_CALL buckets and PAGE_FIGURES_PER_CALL (bucket, page) pairs a call."""
        width = len(pages)
        step = max(
            1, min(FIGURES_PER_CALL, PAGE_FIGURES_PER_CALL // width, self.chunk_entries // 2)
        )
        calls = [
            [
                ([name for pair in shard_pairs[i : i + step] for name in pair], ["pages", *pages])
                for i in range(0, len(shard_pairs), step)
            ]
            for shard_pairs in pairs
        ]
        replies = await script_rounds(self.client, self._figures, calls, read_only=self.read_only)
        out: list[list[list[tuple[int, int]]]] = [[] for _ in pages]
        for shard_replies in replies:
            flat = [int(v) for reply in shard_replies for v in reply]
            for j, page_out in enumerate(out):
                page_out.append(
                    [(flat[i], flat[i + 1]) for i in range(2 * j, len(flat), 2 * width)]
                )
        return out

    async def series_figures(
        self,
        event_type: str,
        level: Interval,
        groups: Sequence[Sequence[datetime]],
        source: UserSource,
        page: str | None = None,
    ) -> BucketFigures:
        """The figures ``series`` starts from (O(1) commands per bucket) and the members
        its exact unions will merge: admission's cost, read before any merging.

        Raises QueryTooCostly past ``max_cost`` members."""
        return await self._read_figures(event_type, level, groups, source, [page or ""])

    async def series(
        self,
        event_type: str,
        level: Interval,
        groups: Sequence[Sequence[datetime]],
        source: UserSource,
        page: str | None = None,
        figures: BucketFigures | None = None,
    ) -> Series:
        """Count and unique users of each group of ``level`` buckets, plus their union.

        Counts and single buckets' users come from O(1) commands; unions of several
        buckets are PFCOUNTs (HyperLogLogs: ~2 us per key, and a query reads at most
        EA_MAX_QUERY_POINTS x 24 keys) or, exact, the members fetched in bounded rounds
        and united here (refused past max_cost members). ``figures``: ``series_figures``
        of the same buckets, when admission read them already.
        """
        if source in (UserSource.PAGE, UserSource.PAGE_HLL):
            assert page is not None
        (series,) = await self._unions(event_type, level, groups, source, [page or ""], figures)
        return series

    def _names(
        self,
        event_type: str,
        level: Interval,
        flat: Sequence[datetime],
        source: UserSource,
        pages: Sequence[str],
    ) -> list[list[list[tuple[str, str]]]]:
        """Per page, per shard, the (count, users) keys of each bucket."""
        # Only a page's HLL key names the page: the other sources' keys are built once.
        once = source is not UserSource.PAGE_HLL
        names = [
            [
                [self._pair(source, s, event_type, level, b, page) for b in flat]
                for s in range(self.keys.shards)
            ]
            for page in (pages[:1] if once else pages)
        ]
        return names * len(pages) if once else names

    async def _read_figures(
        self,
        event_type: str,
        level: Interval,
        groups: Sequence[Sequence[datetime]],
        source: UserSource,
        pages: Sequence[str],
    ) -> BucketFigures:
        """``series_figures`` of each page (one "" without a page), their cost together."""
        flat, _, unite = _spans(groups)
        names = self._names(event_type, level, flat, source, pages)
        if source is UserSource.PAGE:
            figures = await self._page_figures(pages, names[0])
        else:
            figures = await _few_at_once(
                [self._bucket_figures(source, p, n) for p, n in zip(pages, names, strict=True)]
            )
        # Each bucket's members are fetched once whatever the spans it is in (one set per
        # span is united from them): its users figure is what it adds.
        entries = 0
        if source.exact and unite:
            entries = sum(size for f in figures for shard in f for _, size in shard)
        if entries > self.max_cost:
            raise QueryTooCostly(entries, self.max_cost, "(bucket, user) entries")
        return BucketFigures(names, figures, entries)

    async def _unions(
        self,
        event_type: str,
        level: Interval,
        groups: Sequence[Sequence[datetime]],
        source: UserSource,
        pages: Sequence[str],
        sized: BucketFigures | None = None,
    ) -> list[Series]:
        """``series`` of each page (one "" without a page), their cost bounded together."""
        if sized is None:
            sized = await self._read_figures(event_type, level, groups, source, pages)
        names, figures = sized.names, sized.figures
        _, spans, unite = _spans(groups)
        if not source.exact:
            unions = await self._hll_unions(names, unite)
        else:
            unions = await _few_at_once(
                [
                    self._exact_unions(page_names, page_figures, unite, page, source)
                    for page, page_names, page_figures in zip(pages, names, figures, strict=True)
                ]
            )
        out = []
        for page_figures, page_unions in zip(figures, unions, strict=True):
            united = iter(page_unions)  # in the order of ``unite``
            points = []
            for span in spans:
                count = sum(f[b][0] for f in page_figures for b in span)
                users = next(united) if len(span) > 1 else sum(f[span[0]][1] for f in page_figures)
                points.append((count, users))
            total = next(united) if len(spans) > 1 else (points[0][1] if points else 0)
            out.append(Series(points=points, total_users=total))
        return out

    async def _hll_unions(
        self, names: list[list[list[tuple[str, str]]]], unite: list[range]
    ) -> list[list[int]]:
        """Per page, the estimated union of each span's HLLs, summed over the shards."""
        if not unite:
            return [[] for _ in names]
        async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
            for page_names in names:
                for span in unite:
                    for shard_names in page_names:
                        # Not pipe.pfcount(): redis-py blocks it in cluster pipelines,
                        # though these keys share one hash tag (one slot).
                        pipe.execute_command("PFCOUNT", *(shard_names[b][1] for b in span))
            flat = [int(n) for n in await pipe.execute()]
        shards, out, at = self.keys.shards, [], 0
        for _ in names:
            out.append(
                [sum(flat[at + i * shards : at + (i + 1) * shards]) for i in range(len(unite))]
            )
            at += len(unite) * shards
        return out

    async def _exact_unions(
        self,
        names: list[list[tuple[str, str]]],
        figures: list[list[tuple[int, int]]],
        unite: list[range],
        page: str,
        source: UserSource,
    ) -> list[int]:
        """The exact union of each span: the buckets' members fetched in bounded rounds.

        Users are disjoint across shards, so one set per span serves every shard."""
        if not unite:
            return []
        held = [
            Held(shard, shard_names[b][1], figures[shard][b][1])
            for shard, shard_names in enumerate(names)
            for b in range(len(shard_names))
        ]
        by_page = page if source is UserSource.PAGE else None
        fetched = await members(
            self.client, self._members, held, by_page, self.chunk_entries, read_only=self.read_only
        )
        width = len(names[0]) if names else 0
        out = []
        for span in unite:
            united: set[bytes] = set()
            for shard in range(len(names)):
                for b in span:
                    united.update(fetched[shard * width + b])
            out.append(len(united))
        return out

    def _pair(
        self,
        source: UserSource,
        shard: int,
        event_type: str,
        level: Interval,
        start: datetime,
        page: str,
    ) -> tuple[str, str]:
        """The (count, users) keys figures.lua reads for one bucket."""
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

    async def ranked_entries(
        self, event_type: str, level: Interval, starts: Sequence[datetime]
    ) -> Sized:
        """The keys a top-pages read over ``starts`` merges and their entries, sized with
        O(1) commands (one pipelined ZCARD each) before any merging: admission's cost.

        Raises QueryTooCostly past ``max_cost`` entries."""
        names = await self._ranked_keys(event_type, level, starts)
        sizes = await self._sizes(names)
        sized = Sized(names, sizes)
        if sized.entries > self.max_cost:
            raise QueryTooCostly(sized.entries, self.max_cost)
        return sized

    async def top_pages(
        self,
        event_type: str,
        level: Interval,
        starts: Sequence[datetime],
        limit: int,
        sized: Sized | None = None,
    ) -> Ranking:
        """The ``limit`` most counted pages over the buckets: count desc, then URL asc;
        and the events counted into OTHER_PAGE (buckets past EA_MAX_PAGES_PER_BUCKET).
        ``sized``: ``ranked_entries`` of the same buckets, when admission asked already.

        Raises QueryTooCostly past ``max_cost`` entries."""
        if sized is None:
            sized = await self.ranked_entries(event_type, level, starts)
        return await rank(
            self.client,
            self._ranked,
            sized.names,
            sized.sizes,
            limit,
            self.chunk_entries,
            read_only=self.read_only,
            whole_below=self.whole_below,
            try_share=self.try_share,
        )

    async def _ranked_keys(
        self, event_type: str, level: Interval, starts: Sequence[datetime]
    ) -> list[list[str]]:
        """Per shard, the ``:pages`` keys whose sum is the ranking over ``starts``.

        Each whole clock hour of minute buckets is read from its hour bucket: ingest adds
        every event to both in one call, so the hour holds the sum of its minutes, in as
        many entries as distinct pages (a page seen every minute: one entry, not 60; 300
        pages x 23 hours: 6,900 entries instead of 414,000). Unless the hour is capped
        (it holds OTHER_PAGE): then some of its pages are counted only in its minutes."""
        k = self.keys
        shards = range(k.shards)
        by_hour: dict[datetime, list[datetime]] = {}
        for b in starts:
            by_hour.setdefault(floor(b, Interval.HOUR), []).append(b)
        whole = [
            h
            for h, minutes in by_hour.items()
            if level is Interval.MINUTE and len(set(minutes)) == MINUTES_PER_HOUR
        ]
        capped: list[Any] = []
        if whole:
            async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
                for s in shards:
                    for h in whole:
                        pipe.zscore(k.pages(s, event_type, Interval.HOUR, h), OTHER_PAGE)
                capped = await pipe.execute()
        out = []
        for s in shards:
            hours = {h for i, h in enumerate(whole) if capped[s * len(whole) + i] is None}
            names: list[str] = []
            for h, minutes in by_hour.items():
                if h in hours:
                    names.append(k.pages(s, event_type, Interval.HOUR, h))
                else:
                    names.extend(k.pages(s, event_type, level, b) for b in minutes)
            out.append(names)
        return out

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
        """Distinct users of each page over the buckets: exact pairs, or page HLLs (the
        same bounded reads as ``series``, the pages' costs counted together)."""
        if not pages:
            return []
        series = await self._unions(event_type, level, [list(starts)], source, pages)
        return [s.total_users for s in series]

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


async def _few_at_once(work: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Each page's reads, PAGES_AT_ONCE pages at a time, the answers in order.

    One after another, top pages with limit=100 over 4 hours was 200 sequential round
    trips (12-17 s on a loaded machine); each call stays bounded by chunk_entries, so
    a few pages' calls in flight hold the engine no longer than one does."""
    gate = asyncio.Semaphore(PAGES_AT_ONCE)

    async def one(step: Coroutine[Any, Any, T]) -> T:
        async with gate:
            return await step

    # A TaskGroup: one page's error (engine down) cancels the others' reads; that error
    # is raised as itself (StorageUnavailable is a 503), not in an ExceptionGroup.
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(w)) for w in work]
    except ExceptionGroup as errors:
        raise errors.exceptions[0] from None
    return [t.result() for t in tasks]


def _spans(groups: Sequence[Sequence[datetime]]) -> tuple[list[datetime], list[range], list[range]]:
    """The buckets of the groups in order, each group's span of them, and the spans whose
    users need a union: each group of several buckets, and all of them for the total (one
    group's total is its own figure)."""
    flat = [b for group in groups for b in group]
    spans, at = [], 0
    for group in groups:
        spans.append(range(at, at + len(group)))
        at += len(group)
    unite = [span for span in spans if len(span) > 1]
    if len(spans) > 1:
        unite.append(range(len(flat)))
    return flat, spans, unite


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
