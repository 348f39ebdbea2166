"""Soak: ten minutes of mixed load with engine restarts and bad input (not part of CI).

Starts a private Valkey (AOF, fsync always) and the service on it (two workers, the
archiver, API keys and rate limits on), then for ``--minutes``:

- sends single events and batches at a steady rate, with resends of acknowledged ones;
- sends bad input all along: malformed JSON, invalid events, oversized and slow bodies,
  slow request heads, wrong content types, missing, unknown and wrong-scope keys;
- reads analytics and the archive status;
- every ``--fault-every`` seconds, in turn: SIGKILL of the engine and a restart on the
  same files; SCRIPT FLUSH (the service must reload its scripts); a flood of idle
  sockets (each must be cut within the head timeout, readiness must answer meanwhile);
  a storm of 50 concurrent heavy queries (only 200, 422 or 503 reads-busy); the engine
  switched to ``maxmemory-policy allkeys-lru`` (readiness must say engine_may_evict,
  then be ready again once it is back to noeviction), each bounded in time;
- every ``--sample-every`` seconds samples memory (service processes, engine), stream
  length and pending entries.

Then it settles every answer that was lost (resends them), waits for the archiver, and
checks that nothing acknowledged was lost: every acknowledged event is a duplicate when
sent again, the minute counters add up to exactly the distinct stored events, and the
archive holds each of them exactly once. Writes a Markdown report (``--report``).
Only loopback traffic; every loop is bounded by ``--minutes``.

    .venv/bin/python benchmarks/soak.py --minutes 10 --report docs/soak.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis
from procs import EngineProcess, free_port, stop_group

from event_analytics.store.embedded import find_server_binary

WRITE_KEY = "soak-write-key-0123456789abcdef"
READ_KEY = "soak-read-key-0123456789abcdef"
ENV_DROP = ("REDIS_URL", "EA_REDIS_URL")
HEADER_TIMEOUT_S = 2  # the service's: idle sockets are cut after it


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,rss="], capture_output=True, text=True)
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for line in out.stdout.splitlines():
        p, pp, r = (int(x) for x in line.split())
        children.setdefault(pp, []).append(p)
        rss[p] = r
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total / 1024


@dataclass
class Tally:
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)  # 201 or 200 on first send
    recent: list[dict[str, Any]] = field(default_factory=list)  # acked singles, to resend
    unsettled: dict[str, dict[str, Any]] = field(default_factory=dict)  # answer lost or 503
    resends_ok: int = 0
    resends_counted_again: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    bad_expected: Counter[str] = field(default_factory=Counter)
    bad_unexpected: list[str] = field(default_factory=list)
    reads: Counter[int] = field(default_factory=Counter)
    faults: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)


def new_event(users: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "user_id": f"soak_user_{random.randrange(users)}",
        "timestamp": datetime.now(UTC).isoformat(),
        "event_type": "page_view",
        "payload": {"page_url": f"https://soak.example/page-{random.randrange(20)}"},
    }


WRITE = {"content-type": "application/json", "authorization": f"Bearer {WRITE_KEY}"}
READ = {"x-api-key": READ_KEY}


class Soak:
    def __init__(self, args: argparse.Namespace, base: str, tally: Tally) -> None:
        self.args = args
        self.base = base
        self.t = tally
        self.stop_at = time.monotonic() + args.minutes * 60

    def running(self) -> bool:
        return time.monotonic() < self.stop_at

    async def post(self, session: aiohttp.ClientSession, path: str, body: Any) -> int | None:
        try:
            async with session.post(path, data=orjson.dumps(body), headers=WRITE) as r:
                await r.read()
                return r.status
        except (TimeoutError, aiohttp.ClientError):
            return None

    async def singles(self, session: aiohttp.ClientSession, rate: float) -> None:
        interval = 1 / rate
        next_at = time.monotonic()
        while self.running():
            next_at += interval
            if self.t.recent and random.random() < 0.05:
                body = random.choice(self.t.recent[-2000:])
                status = await self.post(session, "/events", body)
                self.t.statuses[f"resend {status}"] += 1
                if status == 200:
                    self.t.resends_ok += 1
                elif status == 201:
                    self.t.resends_counted_again += 1
            else:
                body = new_event(self.args.users)
                status = await self.post(session, "/events", body)
                self.t.statuses[f"single {status}"] += 1
                if status in (200, 201):
                    self.t.acked[body["event_id"]] = body
                    self.t.recent.append(body)
                else:
                    self.t.unsettled[body["event_id"]] = body
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def batches(self, session: aiohttp.ClientSession, size: int, every_s: float) -> None:
        while self.running():
            bodies = [new_event(self.args.users) for _ in range(size)]
            try:
                async with session.post(
                    "/events/batch", data=orjson.dumps({"events": bodies}), headers=WRITE
                ) as r:
                    status = r.status
                    reply = await r.json(content_type=None) if status == 200 else None
            except (TimeoutError, aiohttp.ClientError):
                status, reply = None, None
            self.t.statuses[f"batch {status}"] += 1
            if reply is not None:
                for body, row in zip(bodies, reply["results"], strict=True):
                    if row["status"] in ("accepted", "duplicate"):
                        self.t.acked[body["event_id"]] = body
                    else:
                        self.t.bad_unexpected.append(f"batch item rejected: {row.get('code')}")
            else:
                for body in bodies:
                    self.t.unsettled[body["event_id"]] = body
            await asyncio.sleep(every_s)

    async def bad_input(self, session: aiohttp.ClientSession) -> None:
        big = orjson.dumps({**new_event(1), "payload": {"page_url": "https://a.example/",
                                                        "x": "y" * 1000, **{f"k{i}": "z" * 1000
                                                        for i in range(31)}}})  # fmt: skip
        old = {**new_event(1), "timestamp": "2001-01-01T00:00:00Z"}
        cases: list[tuple[str, str, bytes, dict[str, str], set[int]]] = [
            ("malformed json", "/events", b'{"event_id": ', WRITE, {400}),
            ("invalid user", "/events", orjson.dumps({**new_event(1), "user_id": "a\x01b"}),
             WRITE, {422}),
            ("too old", "/events", orjson.dumps(old), WRITE, {422}),
            ("nested payload", "/events",
             orjson.dumps({**new_event(1), "payload": {"page_url": "https://a.example/",
                                                       "o": {"deep": [1]}}}), WRITE, {422}),
            ("huge integer", "/events",
             orjson.dumps({**new_event(1), "payload": {"page_url": "https://a.example/"}})
             .replace(b'"}}', b'", "n": 1' + b"0" * 40 + b"}}"), WRITE, {422}),
            ("too large", "/events", big * 3, WRITE, {413}),
            ("wrong type", "/events", orjson.dumps(new_event(1)),
             {**WRITE, "content-type": "application/xml"}, {415}),
            ("no key", "/events", orjson.dumps(new_event(1)),
             {"content-type": "application/json"}, {401}),
            ("unknown key", "/events", orjson.dumps(new_event(1)),
             {**WRITE, "authorization": "Bearer not-a-key-not-a-key-1234"}, {401}),
            ("read key on write", "/events", orjson.dumps(new_event(1)),
             {**WRITE, "authorization": f"Bearer {READ_KEY}"}, {403}),
            ("batch envelope", "/events/batch", b'{"events": {}}', WRITE, {422}),
        ]  # fmt: skip
        port = int(self.base.rsplit(":", 1)[1])
        n = 0
        while self.running():
            n += 1
            name, path, data, headers, expected = random.choice(cases)
            try:
                async with session.post(path, data=data, headers=headers) as r:
                    await r.read()
                    status: int | None = r.status
            except (TimeoutError, aiohttp.ClientError):
                status = None
            # 503 is a right answer to anything while the engine is down.
            if status in expected or status == 503:
                self.t.bad_expected[name] += 1
            else:
                self.t.bad_unexpected.append(f"{name}: {status}")
            if n % 25 == 0:
                await self.slow_client(port, body=n % 50 == 0)
            await asyncio.sleep(0.1)

    async def slow_client(self, port: int, body: bool) -> None:
        """A slow head (slowloris) or a slow body: answered 408 and closed, never held."""
        name = "slow body" if body else "slow head"
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            self.t.bad_unexpected.append(f"{name}: connect failed")
            return
        try:
            if body:
                writer.write(
                    b"POST /events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    b"authorization: Bearer " + WRITE_KEY.encode() + b"\r\n"
                    b'content-length: 500\r\n\r\n{"event_id": '
                )
            else:
                writer.write(b"POST /events HTTP/1.1\r\nhost: x\r\n")
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(200), timeout=30)
            if reply.startswith(b"HTTP/1.1 408") or (reply.startswith(b"HTTP/1.1 503")):
                self.t.bad_expected[name] += 1
            else:
                self.t.bad_unexpected.append(f"{name}: {reply[:40]!r}")
        except (TimeoutError, OSError) as exc:
            self.t.bad_unexpected.append(f"{name}: {type(exc).__name__}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def reads(self, session: aiohttp.ClientSession) -> None:
        paths = ["/analytics/realtime", "/analytics/timeseries", "/analytics/top-pages",
                 "/analytics/page_views_per_minute?minutes=15", "/persistent/status"]  # fmt: skip
        while self.running():
            try:
                async with session.get(random.choice(paths), headers=READ) as r:
                    await r.read()
                    self.t.reads[r.status] += 1
            except (TimeoutError, aiohttp.ClientError):
                self.t.reads[0] += 1
            await asyncio.sleep(0.5)


async def sample(base: str, serve_pid: int, engine: EngineProcess, start: float, t: Tally) -> None:
    row: dict[str, Any] = {"t_s": round(time.monotonic() - start)}
    row["service_rss_mb"] = round(tree_rss_mb(serve_pid), 1)
    row["engine_rss_mb"] = round(tree_rss_mb(engine.proc.pid), 1) if engine.proc else None
    try:
        client = redis.Redis(port=engine.port, socket_timeout=2, socket_connect_timeout=1)
        row["engine_used_mb"] = round(client.info("memory")["used_memory"] / 1e6, 1)
        client.close()
    except redis.RedisError:
        row["engine_used_mb"] = None
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(base, timeout=timeout) as s,
            s.get("/persistent/status", headers=READ) as r,
        ):
            stats = (await r.json())["stats"] if r.status == 200 else {}
    except (TimeoutError, aiohttp.ClientError):
        stats = {}
    row["stream_length"] = stats.get("stream_length")
    row["pending"] = stats.get("pending_messages")
    row["archived"] = stats.get("events_archived")
    row["acked"] = len(t.acked)
    row["unsettled"] = len(t.unsettled)
    row["503s"] = sum(v for k, v in t.statuses.items() if k.endswith(" 503"))
    t.samples.append(row)
    print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)


async def ready_answer(base: str) -> tuple[int | None, str]:
    """/health/ready's status and body (None: no answer within 5 s)."""
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(base, timeout=timeout) as s, s.get("/health/ready") as r:
            return r.status, await r.text()
    except (TimeoutError, aiohttp.ClientError):
        return None, ""


async def idle_flood(soak: Soak, sockets: int, cut_within_s: float) -> str:
    """``sockets`` connections that never send a byte: readiness must answer while they
    are open, and every one must be closed by the service within ``cut_within_s``."""
    host, port = "127.0.0.1", int(soak.base.rsplit(":", 1)[1])
    opened = []
    for _ in range(sockets):
        with contextlib.suppress(OSError):
            opened.append(await asyncio.open_connection(host, port))
    status, body = await ready_answer(soak.base)
    if status != 200 and "problem" not in body and '"status"' not in body:
        soak.t.bad_unexpected.append(f"idle flood: readiness answered {status} {body[:40]!r}")

    async def cut(reader: asyncio.StreamReader) -> bool:
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(cut_within_s):
                while await reader.read(4096):
                    pass  # a 408 head or nothing, then EOF
                return True
        return False

    flags = await asyncio.gather(*(cut(r) for r, _ in opened))
    for _, writer in opened:
        writer.close()
    held = flags.count(False)
    if held:
        soak.t.bad_unexpected.append(f"idle flood: {held} idle sockets not cut")
    return (f"idle flood: {len(opened)} sockets opened, {flags.count(True)} cut within "
            f"{cut_within_s:g} s, readiness meanwhile {status}")  # fmt: skip


async def query_storm(soak: Soak, clients: int, seconds: float) -> str:
    """``clients`` concurrent heavy reads for ``seconds``, every heavy read route (issue
    23's mix: counter reads and archive queries over 7 and 30 days): only 200, 422 or 503,
    none past its timeout."""
    week, month = (
        (datetime.now(UTC) - timedelta(days=d)).isoformat().replace("+00:00", "Z") for d in (7, 30)
    )
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    reads: list[tuple[str, dict[str, Any] | None]] = [
        ("/analytics/top-pages?limit=100", None),
        ("/analytics/timeseries?interval=minute", None),
        ("/analytics/realtime", None),
    ]
    for frm in (week, month):
        reads += [
            ("/analytics/funnel", {"from": frm, "to": now, "window_s": 86400,
                                   "steps": [{"event_type": "page_view"},
                                             {"event_type": "page_view"}]}),
            ("/analytics/retention", {"from": frm, "to": now, "period": "day", "periods": 7,
                                      "cohort_event": {"event_type": "page_view"},
                                      "return_event": {"event_type": "page_view"}}),
            ("/analytics/query", {"date_range": [frm, now], "metrics": ["events", "visitors"],
                                  "dimensions": ["page_url"]}),
        ]  # fmt: skip
    answers: Counter[int] = Counter()
    stop_at = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(soak.base, timeout=timeout, connector=connector) as s:

        async def loop(i: int) -> None:
            while time.monotonic() < stop_at:
                try:
                    path, body = reads[i % len(reads)]
                    i += 1
                    send = (
                        s.get(path, headers=READ)
                        if body is None
                        else s.post(path, json=body, headers=READ)
                    )
                    async with send as r:
                        await r.read()
                        answers[r.status] += 1
                        if r.status == 503:
                            await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                except (TimeoutError, aiohttp.ClientError):
                    answers[0] += 1

        await asyncio.gather(*(loop(i) for i in range(clients)))
    odd = {k: v for k, v in answers.items() if k not in (200, 422, 503)}
    if odd:
        soak.t.bad_unexpected.append(f"query storm: {odd}")
    return f"query storm: {clients} clients for {seconds:g} s, answers {dict(answers)}"


async def evicting(soak: Soak, engine: EngineProcess, seconds: float) -> str:
    """The engine on allkeys-lru: readiness must say engine_may_evict within ``seconds``,
    then turn ready again within ``seconds`` of noeviction."""

    def policy(name: str) -> None:
        with contextlib.closing(redis.Redis(port=engine.port, socket_timeout=2)) as c:
            c.config_set("maxmemory-policy", name)

    async def until(check: Any) -> tuple[int | None, str]:
        deadline = time.monotonic() + seconds
        while True:
            status, body = await ready_answer(soak.base)
            if check(status, body) or time.monotonic() > deadline:
                return status, body
            await asyncio.sleep(0.2)

    await asyncio.to_thread(policy, "allkeys-lru")
    try:
        red, body = await until(lambda st, b: st == 503 and "engine_may_evict" in b)
        said = red == 503 and "engine_may_evict" in body
        if not said:
            soak.t.bad_unexpected.append(f"allkeys-lru: readiness {red} {body[:60]!r}")
    finally:
        await asyncio.to_thread(policy, "noeviction")
    back, _ = await until(lambda st, b: st == 200)
    if back != 200:
        soak.t.bad_unexpected.append(f"allkeys-lru: not ready again after noeviction: {back}")
    return f"engine on allkeys-lru: readiness said engine_may_evict: {said}; ready again: {back}"


async def faults(soak: Soak, engine: EngineProcess, args: argparse.Namespace, start: float) -> None:
    n = 0
    while True:
        await asyncio.sleep(args.fault_every)
        if not soak.running():
            return
        n += 1
        at = round(time.monotonic() - start)
        kind = n % 5
        if kind == 1:
            engine.kill()
            await asyncio.sleep(args.down_s)
            await asyncio.to_thread(engine.start, 60)
            soak.t.faults.append(f"{at} s: engine SIGKILL, restarted after {args.down_s:g} s")
        elif kind == 2:
            client = redis.Redis(port=engine.port, socket_timeout=2)
            client.script_flush()
            client.close()
            soak.t.faults.append(f"{at} s: SCRIPT FLUSH")
        elif kind == 3:
            done = await idle_flood(soak, args.idle_sockets, HEADER_TIMEOUT_S + 5)
            soak.t.faults.append(f"{at} s: {done}")
        elif kind == 4:
            soak.t.faults.append(f"{at} s: {await query_storm(soak, 50, args.storm_s)}")
        else:
            soak.t.faults.append(f"{at} s: {await evicting(soak, engine, 15)}")


async def run_load(
    args: argparse.Namespace, base: str, serve_pid: int, engine: EngineProcess
) -> Tally:
    t = Tally()
    soak = Soak(args, base, t)
    start = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(base, timeout=timeout, connector=connector) as session:

        async def sampler() -> None:
            while soak.running():
                await sample(base, serve_pid, engine, start, t)
                await asyncio.sleep(args.sample_every)

        per_sender = args.rate / args.senders
        await asyncio.gather(
            *(soak.singles(session, per_sender) for _ in range(args.senders)),
            soak.batches(session, args.batch, 1.0),
            soak.bad_input(session),
            soak.reads(session),
            sampler(),
            faults(soak, engine, args, start),
        )
        await sample(base, serve_pid, engine, start, t)
        # Settle every answer that was lost: a resend is stored once, whatever happened.
        pending = list(t.unsettled.values())
        for _ in range(30):
            still = []
            for i in range(0, len(pending), 500):
                chunk = pending[i : i + 500]
                try:
                    async with session.post(
                        "/events/batch", data=orjson.dumps({"events": chunk}), headers=WRITE
                    ) as r:
                        reply = await r.json(content_type=None) if r.status == 200 else None
                except (TimeoutError, aiohttp.ClientError):
                    reply = None
                if reply is None:
                    still.extend(chunk)
                    continue
                for body, row in zip(chunk, reply["results"], strict=True):
                    if row["status"] in ("accepted", "duplicate"):
                        t.acked[body["event_id"]] = body
                        t.unsettled.pop(body["event_id"], None)
                    else:  # too old by now: never stored, since the window is days
                        t.bad_unexpected.append(f"settle: {row.get('code')}")
            if not still:
                break
            pending = still
            await asyncio.sleep(1)
    return t


async def verify(base: str, t: Tally, archive: Path, first: datetime) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=60)
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(base, timeout=timeout) as s:
        deadline = time.monotonic() + 180
        while True:
            async with s.get("/persistent/status", headers=READ) as r:
                stats = (await r.json())["stats"]
            if stats["stream_length"] == 0 and stats["pending_messages"] == 0:
                break
            if time.monotonic() > deadline:
                out["archiver_caught_up"] = False
                break
            await asyncio.sleep(1)
        out.setdefault("archiver_caught_up", True)
        out["dead_letters"] = stats["dead_letters"]
        # 1. Every acknowledged event is known: sent again, it is a duplicate.
        bodies = list(t.acked.values())
        not_dup = 0
        for i in range(0, len(bodies), 1000):
            chunk = bodies[i : i + 1000]
            async with s.post(
                "/events/batch", data=orjson.dumps({"events": chunk}), headers=WRITE
            ) as r:
                reply = await r.json()
            not_dup += sum(1 for row in reply["results"] if row["status"] != "duplicate")
        out["acked_resent_not_duplicate"] = not_dup
        # 2. The minute counters hold exactly the distinct stored events.
        last = datetime.now(UTC) + timedelta(minutes=1)
        params = {"from": first.strftime("%Y-%m-%dT%H:%M:00Z"),
                  "to": last.strftime("%Y-%m-%dT%H:%M:00Z"), "interval": "minute"}  # fmt: skip
        async with s.get("/analytics/timeseries", params=params, headers=READ) as r:
            series = await r.json()
        out["counted"] = series["total"]["count"]
    # 3. The archive holds each stored event exactly once, and nothing else.
    seen = await asyncio.to_thread(archived_ids, archive)
    stored = set(t.acked)
    out["archived_distinct"] = len(seen)
    out["archived_twice"] = sum(1 for n in seen.values() if n > 1)
    out["acked_missing_from_archive"] = len(stored - set(seen))
    out["archived_never_acked"] = len(set(seen) - stored)
    out["stored"] = len(stored)
    return out


def archived_ids(archive: Path) -> Counter[str]:
    seen: Counter[str] = Counter()
    for path in archive.rglob("*.jsonl"):
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                seen[orjson.loads(line)["event_id"]] += 1
    return seen


def report(args: argparse.Namespace, t: Tally, checks: dict[str, Any], seconds: float) -> str:
    ok = (
        checks["archiver_caught_up"]
        and checks["acked_resent_not_duplicate"] == 0
        and checks["counted"] == checks["stored"]
        and checks["archived_twice"] == 0
        and checks["acked_missing_from_archive"] == 0
        and checks["archived_never_acked"] == 0
        and checks["dead_letters"] == 0
        and t.resends_counted_again == 0
        and not t.unsettled
        and not t.bad_unexpected
    )
    lines = [
        "# Soak report",
        "",
        f"`benchmarks/soak.py --minutes {args.minutes:g}` on {datetime.now(UTC):%Y-%m-%d %H:%M} "
        f"UTC: {seconds / 60:.1f} minutes of load, then settling and checks. "
        f"**{'PASS' if ok else 'FAIL'}**.",
        "",
        f"Service: 2 workers and the archiver on a private Valkey (AOF, fsync always), API "
        f"keys and rate limits on. Load: ~{args.rate:g} single events/s over {args.senders} "
        f"senders (5% resends of acknowledged events), one batch of {args.batch} every "
        "second, a bad request every 0.1 s (malformed, invalid, nested, 64-bit overflow, "
        "too old, too large, wrong type, no/unknown/wrong-scope key, bad batch envelope), "
        "a slow head or slow body every 2.5 s, an analytics read every 0.5 s.",
        "",
        "## Faults",
        "",
        *[f"- {f}" for f in t.faults],
        "",
        "## Over time",
        "",
        "| t (s) | service RSS (MB) | engine RSS (MB) | engine used (MB) | stream length "
        "| pending | archived | acked | unsettled | 503s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in t.samples:
        lines.append(
            f"| {r['t_s']} | {r['service_rss_mb']} | {r['engine_rss_mb']} | "
            f"{r['engine_used_mb']} | {r['stream_length']} | {r['pending']} | "
            f"{r['archived']} | {r['acked']:,} | {r['unsettled']} | {r['503s']} |"
        )
    statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(t.statuses.items()))
    bad = ", ".join(f"{k}: {v:,}" for k, v in sorted(t.bad_expected.items()))
    reads = ", ".join(f"{k}: {v:,}" for k, v in sorted(t.reads.items()))
    lines += [
        "",
        "## Answers",
        "",
        f"- Ingest (status: count; `None` = no answer): {statuses}",
        f"- Resends of acknowledged events answered `200` duplicate: {t.resends_ok:,}; "
        f"counted again: {t.resends_counted_again}",
        f"- Bad input answered as expected (4xx, or 503 while the engine was down): {bad}",
        f"- Bad input answered otherwise: {len(t.bad_unexpected)} "
        + (f"({', '.join(t.bad_unexpected[:10])})" if t.bad_unexpected else ""),
        f"- Reads (status: count): {reads}",
        "",
        "## Nothing acknowledged was lost",
        "",
        f"- Events stored (acknowledged, plus lost answers settled by a resend): "
        f"{checks['stored']:,}; still unsettled: {len(t.unsettled)}",
        f"- Archiver caught up (stream empty, nothing pending): {checks['archiver_caught_up']}; "
        f"dead letters: {checks['dead_letters']}",
        f"- Acknowledged events sent again and NOT reported duplicate: "
        f"{checks['acked_resent_not_duplicate']}",
        f"- Minute counters over the run: {checks['counted']:,} (expected {checks['stored']:,})",
        f"- Archive: {checks['archived_distinct']:,} distinct events; stored but missing: "
        f"{checks['acked_missing_from_archive']}; archived twice: {checks['archived_twice']}; "
        f"archived but never acknowledged: {checks['archived_never_acked']}",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=150, help="single events per second")
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100, help="events per batch (1 per s)")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--fault-every", type=float, default=75)
    parser.add_argument("--down-s", type=float, default=3)
    parser.add_argument("--sample-every", type=float, default=30)
    parser.add_argument("--idle-sockets", type=int, default=200, help="sockets of a flood")
    parser.add_argument("--storm-s", type=float, default=10, help="seconds of a query storm")
    parser.add_argument("--report", type=Path, help="write the Markdown report here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ea-soak-"))
    engine = EngineProcess(find_server_binary(), work / "engine")
    engine.start(timeout_s=60)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP} | {
        "REDIS_URL": engine.url,
        "EA_WRITE_KEYS": WRITE_KEY,
        "EA_READ_KEYS": READ_KEY,
        "EA_RATE_LIMIT_PER_KEY": "1000000",
        "EA_RATE_LIMIT_PER_ADDRESS": "1000000",
        "EA_BODY_TIMEOUT_S": "2",
        "EA_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "EA_REDIS_TIMEOUT_S": "1",
    }
    log = open(work / "serve.log", "wb")  # noqa: SIM115
    serve = subprocess.Popen(
        [sys.executable, "-m", "event_analytics", "serve", "--port", str(port),
         "--data-dir", str(work / "data"), "--workers", "2"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or serve.poll() is not None:
                raise RuntimeError(f"service did not start; see {work / 'serve.log'}")
            time.sleep(0.2)
        first = datetime.now(UTC).replace(second=0, microsecond=0)
        began = time.monotonic()
        tally = asyncio.run(run_load(args, base, serve.pid, engine))
        seconds = time.monotonic() - began
        checks = asyncio.run(verify(base, tally, work / "data" / "persistent_events", first))
    finally:
        stop_group(serve)
        engine.stop()
        log.close()
    text = report(args, tally, checks, seconds)
    print(text)
    if args.report:
        args.report.write_text(text)
    print(f"work dir (logs, archive): {work}")
    return 0 if "**PASS**" in text else 1


if __name__ == "__main__":
    sys.exit(main())
