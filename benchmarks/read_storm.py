"""Ingest latency with and without a storm of heavy analytics reads (issue 13).

Starts the service (embedded engine), writes MINUTES x PAGES page views over the past
minutes (the costly shape: one top-pages query over the range merges every bucket's
pages), then measures single-event ingest for ``--seconds`` alone, and again while
``--queries`` clients each ask for the top pages of the whole range in a loop. Prints
both p50/p99, their ratio (target: p99 with the storm <= 3 x without), the queries'
answers by status, the slowest engine command (SLOWLOG) and checks that every event
sent was acknowledged once, as new, and counted.

    .venv/bin/python benchmarks/read_storm.py --seconds 8 --queries 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis

ENV = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "EA_REDIS_URL")}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _event(ts: datetime, user: str, page: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "user_id": user,
        "timestamp": ts.isoformat(),
        "event_type": "page_view",
        "payload": {"page_url": page},
    }


async def _seed(
    client: httpx.AsyncClient, url: str, start: datetime, minutes: int, pages: int
) -> int:
    events = [
        _event(start + timedelta(minutes=m, seconds=1), f"seed-{m}-{p}", f"https://ex.com/p{p}")
        for m in range(minutes)
        for p in range(pages)
    ]
    for i in range(0, len(events), 1000):
        r = await client.post(f"{url}/events/batch", json={"events": events[i : i + 1000]})
        r.raise_for_status()
    return len(events)


async def _ingest(
    client: httpx.AsyncClient, url: str, seconds: float, workers: int, minute: datetime, tag: str
) -> tuple[list[float], Counter[int]]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds

    async def one(w: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            body = _event(minute, f"{tag}-{w}-{n}", "https://ex.com/live")
            t0 = time.perf_counter()
            r = await client.post(f"{url}/events", json=body)
            latencies.append(time.perf_counter() - t0)
            statuses[r.status_code] += 1
            n += 1

    await asyncio.gather(*(one(w) for w in range(workers)))
    return latencies, statuses


async def _storm(
    client: httpx.AsyncClient, url: str, params: dict[str, str], clients: int, stop: asyncio.Event
) -> Counter[int]:
    answers: Counter[int] = Counter()

    async def loop() -> None:
        while not stop.is_set():
            try:
                r = await client.get(f"{url}/analytics/top-pages", params=params, timeout=60)
                answers[r.status_code] += 1
                if r.status_code in (429, 503):
                    # As the clients the service answers are told to (not a tight loop of
                    # refusals, which would measure the HTTP stack's CPU, not the reads).
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            except httpx.TimeoutException:
                answers[0] += 1

    await asyncio.gather(*(loop() for _ in range(clients)))
    return answers


def _storm_process(
    url: str, params: dict[str, str], clients: int, seconds: float, out: Any
) -> None:
    async def main() -> Counter[int]:
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=clients + 4)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            task = asyncio.create_task(_storm(client, url, params, clients, stop))
            await asyncio.sleep(seconds)
            stop.set()
            return await task

    out.put(dict(asyncio.run(main())))


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


async def run(args: argparse.Namespace, url: str, engine: redis.Redis) -> int:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=args.minutes)
    limits = httpx.Limits(max_connections=args.queries + args.writers + 8)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        seeded = await _seed(client, url, start, args.minutes, args.pages)
        minute = now - timedelta(minutes=1)
        params = {"from": start.isoformat(), "to": now.isoformat(), "limit": "10"}
        r = await client.get(f"{url}/analytics/top-pages", params=params)
        print(f"seeded {seeded} events; one top-pages query: {r.status_code}, "
              f"{r.elapsed.total_seconds() * 1000:.0f} ms")  # fmt: skip
        # The archiver catches up on the seeded events first (it would share the CPU).
        for _ in range(600):
            status = (await client.get(f"{url}/persistent/status")).json()["stats"]
            if status["stream_length"] == 0 or (
                status["pending_messages"] == 0 and status["events_archived"] >= seeded
            ):
                break
            await asyncio.sleep(0.5)
        engine.slowlog_reset()
        alone, s_alone = await _ingest(client, url, args.seconds, args.writers, minute, "a")
        # The storm's clients run in a process of their own, as other machines' would:
        # in this one, their event loop would delay the ingest clients' and be measured.
        answers_q: multiprocessing.Queue[dict[int, int]] = multiprocessing.Queue()
        storm = multiprocessing.Process(
            target=_storm_process, args=(url, params, args.queries, args.seconds + 2, answers_q)
        )
        storm.start()
        await asyncio.sleep(1)  # the storm under way
        loaded, s_loaded = await _ingest(client, url, args.seconds, args.writers, minute, "b")
        answers = answers_q.get(timeout=120)
        storm.join(timeout=60)
        slow = sorted(engine.slowlog_get(128), key=lambda e: -e["duration"])
        slowest = slow[0]["duration"] if slow else 0
        slowest_name = slow[0]["command"][:24] if slow else b""
        live = (await client.get(f"{url}/analytics/timeseries", params={
            "from": minute.isoformat(), "to": (minute + timedelta(minutes=1)).isoformat(),
            "page_url": "https://ex.com/live"})).json()["total"]["count"]  # fmt: skip
    p99a, p99b = _pct(alone, 99), _pct(loaded, 99)
    for name, lat, st in (("alone", alone, s_alone), ("with storm", loaded, s_loaded)):
        print(f"ingest {name:10}: {len(lat)} events, p50 {_pct(lat, 50):.1f} ms, "
              f"p99 {_pct(lat, 99):.1f} ms, statuses {dict(st)}")  # fmt: skip
    print(f"p99 ratio: {p99b / p99a:.2f} (target <= 3)")
    print(f"queries ({args.queries} clients, each waiting Retry-After on a 503): {dict(answers)}")
    print(f"slowest engine command during both runs: {slowest / 1000:.1f} ms {slowest_name!r}")
    sent = len(alone) + len(loaded)
    ok = s_alone[201] + s_loaded[201] == sent and live == sent
    print(f"every event acknowledged as new and counted: {ok} ({live} counted of {sent})")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--minutes", type=int, default=240)
    parser.add_argument("--pages", type=int, default=200)
    args = parser.parse_args()
    with served([]) as (url, data, _):
        engine = redis.Redis.from_url((data / "valkey" / "url").read_text())
        engine.config_set("slowlog-log-slower-than", "1000")  # 1 ms
        return asyncio.run(run(args, url, engine))


@contextlib.contextmanager
def served(
    extra: list[str], session: bool = False
) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """A ``serve`` with ``extra`` arguments on a free port and a scratch data dir, ready:
    its URL, data dir and process; terminated after. ``session``: in a session of its own,
    as a service is started (with autogroups, the CPU is shared between sessions first)."""
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        data = Path(tmp) / "data"
        log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "event_analytics", "serve", "--port", str(port),
             "--data-dir", str(data), *extra], env=ENV, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=session,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("serve did not start")
                time.sleep(0.2)
            yield url, data, proc
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


if __name__ == "__main__":
    raise SystemExit(main())
