"""The engine's memory (issue 13): an evicting maxmemory-policy is refused, an engine at
maxmemory turns readiness red, /metrics shows memory used vs limit, and the embedded
engine runs with a maxmemory and noeviction.

Each test runs a private engine it reconfigures (CONFIG SET), so the session's engines
keep their settings. The policy checks are the app's (its engine watch, readiness and
ingest answers): they run on the app in this process (tests.inproc); the rest needs the
service's processes (the archiver, the embedded engine, /metrics of its workers).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from benchmarks.procs import EngineProcess
from event_analytics.config import Settings
from event_analytics.store.embedded import default_maxmemory, url_file
from tests.cluster import ClusterProcess
from tests.helpers import HTTP, event
from tests.inproc import Service, in_process
from tests.scrape import scrape, value
from tests.servers import ServiceProcess, stopped_after


def _until(check: object, timeout_s: float = 15.0) -> None:
    """Poll ``check()`` until true (bounded): the service reads the engine every second."""
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def _ready(svc: Service) -> tuple[int, dict[str, object]]:
    r = svc.http.get(f"{svc.url}/health/ready")
    return r.status_code, r.json()


def test_evicting_policy_is_refused_until_noeviction(
    own_valkey: EngineProcess, tmp_path: Path
) -> None:
    """Table row: an external engine with allkeys-lru silently dropped counted events and
    dedup ids; the service never read the policy."""
    client = redis.Redis(port=own_valkey.port)
    client.config_set("maxmemory-policy", "allkeys-lru")
    settings = Settings(redis_url=own_valkey.url, data_dir=tmp_path / "data")
    try:
        # The app starts (never ready while the policy evicts).
        with in_process(settings, {"REDIS_URL": own_valkey.url}) as svc:
            status, body = _ready(svc)
            assert status == 503 and body["reason"] == "engine_may_evict", body
            r = svc.http.post(f"{svc.url}/events", json=event())
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            assert r.json()["type"].endswith(":engine-may-evict"), r.text
            batch = svc.http.post(f"{svc.url}/events/batch", json={"events": [event()]})
            assert batch.status_code == 503, batch.text
            assert client.dbsize() == 0  # nothing written
            # The operator fixes the engine: the service sees it by itself.
            client.config_set("maxmemory-policy", "noeviction")
            _until(lambda: _ready(svc)[0] == 200)
            assert svc.http.post(f"{svc.url}/events", json=event()).status_code == 201
            # A policy changed under a running service (volatile-* evicts our TTL'd keys too).
            client.config_set("maxmemory-policy", "volatile-lru")
            _until(lambda: svc.http.post(f"{svc.url}/events", json=event()).status_code == 503)
            assert _ready(svc)[1]["reason"] == "engine_may_evict"
    finally:
        client.close()


def test_evicting_policy_accepted_by_the_operator(
    own_valkey: EngineProcess, tmp_path: Path
) -> None:
    client = redis.Redis(port=own_valkey.port)
    client.config_set("maxmemory-policy", "allkeys-lru")
    settings = Settings(
        redis_url=own_valkey.url, data_dir=tmp_path / "data", allow_evicting_engine=True
    )
    try:
        with in_process(settings, {"REDIS_URL": own_valkey.url}) as svc:
            status, body = _ready(svc)
            assert status == 200, body
            memory = body["engine"]["memory"]  # type: ignore[index]
            assert memory["maxmemory_policy"] == "allkeys-lru" and "warning" in memory
            assert svc.http.post(f"{svc.url}/events", json=event()).status_code == 201
    finally:
        client.close()


@pytest.mark.slow
def test_engine_at_maxmemory_turns_readiness_red(own_valkey: EngineProcess, tmp_path: Path) -> None:
    """Table row: at maxmemory (noeviction) ingest answered 503 but readiness said ready."""
    client = redis.Redis(port=own_valkey.port)
    env = {"REDIS_URL": own_valkey.url}
    try:
        with stopped_after(ServiceProcess(tmp_path / "data", env=env)) as svc:
            assert HTTP.post(f"{svc.url}/events", json=event()).status_code == 201
            status_url = f"{svc.url}/persistent/status"
            _until(lambda: HTTP.get(status_url).json()["status"] == "healthy")
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory", str(used // 2))  # below what it holds already
            r = HTTP.post(f"{svc.url}/events", json=event())
            assert r.status_code == 503 and r.json()["type"].endswith(":engine-full"), r.text
            status, body = _ready(svc)
            assert status == 503 and body["reason"] == "engine_full", body
            archive = HTTP.get(f"{svc.url}/persistent/status").json()
            assert archive["status"] == "engine_full", archive
            samples = scrape(svc.url)
            node = f"127.0.0.1:{own_valkey.port}"  # per node (master), by its address
            limit = value(samples, "ea_engine_memory_limit_bytes", node=node)
            assert limit == used // 2 < value(samples, "ea_engine_memory_used_bytes", node=node)
            assert value(samples, "ea_engine_errors_total", kind="full") >= 1
            client.config_set("maxmemory", "0")
            _until(lambda: _ready(svc)[0] == 200)
            assert HTTP.post(f"{svc.url}/events", json=event()).status_code == 201
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["", "64mb"])
def test_embedded_engine_has_maxmemory_and_noeviction(setting: str, tmp_path: Path) -> None:
    env = {"EA_ENGINE_MAXMEMORY": setting} if setting else {}
    data = tmp_path / "data"
    with stopped_after(ServiceProcess(data, env=env, args=["--no-archiver"])) as svc:
        engine = redis.Redis.from_url(url_file(data).read_text())
        try:
            config = engine.config_get("maxmemory*")
        finally:
            engine.close()
        want = 64 * 1024 * 1024 if setting else default_maxmemory()
        assert int(config["maxmemory"]) == want > 0
        assert config["maxmemory-policy"] == "noeviction"
        memory = _ready(svc)[1]["engine"]["memory"]  # type: ignore[index]
        assert memory["limit_bytes"] == want and memory["maxmemory_policy"] == "noeviction"


@pytest.mark.slow
def test_memory_metrics_are_per_master_on_a_cluster(
    cluster: ClusterProcess, tmp_path: Path
) -> None:
    """One sample per master, labelled with its address: a sum hid one full master."""
    masters = {node.port for node in cluster.masters()}
    env = {"REDIS_CLUSTER_URL": cluster.url, "EA_KEY_PREFIX": "mm:"}
    with stopped_after(ServiceProcess(tmp_path / "data", env=env, args=["--no-archiver"])) as svc:
        samples = scrape(svc.url)
    used = {
        dict(labels)["node"]: v
        for (name, labels), v in samples.items()
        if name == "ea_engine_memory_used_bytes"
    }
    assert {int(node.rsplit(":", 1)[1]) for node in used} == masters, used
    assert all(v > 0 for v in used.values()), used
    limits = [n for (name, labels), _ in samples.items() if name == "ea_engine_memory_limit_bytes"
              for n in [dict(labels)["node"]]]  # fmt: skip
    assert sorted(limits) == sorted(used)
