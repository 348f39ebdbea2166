"""What only a cluster has (3 masters + 3 replicas, REDIS_CLUSTER_URL).

The rest of the suite runs on the cluster through the ``engine`` fixture (conftest):
API, batch, concurrency, queries, archive, faults. Here: keys spread over the masters,
several API processes and archivers on one cluster, rebuild/verify.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from datetime import timedelta
from pathlib import Path

import pytest

from tests.cluster import ClusterProcess
from tests.helpers import HTTP, event, past_minutes
from tests.readback import answers, archive_ids, assert_rebuild_reproduces, wait_archived
from tests.servers import ServiceProcess, stopped_after
from tests.traffic import send_all

pytestmark = pytest.mark.slow


def event_keys_per_master(cluster: ClusterProcess) -> dict[int, int]:
    """Counter, user-set and dedup keys held by each master (by port)."""
    out: dict[int, int] = {}
    for node in cluster.masters():
        with contextlib.closing(cluster.client(node)) as c:
            names = [*c.scan_iter("ea:{*}:page_view:*", 1000), *c.scan_iter("ea:{*}:seen:*", 1000)]
            out[node.port] = len(names)
    return out


@pytest.mark.parametrize("engine", ["cluster"], indirect=True)
def test_keys_land_on_every_master(live: ServiceProcess, cluster: ClusterProcess) -> None:
    bodies = [event(user=f"user-{i}") for i in range(1000)]
    statuses = asyncio.run(send_all(live.url, bodies))
    assert statuses.count(201) == len(bodies)
    ready = HTTP.get(f"{live.url}/health/ready").json()
    assert ready["engine"]["cluster"]["masters"] == 3
    assert ready["engine"]["cluster"]["replicas"] == 3
    per_master = event_keys_per_master(cluster)
    total = sum(per_master.values())
    assert len(per_master) == 3 and total > 0
    # 16 shards: 6/6/4 hash tags per master, users spread evenly over the shards.
    assert all(n >= 0.2 * total for n in per_master.values()), per_master


def _send_split(urls: list[str], bodies: list[dict[str, object]]) -> list[int]:
    """Send ``bodies`` round-robin to several services at once; statuses in order."""

    async def run() -> list[list[int]]:
        parts = [bodies[i :: len(urls)] for i in range(len(urls))]
        return list(
            await asyncio.gather(*(send_all(u, p) for u, p in zip(urls, parts, strict=True)))
        )

    parts = asyncio.run(run())
    statuses = [0] * len(bodies)
    for i, part in enumerate(parts):
        statuses[i :: len(urls)] = part
    return statuses


def test_two_services_two_archivers_rebuild_verify(cluster: ClusterProcess, tmp_path: Path) -> None:
    cluster.flush()
    root = tmp_path / "archive"
    # Own key prefix: the session's service (and its archiver) must not see these events.
    env = {
        "REDIS_CLUSTER_URL": cluster.url, "EA_ARCHIVE_DIR": str(root),
        "EA_ARCHIVER_LEASE_S": "2", "EA_KEY_PREFIX": "two:",
    }  # fmt: skip
    # Each serve runs its archiver: two archivers share the 16 shards and one archive.
    first = ServiceProcess(tmp_path / "a", env=env, workers=2)
    second = ServiceProcess(tmp_path / "b", env=env)
    with stopped_after(first), stopped_after(second):
        minutes = past_minutes(3)
        bodies = [
            event(user=f"u{i % 300}", ts=minutes[i % 3] + timedelta(seconds=i % 60))
            for i in range(3000)
        ]
        urls = [first.url, second.url]
        assert _send_split(urls, bodies) == [201] * len(bodies)
        # Retries land on the other service: duplicates there too.
        resend = bodies[1::10]
        assert _send_split(urls[::-1], resend) == [200] * len(resend)

        status = wait_archived(first.url)
        shares = {a["name"]: a["events_archived"] for a in status["archivers"]}
        assert len(shares) == 2, status
        assert archive_ids(root) == collections.Counter({b["event_id"]: 1 for b in bodies})
        # Both services give the same, exact answers.
        want = collections.Counter(b["timestamp"][:16] for b in bodies)
        got = answers(first, minutes)
        assert answers(second, minutes) == got
        for minute, bucket in zip(minutes, got[1:], strict=True):
            assert bucket["count"] == want[minute.isoformat()[:16]]
        assert sum(r["count"] for r in got[0]) == len(bodies)

        assert_rebuild_reproduces(first, cluster.flush, env, minutes)
        assert answers(first, minutes) == got
