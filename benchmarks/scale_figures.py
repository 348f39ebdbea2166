"""The scale figures of docs/deploy.md, from one ``serve --workers 1 --query-workers 1``
(embedded engine, its defaults) on this machine: ingest events/s through one API worker
(single events, then batches of 100), counter reads per second through one query process
(realtime, an hour's minute series, an hour's top pages), what a query process costs
(resident memory idle and after the reads, CPU per read), and the engine's memory after
the events (archiver caught up). CPU seconds by process group come from /proc; the load
average is printed beside every figure, as the machine is shared.

    .venv/bin/python benchmarks/scale_figures.py --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench import engine_client
from benchmarks.query_storm import _cpu
from benchmarks.read_storm import _event, served

PAGES = 100
SERVE = "\x00serve\x00"  # in /proc/PID/cmdline, arguments end with NUL
USERS = 1000


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def _rss_mib(root: int, group: str) -> float:
    """Resident memory of ``root`` and its descendants whose command line holds ``group``."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            parents[int(entry.name)] = int(stat.rsplit(") ", 1)[1].split()[1])
    mine, grown = {root}, True
    while grown:
        more = {pid for pid, parent in parents.items() if parent in mine} - mine
        mine |= more
        grown = bool(more)
    total = 0
    for pid in mine:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if group.encode() in cmd:
            total += next(int(line.split()[1]) for line in status.splitlines()
                          if line.startswith("VmRSS:"))  # fmt: skip
    return total / 1024


async def _ingest(client: httpx.AsyncClient, url: str, seconds: float, batch: int) -> int:
    """Events acknowledged in ``seconds`` over 16 connections (closed loop)."""
    done = 0
    n = 0
    deadline = time.monotonic() + seconds
    minute = datetime.now(UTC) - timedelta(seconds=30)

    async def one() -> None:
        nonlocal done, n
        while time.monotonic() < deadline:
            events = []
            for _ in range(batch):
                n += 1
                events.append(_event(minute, f"u{n % USERS}", f"https://ex.com/p{n % PAGES}"))
            if batch == 1:
                r = await client.post(f"{url}/events", json=events[0])
                done += r.status_code == 201
            else:
                r = await client.post(f"{url}/events/batch", json={"events": events})
                done += r.json()["accepted"] if r.status_code == 200 else 0

    await asyncio.gather(*(one() for _ in range(16)))
    return done


async def _reads(client: httpx.AsyncClient, url: str, seconds: float, readers: int
                 ) -> dict[str, list[float]]:  # fmt: skip
    now = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    hour = {"from": (now - timedelta(hours=1)).isoformat(), "to": now.isoformat()}
    kinds = [("realtime", "/analytics/realtime", {}),
             ("timeseries 60 min", "/analytics/timeseries", hour),
             ("top-pages 60 min", "/analytics/top-pages", hour)]  # fmt: skip
    took: dict[str, list[float]] = {k: [] for k, _, _ in kinds}
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds

    async def one(i: int) -> None:
        while time.monotonic() < deadline:
            kind, path, params = kinds[i % len(kinds)]
            i += 1
            t0 = time.perf_counter()
            r = await client.get(url + path, params=params)
            statuses[r.status_code] += 1
            if r.status_code == 200:
                took[kind].append(time.perf_counter() - t0)
            elif r.status_code == 503:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))

    await asyncio.gather(*(one(i) for i in range(readers)))
    print(f"  read answers by status: {dict(statuses)}")
    return took


async def run(url: str, data: Path, root: int, args: argparse.Namespace) -> None:
    limits = httpx.Limits(max_connections=64)
    engine = engine_client(data)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        base_memory = int(engine.info("memory")["used_memory"])
        events = 0
        for batch in (1, 100):
            cpu0 = _cpu(root)
            got = await _ingest(client, url, args.seconds, batch)
            cpu1 = _cpu(root)
            events += got
            cpu = {g: cpu1.get(g, 0) - cpu0.get(g, 0) for g in cpu1}
            print(f"ingest, {batch} event(s) a request: {got / args.seconds:,.0f} events/s "
                  f"through 1 API worker; CPU per 1,000 events: "
                  + ", ".join(f"{g} {s * 1000 / max(got, 1):.2f} s" for g, s in sorted(cpu.items()))
                  + f" ({_load()})")  # fmt: skip
        for _ in range(600):  # the archiver catches up: the stream is trimmed
            stats = (await client.get(f"{url}/persistent/status")).json()["stats"]
            if stats["pending_messages"] == 0 and stats["stream_length"] == 0:
                break
            await asyncio.sleep(0.5)
        memory = int(engine.info("memory")["used_memory"]) - base_memory
        print(f"engine memory after {events:,} events ({USERS} users, {PAGES} pages, one "
              f"minute), archiver caught up: +{memory / 2**20:.1f} MiB, "
              f"{memory / max(events, 1):.0f} bytes/event")  # fmt: skip
        idle = _rss_mib(root, "query-server")
        cpu0 = _cpu(root)
        took = await _reads(client, url, args.seconds, args.readers)
        cpu1 = _cpu(root)
        reads = sum(len(t) for t in took.values())
        query_cpu = cpu1.get("query", 0) - cpu0.get("query", 0)
        print(f"reads: {reads / args.seconds:,.0f}/s answered through 1 query process, "
              f"{args.readers} readers ({_load()}); query process CPU "
              f"{query_cpu * 1000 / max(reads, 1):.1f} ms per read; API worker CPU "
              f"{(cpu1.get('api', 0) - cpu0.get('api', 0)) * 1000 / max(reads, 1):.1f} ms "
              f"per read (passing it on)")  # fmt: skip
        for kind, rows in took.items():
            if len(rows) > 1:
                p50 = statistics.median(rows) * 1000
                p99 = statistics.quantiles(rows, n=100)[98] * 1000
                print(f"  {kind:18} {len(rows) / args.seconds:6.1f}/s  p50 {p50:6.1f} ms  "
                      f"p99 {p99:6.1f} ms")  # fmt: skip
        print(f"query process resident memory: {idle:.0f} MiB idle, "
              f"{_rss_mib(root, 'query-server'):.0f} MiB after the reads; the serve process "
              f"(the API worker with --workers 1) {_rss_mib(root, SERVE):.0f} MiB")  # fmt: skip
    engine.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--readers", type=int, default=8)
    args = parser.parse_args()
    with served(["--workers", "1", "--query-workers", "1"]) as (url, data, proc):
        asyncio.run(run(url, data, proc.pid, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
