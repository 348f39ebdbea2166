"""Heavy reads are split (issue 13): time series, unique users over long ranges, top
pages and realtime answer exactly as a model of the events over many buckets, while no
single engine call merges more than the chunk bound of entries.

The engine itself is the witness: SLOWLOG with a threshold of 0 records every command of
the reads with its arguments, and each one's size is checked (entries of the keys it
names, its COUNT/LIMIT, its number of keys), not its duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_analytics.counter_queries import plan_series
from event_analytics.errors import QueryTooCostly
from event_analytics.series import Series, UserSource
from event_analytics.store import IngestWriter
from event_analytics.store.connect import connect_reads
from event_analytics.store.reads import Reads
from event_analytics.timebucket import Interval, floor
from tests.backends import Backend
from tests.cluster import ClusterProcess
from tests.direct import ingest
from tests.helpers import event

CHUNK = 24  # entries per engine call: tiny, so every read takes many rounds
PAGES = [f"https://example.com/r{i}" for i in range(6)]
_prefixes = itertools.count()


@pytest.fixture
def base() -> datetime:
    """Three whole hours well in the past."""
    return floor(datetime.now(UTC) - timedelta(hours=5), Interval.HOUR)


@contextlib.contextmanager
def engine_log(db: Backend) -> Iterator[list[list[bytes]]]:
    """Every command every node runs inside the block, arguments included (SLOWLOG)."""
    clients = [redis.Redis(port=n.port, socket_timeout=10) for n in db.nodes()]
    for c in clients:
        c.config_set("slowlog-log-slower-than", 0)
        c.config_set("slowlog-max-len", 200_000)
        c.slowlog_reset()
    calls: list[list[bytes]] = []
    try:
        yield calls
    finally:
        for c in clients:
            calls.extend(_args(e) for e in c.slowlog_get(200_000))
            c.config_set("slowlog-log-slower-than", 10_000)
            c.close()


def _args(entry: dict[str, Any]) -> list[bytes]:
    command = entry["command"]
    return command.split(b" ") if isinstance(command, bytes) else [str(command).encode()]


def _size(c: Any, call: list[bytes], prefix: bytes) -> int | None:
    """The entries a read call of ours merged (None: not one of the reads' calls)."""
    if not any(prefix in a for a in call) or len(call) < 2:
        return None
    name = call[0].upper()
    if name in (b"EVALSHA", b"EVALSHA_RO", b"EVAL_RO"):
        n = int(call[2])
        names, argv = call[3 : 3 + n], call[3 + n :]
        if names[0].endswith(b":users"):  # members.lua: whole sets
            return sum(int(c.scard(k)) for k in names)
        if names[0].endswith(b":page_users"):  # members.lua: one page's ranges
            lo, hi = b"[" + argv[1] + b"\0", b"(" + argv[1] + b"\1"
            return sum(int(c.zlexcount(k, lo, hi)) for k in names)
        return n  # figures.lua: two O(1) commands per bucket
    if name == b"SMEMBERS":
        return int(c.scard(call[1]))
    if name == b"SSCAN":
        return int(call[call.index(b"COUNT") + 1])
    if name == b"ZRANGEBYLEX":
        if b"LIMIT" in call:
            return int(call[call.index(b"LIMIT") + 2])
        return int(c.zlexcount(call[1], call[2], call[3]))
    if name == b"ZUNION":
        return sum(int(c.zcard(k)) for k in call[2 : 2 + int(call[1])])
    if name == b"ZRANGE":  # top pages: one key read whole
        return int(c.zcard(call[1]))
    if name in (b"ZCARD", b"PFCOUNT"):
        return 1  # O(1) per key (a PFCOUNT of many HLLs: ~2 us per key, bounded by points)
    return None


def _model(
    sent: Sequence[tuple[datetime, str, str]],
    level: Interval,
    groups: Sequence[Sequence[datetime]],
    page: str | None = None,
) -> Series:
    # The events of each bucket start, floored once (not once per group: 180 minute
    # groups times ~2,000 events was a third of the cluster case's CPU).
    by_start: dict[datetime, list[str]] = defaultdict(list)
    for ts, u, p in sent:
        if page in (None, p):
            by_start[floor(ts, level)].append(u)
    points, every = [], set()
    for group in groups:
        hits = [u for start in set(group) for u in by_start.get(start, ())]
        users = set(hits)
        every |= users
        points.append((len(hits), len(users)))
    return Series(points=points, total_users=len(every))


class _AskedOnce:
    """A client whose answers are kept: checking the calls' sizes asks the size of the
    same key for every call that named it (~80,000 round trips on the cluster), and the
    keys no longer change once the reads are done."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._answers: dict[tuple[Any, ...], Any] = {}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        def ask(*args: Any) -> Any:
            key = (name, *args)
            if key not in self._answers:
                self._answers[key] = method(*args)
            return self._answers[key]

        return ask


def _read(db: Backend, prefix: str, work: Callable[[Reads], Any], chunk: int = CHUNK) -> Any:
    async def main() -> Any:
        store = IngestWriter.from_settings(db.settings(key_prefix=prefix, uniques="exact"))
        try:
            return await work(Reads(store, max_cost=100_000, chunk_entries=chunk))
        finally:
            await store.close()

    return asyncio.run(main())


events = st.lists(
    st.tuples(
        st.integers(0, 179),  # minute of the three hours
        st.integers(0, 59),  # user
        st.sampled_from(PAGES),
    ),
    min_size=1,
    max_size=400,
)


@pytest.mark.slow
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(drawn=events)
def test_split_reads_answer_like_the_model_with_bounded_calls(
    db: Backend, base: datetime, drawn: list[tuple[int, int, str]]
) -> None:
    """Minute and hour series, a page's daily series (a union of hours), top pages with
    their users and the totals over every bucket: as the model, each call <= CHUNK."""
    prefix = f"rr{next(_prefixes)}:"
    sent = [(base + timedelta(minutes=m, seconds=7), f"user-{u}", p) for m, u, p in drawn]
    # Two more users each in many minutes: their sets are bigger than one call's bound.
    sent += [(base + timedelta(minutes=m), f"big-{i}", PAGES[0]) for m in range(0, 180, 7)
             for i in range(CHUNK + 5)]  # fmt: skip
    bodies = [event(user=u, ts=ts, url=p) for ts, u, p in sent]
    assert all(ingest(db.env, bodies, prefix=prefix))
    end = base + timedelta(hours=3)
    plans = [
        plan_series("page_view", Interval.MINUTE, base, end, None,
                    now=end, uniques="exact", max_points=1440),
        plan_series("page_view", Interval.HOUR, base, end, None,
                    now=end, uniques="exact", max_points=1440),
        plan_series("page_view", Interval.DAY, base, end, PAGES[0],
                    now=end, uniques="exact", max_points=1440),
        plan_series("page_view", Interval.MINUTE, base, end, PAGES[1],
                    now=end, uniques="exact", max_points=1440),
    ]  # fmt: skip
    minutes = [base + timedelta(minutes=m) for m in range(180)]

    async def work(reads: Reads) -> tuple[Any, ...]:
        series = [
            await reads.series(p.event_type, p.level, p.groups, p.source, p.page_url) for p in plans
        ]
        top = (await reads.top_pages("page_view", Interval.MINUTE, minutes, 4)).pages
        users = await reads.page_users("page_view", Interval.MINUTE, minutes, [u for u, _ in top])
        stats = await reads.minute_stats("page_view", minutes)
        return series, top, users, stats

    with engine_log(db) as calls:
        series, top, users, stats = _read(db, prefix, work)
    for plan, got in zip(plans, series, strict=True):
        assert got == _model(sent, plan.level, plan.groups, plan.page_url), plan
    counts = Counter(p for _, _, p in sent)
    want_top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:4]
    assert top == want_top
    assert users == [len({u for _, u, p in sent if p == url}) for url, _ in top]
    assert stats == _model(sent, Interval.MINUTE, [[m] for m in minutes]).points
    with contextlib.closing(db.client()) as c:
        once = _AskedOnce(c)
        sizes = [s for call in calls if (s := _size(once, call, prefix.encode())) is not None]
    assert len(sizes) > 50, "the reads made too few calls to have been split"
    assert max(sizes) <= CHUNK, max(sizes)


def test_exact_unions_past_the_cost_bound_are_refused(db: Backend, base: datetime) -> None:
    prefix = f"rr{next(_prefixes)}:"
    bodies = [event(user=f"u{i}", ts=base + timedelta(minutes=i % 30)) for i in range(300)]
    assert all(ingest(db.env, bodies, prefix=prefix))
    minutes = [[base + timedelta(minutes=m)] for m in range(30)]

    async def work(reads: Reads) -> Series:
        reads.max_cost = 299
        return await reads.series("page_view", Interval.MINUTE, minutes, UserSource.SETS)

    with pytest.raises(QueryTooCostly, match="300 \\(bucket, user\\) entries"):
        _read(db, prefix, work)


READS = ("evalsha_ro", "eval_ro", "zunion", "zrange", "smembers", "zcard", "zrangebylex", "sscan")


def _read_calls(node: Any) -> int:
    with contextlib.closing(redis.Redis(port=node.port, socket_timeout=10)) as c:
        stats = c.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in READS)


@pytest.mark.parametrize("engine", ["cluster"], indirect=True)  # replicas: the 3+3 cluster
def test_cluster_reads_from_replicas(db: Backend, base: datetime) -> None:
    """EA_READ_FROM_REPLICAS: every analytics read of the 3+3 cluster reaches a replica
    (their INFO commandstats count the reads, the masters' do not), ingest writes to the
    masters, and the answers are the model's."""
    assert isinstance(db.engine, ClusterProcess)
    prefix = f"rr{next(_prefixes)}:"
    sent = [(base + timedelta(minutes=i % 40, seconds=3), f"u{i % 70}", PAGES[i % 4])
            for i in range(600)]  # fmt: skip
    assert all(ingest(db.env, [event(user=u, ts=ts, url=p) for ts, u, p in sent], prefix=prefix))
    masters = db.engine.masters()
    replicas = [n for n in db.engine.alive() if n not in masters]
    assert len(replicas) == 3
    for node in masters:  # replication is asynchronous: until each replica has it all
        with contextlib.closing(redis.Redis(port=node.port, socket_timeout=10)) as c:
            assert c.execute_command("WAIT", 1, 5000) == 1
    for node in db.engine.alive():
        with contextlib.closing(redis.Redis(port=node.port, socket_timeout=10)) as c:
            c.config_resetstat()
    minutes = [base + timedelta(minutes=m) for m in range(40)]
    settings = db.settings(key_prefix=prefix, uniques="exact", read_from_replicas=True)

    async def main() -> tuple[Any, ...]:
        store = IngestWriter.from_settings(settings)
        client, read_only = connect_reads(settings)
        try:
            reads = Reads(store, client, chunk_entries=CHUNK, read_only=read_only)
            series = await reads.series(
                "page_view", Interval.MINUTE, [[m] for m in minutes], UserSource.SETS
            )
            top = (await reads.top_pages("page_view", Interval.MINUTE, minutes, 3)).pages
            users = await reads.page_users(
                "page_view", Interval.MINUTE, minutes, [u for u, _ in top]
            )
            return series, top, users
        finally:
            if client is not None:
                await client.aclose()
            await store.close()

    series, top, users = asyncio.run(main())
    assert series == _model(sent, Interval.MINUTE, [[m] for m in minutes])
    counts = Counter(p for _, _, p in sent)
    assert top == sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    assert users == [len({u for _, u, p in sent if p == url}) for url, _ in top]
    on_replicas = [_read_calls(n) for n in replicas]
    assert all(n > 0 for n in on_replicas), on_replicas  # every shard's slots read
    assert [_read_calls(n) for n in masters] == [0, 0, 0]
