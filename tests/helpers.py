"""What more than one test module uses: builders, checks, senders, the archive read back.

One place for them: a test module never imports another test module's helpers.
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from tests.servers import ServiceProcess

# One client for all tests: httpx.post() builds a new client (and TLS context) per call,
# ~50 ms each, which made request loops in tests slow.
HTTP = httpx.Client(timeout=10)


def event(
    *,
    user: str = "user_1",
    ts: datetime | str | None = None,
    event_type: str = "page_view",
    url: str | None = "https://example.com/page-1",
    event_id: str | None = None,
    **payload: Any,
) -> dict[str, Any]:
    if ts is None:
        ts = datetime.now(UTC)
    body: dict[str, Any] = {
        "event_id": event_id or str(uuid.uuid4()),
        "user_id": user,
        "timestamp": ts if isinstance(ts, str) else ts.isoformat(),
        "event_type": event_type,
        "payload": dict(payload),
    }
    if url is not None:
        body["payload"]["page_url"] = url
    return body


IST = timezone(timedelta(hours=5, minutes=30))


def seed_key(minute: datetime, event_type: str = "page_view") -> str:
    return f"{event_type}_{minute.astimezone(UTC).strftime('%Y-%m-%d_%H:%M')}"


def z(ts: datetime) -> str:
    """A UTC instant as the read API writes it (whole seconds, ``Z``)."""
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


# HyperLogLog's standard error in Redis and Valkey (16384 registers): 0.81%.
HLL_ERROR = 0.0081


def hll_close(got: int, exact: int) -> bool:
    """Within three standard errors, or one user for tiny sets."""
    return abs(got - exact) <= max(1.0, 3 * HLL_ERROR * exact)


def past_minutes(n: int) -> list[datetime]:
    """The ``n`` whole UTC minutes before the current one, the latest first."""
    base = datetime.now(UTC).replace(second=0, microsecond=0)
    return [base - timedelta(minutes=i) for i in range(1, n + 1)]


def cli(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m event_analytics ARGS`` run to its end, with ``env`` over ours."""
    return subprocess.run(
        [sys.executable, "-m", "event_analytics", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


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


# The archive, read back.


def archive_ids(root: Path) -> collections.Counter[str]:
    """How often each event id stands in the archive under ``root``."""
    # Complete lines only: a torn tail is no event (the archiver cuts it off on its next write).
    files = sorted(root.glob("*/*/*/*.jsonl"))
    lines = [ln for f in files for ln in f.read_bytes().split(b"\n")[:-1]]
    return collections.Counter(orjson.loads(ln)["event_id"] for ln in lines)


def wait_archived(url: str, timeout_s: float = 60) -> dict[str, Any]:
    """Poll /persistent/status until nothing is left in the streams; the last status."""
    deadline = time.monotonic() + timeout_s
    while True:
        status: dict[str, Any] = HTTP.get(f"{url}/persistent/status", timeout=5).json()
        stats = status["stats"]
        if stats["stream_length"] == 0 and stats["pending_messages"] == 0:
            return status
        assert time.monotonic() < deadline, f"archive did not catch up: {status}"
        time.sleep(0.1)


def answers(svc: ServiceProcess, minutes: list[datetime]) -> list[Any]:
    """Everything the read API says about the given minutes (compared before/after rebuild)."""
    # Only the given minutes' rows: the 1440-minute window moves when the minute turns.
    wanted = {m.strftime("%Y-%m-%dT%H:%M:00Z") for m in minutes}
    rows = HTTP.get(f"{svc.url}/analytics/page_views_per_minute?minutes=1440", timeout=10).json()
    out = [[r for r in rows if r["minute_timestamp"] in wanted]]
    for m in minutes:
        out.append(HTTP.get(f"{svc.url}/analytics/minute-buckets/{seed_key(m)}", timeout=10).json())
    return out


def assert_rebuild_reproduces(
    svc: ServiceProcess, flush: Callable[[], None], env: dict[str, str], minutes: list[datetime]
) -> None:
    """``flush`` empties the engine; ``rebuild`` from the archive brings back every answer
    about ``minutes`` as it was, and ``verify`` then finds no difference."""
    before = answers(svc, minutes)
    assert sum(r["count"] for r in before[0]) > 0
    flush()
    assert answers(svc, minutes) != before
    done = cli(["rebuild"], env)
    assert done.returncode == 0, done.stderr
    assert "events/s" in done.stdout
    assert answers(svc, minutes) == before
    checked = cli(["verify"], env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 differ" in checked.stdout
