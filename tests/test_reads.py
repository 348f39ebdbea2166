"""Reads never starve writes (issue 13): top pages have a cost bound (422 with the bound)
and are merged in small engine calls whose answer equals one big merge; heavy reads have
their own concurrency cap (503 reads-busy) while ingest goes on untouched; analytics may
read from a replica (REDIS_READ_URL).

All of it runs on the app in this process (tests.inproc), on each engine: the cost bound,
the heavy-read cap and the replica reads are the app's, not the HTTP protocol's nor the
workers'. The replica is a real engine, stopped (SIGSTOP) and let go.

Timings are not asserted here: benchmarks/read_storm.py measures ingest p99 under a
query storm.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from benchmarks.procs import EngineProcess
from event_analytics.config import Settings
from tests.backends import Backend
from tests.helpers import event
from tests.inproc import InProcessService, in_process
from tests.servers import engine_binary

PAGES = 40
COST_BOUND = 1500
URL = "https://example.com/p{:02d}"


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _send(svc: InProcessService, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 1000):
        r = svc.http.post(f"{svc.url}/events/batch", json={"events": events[i : i + 1000]})
        assert r.status_code == 200 and r.json()["accepted"] == len(events[i : i + 1000]), r.text


def _range_events(start: datetime, minutes: int, tag: str, extra: bool) -> list[dict[str, Any]]:
    """One event per (minute, page), each by a user of its own; with ``extra``, page p
    gets p % 5 more events in the first minute (so the pages rank apart)."""
    out = []
    for m in range(minutes):
        for p in range(PAGES):
            n = 1 + (p % 5 if extra and m == 0 else 0)
            for i in range(n):
                ts = start + timedelta(minutes=m, seconds=1)
                out.append(event(ts=ts, url=URL.format(p), user=f"{tag}-{m}-{p}-{i}"))
    return out


def _model_top(events: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    counts = Counter(e["payload"]["page_url"] for e in events)
    users: dict[str, set[str]] = {}
    for e in events:
        users.setdefault(e["payload"]["page_url"], set()).add(e["user_id"])
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [{"page_url": u, "count": c, "unique_users": len(users[u])} for u, c in ranked]


@pytest.fixture(scope="module")
def bounded_service(
    engine: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessService]:
    """The app in this process, one per engine for the module's tests; ``bounded``
    empties the engine before each, as ``api`` does. No archiver (``app_service``'s rule)."""
    bounds = {
        "max_query_cost": COST_BOUND,
        "read_chunk_entries": 50,  # one minute's 40 pages per call: many rounds
        "max_heavy_reads": 1,
        "heavy_read_wait_s": 0,
    }
    data_dir = tmp_path_factory.mktemp(f"bounded-{engine.kind}") / "data"
    settings = engine.settings(data_dir=data_dir, key_prefix=engine.prefix, **bounds)
    with in_process(settings, engine.env) as svc:
        yield svc


@pytest.fixture
def bounded(bounded_service: InProcessService, db: Backend) -> InProcessService:
    return bounded_service


def test_top_pages_bounded_and_split_answer_like_the_model(bounded: InProcessService) -> None:
    """Table row: 240 minutes x 1,000 pages written by one client made one top-pages
    query take 595 ms in one engine call: the cost is pages x minutes, the writer's."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    recent = now - timedelta(minutes=10)
    small = _range_events(recent, 10, "a", extra=True)
    _send(bounded, small)
    r = bounded.http.get(f"{bounded.url}/analytics/top-pages",
                         params={"from": _iso(recent), "to": _iso(now), "limit": 15})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["pages"] == _model_top(small, 15)
    # 60 more minutes x 40 pages: at least 2,400 (bucket, page) entries on any sharding,
    # from half past one hour to half past the next (so no whole hour: see below).
    older = now.replace(minute=0) - timedelta(minutes=90)
    _send(bounded, _range_events(older, 60, "b", extra=False))
    r = bounded.http.get(f"{bounded.url}/analytics/top-pages",
                         params={"from": _iso(older),
                                 "to": _iso(older + timedelta(minutes=60))})  # fmt: skip
    assert r.status_code == 422, r.text
    (error,) = r.json()["errors"]
    assert error["code"] == "query_too_costly" and str(COST_BOUND) in error["message"], error


def test_whole_hours_are_read_from_their_hour_buckets(bounded: InProcessService) -> None:
    """Issue 23: a day's top pages merged every minute's pages (20,000 pages x 24 hours:
    2.7 s). A whole clock hour of minutes is read from its hour bucket, which holds their
    sum in one entry per page: 60 minutes x 40 pages are 40 entries, under the bound of
    1,500 that the 2,400 minute entries exceed (422 before), with the same answer."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    sent = _range_events(hour, 60, "h", extra=True)
    _send(bounded, sent)
    # The hour and 10 minutes after it (read from minute buckets: 400 entries more).
    tail = _range_events(hour + timedelta(minutes=60), 10, "t", extra=False)
    _send(bounded, tail)
    r = bounded.http.get(f"{bounded.url}/analytics/top-pages",
                         params={"from": _iso(hour), "to": _iso(hour + timedelta(minutes=70)),
                                 "limit": 15})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["bucket_interval"] == "minute"
    assert r.json()["pages"] == _model_top(sent + tail, 15)


def test_query_storm_leaves_ingest_whole(bounded: InProcessService) -> None:
    """Table row: 50 concurrent heavy queries while ingesting made ingest wait for seconds,
    answer 503 "nothing was stored" for stored events, and answer first sends "duplicate".
    Now heavy reads past their cap are refused (503 reads-busy) and every event sent is
    acknowledged once, as new, and counted."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=30)
    _send(bounded, _range_events(start, 30, "s", extra=False))
    params: dict[str, str | int] = {"from": _iso(start), "to": _iso(now), "limit": 100}
    minute = now - timedelta(minutes=2)
    sent = [event(ts=minute, user=f"w{i}", url="https://example.com/storm") for i in range(200)]

    # One client for every thread: its transport hands each request to the app's loop
    # (no connection pool to share); 10 s each, as over a socket.
    def query(_: int) -> int:
        url = f"{bounded.url}/analytics/top-pages"
        return bounded.http.get(url, params=params, timeout=10).status_code

    def ingest(e: dict[str, Any]) -> int:
        return bounded.http.post(f"{bounded.url}/events", json=e, timeout=10).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=58) as pool:
        queries = [pool.submit(query, i) for i in range(150)]  # 50 threads' worth, 3 each
        writes = list(pool.map(ingest, sent))
        answers = Counter(f.result() for f in queries)
    assert writes == [201] * len(sent), Counter(writes)
    assert set(answers) <= {200, 503} and answers[200] >= 1, answers
    if answers[503]:
        r = bounded.http.get(f"{bounded.url}/analytics/top-pages", params=params)
        assert r.status_code in (200, 503)
    until = minute + timedelta(minutes=1)
    storm = bounded.http.get(f"{bounded.url}/analytics/timeseries",
                             params={"from": _iso(minute), "to": _iso(until),
                                     "page_url": "https://example.com/storm"}).json()  # fmt: skip
    assert storm["total"]["count"] == len(sent), storm


def test_reads_busy_is_a_problem_503(bounded: InProcessService) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=20)
    _send(bounded, _range_events(start, 20, "c", extra=False))
    params: dict[str, str | int] = {"from": _iso(start), "to": _iso(now), "limit": 100}
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        url = f"{bounded.url}/analytics/top-pages"
        replies = list(pool.map(lambda _: bounded.http.get(url, params=params, timeout=10),
                                range(40)))  # fmt: skip
    busy = [r for r in replies if r.status_code == 503]
    assert busy, "the cap of 1 heavy read never refused one of 40 concurrent reads"
    assert all(r.json()["type"].endswith(":reads-busy") for r in busy)
    assert all(int(r.headers["retry-after"]) >= 1 for r in busy)


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[EngineProcess, EngineProcess]]:
    binary = engine_binary("valkey")
    assert binary is not None  # the bundled Valkey: always there
    master = EngineProcess(binary, tmp_path / "master")
    master.start()
    replica = EngineProcess(binary, tmp_path / "replica",
                            extra_args=["--replicaof", "127.0.0.1", str(master.port)])  # fmt: skip
    replica.start()
    yield master, replica
    replica.stop()
    master.stop()


def test_reads_from_a_replica(
    replicated: tuple[EngineProcess, EngineProcess], tmp_path: Path
) -> None:
    master, replica = replicated
    env = {"REDIS_URL": master.url, "REDIS_READ_URL": replica.url}
    settings = Settings(
        redis_url=master.url, redis_read_url=replica.url, data_dir=tmp_path / "data"
    )
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=5)
    events = _range_events(start, 5, "r", extra=True)
    with in_process(settings, env) as svc:
        _send(svc, events)
        params: dict[str, str | int] = {"from": _iso(start), "to": _iso(now), "limit": 10}
        want = _model_top(events, 10)
        deadline = time.monotonic() + 20
        while (got := svc.http.get(f"{svc.url}/analytics/top-pages", params=params).json()).get(
            "pages"
        ) != want:
            assert time.monotonic() < deadline, got  # replication is asynchronous
            time.sleep(0.1)
        # The replica stops answering: reads fail, ingest (on the master) does not.
        assert replica.proc is not None
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            r = svc.http.get(f"{svc.url}/analytics/top-pages", params=params, timeout=20)
            assert r.status_code == 503, r.text
            assert svc.http.post(f"{svc.url}/events", json=event()).status_code == 201
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
    with redis.Redis(port=replica.port) as client:
        assert client.info("replication")["role"] == "slave"
