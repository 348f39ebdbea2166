"""Readiness says why the service cannot take events, with what to change: an engine that
refuses the service (protected mode, a password mismatch) and a cluster that does not
serve all its slots yet. Real engines: a redis-server in protected mode reached on a
non-loopback address, one with requirepass, a Valkey cluster whose slots are unassigned."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from benchmarks.procs import EngineProcess, free_ports
from tests.cluster import ClusterProcess
from tests.helpers import HTTP, event
from tests.servers import ServiceProcess, engine_binary, stopped_after


def _non_loopback_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route is looked up
        address: str = s.getsockname()[0]
        return None if address.startswith("127.") else address
    return None


@contextlib.contextmanager
def _redis(where: Path, *args: str) -> Iterator[EngineProcess]:
    binary = engine_binary("redis")
    if binary is None:
        pytest.skip("redis-server not installed (.ci/run installs it)")
    proc = EngineProcess(binary, where, extra_args=list(args))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def _alive(svc: ServiceProcess) -> Iterator[ServiceProcess]:
    """Started, answering /health/ (never ready: that is the point); stopped afterwards."""
    svc.start(wait=False)
    try:
        svc.wait_alive()
        yield svc
    finally:
        svc.stop()


def _until_ready_says(svc: ServiceProcess, reason: str, timeout_s: float = 30) -> Any:
    """Poll /health/ready (bounded) until a 503 gives ``reason``; that body."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = HTTP.get(f"{svc.url}/health/ready", timeout=10)
        assert r.status_code in (200, 503), (r.status_code, r.text)
        if r.status_code == 503 and r.json().get("reason") == reason:
            return r
        assert time.monotonic() < deadline, (r.status_code, r.text)
        time.sleep(0.1)


def _refused_everywhere(svc: ServiceProcess, code: str, words: str) -> None:
    ready = _until_ready_says(svc, "engine_refused")
    body = ready.json()
    assert body["status"] == "unavailable" and body["engine"]["reachable"] is True, body
    assert code in body["engine"]["error"] and words in body["detail"], body
    assert ready.headers["Retry-After"] == "30"
    # Ingest says the same as a problem: 503, never a 500.
    r = HTTP.post(f"{svc.url}/events", json=event(), timeout=10)
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["type"].endswith(":storage-refused") and words in problem["detail"], problem
    assert "a retry with the same event_id is safe" in problem["detail"], problem


@pytest.mark.slow
def test_protected_mode_denied_is_a_503_saying_what_to_change(tmp_path: Path) -> None:
    """Before: 500 (DENIED arrives as a plain ResponseError, which nothing mapped)."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to reach the engine on")
    with _redis(tmp_path / "engine", "--bind", "0.0.0.0", "--protected-mode", "yes") as engine:
        env = {"REDIS_URL": f"redis://{address}:{engine.port}/0"}
        with _alive(ServiceProcess(tmp_path / "data", env=env)) as svc:
            _refused_everywhere(svc, "DENIED", "protected mode")
        # The same engine serves a loopback client: protected mode kept the service out.
        with stopped_after(ServiceProcess(tmp_path / "ok", env={"REDIS_URL": engine.url})):
            pass


@pytest.mark.slow
@pytest.mark.parametrize(
    ("password", "code", "words"),
    [("", "NOAUTH", "requires a password"), ("not-it", "WRONGPASS", "is not the engine's")],
)
def test_a_password_mismatch_is_a_503_saying_what_to_change(
    tmp_path: Path, password: str, code: str, words: str
) -> None:
    with _redis(tmp_path / "engine") as engine:
        with contextlib.closing(redis.Redis(port=engine.port)) as c:
            c.config_set("requirepass", "s3cret")  # after the start: its wait pings bare
        auth = f":{password}@" if password else ""
        env = {"REDIS_URL": f"redis://{auth}127.0.0.1:{engine.port}/0"}
        with _alive(ServiceProcess(tmp_path / "data", env=env)) as svc:
            _refused_everywhere(svc, code, words)


@pytest.mark.slow
def test_a_cluster_still_forming_is_not_ready_until_it_serves_every_slot(tmp_path: Path) -> None:
    """Before: ready (200) on a cluster whose slots were not all assigned, and ingest into
    an unassigned slot answered 503 while readiness said ready (or a 500 with none)."""
    binary = engine_binary("valkey")
    assert binary is not None, "the bundled Valkey server is missing"
    port, bus = free_ports(2)
    node = EngineProcess(binary, tmp_path / "node", port, ClusterProcess._args(bus))
    node.start()
    try:
        admin = redis.Redis(port=node.port)
        admin.execute_command("CLUSTER ADDSLOTSRANGE", 0, 8000)  # half assigned: forming
        env = {"REDIS_CLUSTER_URL": f"redis://127.0.0.1:{node.port}", "EA_KEY_PREFIX": "cf:"}
        with _alive(ServiceProcess(tmp_path / "data", env=env)) as svc:
            body = _until_ready_says(svc, "cluster_forming").json()
            assert "8001 of 16384 slots" in body["engine"]["error"], body
            assert "forming" in body["detail"], body
            statuses = {
                HTTP.post(f"{svc.url}/events", json=event(user=f"u{i}"), timeout=10).status_code
                for i in range(20)  # users on both halves of the slots
            }
            assert statuses <= {201, 503}, statuses
            admin.execute_command("CLUSTER ADDSLOTSRANGE", 8001, 16383)  # formed
            deadline = time.monotonic() + 30
            while HTTP.get(f"{svc.url}/health/ready", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "not ready after the last slots"
                time.sleep(0.1)
            bodies = [event(user=f"u{i}") for i in range(20)]
            deadline = time.monotonic() + 30
            for b in bodies:  # the client learns the new slots at its first miss
                while (r := HTTP.post(f"{svc.url}/events", json=b, timeout=10)).status_code != 201:
                    assert r.status_code == 503 and time.monotonic() < deadline, r.text
                    time.sleep(0.1)
        admin.close()
    finally:
        node.stop()
