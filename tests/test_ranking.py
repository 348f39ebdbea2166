"""Top pages from the heads of the buckets (issue 23, store/ranking.py): the threshold
algorithm answers as the model and as reading every bucket whole, on every engine, with
ties, pages past the per-bucket cap and any share of work it may try; and over a day-like
shape (every page once in every bucket, all tied) it decides from the heads, reading no
bucket whole: the engine's own log (SLOWLOG) is the witness, not a timing.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_analytics.ingest import Ingestor
from event_analytics.model import EVENT_ADAPTER
from event_analytics.store import IngestWriter
from event_analytics.store.ranking import Ranking
from event_analytics.store.reads import Reads
from event_analytics.timebucket import Interval, floor
from tests.backends import Backend
from tests.helpers import event
from tests.test_read_rounds import engine_log

HOURS = 6
_prefixes = itertools.count()
URL = "https://example.com/{}"


def _base() -> datetime:
    return floor(datetime.now(UTC) - timedelta(hours=HOURS + 2), Interval.HOUR)


def _rank(
    db: Backend,
    prefix: str,
    sent: Sequence[tuple[int, str, str]],
    limit: int,
    variants: Sequence[dict[str, int]],
    max_pages: int = 1000,
) -> list[Ranking]:
    """Ingest ``sent`` (hour, user, page) through the real ingest path, then rank the
    hours' pages once per ``variants`` (Reads' ranking thresholds)."""
    base = _base()
    config = db.settings(key_prefix=prefix, uniques="exact", max_pages_per_bucket=max_pages)
    bodies = [
        event(user=u, url=p, ts=base + timedelta(hours=h, minutes=i % 60))
        for i, (h, u, p) in enumerate(sent)
    ]
    hours = [base + timedelta(hours=h) for h in range(HOURS)]

    async def main() -> list[Ranking]:
        store = IngestWriter.from_settings(config)
        ingestor = Ingestor(config, store)
        try:
            now = datetime.now(UTC)
            prepared = [ingestor.prepare(EVENT_ADAPTER.validate_python(b), now) for b in bodies]
            assert all(await store.ingest(prepared))
            out = []
            for kw in variants:
                reads = Reads(store, max_cost=10**6, chunk_entries=40, **kw)
                out.append(await reads.top_pages("page_view", Interval.HOUR, hours, limit))
            return out
        finally:
            await store.close()

    return asyncio.run(main())


def _model(sent: Sequence[tuple[int, str, str]], limit: int) -> list[tuple[str, int]]:
    counts = Counter(p for _, _, p in sent)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


WHOLE = {"whole_below": 10**9}  # every bucket read whole, as before the heads


@st.composite
def _events(draw: Any) -> list[tuple[int, str, str]]:
    """Events over HOURS hours: a few count values (many ties), pages shared by some
    hours and not others, URLs that sort apart from their counts."""
    pages = draw(st.integers(3, 40))
    out = []
    for page in range(pages):
        url = URL.format(draw(st.sampled_from(["a", "b", "ab", "z", ""])) + str(page))
        for hour in draw(st.sets(st.integers(0, HOURS - 1), min_size=1)):
            out += [(hour, f"u{page}-{hour}-{i}", url) for i in range(draw(st.integers(1, 3)))]
    return out


@pytest.mark.slow
@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sent=_events(), limit=st.integers(1, 8), share=st.sampled_from([1, 4, 10**6]))
def test_the_heads_rank_as_the_model_and_the_whole_read(
    db: Backend, sent: list[tuple[int, str, str]], limit: int, share: int
) -> None:
    """Any share of work: 1 lets the heads run to the end of every bucket, 10**6 gives
    up at once and reads them whole; between, wherever it stops."""
    prefix = f"rk{next(_prefixes)}:"
    heads, whole = _rank(db, prefix, sent, limit, [{"whole_below": 0, "try_share": share}, WHOLE])
    assert heads == whole == Ranking(_model(sent, limit), 0)


def test_capped_buckets_rank_as_the_whole_read(db: Backend) -> None:
    """Past EA_MAX_PAGES_PER_BUCKET a bucket counts new pages into OTHER_PAGE: never
    ranked, its events summed over every bucket as the whole read sums them."""
    sent = [
        (h, f"u{h}-{p}-{i}", URL.format(p))
        for h in range(HOURS)
        for p in range(60)
        for i in range(1 + (p + h) % 3)
    ]
    # 60 pages an hour: past the cap of 3 on every shard of the cluster's 16 too.
    heads, whole = _rank(db, f"rk{next(_prefixes)}:", sent, 5, [{"whole_below": 0}, WHOLE], 3)
    assert heads == whole
    assert heads.other > 0
    assert heads.pages


WHOLE_RANGES = ([b"0", b"-1"], [b"1", b"1"], [b"(1", b"+inf"])


def _whole_reads(calls: list[list[bytes]], prefix: bytes) -> int:
    """ZRANGE ... 0 -1, or its pages counted once and the others (1 1 / (1 +inf
    BYSCORE): a bucket read whole."""
    return sum(
        1 for c in calls if c[0].upper() == b"ZRANGE" and prefix in c[1] and c[2:4] in WHOLE_RANGES
    )


# One node: on the cluster's 16 shards each page of an hour is in one shard's key of 16,
# and summing a page seen at the heads asks every key (16 x 6 here): past the share of
# work allowed, so there it is read whole, as below.
@pytest.mark.parametrize("engine", ["valkey", "redis"], indirect=True)
def test_a_day_of_tied_pages_is_decided_from_the_heads(db: Backend) -> None:
    """The day's worst shape, scaled down: every page once in every hour, all tied. The
    ``limit`` first URLs are the first of every bucket, so the first entries of each
    decide; every bucket was read whole before (2,400 entries here)."""
    prefix = f"rk{next(_prefixes)}:"
    sent = [(h, f"u{h}-{p}", URL.format(p)) for h in range(HOURS) for p in range(400)]
    with engine_log(db) as calls:
        (heads,) = _rank(db, prefix, sent, 10, [{"whole_below": 0}])
    assert heads == Ranking(_model(sent, 10), 0)
    assert _whole_reads(calls, prefix.encode()) == 0


def test_pages_spread_thin_are_read_whole(db: Backend) -> None:
    """Each page once a day, all tied: no head bounds the pages unseen below the
    ``limit``-th, so after a share of the work the buckets are read whole."""
    prefix = f"rk{next(_prefixes)}:"
    sent = [(p % HOURS, f"u{p}", URL.format(p)) for p in range(2400)]
    with engine_log(db) as calls:
        (heads,) = _rank(db, prefix, sent, 10, [{"whole_below": 0}])
    assert heads == Ranking(_model(sent, 10), 0)
    assert _whole_reads(calls, prefix.encode()) > 0
