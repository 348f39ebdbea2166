"""The Dockerfile and compose.yaml, really built and run: the image alone (embedded
engine, /data volume), compose with one Redis, and the cluster profile (3 + 3 Valkey).

Docker if its daemon answers, else podman; with podman and ../shared/containers/
base-images.sh beside the clone (no container registry reachable), ``make image`` runs
it and builds on its local base images. Skipped only where no container engine can be
installed (never in CI: .ci/run installs it). The image is built once per session.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from benchmarks.procs import free_port
from tests.containers import (
    BASE_IMAGES,
    ROOT,
    RUN_ID,
    Compose,
    Container,
    Engine,
    can_install_podman,
    container_engine,
    removed_after,
    run,
    wait_ready,
)
from tests.helpers import HTTP, event
from tests.postman import Runner, items, load
from tests.readback import archive_ids
from tests.traffic import HAMMER_CLIENTS, LOSS_BOUND, failover_traffic, hammer, send_all

pytestmark = pytest.mark.slow
IMAGE_TAG = "localhost/event-analytics:pytest"
POSTGRES_TAG = "localhost/ea-postgres:pytest"
KILL_AFTER_ACKS = 300


@pytest.fixture(scope="session")
def containers() -> Engine:
    found = container_engine()
    if found is None and can_install_podman():
        run(str(BASE_IMAGES), timeout=1800)
        found = container_engine()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no container engine in CI (.ci/run installs podman)")
        pytest.skip("no docker or podman, and podman cannot be installed here")
    return Engine(found)


@pytest.fixture(scope="session")
def image(containers: Engine) -> str:
    """``make image`` once per session (base images first, with podman)."""
    start = time.monotonic()
    run("make", "-s", "image", f"IMAGE={IMAGE_TAG}", f"CONTAINER_ENGINE={containers.name}",
        timeout=1800)  # fmt: skip
    size = containers("image", "inspect", IMAGE_TAG, "--format", "{{.Size}}").stdout.strip()
    print(f"\nimage: built in {time.monotonic() - start:.1f} s, {int(size) / 1e6:.0f} MB")
    return IMAGE_TAG


@pytest.fixture(scope="session")
def postgres_image(containers: Engine) -> str:
    """``make postgres-image`` once per session: PostgreSQL from Debian's package
    (deploy/postgres; postgres:16 cannot be pulled here). Its layers stay cached in the
    engine: a later session's build of the same files reuses them."""
    start = time.monotonic()
    run("make", "-s", "postgres-image", f"CONTAINER_ENGINE={containers.name}",
        env={"POSTGRES_IMAGE": POSTGRES_TAG}, timeout=1800)  # fmt: skip
    print(f"\npostgres image: built in {time.monotonic() - start:.1f} s")
    return POSTGRES_TAG


@pytest.fixture
def volumes(containers: Engine) -> Iterator[list[str]]:
    with removed_after(containers) as names:
        yield names


def _volume(containers: Engine, volumes: list[str]) -> str:
    name = f"{RUN_ID}-{len(volumes)}"
    containers("volume", "create", "--label", f"ea-test={RUN_ID}", name)
    volumes.append(name)
    return name


def _counts(url: str) -> dict[str, int]:
    """Minute key → count, for the last 10 minutes."""
    rows = HTTP.get(f"{url}/analytics/page_views_per_minute?minutes=10").json()
    return {r["minute_timestamp"]: r["count"] for r in rows if r["count"]}


def _model(bodies: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(
        datetime.fromisoformat(b["timestamp"]).strftime("%Y-%m-%dT%H:%M:00Z") for b in bodies
    )


def _wait_archived(containers: Engine, volume: str, want: set[str], timeout_s: float = 60) -> None:
    root = containers.mountpoint(volume) / "persistent_events"
    deadline = time.monotonic() + timeout_s
    while not want <= set(archive_ids(root)):
        assert time.monotonic() < deadline, f"not archived: {len(want - set(archive_ids(root)))}"
        time.sleep(0.3)


# --- the image alone -------------------------------------------------------------


def test_image_runs_as_non_root_passes_its_healthcheck_counts_archives_and_survives_restart(
    containers: Engine, image: str, volumes: list[str]
) -> None:
    data = _volume(containers, volumes)
    box = Container(containers, image, data, free_port())
    started_s = box.run()
    print(f"\nimage: ready {started_s:.2f} s after `run`")

    # The image's own HEALTHCHECK (kept by --format docker), run by the containers.
    assert containers.inspect(box.name)["Config"]["Healthcheck"]["Test"][0] == "CMD"
    assert containers("healthcheck", "run", box.name, check=False).returncode == 0
    # Every process of the container runs as the image's user ea (uid 10001), not root.
    assert containers("exec", box.name, "id", "-un").stdout.strip() == "ea"
    uids = containers("exec", box.name, "sh", "-c", "grep -h '^Uid:' /proc/[0-9]*/status").stdout
    assert uids and all(line.split()[1:] == ["10001"] * 4 for line in uids.splitlines()), uids

    bodies = [event(user=f"u{i}") for i in range(40)]
    assert asyncio.run(send_all(box.url, bodies)) == [201] * len(bodies)
    assert _counts(box.url) == _model(bodies)
    ids = {b["event_id"] for b in bodies}
    _wait_archived(containers, data, ids)
    archive = containers.mountpoint(data) / "persistent_events"
    before = {p: p.read_bytes() for p in archive.rglob("*.jsonl")}

    # Stopped (SIGTERM) and started with the same volume: counts and archive intact.
    containers("stop", "-t", "30", box.name)
    box.start()
    assert _counts(box.url) == _model(bodies)
    assert {p: p.read_bytes() for p in archive.rglob("*.jsonl")} == before
    assert set(archive_ids(archive)) == ids

    # The image carries what `backup` needs (valkey-cli): a backup into the volume.
    containers("exec", box.name, "event-analytics", "backup", "/data/backup")
    manifest = json.loads((containers.mountpoint(data) / "backup/manifest.json").read_text())
    assert manifest["archive_events"] == len(bodies) and len(manifest["snapshots"]) == 1
    box.remove()


def test_image_sigkill_under_load_keeps_every_acknowledged_event(
    containers: Engine, image: str, volumes: list[str]
) -> None:
    box = Container(containers, image, _volume(containers, volumes), free_port())
    box.run()
    bodies = [event(user=f"k{i}") for i in range(20 * KILL_AFTER_ACKS)]
    kill = lambda: containers("kill", box.name)  # noqa: E731
    acked_ids = asyncio.run(hammer(box.url, bodies, KILL_AFTER_ACKS, kill))
    acked = [b for b in bodies if b["event_id"] in acked_ids]
    assert len(acked) >= KILL_AFTER_ACKS
    assert not containers.inspect(box.name)["State"]["Running"]
    box.start()
    # Resent, every acknowledged event is a duplicate: it was on disk before its 201.
    again = asyncio.run(send_all(box.url, acked))
    assert collections.Counter(again) == {200: len(acked)}
    counted = sum(_counts(box.url).values())
    # In-flight requests at the kill may be stored without an ack: at most one each.
    assert len(acked) <= counted <= len(acked) + HAMMER_CLIENTS
    box.remove()


# --- compose: API + one Redis ------------------------------------------------------


@pytest.fixture
def project(containers: Engine, image: str) -> Iterator[Compose]:
    stack = Compose(containers, image, free_port())
    try:
        yield stack
    finally:
        stack.down()
        left = [
            kind
            for kind in ("container", "volume", "network")
            if containers.labelled(kind, f"com.docker.compose.project={stack.project}")
        ]
        assert not left, f"compose-down left {left} of {stack.project}"


def test_compose_serves_the_seed_probe_and_rides_out_a_redis_restart(project: Compose) -> None:
    up_s = project.up()
    print(f"\ncompose (redis): ready {up_s:.1f} s after `make compose-up`")
    ready = HTTP.get(f"{project.url}/health/ready").json()
    assert ready["engine"]["engine"] == "redis" and ready["ack_durability"] == "fsync_always"

    # The seed's probe (its Postman collection, as Postman runs it) through the published port.
    runner = Runner(project.url)
    for item in items(load()):
        example = item.examples[0]
        response = runner.send(HTTP, item)
        assert response.status_code == example["code"], f"{item.name}: {response.text[:300]}"

    def restart() -> None:
        threading.Thread(target=project.compose, args=("restart", "redis")).start()

    t = asyncio.run(failover_traffic(project.url, restart))
    assert t.bad == [], (t.bad[:10], t.statuses)
    assert t.first_503 is not None and t.killed_at is not None, t.statuses
    assert t.recovered, t.statuses
    assert t.last_503 is not None
    print(f"compose: redis restart → 503s for {t.last_503 - t.first_503:.2f} s "
          f"({t.statuses[503]} of {sum(t.statuses.values())} requests)")  # fmt: skip
    wait_ready(project.url, timeout_s=30)
    # AOF with fsync always, a clean restart: every acknowledged event is still there.
    again = asyncio.run(send_all(project.url, t.acked))
    assert collections.Counter(again) == {200: len(t.acked)}


# --- compose: the cluster profile ----------------------------------------------------


def _nodes(containers: Engine, container: str) -> list[list[str]]:
    out = containers("exec", container, "valkey-cli", "cluster", "nodes").stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def _replication(containers: Engine, container: str) -> str:
    return containers("exec", container, "valkey-cli", "info", "replication").stdout


def test_compose_cluster_counts_exactly_and_fails_over_by_itself(project: Compose) -> None:
    containers = project.engine
    up_s = project.up("cluster")
    # The API is ready once the cluster serves every slot (503 cluster_forming before);
    # cluster-init may still be attaching the replicas then (podman-compose starts the
    # API without waiting for it): until it exits 0, readiness can show fewer replicas.
    formed_s = up_s + project.wait_exited("cluster-init")
    print(f"\ncompose (cluster): API ready {up_s:.1f} s, cluster formed {formed_s:.1f} s "
          "after `make compose-up PROFILE=cluster`")  # fmt: skip
    cluster = HTTP.get(f"{project.url}/health/ready").json()["engine"]["cluster"]
    assert (cluster["state"], cluster["masters"], cluster["replicas"]) == ("ok", 3, 3)
    nodes = {f"valkey-{i}": project.container(f"valkey-{i}") for i in range(1, 7)}
    # Formed means synced: a replica whose master dies before its first sync (the master waits
    # repl-diskless-sync-delay, 5 s, to send it) counts its data as too old to take over.
    synced = [n for n, c in nodes.items() if "master_link_status:up" in _replication(containers, c)]
    assert len(synced) == 3, synced

    bodies = [event(user=f"c{i}") for i in range(600)]
    assert asyncio.run(send_all(project.url, bodies)) == [201] * len(bodies)
    assert _counts(project.url) == _model(bodies)
    listing = _nodes(containers, nodes["valkey-1"])
    masters = [n[1].split(",")[1] for n in listing if "master" in n[2]]
    assert len(masters) == 3
    for name in masters:  # the shards are spread: every master holds keys
        assert int(containers("exec", nodes[name], "valkey-cli", "dbsize").stdout) > 0, name

    victim = masters[0]
    t = asyncio.run(failover_traffic(project.url, lambda: containers("kill", nodes[victim])))
    assert t.bad == [], (t.bad[:10], t.statuses)
    assert t.first_503 is not None and t.killed_at is not None and t.last_503 is not None
    assert t.recovered, t.statuses
    ready_s = wait_ready(project.url, timeout_s=60)
    print(f"compose (cluster): master {victim} killed → 503s from "
          f"{t.first_503 - t.killed_at:+.2f} s to {t.last_503 - t.killed_at:+.2f} s, "
          f"ready {ready_s:.1f} s after that")  # fmt: skip
    alive = next(c for n, c in nodes.items() if n != victim)
    promoted = [n for n in _nodes(containers, alive) if "master" in n[2] and "fail" not in n[2]]
    assert len(promoted) == 3 and victim not in {n[1].split(",")[1] for n in promoted}

    again = asyncio.run(send_all(project.url, t.acked))
    lost = again.count(201)
    assert set(again) <= {200, 201} and lost <= LOSS_BOUND, lost
    retried = asyncio.run(send_all(project.url, t.refused))
    assert set(retried) <= {200, 201}
    assert sum(_counts(project.url).values()) == len(bodies) + len(t.acked) + len(t.refused)


# --- compose: the postgres profile ---------------------------------------------------


def _delivered(project: Compose) -> collections.Counter[str]:
    """Rows of ea_events by event id, as PostgreSQL in its container has them."""
    out = project.engine("exec", project.container("postgres"), "psql", "-U", "ea", "-d",
                         "events", "-Atc", "SELECT event_id FROM ea_events").stdout  # fmt: skip
    return collections.Counter(out.split())


def test_compose_postgres_delivers_every_event_exactly_once(
    project: Compose, postgres_image: str
) -> None:
    """The postgres profile on the PostgreSQL image built here: events sent to the API
    arrive in PostgreSQL, each once, and ``verify --postgres`` finds no hour that differs."""
    project.env |= {"POSTGRES_IMAGE": postgres_image, "EA_POSTGRES_PASSWORD": uuid.uuid4().hex}
    up_s = project.up("postgres")
    print(f"\ncompose (postgres): API ready {up_s:.1f} s after `make compose-up PROFILE=postgres`")
    bodies = [event(user=f"p{i}") for i in range(300)]
    assert asyncio.run(send_all(project.url, bodies)) == [201] * len(bodies)
    want = collections.Counter(b["event_id"] for b in bodies)
    start = time.monotonic()
    deadline = start + 180  # archived, then delivered: seconds each, more under load
    while (got := _delivered(project)) != want:
        assert set(got) <= set(want) and set(got.values()) <= {1}, got - want
        assert time.monotonic() < deadline, f"{len(want - got)} of {len(want)} not delivered"
        time.sleep(0.5)
    print(f"compose (postgres): {len(want)} events in PostgreSQL "
          f"{time.monotonic() - start:.1f} s after their 201s")  # fmt: skip
    api = project.container("api-postgres")
    checked = project.engine("exec", api, "event-analytics", "verify", "--postgres", check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"({len(want)} delivered events); 0 differ" in checked.stdout, checked.stdout


def test_the_files_default_to_the_public_images() -> None:
    """Users elsewhere change nothing: local images come only from variables / build args."""
    compose = (ROOT / "compose.yaml").read_text()
    assert set(re.findall(r"^\s+image: (\S+)", compose, re.M)) == {
        "${EA_IMAGE:-event-analytics:latest}",
        "${POSTGRES_IMAGE:-postgres:16}",
        "${REDIS_IMAGE:-redis:7.4}",
        "${VALKEY_IMAGE:-valkey/valkey:8.1}",
    }
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M) == ["python:3.11-slim"]
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == ["${PYTHON_IMAGE}"] * 2
