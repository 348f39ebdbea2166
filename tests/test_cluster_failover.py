"""A master SIGKILLed under load: 503 + Retry-After while its replica is promoted, then
the service recovers by itself; every acknowledged event is still counted, once."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.cluster import ClusterProcess
from tests.helpers import HTTP, JSON, archive_ids, event, send_all, wait_archived
from tests.servers import ServiceProcess, stopped_after

pytestmark = pytest.mark.slow
CONNECTIONS = 16
CLIENT_TIMEOUT_S = 10  # a request slower than this counts as a hang
KILL_AFTER_ACKS = 400
CALM_S = 2.0  # recovered: this long without a 503 after the last one
DEADLINE_S = 60.0
# Asynchronous replication: what a master acknowledged but had not sent to its replica
# when it died is lost. Each connection has one request in flight, so at the kill instant
# at most CONNECTIONS acks can be ahead of the replica on loopback (measured: 0 lost).
LOSS_BOUND = CONNECTIONS


@pytest.fixture
def own_cluster(cluster: ClusterProcess) -> Iterator[ClusterProcess]:
    """The session's cluster, emptied; the master this test kills comes back afterwards
    (as a replica of the node that replaced it) and the cluster is ok again."""
    cluster.flush()
    yield cluster
    for node in cluster.nodes:
        if node.proc is None or node.proc.poll() is not None:
            node.start()
    cluster.wait_ok()


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


async def _traffic(url: str, kill: Any) -> Traffic:
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


def _wait_ready(url: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        r = HTTP.get(f"{url}/health/ready", timeout=5)
        if r.status_code == 200:
            ready: dict[str, Any] = r.json()
            return ready
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)


def test_master_sigkill_under_load(own_cluster: ClusterProcess, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    # Own key prefix: the session's services (and their archivers) use this cluster too.
    env = {
        "REDIS_CLUSTER_URL": own_cluster.url, "EA_ARCHIVE_DIR": str(root),
        "EA_KEY_PREFIX": "fo:",
    }  # fmt: skip
    with stopped_after(ServiceProcess(tmp_path / "data", env=env)) as svc:
        victim = own_cluster.masters()[0]
        t = asyncio.run(_traffic(svc.url, victim.kill))
        assert t.killed_at is not None
        # Never a hang, never a 500: only 201, or 503 with Retry-After as problem+json.
        assert t.bad == [], (t.bad[:10], t.statuses)
        assert t.first_503 is not None, f"the kill went unnoticed: {t.statuses}"
        assert t.recovered, f"still refusing {DEADLINE_S} s after the kill: {t.statuses}"
        print(
            f"\nfailover: {t.statuses[201]} acked, {t.statuses[503]} x 503 from "
            f"{t.first_503 - t.killed_at:+.2f} s to {t.last_503 - t.killed_at:+.2f} s after "
            f"the SIGKILL; slowest answer {t.slowest_s:.2f} s; "
            f"{sum(1 for at in t.acked_at if t.first_503 < at < t.last_503)} acked meanwhile"
        )
        # Only the dead master's shards were refused: the others kept acknowledging.
        during = sum(1 for at in t.acked_at if t.first_503 < at < t.last_503)
        assert during > 0, "the other masters stopped serving too"
        ready = _wait_ready(svc.url)  # by itself: nothing was restarted
        assert ready["engine"]["cluster"]["masters"] == 3
        own_cluster.wait_ok()

        # Every acknowledged event survived the failover: resent, it is a duplicate.
        again = asyncio.run(send_all(svc.url, t.acked))
        lost = [b["event_id"] for b, s in zip(t.acked, again, strict=True) if s == 201]
        print(f"failover: {len(lost)} of {len(t.acked)} acknowledged events lost")
        assert set(again) <= {200, 201}
        assert len(lost) <= LOSS_BOUND, lost  # see LOSS_BOUND; docs/deploy.md

        # Clients resend what was refused; then each event is counted, and archived, once.
        retried = asyncio.run(send_all(svc.url, t.refused))
        assert set(retried) <= {200, 201}
        everything = t.acked + t.refused
        rows = HTTP.get(f"{svc.url}/analytics/page_views_per_minute?minutes=10").json()
        assert sum(r["count"] for r in rows) == len(everything)
        wait_archived(svc.url, timeout_s=60)
        assert archive_ids(root) == collections.Counter({b["event_id"]: 1 for b in everything})
