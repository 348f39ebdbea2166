"""The archive under crashes and faults, with real processes: each acked event once on disk,
and counters rebuilt from it equal the live ones.

Each test runs on a fresh Valkey and on the session's 3+3 cluster (``killable``); there,
killing "the engine" kills every node at once, and all of them come back with their AOF.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import resource
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from event_analytics.archive import files, record, worker
from event_analytics.archive.verify import Difference, VerifyReport, verify
from event_analytics.keys import ARCHIVER_GROUP, Keys
from event_analytics.store import IngestWriter, connect
from event_analytics.store.streams import StreamStore
from event_analytics.timebucket import Interval
from tests.backends import Backend
from tests.direct import ingest
from tests.helpers import HTTP, IST, cli, event, past_minutes
from tests.readback import answers, archive_ids, assert_rebuild_reproduces, wait_archived
from tests.servers import ArchiverProcess, archiving_service
from tests.traffic import hammer, send_all

pytestmark = pytest.mark.slow
LIMIT = 1_000_000


def send(url: str, bodies: list[dict[str, Any]]) -> None:
    """One at a time: one stream entry per event (concurrent requests share entries)."""
    for body in bodies:
        r = HTTP.post(f"{url}/events", json=body)
        assert r.status_code == 201, r.text


def send_at_once(url: str, bodies: list[dict[str, Any]]) -> None:
    """Concurrently, where the test needs the events in the streams, not one entry each
    (600 one at a time took ~10 s under load)."""
    statuses = asyncio.run(send_all(url, bodies))
    assert statuses == [201] * len(bodies), collections.Counter(statuses)


@pytest.mark.parametrize("crash_at", ["after_write", "mid_line"])
def test_archiver_sigkill_mid_batch_leaves_each_event_once(
    killable: Backend, tmp_path: Path, crash_at: str
) -> None:
    with archiving_service(
        killable, tmp_path, {"EA_ARCHIVER_LEASE_S": "2"}, args=["--no-archiver"]
    ) as (svc, env, root):
        minutes = past_minutes(3)
        bodies = [
            event(user=f"u{i % 37}", ts=minutes[i % 3] + timedelta(seconds=i % 60))
            for i in range(600)
        ]
        send(svc.url, bodies)
        crasher = ArchiverProcess(env | {"EA_ARCHIVER_CRASH_AT": crash_at}, tmp_path / "a1.log")
        assert crasher.proc.wait(timeout=60) == -signal.SIGKILL  # died at the crash point
        crasher.stop()
        on_disk = archive_ids(root)
        keys = killable.keys()
        streams = [keys.stream(shard) for shard in range(keys.shards)]
        stream = killable.client()
        lengths = {s: stream.xlen(s) for s in streams}
        pending = {s: stream.xpending(s, "archiver")["pending"] for s in streams}
        # Nothing acknowledged (so nothing trimmed); it died in its first batch, which is
        # one shard's whole stream (all 600 on a single node): written, at least partly,
        # and all of it pending.
        assert sum(lengths.values()) == 600
        (crashed,) = [s for s in streams if pending[s]]
        assert pending[crashed] == lengths[crashed] > 0
        if crash_at == "mid_line":
            assert not next(root.glob("*/*/*/*.jsonl")).read_bytes().endswith(b"\n")
        else:
            assert sum(on_disk.values()) == pending[crashed]
        survivor = ArchiverProcess(env, tmp_path / "a2.log")
        try:
            wait_archived(svc.url)
        finally:
            survivor.stop()
        assert archive_ids(root) == collections.Counter({b["event_id"]: 1 for b in bodies})
        assert sum(stream.xlen(s) for s in streams) == 0
        stream.close()
        assert_rebuild_reproduces(svc, killable.flush, env, minutes)


@pytest.mark.parametrize("crash_at", ["after_write", "mid_line"])
def test_archiver_sigkill_amid_entries_of_many_events_leaves_each_once(
    killable: Backend, tmp_path: Path, crash_at: str
) -> None:
    # A batch request is one ingest call per shard, so one stream entry per shard holds
    # its events' records, one per line: a crash while writing them, and the recovery
    # that follows, must still leave every event in its hour's file exactly once.
    with archiving_service(
        killable, tmp_path, {"EA_ARCHIVER_LEASE_S": "2", "EA_ARCHIVER_BATCH": "100"},
        args=["--no-archiver"],
    ) as (svc, env, root):  # fmt: skip
        minutes = [*past_minutes(3), datetime.now(UTC) - timedelta(hours=1, minutes=5)]
        bodies = [
            event(user=f"u{i % 37}", ts=minutes[i % 4] + timedelta(seconds=i % 60))
            for i in range(600)
        ]
        for start in range(0, 600, 150):
            r = HTTP.post(f"{svc.url}/events/batch", json={"events": bodies[start : start + 150]})
            assert [x["status"] for x in r.json()["results"]] == ["accepted"] * 150
        stats = HTTP.get(f"{svc.url}/persistent/status").json()["stats"]
        assert stats["stream_length"] == 600  # events, though far fewer entries
        crasher = ArchiverProcess(env | {"EA_ARCHIVER_CRASH_AT": crash_at}, tmp_path / "a1.log")
        assert crasher.proc.wait(timeout=60) == -signal.SIGKILL
        crasher.stop()
        # Nothing acknowledged: all of it still in the stream, some or all of it on disk.
        assert HTTP.get(f"{svc.url}/persistent/status").json()["stats"]["stream_length"] == 600
        assert archive_ids(root)
        survivor = ArchiverProcess(env, tmp_path / "a2.log")
        try:
            wait_archived(svc.url)
        finally:
            survivor.stop()
        assert archive_ids(root) == collections.Counter({b["event_id"]: 1 for b in bodies})
        assert_rebuild_reproduces(svc, killable.flush, env, minutes[:3])


def test_rebuild_sigkilled_halfway_then_rerun(killable: Backend, tmp_path: Path) -> None:
    with archiving_service(killable, tmp_path, {"EA_ARCHIVER_LEASE_S": "2"}) as (svc, env, root):
        # Three days of events (the rebuild works day by day) , 5,000 in all.
        now = datetime.now(UTC)
        bodies = [
            event(user=f"u{i % 101}", ts=now - timedelta(days=i % 3, minutes=1 + i % 50))
            for i in range(5000)
        ]
        asyncio.run(hammer(svc.url, bodies, len(bodies) + 1, lambda: None))
        wait_archived(svc.url)
        assert sum(archive_ids(root).values()) == 5000
        minutes = sorted(
            {
                datetime.fromisoformat(b["timestamp"]).replace(second=0, microsecond=0)
                for b in bodies
            }
        )[:50]
        before = answers(svc, minutes)
        killable.flush()
        half = cli(["rebuild"], env | {"EA_REBUILD_CRASH_AFTER_BATCHES": "1"})
        assert half.returncode == -signal.SIGKILL
        partial = cli(["verify"], env)
        assert partial.returncode == 1  # the kill left the counters incomplete
        done = cli(["rebuild"], env)
        assert done.returncode == 0, done.stderr
        assert answers(svc, minutes) == before
        again = cli(["rebuild"], env)  # idempotent: a second run changes nothing
        assert again.returncode == 0
        assert answers(svc, minutes) == before
        assert cli(["verify"], env).returncode == 0


def test_engine_kill9_under_load(killable: Backend, tmp_path: Path) -> None:
    with archiving_service(killable, tmp_path, {"EA_ARCHIVER_LEASE_S": "2"}) as (svc, env, root):
        minutes = past_minutes(2)
        bodies = [
            event(user=f"u{i % 50}", ts=minutes[i % 2] + timedelta(seconds=i % 60))
            for i in range(4000)
        ]
        restarted = []

        def crash_engine() -> None:
            killable.kill()  # on the cluster: every node, a full outage
            restarted.append(True)

        acked = asyncio.run(hammer(svc.url, bodies[:2500], 800, crash_engine))
        killable.start()
        # Resend everything that was not acknowledged (as a client would), then more.
        retry = [b for b in bodies[:2500] if b["event_id"] not in acked] + bodies[2500:]
        acked |= asyncio.run(hammer(svc.url, retry, len(retry) + 1, lambda: None))
        for body in retry:  # anything still refused mid-recovery: send until it lands
            if body["event_id"] not in acked:
                r = HTTP.post(f"{svc.url}/events", json=body, timeout=10)
                assert r.status_code in (200, 201), r.text
                acked.add(body["event_id"])
        assert restarted and len(acked) == 4000
        wait_archived(svc.url)
        assert archive_ids(root) == collections.Counter({i: 1 for i in acked})
        assert_rebuild_reproduces(svc, killable.flush, env, minutes)


def test_archive_full_blocks_then_resumes(killable: Backend, tmp_path: Path) -> None:
    with (
        archiving_service(
            killable, tmp_path, {"EA_ARCHIVER_BATCH": "50"}, args=["--no-archiver"]
        ) as (svc, env, root),
        ArchiverProcess(env, tmp_path / "a.log", fsize=20_000) as archiver,  # ~80 lines fit
    ):
        bodies = [event(user=f"u{i}", ts=past_minutes(1)[0]) for i in range(300)]
        send_at_once(svc.url, bodies)
        deadline = time.monotonic() + 30
        while True:
            status = HTTP.get(f"{svc.url}/persistent/status").json()
            if status["status"] == "blocked":
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        (state,) = status["archivers"]
        assert "File too large" in state["last_error"]
        written = sum(archive_ids(root).values())
        assert written < 300
        assert status["stats"]["stream_length"] == 300 - written  # nothing acked unwritten
        assert max(f.stat().st_size for f in root.glob("*/*/*/*.jsonl")) <= 20_000
        # The fault clears (more space): the archiver resumes by itself.
        resource.prlimit(archiver.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        final = wait_archived(svc.url)
        assert final["status"] == "healthy"
        assert archive_ids(root) == collections.Counter({b["event_id"]: 1 for b in bodies})


def test_two_archivers_share_and_take_over(killable: Backend, tmp_path: Path) -> None:
    with (
        archiving_service(
            killable,
            tmp_path,
            {
                "EA_SHARDS": "4",
                "EA_ARCHIVER_LEASE_S": "2",
                "EA_ARCHIVER_BATCH": "100",
            },
            args=["--no-archiver"],
        ) as (svc, env, root),
        ArchiverProcess(env, tmp_path / "a1.log") as first,
        ArchiverProcess(env, tmp_path / "a2.log"),  # the one that takes over
    ):
        minutes = past_minutes(2)
        bodies = [
            event(user=f"u{i % 200}", ts=minutes[i % 2] + timedelta(seconds=i % 60))
            for i in range(2000)
        ]
        # They split the 4 shards between them (leases in Redis): 2 each.
        deadline = time.monotonic() + 20
        while True:
            held = [
                a["shards"] for a in HTTP.get(f"{svc.url}/persistent/status").json()["archivers"]
            ]
            if sorted(len(h) for h in held) == [2, 2]:
                break
            assert time.monotonic() < deadline, held
            time.sleep(0.1)
        assert sorted(held[0] + held[1]) == [0, 1, 2, 3]
        asyncio.run(hammer(svc.url, bodies[:1000], 1001, lambda: None))
        wait_archived(svc.url)
        # Heartbeats (each archiver's own count) trail the streams by up to a second.
        deadline = time.monotonic() + 10
        while True:
            status = HTTP.get(f"{svc.url}/persistent/status").json()
            shares = {a["name"]: a["events_archived"] for a in status["archivers"]}
            if sum(shares.values()) == 1000 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(shares) == 2 and all(n > 0 for n in shares.values()), shares
        assert sum(shares.values()) == 1000
        # One dies mid-stream; the other takes its shards over when the lease lapses.
        asyncio.run(hammer(svc.url, bodies[1000:], 300, first.kill))
        status = wait_archived(svc.url)
        assert archive_ids(root) == collections.Counter({b["event_id"]: 1 for b in bodies})
        assert_rebuild_reproduces(svc, killable.flush, env, minutes)


def test_group_lost_while_recovering_is_recreated(killable: Backend, tmp_path: Path) -> None:
    """The consumer group vanishes while the archiver holds the shard and has it to recover
    (FLUSHALL, a restart without it, a replica promoted before it got it): the archiver
    recreates the group and archives the stream, instead of dying on NOGROUP.

    In-process, to place the loss between taking the shards and recovering them.
    """
    root = tmp_path / "archive"
    settings = killable.settings(key_prefix=killable.prefix, archive_dir=root)
    keys = Keys.from_settings(settings)
    bodies = [event(user=f"u{i}", ts=past_minutes(1)[0]) for i in range(200)]
    assert all(ingest(killable.env, bodies))

    async def main() -> list[int]:
        client = connect(settings)
        archiver = worker.Archiver(settings, StreamStore(client, keys), root, "lost-group")
        try:
            await archiver._beat(force=True)  # takes every shard: all are to be recovered
            assert archiver.owned == archiver.recovering == set(range(keys.shards))
            for shard in range(keys.shards):
                await client.xgroup_destroy(keys.stream(shard), ARCHIVER_GROUP)
            for _ in range(100):  # bounded: 200 events take a few ticks
                if not await archiver._tick():
                    break
            return [await client.xlen(keys.stream(shard)) for shard in range(keys.shards)]
        finally:
            await client.aclose()

    assert sum(asyncio.run(main())) == 0  # every entry archived, acknowledged and deleted
    assert archive_ids(root) == collections.Counter({b["event_id"]: 1 for b in bodies})


def test_rebuild_drops_pages_the_archive_lacks(killable: Backend, tmp_path: Path) -> None:
    """Rebuild makes the counters what the archive says, per page too: a page whose
    events are not in the archive keeps neither its ranking nor its unique users."""
    with archiving_service(killable, tmp_path, {}) as (svc, env, root):
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        ts = max(hour, datetime.now(UTC) - timedelta(minutes=2))
        kept, lost = "https://example.com/kept", "https://example.com/lost"
        bodies = [event(user=f"u{i}", ts=ts, url=kept if i % 3 else lost) for i in range(30)]
        send_at_once(svc.url, bodies)
        wait_archived(svc.url)
        # The archive loses the "lost" page's lines (as a restored older copy would).
        for path in root.glob("*/*/*/*.jsonl"):
            lines = path.read_bytes().splitlines(keepends=True)
            path.write_bytes(b"".join(ln for ln in lines if lost.encode() not in ln))
        keys = killable.keys()
        hlls = {
            url: {
                keys.page_hll(s, "page_view", Interval.HOUR, hour, url) for s in range(keys.shards)
            }
            for url in (kept, lost)
        }
        with contextlib.closing(killable.client()) as client:
            assert sum(client.exists(k) for k in hlls[lost]) > 0
            done = cli(["rebuild"], env)
            assert done.returncode == 0, done.stderr
            assert sum(client.exists(k) for k in hlls[lost]) == 0
            assert sum(client.exists(k) for k in hlls[kept]) > 0
        # Over 1440 minutes: read from the hour buckets, so from the page HLLs.
        since = (hour - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        until = (hour + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        top = HTTP.get(f"{svc.url}/analytics/top-pages", params={"from": since, "to": until}).json()
        assert top["bucket_interval"] == "hour"
        assert [(p["page_url"], p["count"]) for p in top["pages"]] == [(kept, 20)]
        assert abs(top["pages"][0]["unique_users"] - 20) <= 1  # HyperLogLog: 0.81%


def test_unarchivable_entries_are_dead_lettered_and_foreign_layouts_reordered(
    db: Backend, tmp_path: Path
) -> None:
    """Every stream entry is archived through the record codec: a record laid out
    otherwise is written with its id first (files find ids at a fixed offset); what is
    no record goes to the dead-letter stream with its reason and fields, never lost.
    Verify then reads the files through the codec too, and skips a line that is none.

    In-process, to write foreign entries straight onto a stream.
    """
    root = tmp_path / "archive"
    settings = db.settings(key_prefix="dl:", archive_dir=root)
    keys = Keys.from_settings(settings)
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    ours = record.Record(uuid.uuid4(), "u1", ts, "page_view", {"page_url": "https://a.example/"},
                         datetime.now(UTC))  # fmt: skip
    theirs = {"user_id": "u2", "timestamp": ts.astimezone(IST).isoformat(),
              "event_type": "click", "event_id": str(uuid.uuid4()), "extra": 1}  # fmt: skip
    bad = {
        b"no e field": {b"x": b"1"},
        b"not JSON": {b"e": b"{oops"},
        b"short id": {b"e": orjson.dumps({**theirs, "event_id": "short"})},
        b"no user": {b"e": orjson.dumps({k: v for k, v in theirs.items() if k != "user_id"})},
    }

    async def main() -> tuple[list[int], list[Any]]:
        client = connect(settings)
        archiver = worker.Archiver(settings, StreamStore(client, keys), root, "codec")
        try:
            await client.xadd(keys.stream(0), {b"e": record.encode(ours)})
            await client.xadd(keys.stream(0), {b"e": orjson.dumps(theirs)})
            for fields in bad.values():
                await client.xadd(keys.stream(0), fields)
            await archiver._beat(force=True)
            for _ in range(100):  # bounded: a handful of entries take a tick or two
                if not await archiver._tick():
                    break
            left = [await client.xlen(keys.stream(shard)) for shard in range(keys.shards)]
            return left, await client.xrange(keys.deadletter(0))
        finally:
            await client.aclose()

    left, dead = asyncio.run(main())
    assert sum(left) == 0  # every entry acknowledged: archived or dead-lettered
    assert len(dead) == len(bad)
    for (_, fields), (what, sent) in zip(dead, bad.items(), strict=True):
        assert fields[b"reason"], what
        assert {k: v for k, v in fields.items() if k not in (b"id", b"reason")} == sent, what
    (path,) = root.glob("*/*/*/*.jsonl")
    assert path == files.hour_path(root, ts.replace(minute=0, second=0))
    first, second = path.read_bytes().splitlines()
    assert first == record.encode(ours)  # the service's own bytes, untouched
    assert second.startswith(record.ID_PREFIX)
    assert orjson.loads(second) == theirs and files.event_id_of(second) == theirs["event_id"]

    path.write_bytes(path.read_bytes() + b"not a record\n")
    differences: list[Difference] = []

    async def check() -> VerifyReport:
        store = IngestWriter.from_settings(settings)
        try:
            return await verify(store, files.list_files(root), 3600, differences)
        finally:
            await store.close()

    report = asyncio.run(check())
    assert report.unreadable == 1 and report.events_in_archive == 2
