"""Builders and small checks most test modules use: events, key names, UTC minutes, the
CLI run to its end, a bounded wait.

Helpers on one topic have modules of their own: ``tests.traffic`` (load through faults),
``tests.lossy_proxy``, ``tests.readback`` (the archive and the counters read back),
``tests.clients`` (browsers, node SDKs). A test module never imports another test
module's helpers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx

from event_analytics.ingest import Ingestor
from event_analytics.store import IngestWriter
from event_analytics.store.writer import AGGREGATE_ABOVE
from tests.servers import HTTP as HTTP  # re-exported: defined beside ServiceProcess (its http)


class ThreadClients:
    """One httpx.Client per thread, for tests that send from a thread pool.

    One client shared by more threads than its keep-alive limit (20) loses requests:
    httpcore 1.0.9's pool closes an idle connection it has just handed to another thread
    (its surplus-idle check counts every connection, not the idle ones), and that thread
    then reads a closed socket (CI: ``ReadError: [Errno 9] Bad file descriptor`` in
    test_reads). 58 threads x 20,000 GETs to a plain local server: 9 failed with one
    shared client, 0 with one client per thread."""

    def __init__(self, timeout: float = 10) -> None:
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[httpx.Client] = []

    def get(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=self._timeout)
            with self._lock:
                self._clients.append(client)
        return client

    def __enter__(self) -> ThreadClients:
        return self

    def __exit__(self, *_: object) -> None:
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()


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


def run_store(db: Any, work: Any, aggregate_above: int = AGGREGATE_ABOVE, **settings: Any) -> Any:
    """``await work(ingestor, store)`` on the Backend ``db`` (Settings from ``settings``,
    e.g. a key prefix of its own: the session's services share the engine)."""

    async def main() -> Any:
        chosen = db.settings(**settings)
        store = IngestWriter.from_settings(chosen, aggregate_above=aggregate_above)
        try:
            return await work(Ingestor(chosen, store), store)
        finally:
            await store.close()

    return asyncio.run(main())


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


def wait_for(
    check: Callable[[], bool], timeout_s: float = 30.0, on_fail: Callable[[], object] = str
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"condition not met in time: {on_fail()}"
        time.sleep(0.2)
