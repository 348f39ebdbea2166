"""Top pages over many ``:pages`` keys, exact: the top of each key first, every entry
only when those tops do not decide.

A ranking sums each page's counts over the keys (buckets, and shards: users are split
across shards, pages are not). Reading every key whole moves every (bucket, page) entry
out of the engine: a day of 20,000 pages an hour is 480,000 entries, most of a second
of the engine's and this process's time. The threshold algorithm (Fagin, Lotem and
Naor, 2001) decides the top ``limit`` from the head of each key instead: read each key
from its highest counts down (ranked.lua: count descending, then URL ascending, the
ranking's own order), get every page seen there summed over all keys (ZMSCORE), and
stop when no page unseen can rank above the ``limit``-th. A page seen nowhere has, in
each key not read to its end, a count at most that of the key's last entry read; so its
sum is at most T, the sum of those counts, and if it is exactly T it is after the last
entry read in every such key: its URL is greater than theirs. Counts are positive
(ingest only adds), so an absent page adds less than any count of the key.

When the heads do not decide early (counts spread evenly over many pages that each
appear in few keys), the attempt stops at a share of the whole read's work and the keys
are read whole: at worst ~1/TRY_SHARE more work than reading them whole at once.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from redis.commands.core import AsyncScript

from event_analytics.keys import OTHER_PAGE
from event_analytics.store.connect import Client
from event_analytics.store.errors import engine_errors
from event_analytics.store.rounds import script_rounds

OTHER = OTHER_PAGE.encode()
# Entries of each key read in the first round (at least ``limit``); doubled each round.
FIRST_DEPTH = 16
# A ranking of at most this many entries is read whole: the heads would be most of it.
WHOLE_BELOW = 5_000
# The heads may cost at most 1/TRY_SHARE of the entries a whole read moves.
TRY_SHARE = 4


class Ranking(NamedTuple):
    """Top pages, and the events of pages past EA_MAX_PAGES_PER_BUCKET (not ranked)."""

    pages: list[tuple[str, int]]  # (URL, events), count desc then URL asc
    other: int  # events counted into keys.OTHER_PAGE; 0 = no bucket was capped


@dataclass(slots=True)
class _Head:
    """One key read from its top: the cursor after its last entry read, and that entry."""

    shard: int
    name: str
    level: bytes = b"+inf"  # the score level to read next; b"" = read to its end
    read: int = 0  # that level's members read already
    count: int = 0  # the last entry's count and URL
    page: bytes = b""

    @property
    def open(self) -> bool:
        return self.level != b""


async def rank(
    client: Client,
    script: AsyncScript,
    names: Sequence[Sequence[str]],
    sizes: Sequence[Sequence[int]],
    limit: int,
    chunk_entries: int,
    *,
    read_only: bool,
    whole_below: int = WHOLE_BELOW,
    try_share: int = TRY_SHARE,
) -> Ranking:
    """The ``limit`` most counted pages summed over the keys (``names[shard]``, their
    ZCARDs ``sizes[shard]``), count desc then URL asc; and the events counted into
    OTHER_PAGE. Every engine call reads at most ~``chunk_entries`` entries.

    ``whole_below``, ``try_share``: WHOLE_BELOW and TRY_SHARE (tests set them)."""
    entries = sum(map(sum, sizes))
    if entries > whole_below and limit > 0:
        heads = [
            _Head(shard, name)
            for shard, (shard_names, shard_sizes) in enumerate(zip(names, sizes, strict=True))
            for name, size in zip(shard_names, shard_sizes, strict=True)
            if size
        ]
        decided = await _from_heads(
            client, script, heads, limit, entries // try_share, chunk_entries, read_only
        )
        if decided is not None:
            return decided
    totals = await read_whole(client, names, sizes, chunk_entries)
    other = totals.pop(OTHER, 0)  # counted, never ranked
    return _ranking(totals, limit, other)


async def _from_heads(
    client: Client,
    script: AsyncScript,
    heads: list[_Head],
    limit: int,
    work: int,
    chunk_entries: int,
    read_only: bool,
) -> Ranking | None:
    """The threshold algorithm over ``heads``; None when it did not decide within
    ``work`` entries read and scores looked up."""
    totals: dict[bytes, int] = {}
    summed = {OTHER}  # pages summed over every key already; OTHER's sum is ``other``
    (other,) = await _sums(client, heads, [OTHER], chunk_entries)
    work -= len(heads)
    depth = max(1, min(max(limit, FIRST_DEPTH), chunk_entries))
    while work >= depth * sum(h.open for h in heads):
        seen: list[bytes] = []
        work -= await _read_heads(client, script, heads, depth, chunk_entries, read_only, seen)
        fresh = [p for p in dict.fromkeys(seen) if p not in summed]
        if work < len(fresh) * len(heads):
            return None
        work -= len(fresh) * len(heads)
        for page, total in zip(
            fresh, await _sums(client, heads, fresh, chunk_entries), strict=True
        ):
            totals[page] = total
        summed.update(fresh)
        top = _ranking(totals, limit, other)
        if not any(h.open for h in heads):
            return top  # every entry was read
        if len(top.pages) == limit and _decided(top.pages[-1], heads):
            return top
        depth = min(2 * depth, max(chunk_entries, depth))
    return None


def _decided(last: tuple[str, int], heads: Sequence[_Head]) -> bool:
    """Whether no page unseen can rank before ``last``: the ``limit``-th so far."""
    page, count = last
    still = [h for h in heads if h.open]
    bound = sum(h.count for h in still)
    return count > bound or (count == bound and page.encode() <= max(h.page for h in still))


async def _read_heads(
    client: Client,
    script: AsyncScript,
    heads: Sequence[_Head],
    depth: int,
    chunk_entries: int,
    read_only: bool,
    seen: list[bytes],
) -> int:
    """The next ``depth`` entries of every open head (ranked.lua), one call per shard
    and round, each of at most ~``chunk_entries`` entries; their URLs appended to
    ``seen``. Returns the entries read."""
    per_call = max(1, chunk_entries // depth)
    by_shard: dict[int, list[_Head]] = {}
    for h in heads:
        if h.open:
            by_shard.setdefault(h.shard, []).append(h)
    groups = [
        [shard_heads[i : i + per_call] for i in range(0, len(shard_heads), per_call)]
        for shard_heads in by_shard.values()
    ]
    calls = [
        [
            ([h.name for h in group], [depth, *(v for h in group for v in (h.level, h.read))])
            for group in shard_groups
        ]
        for shard_groups in groups
    ]
    replies = await script_rounds(client, script, calls, read_only=read_only)
    read = 0
    for shard_groups, shard_replies in zip(groups, replies, strict=True):
        for group, reply in zip(shard_groups, shard_replies, strict=True):
            for h, got in zip(group, reply, strict=True):
                h.level, h.read = got[0], int(got[1])
                if len(got) > 2:
                    h.page, h.count = got[-2], int(got[-1])
                    seen.extend(got[2::2])
                    read += (len(got) - 2) // 2
    return read


async def _sums(
    client: Client, heads: Sequence[_Head], pages: list[bytes], chunk_entries: int
) -> list[int]:
    """Each page's count summed over every key (ZMSCORE: O(1) a page and key), in
    pipelines of at most ~``chunk_entries`` lookups."""
    sums = [0] * len(pages)
    step = max(1, min(len(pages), chunk_entries))
    commands = [(h.name, at) for h in heads for at in range(0, len(pages), step)]
    per_round = max(1, chunk_entries // step)
    for i in range(0, len(commands), per_round):
        async with engine_errors(), client.pipeline(transaction=False) as pipe:
            for name, at in commands[i : i + per_round]:
                pipe.execute_command("ZMSCORE", name, *pages[at : at + step])
            replies = await pipe.execute()
        for (_, at), scores in zip(commands[i : i + per_round], replies, strict=True):
            for j, score in enumerate(scores, at):
                if score is not None:
                    sums[j] += int(score)
    return sums


async def read_whole(
    client: Client, names: Sequence[Sequence[str]], sizes: Sequence[Sequence[int]], budget: int
) -> dict[bytes, int]:
    """Every page's count summed over the keys, each key read whole."""
    chunks = [_chunks(n, z, budget) for n, z in zip(names, sizes, strict=True)]
    # Each key read whole by plain ZRANGEs (read-only, no script: a replica serves
    # them as they are) and summed here with bytes keys; every page is needed
    # from every key, or a page ranked just below the limit in each could be missed
    # although first in the sum. Not ZUNION of a chunk's keys: the engine builds and
    # sorts a sorted set for its reply, ~10 x the engine time of ZRANGE per entry
    # (benchmarks/top_pages_day.py: a day of 20,000 pages an hour, 24 hour keys,
    # 2.4 s of engine time against 0.1 s), and the engine is what ingest shares. The
    # price: many keys holding the same pages (118 minutes x 1,000 pages) are summed
    # here rather than in the engine, ~3 x less engine time (20-40 ms against 90-120
    # at load 14) for ~6 x the CPU of this process (90-130 ms against 15), which
    # runs niced in a query process.
    totals: Counter[bytes] = Counter()
    for round_ in range(max((len(c) for c in chunks), default=0)):
        # A round: at most one chunk per shard, its keys' ZRANGEs pipelined (on a
        # cluster, shards on other masters run in parallel); the next round only
        # after this one answered, so ingest's calls run in between.
        async with engine_errors(), client.pipeline(transaction=False) as pipe:
            for shard_chunks in chunks:
                if round_ < len(shard_chunks):
                    for name in shard_chunks[round_]:
                        # The pages counted once (most of a long tail, all of a day of
                        # pages once an hour) as bare URLs, counted by Counter.update
                        # in C; the others with their counts. The same entries as one
                        # ZRANGE WITHSCORES, without a score and a Python step each.
                        pipe.execute_command("ZRANGE", name, 1, 1, "BYSCORE")
                        pipe.execute_command("ZRANGE", name, "(1", "+inf", "BYSCORE", "WITHSCORES")
            replies = await pipe.execute()
        for ones, more in zip(replies[0::2], replies[1::2], strict=True):
            totals.update(ones)
            # redis-py 8 pairs a WITHSCORES reply itself; older ones leave it flat.
            pairs = more if more and isinstance(more[0], list | tuple) else _paired(more)
            for page, score in pairs:
                totals[page] += int(score)
    return totals


def _ranking(totals: dict[bytes, int], limit: int, other: int) -> Ranking:
    top = heapq.nsmallest(limit, totals.items(), key=lambda item: (-item[1], item[0]))
    return Ranking([(page.decode(), count) for page, count in top], other)


def _chunks(names: Sequence[str], sizes: Sequence[int], budget: int) -> list[list[str]]:
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


def _paired(flat: list[Any]) -> Iterator[tuple[Any, Any]]:
    it = iter(flat)
    return zip(it, it, strict=True)
