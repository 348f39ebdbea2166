"""Storage layer on real engines: sharded keys, batches, expiry."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from importlib import resources

from event_analytics.ingest import Ingestor
from event_analytics.model import EVENT_ADAPTER, Event
from event_analytics.store import Store
from event_analytics.store.clear import clear_day
from event_analytics.store.reads import Reads
from event_analytics.store.scripts import Lua, source
from event_analytics.store.streams import archive_lag_s
from event_analytics.timebucket import Interval, floor
from tests.backends import Backend
from tests.helpers import event


def _events(n: int, minute: datetime, rng: random.Random) -> list[Event]:
    return [
        EVENT_ADAPTER.validate_python(
            event(
                user=f"user{rng.randrange(300)}", ts=minute + timedelta(seconds=rng.uniform(0, 59))
            )
        )
        for _ in range(n)
    ]


def _run(db: Backend, shards: int, work, uniques: str = "approx"):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        # A prefix of its own: the session's service (and its archiver) share this engine.
        settings = db.settings(shards=shards, key_prefix="st:", uniques=uniques)
        store = Store.from_settings(settings)
        try:
            return await work(Ingestor(settings, store), store)
        finally:
            await store.close()

    return asyncio.run(main())


def test_sharded_batches_sum_exactly(db: Backend) -> None:
    rng = random.Random(7)
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    events = _events(1000, minute, rng)
    batch = events + events[:100]  # in-batch duplicates too

    async def work(ingestor: Ingestor, store: Store) -> tuple[list[bool], list[tuple[int, int]]]:
        now = datetime.now(UTC)
        flags = await store.ingest([ingestor.prepare(e, now) for e in batch])
        return flags, await Reads(store).minute_stats("page_view", [minute])

    flags, stats = _run(db, 4, work)
    assert flags == [True] * 1000 + [False] * 100
    assert stats == [(1000, len({e.user_id for e in events}))]

    client = db.client(decode_responses=True)
    keys = db.scan("st:*")
    tags = defaultdict(set)
    for key in keys:
        match = re.fullmatch(r"st:\{(\d+)\}:(.+)", key)
        assert match, key
        tags[int(match[1])].add(match[2])
    assert set(tags) == {0, 1, 2, 3}  # every shard got users
    # The shards' user sets are disjoint: unique users add up.
    label = minute.strftime("%Y-%m-%dT%H:%M")
    shard_users = [client.smembers(f"st:{{{s}}}:page_view:m:{label}:users") for s in range(4)]
    assert sum(len(u) for u in shard_users) == len(set().union(*shard_users))
    assert sum(client.xlen(f"st:{{{s}}}:stream") for s in range(4)) == 1000
    client.close()


def test_expiry_follows_retention(db: Backend) -> None:
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)

    async def work(ingestor: Ingestor, store: Store) -> list[bool]:
        e = EVENT_ADAPTER.validate_python(event(ts=ts))
        return await store.ingest([ingestor.prepare(e, datetime.now(UTC))])

    assert _run(db, 1, work) == [True]
    client = db.client(decode_responses=True)
    now = datetime.now(UTC).timestamp()
    m, h, d = ts.strftime("%Y-%m-%dT%H:%M"), ts.strftime("%Y-%m-%dT%H"), ts.strftime("%Y-%m-%d")
    expected = {
        f"st:{{0}}:page_view:m:{m}:count": ts.replace(second=0) + timedelta(minutes=1, days=7),
        f"st:{{0}}:page_view:m:{m}:users": ts.replace(second=0) + timedelta(minutes=1, days=7),
        f"st:{{0}}:page_view:h:{h}:count": ts.replace(minute=0, second=0)
        + timedelta(hours=1, days=90),
        f"st:{{0}}:page_view:h:{h}:hll": ts.replace(minute=0, second=0)
        + timedelta(hours=1, days=90),
        f"st:{{0}}:page_view:d:{d}:count": ts.replace(hour=0, minute=0, second=0)
        + timedelta(days=731),
        f"st:{{0}}:seen:{h}": ts.replace(minute=0, second=0)
        + timedelta(hours=1, days=7, minutes=6),
    }
    for key, when in expected.items():
        ttl = client.ttl(key)
        assert abs((now + ttl) - when.timestamp()) <= 2, key
    assert client.ttl("st:{0}:stream") == -1  # the stream is trimmed by the archiver, never expired
    client.close()


def test_every_key_expires_with_its_bucket(db: Backend) -> None:
    """Structures born late in a bucket (the first page URL after page-less events, exact
    sets after a switch to EA_UNIQUES=exact, a second page) get the bucket's expiry too.

    The script sets a key's expiry once, when a reply shows the key was just created: a
    key that missed it would live forever. Every key is checked against its bucket.
    """
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    steps = [
        ("approx", event(user="a", ts=ts, url=None, event_type="click")),
        ("approx", event(user="b", ts=ts, url="https://example.com/one", event_type="click")),
        ("approx", event(user="a", ts=ts, url="https://example.com/two")),
        ("exact", event(user="c", ts=ts, url="https://example.com/one")),
        ("exact", event(user="d", ts=ts, url="https://example.com/three", event_type="click")),
    ]
    for uniques, body in steps:

        async def work(ingestor: Ingestor, store: Store, body=body) -> list[bool]:  # type: ignore[no-untyped-def]
            e = EVENT_ADAPTER.validate_python(body)
            return await store.ingest([ingestor.prepare(e, datetime.now(UTC))])

        assert _run(db, 1, work, uniques=uniques) == [True]

    settings = db.settings()
    minute_end = ts.replace(second=0) + timedelta(minutes=1)
    hour_end = ts.replace(minute=0, second=0) + timedelta(hours=1)
    day_end = ts.replace(hour=0, minute=0, second=0) + timedelta(days=1)
    expected = {
        "m": minute_end + timedelta(seconds=settings.minute_retention_s),
        "h": hour_end + timedelta(seconds=settings.hour_retention_s),
        "d": day_end + timedelta(seconds=settings.day_retention_s),
        "seen": hour_end + timedelta(seconds=settings.dedup_window_s + 60),
    }
    client = db.client(decode_responses=True)
    now = datetime.now(UTC).timestamp()
    keys = sorted(k for k in db.scan("st:*") if not k.endswith(":stream"))
    kinds = defaultdict(list)
    for key in keys:
        kind = "seen" if ":seen:" in key else re.search(r":([mhd]):", key)[1]  # type: ignore[index]
        kinds[kind].append(key)
        ttl = client.ttl(key)
        assert ttl > 0, key
        assert abs((now + ttl) - expected[kind].timestamp()) <= 2, key
    client.close()
    # Every kind of structure was written, so every kind was checked.
    suffixes = {
        re.sub(r":[0-9a-f]{16}$", "", k.split(":", 5)[-1]) for k in keys if ":seen:" not in k
    }
    assert {"count", "users", "pages", "page_users", "hll", "page_hll"} <= suffixes, keys
    assert len(kinds["m"]) == 2 * 4 and kinds["seen"]


def test_every_script_is_a_registered_file_the_engine_compiles(db: Backend) -> None:
    # One registry: each store/*.lua is a Lua member and each member is a file, so no
    # script hides inline in a module or sits unused.
    files = {
        f.name.removesuffix(".lua")
        for f in resources.files("event_analytics.store").iterdir()
        if f.name.endswith(".lua")
    }
    assert files == {script.value for script in Lua}
    client = db.client()
    try:
        for script in Lua:
            # SCRIPT LOAD compiles it: a syntax error is refused here, not on first use.
            sha = client.script_load(source(script))
            assert sha == hashlib.sha1(source(script).encode()).hexdigest(), script
    finally:
        client.close()


def test_clear_day_deletes_exactly_that_days_keys(db: Backend) -> None:
    # Rebuild clears a day before replaying it: that day's buckets of one type (per-page
    # HLLs included), then its dedup sets; the other day and the other type stay.
    day = floor(datetime.now(UTC) - timedelta(days=3), Interval.DAY)
    offsets = [
        timedelta(minutes=30),
        timedelta(hours=13, minutes=59),
        timedelta(hours=23, minutes=59, seconds=59),
        timedelta(days=1),
    ]
    bodies = [
        event(user=f"u{i}", ts=day + offset, url=f"https://example.com/{i % 3}", event_type=kind)
        for i, offset in enumerate(offsets * 6)
        for kind in ("page_view", "click")
    ]
    label = day.strftime("%Y-%m-%d")

    def of_day(name: str, kind: str | None) -> bool:
        if kind is None:
            return re.fullmatch(rf"st:\{{\d+\}}:seen:{label}T\d\d", name) is not None
        return re.match(rf"st:\{{\d+\}}:{kind}:[mhd]:{label}[T:]", name) is not None

    async def work(ingestor: Ingestor, store: Store) -> list[list[str]]:
        now = datetime.now(UTC)
        events = [EVENT_ADAPTER.validate_python(b) for b in bodies]
        assert all(await store.ingest([ingestor.prepare(e, now) for e in events]))
        seen = [db.scan("st:*")]
        await clear_day(store, day, "page_view")
        seen.append(db.scan("st:*"))
        await clear_day(store, day, None)
        seen.append(db.scan("st:*"))
        return seen

    before, typed, dedup = _run(db, 4, work)
    assert any(":page_hll:" in k and of_day(k, "page_view") for k in before)
    assert any(of_day(k, "click") for k in before) and any(of_day(k, None) for k in before)
    assert typed == [k for k in before if not of_day(k, "page_view")]
    assert dedup == [k for k in typed if not of_day(k, None)]
    assert any(k.endswith(":stream") for k in dedup)  # the next day and the streams stay
    assert any(
        f":page_view:d:{(day + timedelta(days=1)).strftime('%Y-%m-%d')}:" in k for k in dedup
    )


def test_archive_lag_is_the_age_of_the_oldest_unarchived_event() -> None:
    # One definition for /metrics and /persistent/status.
    assert archive_lag_s({"oldest_unarchived_ms": 0}, now_s=1_000.0) == 0.0  # caught up
    assert archive_lag_s({"oldest_unarchived_ms": 990_250}, now_s=1_000.0) == 9.75
    # This host's clock behind the engine's: no negative lag.
    assert archive_lag_s({"oldest_unarchived_ms": 1_000_500}, now_s=1_000.0) == 0.0
