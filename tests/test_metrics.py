"""GET /metrics over HTTP: outcomes, route templates, engine errors, and several workers.

Outcomes, routes and engine errors are the app's: they run on the app in this process
(tests.inproc). A client leaving mid-body (a socket) and workers adding up stay on
service processes."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from benchmarks.procs import free_port, free_ports
from event_analytics import metrics_dir
from event_analytics.config import Settings
from tests.helpers import event, seed_key
from tests.inproc import InProcessService, in_process
from tests.scrape import Samples, events, scrape, value
from tests.servers import ServiceProcess

DURATION = "ea_http_request_duration_seconds_count"
JSON = {"content-type": "application/json"}


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_outcomes_reasons_and_routes(api: InProcessService) -> None:
    url, http = api.url, api.http
    before = scrape(url, http)
    ok = [event(user=f"m{i}") for i in range(3)]
    for body in ok:
        assert http.post(f"{url}/events", json=body).status_code == 201
    assert http.post(f"{url}/events", json=ok[0]).status_code == 200
    old = event(event_type="signup", url=None, ts=datetime.now(UTC) - timedelta(days=30))
    assert http.post(f"{url}/events", json=old).status_code == 422
    assert http.post(f"{url}/events", json=event(user="bad\tuser")).status_code == 422
    assert http.post(f"{url}/events", content=b"{", headers=JSON).status_code == 400
    assert http.post(f"{url}/events", content=b"{}").status_code == 415
    key = seed_key(datetime.now(UTC))
    assert http.get(f"{url}/analytics/minute-buckets/{key}").status_code == 200
    assert http.get(f"{url}/no/such/{key}").status_code == 404
    after = scrape(url, http)

    assert events(after, "accepted") - events(before, "accepted") == 3
    assert events(after, "duplicate") - events(before, "duplicate") == 1
    # A rejected event keeps its type when it was read and valid, else "_unknown".
    assert events(after, "rejected", "signup") - events(before, "rejected", "signup") == 1
    assert events(after, "rejected", "_unknown") - events(before, "rejected", "_unknown") == 3
    reasons = {"timestamp_too_old", "string_pattern_mismatch", "malformed_json"}
    for code in (*reasons, "unsupported_media_type"):
        assert delta(after, before, "ea_event_rejections_total", code=code) == 1, code
    # Latency by route template and status: never the raw path.
    assert delta(after, before, DURATION, method="POST", route="/events", status="201") == 3
    assert delta(after, before, DURATION, method="POST", route="/events", status="415") == 1
    template = "/analytics/minute-buckets/{minute_key}"
    assert delta(after, before, DURATION, method="GET", route=template, status="200") == 1
    assert delta(after, before, DURATION, method="GET", route="unmatched", status="404") == 1
    label_values = {v for _, labels in after for _, v in labels}
    assert not any(key in v for v in label_values)
    # Exposed before the batch endpoint exists to feed it.
    assert ("ea_batch_size_events_count", frozenset()) in after
    # The engine answers: the archive's lag is known (finite) and nothing is dead-lettered.
    assert math.isfinite(value(after, "ea_archive_lag_seconds"))
    assert value(after, "ea_archive_dead_letters") == 0


def test_client_gone_before_its_answer_is_499(live: ServiceProcess) -> None:
    """A client that leaves mid-body is timed as 499 (nginx's "client closed request"):
    not a server error, and nothing was stored for it."""
    before = scrape(live.url)
    body = orjson.dumps(event(user="gone"))
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(
            b"POST /events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10]
        )
    deadline = time.monotonic() + 10
    while True:
        after = scrape(live.url)
        gone = delta(after, before, DURATION, method="POST", route="/events", status="499")
        if gone or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert gone == 1
    assert delta(after, before, DURATION, method="POST", route="/events", status="500") == 0
    assert events(after, "accepted") == events(before, "accepted")


@pytest.fixture(scope="module", params=["single", "cluster"])
def app_engine_down(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessService]:
    """The app in this process pointed at ports where no engine listens (``engine_down``'s
    twin: a REDIS_URL of one node, or a REDIS_CLUSTER_URL of three seed nodes)."""
    data_dir = tmp_path_factory.mktemp(f"inproc-down-{request.param}") / "data"
    if request.param == "cluster":
        seeds = ",".join(f"127.0.0.1:{port}" for port in free_ports(3))
        env = {"REDIS_CLUSTER_URL": f"redis://{seeds}"}
        settings = Settings(redis_cluster_url=env["REDIS_CLUSTER_URL"], redis_url=None,
                            data_dir=data_dir)  # fmt: skip
    else:
        env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
        settings = Settings(redis_url=env["REDIS_URL"], data_dir=data_dir)
    with in_process(settings, env) as svc:
        yield svc


def test_engine_errors_are_counted(app_engine_down: InProcessService) -> None:
    down = app_engine_down
    before = scrape(down.url, down.http)
    r = down.http.post(f"{down.url}/events", json=event(), timeout=10)
    assert r.status_code == 503
    after = scrape(down.url, down.http)
    assert delta(after, before, "ea_engine_errors_total", kind="unreachable") >= 1
    assert events(after, "accepted") == events(before, "accepted")
    # With the engine down the archive's state is unknown: NaN, never a reassuring 0.
    assert math.isnan(value(after, "ea_archive_lag_seconds"))


async def _send(url: str, count: int) -> None:
    # Fresh connections opened together: the kernel hands them to both workers.
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=16)) as session:

        async def one() -> None:
            body = orjson.dumps(event(user="w"))
            async with session.post("/events", data=body, headers=JSON) as r:
                assert r.status == 201

        await asyncio.gather(*(one() for _ in range(count)))


def _per_worker(run_dir: Path, tmp: Path) -> list[float]:
    """Accepted page views as each worker process wrote them (prometheus-client reads them)."""
    found = []
    for db in sorted(run_dir.glob("counter_*.db")):
        alone = tmp / db.stem
        alone.mkdir(exist_ok=True)
        shutil.copy(db, alone / db.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        got = registry.get_sample_value(
            "ea_events_total", {"outcome": "accepted", "event_type": "page_view"}
        )
        found.append(got or 0.0)
    return found


# Metrics are per process, not in the engine: a single node and the cluster suffice.
@pytest.mark.parametrize("engine", ["valkey", "cluster"], indirect=True)
def test_two_workers_add_up(two_workers: ServiceProcess, tmp_path: Path) -> None:
    (run_dir,) = (two_workers.data_dir / "metrics").iterdir()
    sent = 0
    # Until both workers took some (bounded: the kernel spreads connections, not evenly).
    for _ in range(10):
        asyncio.run(_send(two_workers.url, 100))
        sent += 100
        per_worker = _per_worker(run_dir, tmp_path)
        if sum(1 for v in per_worker if v > 0) >= 2:
            break
    assert sum(1 for v in per_worker if v > 0) >= 2, per_worker
    assert sum(per_worker) == sent
    # Whichever worker answers the scrape, it reports the total of both.
    for _ in range(6):
        samples = scrape(two_workers.url)
        assert events(samples, "accepted") == sent
        assert value(samples, DURATION, method="POST", route="/events", status="201") == sent


def test_run_dir_is_new_per_run_and_stale_ones_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare() sets the variable in this process: setenv first so monkeypatch records its
    # original state (absent) and restores it; a delenv of an unset name records nothing.
    monkeypatch.setenv(metrics_dir.ENV, "")
    monkeypatch.delenv(metrics_dir.ENV)
    root = tmp_path / "metrics"
    dead = root / "999999999"  # above any pid: a run that died without cleaning up
    alive = root / "1"  # init: a live serve keeps its own
    for d in (dead, alive):
        d.mkdir(parents=True)
        (d / "counter_1.db").write_bytes(b"x")
    mine = metrics_dir.prepare(root)
    assert not dead.exists() and alive.exists()
    assert list(mine.iterdir()) == []
    assert os.environ[metrics_dir.ENV] == str(mine.resolve())
    metrics_dir.remove(mine)
    assert not mine.exists()


def test_run_dir_test_leaves_the_environment_as_it_found_it() -> None:
    # Runs after the test above (file order): a leaked PROMETHEUS_MULTIPROC_DIR points later
    # tests' in-process apps at a deleted directory.
    assert metrics_dir.ENV not in os.environ
