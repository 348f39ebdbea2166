"""The service on a real Valkey Cluster (3 masters + 3 replicas, REDIS_CLUSTER_URL).

The core API and concurrency tests run here unchanged: this module imports them and
overrides the fixtures they use (``live``, ``two_workers``) with cluster-backed ones.
Then what only a cluster has: keys spread over the masters, several API processes and
archivers on one cluster, rebuild/verify, and a master SIGKILLed under load.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.cluster import ClusterProcess
from tests.helpers import HTTP, event
from tests.servers import ServiceProcess, engine_binary
from tests.test_api import (  # noqa: F401  (collected here: they run on the cluster)
    test_20mb_body_refused_before_it_is_read,
    test_any_valid_host_is_accepted,
    test_body_just_over_limit_is_413,
    test_event_id_forms_are_one_event,
    test_health_and_ready,
    test_json_that_is_not_an_object_is_422,
    test_malformed_json_is_400,
    test_minute_bucket_of_other_type_and_bad_key,
    test_offset_lands_in_utc_minute,
    test_openapi_docs,
    test_page_views_per_minute,
    test_persistent_endpoints_answer,
    test_seed_postman_event_shape,
    test_unknown_path_is_problem_json,
    test_wrong_content_type_is_415,
)
from tests.test_archive import _minutes, answers, archive_ids, cli, wait_archived
from tests.test_batch import (  # noqa: F401  (the batch endpoint, on the cluster)
    test_bad_envelopes,
    test_batch_and_single_share_dedup,
    test_batch_limits,
    test_full_batch_of_1000,
    test_mixed_batch,
)
from tests.test_concurrency import (  # noqa: F401  (collected here: it runs on the cluster)
    _send_all,
    test_concurrent_offsets_and_retries_are_exact,
)
from tests.test_reports import (  # noqa: F401  (the analytics queries, on the cluster)
    base,
    test_include_users_is_capped,
    test_realtime,
    test_timeseries_is_gap_filled_and_total_is_a_union,
    test_top_pages_order_counts_and_users,
)

pytestmark = pytest.mark.slow


def start_cluster(directory: Path) -> ClusterProcess:
    binary = engine_binary("valkey")
    assert binary is not None, "the bundled Valkey server is missing"
    proc = ClusterProcess(binary, directory)
    try:
        proc.start()
    except BaseException:
        proc.stop()
        raise
    return proc


@contextlib.contextmanager
def stopped_after(svc: ServiceProcess) -> Iterator[ServiceProcess]:
    """Start ``svc``; stop it afterwards, also when it never became ready."""
    try:
        svc.start()
        yield svc
    finally:
        if svc.proc is not None and svc.proc.poll() is None:
            svc.stop()
        elif svc.proc is not None:
            svc.log.close()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    """One cluster for the session; tests empty it (flush) before use."""
    proc = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def cluster_service(
    cluster: ClusterProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    data_dir = tmp_path_factory.mktemp("cluster-service")
    svc = ServiceProcess(data_dir / "data", env={"REDIS_CLUSTER_URL": cluster.url})
    with stopped_after(svc):
        yield svc


@pytest.fixture
def live(cluster_service: ServiceProcess, cluster: ClusterProcess) -> ServiceProcess:
    """Overrides conftest's ``live`` for the API tests imported above."""
    cluster.flush()
    return cluster_service


@pytest.fixture
def two_workers(cluster: ClusterProcess, tmp_path: Path) -> Iterator[ServiceProcess]:
    """Overrides test_concurrency's: two workers on the cluster (16 shards by default)."""
    cluster.flush()
    svc = ServiceProcess(tmp_path / "data", env={"REDIS_CLUSTER_URL": cluster.url}, workers=2)
    with stopped_after(svc):
        yield svc


def event_keys_per_master(cluster: ClusterProcess) -> dict[int, int]:
    """Counter, user-set and dedup keys held by each master (by port)."""
    out: dict[int, int] = {}
    for node in cluster.masters():
        with contextlib.closing(cluster.client(node)) as c:
            names = [*c.scan_iter("ea:{*}:page_view:*", 1000), *c.scan_iter("ea:{*}:seen:*", 1000)]
            out[node.port] = len(names)
    return out


def test_keys_land_on_every_master(live: ServiceProcess, cluster: ClusterProcess) -> None:
    bodies = [event(user=f"user-{i}") for i in range(1000)]
    statuses = asyncio.run(_send_all(live.url, bodies))
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
            await asyncio.gather(*(_send_all(u, p) for u, p in zip(urls, parts, strict=True)))
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
        minutes = _minutes(3)
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

        cluster.flush()
        assert answers(first, minutes) != got
        done = cli(["rebuild"], env)
        assert done.returncode == 0, done.stderr
        assert answers(first, minutes) == got
        checked = cli(["verify"], env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "0 differ" in checked.stdout
