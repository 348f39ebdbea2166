"""Storage layer on real engines: sharded keys, batches, expiry."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest

from event_analytics.archive import files
from event_analytics.archive.rebuild import prepare_archived, rebuild
from event_analytics.archive.record import Record, encode
from event_analytics.ingest import Ingestor
from event_analytics.keys import Keys
from event_analytics.model import EVENT_ADAPTER, Event
from event_analytics.store import IngestWriter
from event_analytics.store.clear import clear_day
from event_analytics.store.ingest_call import ARG_HEADER, KEY_HEADER
from event_analytics.store.prepared import DEDUP_GENERATIONS
from event_analytics.store.reads import Reads
from event_analytics.store.scripts import Lua, call_per_shard, source
from event_analytics.store.streams import archive_lag_s
from event_analytics.store.writer import AGGREGATE_ABOVE
from event_analytics.timebucket import Interval, floor, to_utc
from event_analytics.timebucket import label as bucket_label
from tests.backends import Backend
from tests.helpers import event, run_store


def _events(n: int, minute: datetime, rng: random.Random) -> list[Event]:
    return [
        EVENT_ADAPTER.validate_python(
            event(
                user=f"user{rng.randrange(300)}", ts=minute + timedelta(seconds=rng.uniform(0, 59))
            )
        )
        for _ in range(n)
    ]


def _run(  # type: ignore[no-untyped-def]
    db: Backend,
    shards: int,
    work,
    uniques: str = "approx",
    aggregate_above: int = AGGREGATE_ABOVE,
    prefix: str = "st:",
):
    # A prefix of its own: the session's service (and its archiver) share this engine.
    return run_store(db, work, aggregate_above, shards=shards, key_prefix=prefix, uniques=uniques)


def test_sharded_batches_sum_exactly(db: Backend) -> None:
    rng = random.Random(7)
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    events = _events(1000, minute, rng)
    batch = events + events[:100]  # in-batch duplicates too

    async def work(
        ingestor: Ingestor, store: IngestWriter
    ) -> tuple[list[bool], list[tuple[int, int]]]:
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
    # One stream entry per shard and call, holding its new events' records, one per line
    # (two calls per shard: the events whose id lives on their user's shard, the others).
    entries = [e for s in range(4) for _, e in client.xrange(f"st:{{{s}}}:stream")]
    lines = [ln for e in entries for ln in e["e"].split("\n")]
    assert len(entries) <= 2 * 4
    assert sorted(orjson.loads(ln)["event_id"] for ln in lines) == sorted(
        str(e.event_id) for e in events
    )
    extra = sum(int(client.get(f"st:{{{s}}}:stream-extra") or 0) for s in range(4))
    assert len(entries) + extra == 1000  # XLEN + extra = events in the stream
    client.close()


def test_expiry_follows_retention(db: Backend) -> None:
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)

    async def work(ingestor: Ingestor, store: IngestWriter) -> list[bool]:
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
    }
    for key, when in expected.items():
        ttl = client.ttl(key)
        assert abs((now + ttl) - when.timestamp()) <= 2, key
    (seen,) = db.scan("st:{0}:seen:*")
    assert client.expiretime(seen) == _seen_expiry(seen, db.settings().dedup_window_s, now)
    assert client.ttl("st:{0}:stream") == -1  # the stream is trimmed by the archiver, never expired
    client.close()


def _seen_expiry(key: str, window_s: int, now: float) -> int:
    """When a dedup generation's hash expires: once the window has passed for its last id."""
    g = int(key.rsplit(":", 1)[1])
    gen_s = -(-window_s // DEDUP_GENERATIONS)
    assert g in (int(now // gen_s), int(now // gen_s) - 1), key  # now's (the engine's clock)
    return (g + DEDUP_GENERATIONS + 1) * gen_s + 60


# Both paths of the ingest script: per event (small calls), per distinct key (big calls).
PATHS = pytest.mark.parametrize("aggregate_above", [1_000_000, 0], ids=["per_event", "per_key"])


@PATHS
def test_every_key_expires_with_its_bucket(db: Backend, aggregate_above: int) -> None:
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

        async def work(ingestor: Ingestor, store: IngestWriter, body=body) -> list[bool]:  # type: ignore[no-untyped-def]
            e = EVENT_ADAPTER.validate_python(body)
            return await store.ingest([ingestor.prepare(e, datetime.now(UTC))])

        assert _run(db, 1, work, uniques=uniques, aggregate_above=aggregate_above) == [True]

    settings = db.settings()
    minute_end = ts.replace(second=0) + timedelta(minutes=1)
    hour_end = ts.replace(minute=0, second=0) + timedelta(hours=1)
    day_end = ts.replace(hour=0, minute=0, second=0) + timedelta(days=1)
    expected = {
        "m": minute_end + timedelta(seconds=settings.minute_retention_s),
        "h": hour_end + timedelta(seconds=settings.hour_retention_s),
        "d": day_end + timedelta(seconds=settings.day_retention_s),
    }
    client = db.client(decode_responses=True)
    now = datetime.now(UTC).timestamp()
    # The set of event types is kept for good (EA_MAX_EVENT_TYPES: a type taken keeps
    # working), so it is the one key without an expiry.
    types = Keys("st:").event_types(0)
    assert client.ttl(types) == -1 and client.smembers(types) == {"click", "page_view"}
    keys = sorted(k for k in db.scan("st:*") if not k.endswith(":stream") and k != types)
    kinds = defaultdict(list)
    for key in keys:
        kind = "seen" if ":seen:" in key else re.search(r":([mhd]):", key)[1]  # type: ignore[index]
        kinds[kind].append(key)
        ttl = client.ttl(key)
        assert ttl > 0, key
        if kind == "seen":
            assert client.expiretime(key) == _seen_expiry(key, settings.dedup_window_s, now)
        else:
            assert abs((now + ttl) - expected[kind].timestamp()) <= 2, key
    client.close()
    # Every kind of structure was written, so every kind was checked.
    suffixes = {
        re.sub(r":[0-9a-f]{16}$", "", k.split(":", 5)[-1]) for k in keys if ":seen:" not in k
    }
    assert {"count", "users", "pages", "page_users", "hll", "page_hll"} <= suffixes, keys
    assert len(kinds["m"]) == 2 * 4 and kinds["seen"]


def _header_reads(lua: str, table: str) -> list[tuple[int, str]]:
    """(position, local name) of each ``local <name> = ...<table>[<literal>]...`` line."""
    pattern = rf"^local (\w+) = [^\n]*\b{table}\[(\d+)\]"
    return [(int(i), name) for name, i in re.findall(pattern, lua, re.MULTILINE)]


def test_the_ingest_call_is_the_scripts_header() -> None:
    # IngestCall's header fields, in order, are ingest.lua's KEYS[1..5] and ARGV[1..13],
    # each read once under the field's own name; nothing else in the script reads a
    # header position by number, and the stripes start right after the header.
    lua = source(Lua.INGEST)
    for table, header, size in (
        ("KEYS", KEY_HEADER, "KEY_HEADER"),
        ("ARGV", ARG_HEADER, "ARG_HEADER"),
    ):
        reads = _header_reads(lua, table)
        assert reads == list(enumerate(header, start=1)), (table, reads)
        assert re.search(rf"^local {size} = {len(header)}$", lua, re.MULTILINE), size
        literal = re.findall(rf"{table}\[\d+\]", re.sub(r"--[^\n]*", "", lua))
        assert len(literal) == len(header), (table, literal)


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
    # HLLs included); the other day, the other type and the dedup memory (keyed by
    # arrival, not by day) stay.
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

    def of_day(name: str, kind: str) -> bool:
        return re.match(rf"st:\{{\d+\}}:{kind}:[mhd]:{label}[T:]", name) is not None

    async def work(ingestor: Ingestor, store: IngestWriter) -> list[list[str]]:
        now = datetime.now(UTC)
        events = [EVENT_ADAPTER.validate_python(b) for b in bodies]
        assert all(await store.ingest([ingestor.prepare(e, now) for e in events]))
        seen = [db.scan("st:*")]
        await clear_day(store, day, "page_view")
        seen.append(db.scan("st:*"))
        return seen

    before, typed = _run(db, 4, work)
    assert any(":page_hll:" in k and of_day(k, "page_view") for k in before)
    assert any(of_day(k, "click") for k in before)
    assert typed == [k for k in before if not of_day(k, "page_view")]
    assert any(":seen:" in k for k in typed) and any(k.endswith(":stream") for k in typed)
    assert any(
        f":page_view:d:{(day + timedelta(days=1)).strftime('%Y-%m-%d')}:" in k for k in typed
    )


def test_bucket_keys_at_names_what_bucket_keys_names() -> None:
    # clear_day and minute_stats name a day's keys from labels cut once for every shard:
    # the same names, in the same order, as bucket_keys, count and users give one by one.
    keys = Keys("st:", 8)
    day = datetime(2026, 3, 29, tzinfo=UTC)  # a day some zones shorten: UTC does not
    for interval, step, n in ((Interval.MINUTE, timedelta(minutes=1), 1440),
                              (Interval.HOUR, timedelta(hours=1), 24),
                              (Interval.DAY, timedelta(days=1), 1)):  # fmt: skip
        starts = [day + step * i for i in range(n)]
        for shard in (0, 7):
            want = [k for t in starts for k in keys.bucket_keys(shard, "page_view", interval, t)]
            labels = [bucket_label(t, interval) for t in starts]
            assert keys.bucket_keys_at(shard, "page_view", interval, labels) == want
            pairs = [
                (
                    keys.count(shard, "page_view", interval, t),
                    keys.users(shard, "page_view", interval, t),
                )
                for t in starts
            ]
            assert keys.counts_and_users_at(shard, "page_view", interval, labels) == pairs


def test_archive_lag_is_the_age_of_the_oldest_unarchived_event() -> None:
    # One definition for /metrics and /persistent/status.
    assert archive_lag_s({"oldest_unarchived_ms": 0}, now_s=1_000.0) == 0.0  # caught up
    assert archive_lag_s({"oldest_unarchived_ms": 990_250}, now_s=1_000.0) == 9.75
    # This host's clock behind the engine's: no negative lag.
    assert archive_lag_s({"oldest_unarchived_ms": 1_000_500}, now_s=1_000.0) == 0.0


def _mixed_events(rng: random.Random, n: int, now: datetime) -> list[Event]:
    """Events over two types, minutes of two hours, with and without pages, and resends."""
    starts = [now - timedelta(minutes=3), now - timedelta(hours=1, minutes=1)]
    pages = [None, "https://example.com/a", "https://example.com/b?c=d e", "https://x.test/"]
    out: list[Event] = []
    for _ in range(n):
        if out and rng.random() < 0.1:
            out.append(rng.choice(out))  # the same event again: a duplicate
            continue
        event_type = rng.choice(["page_view", "click"])
        body = event(
            user=f"u{rng.randrange(40)}",
            ts=rng.choice(starts) + timedelta(seconds=rng.uniform(-90, 90)),
            url=rng.choice(pages[event_type == "page_view" :]),  # page views have a page
            event_type=event_type,
        )
        out.append(EVENT_ADAPTER.validate_python(body))
    return out


@PATHS
def test_the_script_writes_exactly_the_names_keys_py_defines(
    db: Backend, aggregate_above: int
) -> None:
    # The call carries stems; ingest.lua appends the suffixes. Every key the engine holds
    # afterwards must be a name keys.py builds for these events, and every such name of a
    # structure these events create must exist (exact uniques: all of them do).
    now = datetime.now(UTC)
    events = _mixed_events(random.Random(3), 120, now)
    events.append(
        EVENT_ADAPTER.validate_python(event(user="solo", ts=now, url=None, event_type="signup"))
    )

    async def work(ingestor: Ingestor, store: IngestWriter) -> list[bool]:
        return await store.ingest([ingestor.prepare(e, now) for e in events])

    _run(db, 4, work, uniques="exact", aggregate_above=aggregate_above)
    keys = Keys("st:", 4)
    gen_s = -(-db.settings().dedup_window_s // DEDUP_GENERATIONS)
    expected: set[str] = set()
    for e in events:
        shard = keys.shard_of(e.user_id)
        ts = e.timestamp.astimezone(UTC)
        expected |= {keys.stream(shard), keys.seen(shard, int(now.timestamp()) // gen_s)}
        expected.add(keys.stream_extra(shard))  # one call: more than one event per shard
        expected.add(keys.event_types(shard))
        for interval in Interval:
            start = floor(ts, interval)
            names = keys.bucket_keys(shard, e.event_type, interval, start)
            has_page = any(
                o.payload.page_url
                and keys.shard_of(o.user_id) == shard
                and o.event_type == e.event_type
                and floor(o.timestamp.astimezone(UTC), interval) == start
                for o in events
            )
            pageless = (":pages", ":page_users")
            expected |= {n for n in names if has_page or not n.endswith(pageless)}
            url = e.payload.page_url
            if interval is Interval.HOUR and url:
                expected.add(keys.page_hll(shard, e.event_type, interval, start, url))
    # The dedup hash is the generation of the engine's clock (one second later at most).
    got = {
        re.sub(r"seen:\d+$", f"seen:{int(now.timestamp()) // gen_s}", k) for k in db.scan("st:*")
    }
    assert got == expected


def _dump(client, prefix: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Every key under ``prefix``, by name without the prefix: type, content, expiry."""
    out: dict[str, object] = {}
    for key in sorted(k.decode() for k in client.scan_iter(match=f"{prefix}*", count=1000)):
        kind = client.type(key).decode()
        content: object
        if kind == "string":
            content = client.get(key)
        elif kind == "set":
            content = sorted(client.smembers(key))
        elif kind == "zset":
            content = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            content = [fields for _, fields in client.xrange(key)]
        elif kind == "hash":  # dedup: id -> the token of the call, which differs by run
            content = sorted(client.hkeys(key))
        else:
            raise AssertionError(f"{key}: {kind}")
        if key.endswith(":hll") or ":page_hll:" in key:  # the same users, maybe another layout
            content = client.pfcount(key)
        out[key[len(prefix) :]] = (kind, content, client.expiretime(key))
    return out


@pytest.mark.parametrize("uniques", ["approx", "exact"])
def test_aggregated_writes_equal_per_event_writes(db: Backend, uniques: str) -> None:
    # The same calls through both paths of the script leave identical keys, values and
    # expiry times, and the same new/duplicate flags (in-call duplicates included).
    now = datetime.now(UTC)
    events = _mixed_events(random.Random(11), 400, now)
    sizes = [1, 3, 17, 100, 279]

    def work_for(prefix_events):  # type: ignore[no-untyped-def]
        async def work(ingestor: Ingestor, store: IngestWriter) -> list[bool]:
            flags: list[bool] = []
            start = 0
            for size in sizes:
                chunk = prefix_events[start : start + size]
                start += size
                flags += await store.ingest([ingestor.prepare(e, now) for e in chunk])
            return flags

        return work

    per_event = _run(db, 2, work_for(events), uniques, aggregate_above=1_000_000, prefix="pa:")
    per_key = _run(db, 2, work_for(events), uniques, aggregate_above=0, prefix="pb:")
    assert per_event == per_key
    assert sum(per_event) == len({e.event_id for e in events})
    client = db.client()  # the seen sets hold ids as 16 raw bytes
    try:
        a, b = _dump(client, "pa:"), _dump(client, "pb:")
    finally:
        client.close()
    # Records differ only in received_at (identical here: one ``now``).
    assert a.keys() == b.keys() and a == b


def test_an_id_counts_once_whatever_timestamp_or_user_a_resend_carries(db: Backend) -> None:
    # Dedup by id alone: the same event_id with another hour, day, minute or user (on the
    # same shard here; across shards see test_cluster) is a duplicate and changes nothing.
    now = datetime.now(UTC)
    first = event(user="alice", ts=now - timedelta(minutes=1))
    resends = [
        {**first, "timestamp": (now - timedelta(hours=2)).isoformat()},
        {**first, "timestamp": (now - timedelta(days=3)).isoformat()},
        {**first, "user_id": "bob", "payload": {"page_url": "https://example.com/other"}},
        {**first, "event_type": "click"},
    ]

    async def work(ingestor: Ingestor, store: IngestWriter) -> tuple[list[bool], list[bool]]:
        flags = await store.ingest([ingestor.prepare(EVENT_ADAPTER.validate_python(first), now)])
        batch = [ingestor.prepare(EVENT_ADAPTER.validate_python(b), now) for b in resends]
        singles = [f for e in batch for f in await store.ingest([e])]
        return flags + singles, await store.ingest(batch)

    flags, together = _run(db, 1, work)
    assert flags == [True, False, False, False, False] and together == [False] * 4
    counted = [k for k in db.scan("st:*") if k.endswith(":count")]
    client = db.client(decode_responses=True)
    assert {k: client.get(k) for k in counted} == {k: "1" for k in counted} and len(
        counted
    ) == 3  # one minute, hour and day: the first send's
    assert client.xlen("st:{0}:stream") == 1
    client.close()


@PATHS
def test_a_call_sent_twice_by_the_client_library_reports_what_it_did(
    db: Backend, aggregate_above: int
) -> None:
    # redis-py may send a call again when the reply was lost (a timeout, a dropped
    # connection): the first attempt ran. The same call (same token) must then answer
    # "new" for what it stored, never "duplicate", and count nothing twice; another call
    # with the same ids is a duplicate.
    now = datetime.now(UTC)
    bodies = [event(user=f"u{i}", ts=now) for i in range(20)]
    bodies.append(bodies[3])  # an in-call duplicate stays one

    async def work(ingestor: Ingestor, store: IngestWriter) -> tuple[list[list[int]], list[bool]]:
        prepared = [ingestor.prepare(EVENT_ADAPTER.validate_python(b), now) for b in bodies]
        _, calls = store._calls(prepared, True)
        script = store._ingest_script
        replies = [await call_per_shard(store.client, script, calls) for _ in range(2)]
        return [r[0] for r in replies], await store.ingest(prepared)

    (first, retried), later = _run(db, 1, work, aggregate_above=aggregate_above)
    assert first == retried == [1] * 20 + [0]
    assert later == [False] * 21
    client = db.client(decode_responses=True)
    ((_, entry),) = client.xrange("st:{0}:stream")  # one entry, the first attempt's
    assert len(entry["e"].split("\n")) == 20
    (count,) = [k for k in db.scan("st:*:m:*") if k.endswith(":count")]
    assert client.get(count) == "20"
    client.close()


def _crossing(keys: Keys, now: datetime) -> tuple[dict[str, Any], str]:
    """An event whose id lives on another shard than its user, and a user of a third."""
    while True:
        body = event(user=f"u{random.randrange(10**6)}", ts=now - timedelta(minutes=1))
        id_shard = keys.id_shard(uuid.UUID(body["event_id"]).bytes)
        if id_shard != keys.shard_of(body["user_id"]):
            break
    other = next(
        f"o{i}"
        for i in range(1000)
        if keys.shard_of(f"o{i}") not in (id_shard, keys.shard_of(body["user_id"]))
    )
    return body, other


def _counted(db: Backend) -> tuple[dict[str, str], int, int]:
    """Minute counts by key, stream entries and outbox entries under ``st:``."""
    client = db.client(decode_responses=True)
    try:
        counts = {k: client.get(k) for k in db.scan("st:*:m:*") if k.endswith(":count")}
        streamed = sum(client.xlen(k) for k in db.scan("st:*:stream"))
        outbox = sum(client.hlen(k) for k in db.scan("st:*:outbox"))
    finally:
        client.close()
    return counts, streamed, outbox


# Where a request may die in the cross-shard protocol: after claiming the id on its own
# shard, or after applying the event on the user's shard (before forgetting the claim).
@pytest.mark.parametrize("dies_after", ["nothing", "claim", "apply"])
@pytest.mark.parametrize("then", ["resend", "sweep"])
def test_an_id_counts_once_across_user_shards(db: Backend, dies_after: str, then: str) -> None:
    # Four user shards (on the cluster: on three masters). The resend carries a user of
    # another shard: still the same event_id, so a duplicate, and the event is counted
    # exactly once, on its FIRST user's shard, whatever step the first request died at.
    now = datetime.now(UTC)
    body, other_user = _crossing(Keys("st:", 4), now)
    resend = {**body, "user_id": other_user}

    async def work(ingestor: Ingestor, store: IngestWriter) -> tuple[list[bool], int, int]:
        first = ingestor.prepare(EVENT_ADAPTER.validate_python(body), now)
        if dies_after == "nothing":
            flags = await store.ingest([first])
        else:
            flags = [await store._cross._claim([first]) == [1]]
            if dies_after == "apply":
                assert await store._each([first], True) == [True]
        again = ingestor.prepare(EVENT_ADAPTER.validate_python(resend), now)
        swept = await store.sweep_outbox(older_than_s=0) if then == "sweep" else 0
        flags += await store.ingest([again])
        return flags, swept, await store.sweep_outbox(older_than_s=0)

    flags, swept, left = _run(db, 4, work)
    assert flags == [True, False]
    assert swept == (then == "sweep" and dies_after != "nothing") and left == 0
    counts, streamed, outbox = _counted(db)
    (key,) = counts
    assert counts[key] == "1" and key.startswith(
        f"st:{{{Keys('st:', 4).shard_of(body['user_id'])}}}"
    )
    assert streamed == 1 and outbox == 0


def _replayed(body: dict[str, Any]) -> Record:
    """An event as the archive gives it back to a rebuild."""
    got = EVENT_ADAPTER.validate_python(body)
    page = {"page_url": got.payload.page_url}
    return Record(got.event_id, got.user_id, to_utc(got.timestamp), got.event_type, page)


def test_a_replay_call_sent_twice_counts_once(db: Backend) -> None:
    # Replay (rebuild) has no dedup memory, so its calls carry a marker of their own: the
    # client library's resend of a call whose reply was lost must not count it twice.
    now = datetime.now(UTC)
    bodies = [event(user=f"u{i}", ts=now - timedelta(minutes=2)) for i in range(30)]

    async def work(ingestor: Ingestor, store: IngestWriter) -> list[list[int]]:
        prepared = [prepare_archived(ingestor.buckets, _replayed(b)) for b in bodies]
        _, calls = store._calls(prepared, False)
        return [(await call_per_shard(store.client, store._ingest_script, calls))[0] for _ in "ab"]

    first, again = _run(db, 1, work)
    assert first == again == [1] * 30
    client = db.client(decode_responses=True)
    (count,) = [k for k in db.scan("st:*:m:*") if k.endswith(":count")]
    assert client.get(count) == "30" and not db.scan("st:*:seen:*")
    client.close()


def test_the_daily_salt_is_shared_rotates_and_expires(db: Backend) -> None:
    from event_analytics.store.salt import GRACE_S, DailySalt

    # Today (a past day's salt would be expired at once, as it should be).
    day = datetime.now(UTC).replace(hour=0, minute=5, second=0, microsecond=0)

    async def main() -> tuple[bytes, bytes, bytes, bytes]:
        settings = db.settings(key_prefix="salt:")
        one, two = IngestWriter.from_settings(settings), IngestWriter.from_settings(settings)
        try:
            a = await DailySalt(one.client, one.keys).of(day)
            b = await DailySalt(two.client, two.keys).of(day + timedelta(hours=1))
            c = await DailySalt(two.client, two.keys).of(day + timedelta(hours=2))
            d = await DailySalt(one.client, one.keys).of(day + timedelta(days=1))
            return a, b, c, d
        finally:
            await one.close()
            await two.close()

    a, b, c, d = asyncio.run(main())
    assert len(a) == 32 and a == b == c  # one salt per day, whoever asks first
    assert d != a  # the next day has its own
    midnight = int((day.replace(minute=0) + timedelta(days=1)).timestamp())
    raw = db.client()
    try:
        assert raw.expiretime(f"salt:salt:{day.date().isoformat()}") == midnight + GRACE_S
    finally:
        raw.close()


@PATHS
def test_an_erased_users_events_are_refused_and_nothing_of_them_kept(
    db: Backend, aggregate_above: int
) -> None:
    # Four user shards: some ids are claimed on another shard than their user's
    # (store/claims.py). An erased user's events are refused with user_erased, everyone
    # else's are counted, and nothing of the refused ones stays: once the user is lifted
    # from the list, the same ids are new.
    now = datetime.now(UTC)
    keys = Keys("st:", 4)
    sent = [event(user=("alice" if i % 3 == 0 else f"u{i}"), ts=now) for i in range(60)]

    async def work(ingestor: Ingestor, store: IngestWriter) -> tuple[list[Any], list[Any]]:
        await store.client.sadd(keys.erased(keys.shard_of("alice")), "alice")
        first = await ingestor.ingest_items(sent, now)
        await store.client.srem(keys.erased(keys.shard_of("alice")), "alice")
        return first, await ingestor.ingest_items(sent, now)

    first, again = _run(db, 4, work, aggregate_above=aggregate_above)
    for body, got in zip(sent, first, strict=True):
        if body["user_id"] == "alice":
            assert got.status == "rejected" and got.errors[0].code == "user_erased", got
        else:
            assert got.status == "accepted", got
    for body, got in zip(sent, again, strict=True):
        assert got.status == ("accepted" if body["user_id"] == "alice" else "duplicate"), got
    counts, _, outbox = _counted(db)
    assert sum(int(c) for c in counts.values()) == 60 and outbox == 0


@pytest.mark.parametrize("with_stream", [True, False])
def test_a_rebuild_beside_live_traffic_counts_the_unarchived_stream_once(
    db: Backend, tmp_path: Path, with_stream: bool
) -> None:
    # A day rebuilt while some of its events are streamed and not archived yet (forget
    # rebuilds beside live traffic): with_stream replays those too, skipping the ones
    # its files hold; an event ingested after the rebuild is counted once, by ingest.
    # Without with_stream the day holds only what its files hold.
    now = datetime.now(UTC)
    bodies = [event(user=f"u{i}", ts=now) for i in range(12)]
    root = tmp_path / "archive"

    async def work(ingestor: Ingestor, store: IngestWriter) -> tuple[int, int]:
        await ingestor.ingest_items(bodies, now)
        hour = floor(now, Interval.HOUR)
        path = files.hour_path(root, hour)
        path.parent.mkdir(parents=True)
        archived = [_replayed(b) for b in bodies[:5]]  # as the archiver wrote them
        path.write_bytes(b"".join(encode(r) + b"\n" for r in archived))
        await rebuild(ingestor.settings, store, files.list_files(root), with_stream=with_stream)
        day = store.keys.bucket_keys(0, "page_view", Interval.DAY, floor(now, Interval.DAY))[0]
        after_rebuild = int(await store.client.get(day) or 0)
        await ingestor.ingest_items([event(user="late", ts=now)], now)
        return after_rebuild, int(await store.client.get(day) or 0)

    assert _run(db, 1, work, prefix="rb:") == ((12, 13) if with_stream else (5, 6))
