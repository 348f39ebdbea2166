"""What one event costs the engine: the ingest script's time and commands per event.

Stores ``--events`` unique page views (10,000 users, 50 pages, one minute) through the
real IngestWriter in calls of ``--batch`` events, on a private engine run as the service runs
it (AOF, fsync always), and prints from the engine's own counters (INFO commandstats,
INFO cpu): the script's time per event, the commands it runs per event by name, and the
engine's whole CPU per event (script, protocol, AOF). The engine is single-threaded, so
1,000,000 / (engine µs per event) bounds the events/s of one engine, whatever the API.

    .venv/bin/python benchmarks/script_cost.py [--events 20000] [--batch 100] [--aggregate-above N]
        [--erased N]

``--erased N``: N users (none of those sending) on the suppression list first
(``forget``): what checking a call's users against it costs.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import redis
from procs import EngineProcess

from event_analytics.config import Settings
from event_analytics.ingest import Ingestor
from event_analytics.model import EVENT_ADAPTER
from event_analytics.store import IngestWriter
from event_analytics.store.embedded import find_server_binary
from event_analytics.store.writer import AGGREGATE_ABOVE

# Not the script's own work: the call itself and what the measurement sends.
OUTSIDE = {"evalsha", "config|resetstat", "info", "script|load", "hello", "client|setinfo"}


async def store_all(url: str, n: int, batch: int, aggregate_above: int, erased: int = 0) -> None:
    settings = Settings(redis_url=url)
    store = IngestWriter.from_settings(settings, aggregate_above=aggregate_above)
    if erased and hasattr(store.keys, "erased"):  # (a tree before the suppression list)
        for shard in range(store.keys.shards):
            await store.client.sadd(store.keys.erased(shard), *(f"gone{i}" for i in range(erased)))
    ingestor = Ingestor(settings, store)
    now = datetime.now(UTC)
    ts = now.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    prefix = secrets.token_hex(4)
    prepared = [
        ingestor.prepare(
            EVENT_ADAPTER.validate_python(
                {
                    "event_id": f"{prefix}-0000-4000-8000-{i:012x}",
                    "user_id": f"u{i * 7919 % 10000}",
                    "timestamp": ts,
                    "event_type": "page_view",
                    "payload": {"page_url": f"https://example.com/p{i % 50}"},
                }
            ),
            now,
        )
        for i in range(n)
    ]
    client = redis.Redis.from_url(url)
    client.config_resetstat()
    cpu_before = client.info("cpu")
    started = time.perf_counter()
    try:
        for start in range(0, n, batch):
            flags = await store.ingest(prepared[start : start + batch])
            assert all(flags), "every event is new"
    finally:
        await store.close()
    seconds = time.perf_counter() - started
    cpu_after, stats = client.info("cpu"), client.info("commandstats")
    client.close()

    def used(info: dict[str, float]) -> float:
        return info["used_cpu_user"] + info["used_cpu_sys"]

    script = stats["cmdstat_evalsha"]
    inner = {k[len("cmdstat_") :]: v for k, v in stats.items()}
    inner = {k: v for k, v in inner.items() if k not in OUTSIDE}
    path = "per key" if batch > aggregate_above else "per event"
    print(f"{n:,} events in calls of {batch} ({path}): {n / seconds:,.0f} events/s (wall)")
    print(f"  script time per event:      {script['usec'] / n:6.1f} µs")
    print(f"  engine CPU per event:       {(used(cpu_after) - used(cpu_before)) * 1e6 / n:6.1f} µs")
    print(f"  commands per event:         {sum(v['calls'] for v in inner.values()) / n:6.2f}")
    for name, v in sorted(inner.items(), key=lambda kv: -kv[1]["usec"]):
        print(f"    {name:<10} {v['calls'] / n:5.2f} per event, {v['usec'] / n:5.2f} µs per event")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument(
        "--aggregate-above",
        type=int,
        default=AGGREGATE_ABOVE,
        help="calls of more events write per key (default: the service's threshold)",
    )
    parser.add_argument("--erased", type=int, default=0, help="users erased beforehand")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ea-script-cost-"))
    try:
        with EngineProcess(find_server_binary(), work) as engine:
            asyncio.run(
                store_all(engine.url, args.events, args.batch, args.aggregate_above, args.erased)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
