"""Rebuild rate: events per second replayed from the archive into a private engine.

Writes ``--events`` page views (``--users`` users, ``--pages`` pages, spread over
``--hours`` hours of yesterday) as an archive with the archive's own codec, runs the real
``rebuild`` on an engine run as the service runs it (AOF, fsync always), and checks the
counts: every event once in the minute counters, the hour counters and the day counter.
Prints events/s (wall) and the engine's CPU per event.

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/rebuild_bench.py [--events 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from procs import EngineProcess

from event_analytics.archive import files, rebuild
from event_analytics.archive.record import Record, encode
from event_analytics.config import Settings
from event_analytics.keys import Keys
from event_analytics.store import IngestWriter
from event_analytics.store.embedded import find_server_binary
from event_analytics.timebucket import Interval


def write_archive(root: Path, n: int, users: int, pages: int, hours: int) -> datetime:
    """The archive's hourly files of ``n`` events; returns their day."""
    day = (datetime.now(UTC) - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    per_hour = -(-n // hours)
    written = 0
    for h in range(hours):
        hour = day + timedelta(hours=h)
        path = files.hour_path(root, hour)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(written, min(n, written + per_hour)):
            ts = hour + timedelta(seconds=(i * 7) % 3600)
            record = Record(
                uuid.UUID(int=i + 1),
                f"u{i * 7919 % users}",
                ts,
                "page_view",
                {"page_url": f"https://example.com/p{i % pages}"},
                ts,
            )
            lines.append(encode(record))
        path.write_bytes(b"\n".join(lines) + b"\n")
        written += len(lines)
    return day


def check_counts(url: str, keys: Keys, day: datetime, n: int, hours: int) -> None:
    """Every event once: in the day counter, the hours' and the minutes' (all shards)."""
    client = redis.Redis.from_url(url)
    try:
        shards = range(keys.shards)
        day_total = sum(
            int(client.get(keys.count(s, "page_view", Interval.DAY, day)) or 0) for s in shards
        )
        hour_names = [
            keys.count(s, "page_view", Interval.HOUR, day + timedelta(hours=h))
            for s in shards
            for h in range(hours)
        ]
        minute_names = [
            keys.count(s, "page_view", Interval.MINUTE, day + timedelta(minutes=m))
            for s in shards
            for m in range(hours * 60)
        ]
        hour_total = sum(int(v or 0) for v in client.mget(hour_names))
        minute_total = sum(int(v or 0) for v in client.mget(minute_names))
    finally:
        client.close()
    assert day_total == hour_total == minute_total == n, (day_total, hour_total, minute_total, n)


async def run(url: str, root: Path, shards: int) -> rebuild.RebuildReport:
    settings = Settings(redis_url=url, shards=shards, archive_dir=root)
    store = IngestWriter.from_settings(settings)
    try:
        found = files.list_files(root, None, None)
        return await rebuild.rebuild(settings, store, found)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--hours", type=int, default=4)
    parser.add_argument("--shards", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ea-rebuild-bench-"))
    try:
        root = work / "archive"
        day = write_archive(root, args.events, args.users, args.pages, args.hours)
        with EngineProcess(find_server_binary(), work / "engine") as engine:
            client = redis.Redis.from_url(engine.url)
            cpu = client.info("cpu")
            report = asyncio.run(run(engine.url, root, args.shards))
            after = client.info("cpu")
            client.close()
            check_counts(engine.url, Keys(shards=args.shards), day, args.events, args.hours)
        used = (after["used_cpu_user"] + after["used_cpu_sys"]) - (
            cpu["used_cpu_user"] + cpu["used_cpu_sys"]
        )
        print(
            f"rebuild of {report.events:,} events ({args.shards} shard(s)): "
            f"{report.events_per_s:,.0f} events/s (wall, {report.seconds:.2f} s), "
            f"engine CPU {used * 1e6 / report.events:.1f} µs per event; counts verified"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
