"""Load on a service, and traffic through an outage: many concurrent senders, a kill
after so many acknowledgements, who got what and when the 503s came and went."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from tests.helpers import event

# Sending: aiohttp, not httpx: httpx's pool manages ~200 req/s at 64 connections here.
JSON = {"content-type": "application/json"}
SEND_ALL_CLIENTS = 64
HAMMER_CLIENTS = 16


async def send_all(url: str, bodies: list[dict[str, Any]]) -> list[int]:
    """POST every body from SEND_ALL_CLIENTS concurrent keep-alive connections; the
    statuses in order."""
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for index, body in enumerate(bodies):
        queue.put_nowait((index, orjson.dumps(body)))
    statuses = [0] * len(bodies)
    connector = aiohttp.TCPConnector(limit=SEND_ALL_CLIENTS)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def client() -> None:
            while not queue.empty():
                index, raw = queue.get_nowait()
                async with session.post("/events", data=raw, headers=JSON) as r:
                    await r.read()
                    statuses[index] = r.status

        await asyncio.gather(*(client() for _ in range(SEND_ALL_CLIENTS)))
    return statuses


async def hammer(
    url: str, bodies: list[dict[str, Any]], stop_after: int, kill: Callable[[], object]
) -> set[str]:
    """Send with HAMMER_CLIENTS connections; after ``stop_after`` acks call ``kill``; a
    connection that fails stops. -> the acked event ids."""
    acked: set[str] = set()
    pending = list(reversed(bodies))
    killed = False
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(url, timeout=timeout) as session:

        async def client() -> None:
            nonlocal killed
            while pending:
                body = pending.pop()
                try:
                    async with session.post("/events", data=orjson.dumps(body), headers=JSON) as r:
                        if r.status == 201:
                            acked.add(body["event_id"])
                except (TimeoutError, aiohttp.ClientError):
                    return
                if len(acked) >= stop_after and not killed:
                    killed = True
                    kill()

        await asyncio.gather(*(client() for _ in range(HAMMER_CLIENTS)))
    return acked


# Traffic through an outage: who got what, when the 503s came and went.

CONNECTIONS = 16  # of failover_traffic
CLIENT_TIMEOUT_S = 10  # a request slower than this counts as a hang
KILL_AFTER_ACKS = 400
CALM_S = 2.0  # recovered: this long without a 503 after the last one
DEADLINE_S = 60.0
# Asynchronous replication: what a master acknowledged but had not sent to its replica
# when it died is lost. Each connection has one request in flight, so at the kill instant
# at most CONNECTIONS acks can be ahead of the replica on loopback (measured: 0 lost).
LOSS_BOUND = CONNECTIONS


@dataclass
class Traffic:
    acked: list[dict[str, Any]] = field(default_factory=list)
    acked_at: list[float] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)  # 503: not acknowledged
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    bad: list[str] = field(default_factory=list)  # anything but 201/503, or a hang
    killed_at: float | None = None
    first_503: float | None = None
    last_503: float | None = None
    slowest_s: float = 0.0
    recovered: bool = False


async def failover_traffic(url: str, kill: Any) -> Traffic:
    """New events from CONNECTIONS clients; kill after KILL_AFTER_ACKS; run until recovered."""
    t = Traffic()
    counter = iter(range(10**9))
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)

    def done(now: float) -> bool:
        if t.killed_at is None:
            return False
        if t.last_503 is not None and now - t.last_503 > CALM_S:
            t.recovered = True
            return True
        return now - t.killed_at > DEADLINE_S

    async with aiohttp.ClientSession(url, timeout=timeout, connector=connector) as session:

        async def client() -> None:
            while not done(time.monotonic()):
                body = event(user=f"user-{next(counter)}")
                sent = time.monotonic()
                try:
                    async with session.post("/events", data=orjson.dumps(body), headers=JSON) as r:
                        await r.read()
                        status, retry_after = r.status, r.headers.get("retry-after")
                        ctype = r.headers.get("content-type")
                except (TimeoutError, aiohttp.ClientError) as exc:
                    t.bad.append(f"{type(exc).__name__} after {time.monotonic() - sent:.1f} s")
                    continue
                now = time.monotonic()
                t.slowest_s = max(t.slowest_s, now - sent)
                t.statuses[status] += 1
                if status == 201:
                    t.acked.append(body)
                    t.acked_at.append(now)
                    if len(t.acked) >= KILL_AFTER_ACKS and t.killed_at is None:
                        t.killed_at = time.monotonic()
                        kill()
                elif status == 503 and retry_after == "1" and ctype == "application/problem+json":
                    t.refused.append(body)
                    t.first_503 = t.first_503 or now
                    t.last_503 = now
                    await asyncio.sleep(0.05)  # a client backs off a little
                else:
                    t.bad.append(f"{status} retry-after={retry_after} {ctype}")

        await asyncio.gather(*(client() for _ in range(CONNECTIONS)))
    return t
