"""What the aggregates cost in engine memory: MEMORY USAGE of every key on a real engine.

Replays synthetic traffic (default: one hour, 2,000 events a minute from 1,000 distinct
users a minute out of a 20,000-user pool, 100 page URLs of ~45 characters, Zipf-like)
through the real ingest script, once per EA_UNIQUES mode on a fresh engine, and prints
bytes per bucket and per member of every structure, and bytes per event. Events go in as
live traffic (dedup memory included); the stream is deleted before measuring: it is the
archiver's, trimmed once archived.

    .venv/bin/python benchmarks/memory.py [--engine valkey|redis] [--minutes 60] ...
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import subprocess
import tempfile
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import redis
from procs import EngineProcess

from event_analytics.config import Settings
from event_analytics.ingest import Ingestor
from event_analytics.model import EVENT_ADAPTER
from event_analytics.store import IngestWriter
from event_analytics.store.embedded import find_server_binary

Mode = Literal["approx", "exact"]


def traffic(minutes: int, per_minute: int, distinct: int, pages: int) -> list[dict[str, Any]]:
    rng = random.Random(1)
    pool = [f"user_{i:06d}" for i in range(20_000)]
    urls = [f"https://shop.example.com/catalogue/item-{i:04d}" for i in range(pages)]
    weights = [1 / (i + 1) for i in range(pages)]
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    out = []
    for m in range(minutes):
        active = rng.sample(pool, distinct)
        for i in range(per_minute):
            ts = start + timedelta(minutes=m, seconds=i * 60 / per_minute)
            out.append(
                {
                    "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "user_id": active[i % distinct],
                    "timestamp": ts.isoformat(),
                    "event_type": "page_view",
                    "payload": {"page_url": rng.choices(urls, weights)[0]},
                }
            )
    return out


async def load(url: str, bodies: list[dict[str, Any]], uniques: Mode) -> float:
    """Ingest as live traffic; the script's server time per event, in µs."""
    settings = Settings(redis_url=url, uniques=uniques)
    store = IngestWriter.from_settings(settings)
    ingestor = Ingestor(settings, store)
    now = datetime.now(UTC)
    events = [ingestor.prepare(EVENT_ADAPTER.validate_python(b), now) for b in bodies]
    for i in range(0, len(events), 1000):
        await store.ingest(events[i : i + 1000])
    stats = await store.client.info("commandstats")
    await store.client.delete(store.keys.stream(0), store.keys.stream_extra(0))
    await store.close()
    usec = sum(v["usec"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    return float(usec) / len(events)


def measure(url: str) -> dict[tuple[str, str], list[int]]:
    """(interval, structure) -> [keys, bytes, members], summed over the buckets."""
    client = redis.Redis.from_url(url, decode_responses=True)
    sizes = {"set": client.scard, "zset": client.zcard, "hash": client.hlen}
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for key in client.scan_iter("ea:*", count=1000):
        parts = key.split(":")
        if parts[2] == "seen":
            kind = ("-", "seen")
        elif "page_hll" in parts:
            kind = (parts[3], "page_hll")
        else:
            kind = (parts[3], parts[-1])
        row = out[kind]
        row[0] += 1
        row[1] += client.memory_usage(key, samples=0) or 0
        row[2] += sizes.get(client.type(key), lambda _k: 1)(key)
    client.close()
    return out


def report(mode: Mode, rows: dict[tuple[str, str], list[int]], events: int, us: float) -> None:
    seen = rows.pop(("-", "seen"), [0, 0, 0])
    total = sum(r[1] for r in rows.values())
    print(f"\nEA_UNIQUES={mode}: aggregates {total / events:.0f} B/event; dedup "
          f"{seen[1] / max(1, seen[2]):.0f} B per id; ingest script {us:.1f} µs/event")  # fmt: skip
    print(f"{'bucket':6} {'structure':10} {'keys':>5} {'bytes/bucket':>13} {'members/key':>12} "
          f"{'bytes/member':>13} {'B/event':>8}")  # fmt: skip
    order = {"m": 0, "h": 1, "d": 2}
    for (interval, name), (keys, size, members) in sorted(
        rows.items(), key=lambda item: (order[item[0][0]], item[0][1])
    ):
        buckets = rows[(interval, "count")][0]
        print(f"{interval:6} {name:10} {keys:5d} {size / buckets:13.0f} {members / keys:12.0f} "
              f"{size / members:13.1f} {size / events:8.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--engine", choices=["valkey", "redis"], default="valkey")
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--events-per-minute", type=int, default=2000)
    parser.add_argument("--users-per-minute", type=int, default=1000)
    parser.add_argument("--pages", type=int, default=100)
    args = parser.parse_args()
    binary = find_server_binary() if args.engine == "valkey" else shutil.which("redis-server")
    assert binary, f"no {args.engine} server binary"
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    bodies = traffic(args.minutes, args.events_per_minute, args.users_per_minute, args.pages)
    print(f"{' '.join(version.split()[:3])}: {len(bodies)} events over {args.minutes} minutes;"
          f" a minute has {args.users_per_minute} users of 20,000, {args.pages} pages")  # fmt: skip
    modes: tuple[Mode, ...] = ("approx", "exact")
    for mode in modes:
        with (
            tempfile.TemporaryDirectory() as tmp,
            EngineProcess(binary, Path(tmp), aof=False) as engine,
        ):
            us = asyncio.run(load(engine.url, bodies, mode))
            report(mode, measure(engine.url), len(bodies), us)


if __name__ == "__main__":
    main()
