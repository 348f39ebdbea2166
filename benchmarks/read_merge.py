"""Top pages over MINUTES x PAGES: the split merge (store/reads.py: rounds of at most a
chunk of entries, each key read by ZRANGE) at several chunk sizes against one unsplit
ZUNION of every bucket, on a private engine seeded directly.

Prints each variant's time (best of ``--repeat``) and the engine's calls (INFO
commandstats: ZRANGE for the split, ZUNION for the unsplit one): the split trades total
time for a bound on what one round holds the engine.

    .venv/bin/python benchmarks/read_merge.py --minutes 240 --pages 1000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from procs import EngineProcess

from event_analytics.config import Settings
from event_analytics.keys import Keys
from event_analytics.store import IngestWriter
from event_analytics.store.embedded import find_server_binary
from event_analytics.store.reads import Reads
from event_analytics.timebucket import Interval, floor


async def run(args: argparse.Namespace, url: str, engine: redis.Redis) -> None:
    keys = Keys("ea:", 1)
    base = floor(datetime.now(UTC) - timedelta(hours=5), Interval.MINUTE)
    minutes = [base + timedelta(minutes=m) for m in range(args.minutes)]
    names = [keys.pages(0, "page_view", Interval.MINUTE, m) for m in minutes]
    with engine.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zadd(name, {f"https://ex.com/p{i}": 1 + i % 7 for i in range(args.pages)})
        pipe.execute()
    store = IngestWriter.from_settings(Settings(redis_url=url, shards=1))
    try:
        for chunk in args.chunks:
            reads = Reads(store, chunk_entries=chunk, max_cost=10**9)
            best = float("inf")
            engine.config_resetstat()
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                await reads.top_pages("page_view", Interval.MINUTE, minutes, 10)
                best = min(best, time.perf_counter() - t0)
            stats = engine.info("commandstats").get("cmdstat_zrange", {})
            print(f"split, {chunk:>6} entries a call: {best * 1000:6.0f} ms, "
                  f"{stats.get('calls', 0) // args.repeat} calls of "
                  f"{stats.get('usec_per_call', 0) / 1000:.2f} ms")  # fmt: skip
        best = float("inf")
        engine.config_resetstat()
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            await store.client.execute_command("ZUNION", len(names), *names, "WITHSCORES")
            best = min(best, time.perf_counter() - t0)
        stats = engine.info("commandstats")["cmdstat_zunion"]
        print(f"one unsplit ZUNION:            {best * 1000:6.0f} ms, "
              f"1 call of {stats['usec_per_call'] / 1000:.2f} ms")  # fmt: skip
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=240)
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--chunks", type=int, nargs="+", default=[2000, 10000, 20000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = EngineProcess(find_server_binary(), Path(tmp), aof=False)
        engine.start()
        try:
            client = redis.Redis(port=engine.port)
            asyncio.run(run(args, engine.url, client))
        finally:
            engine.stop()


if __name__ == "__main__":
    main()
