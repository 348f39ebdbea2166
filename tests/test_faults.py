"""Crashes and outages with real processes: nothing acknowledged is lost, nothing hangs.

The ``embedded`` tests are about the private Valkey that ``serve`` starts and supervises
when no engine is configured (its child process, its data dir lock, its restarts): there
is no cluster in that mode, so they run without one. An engine restart under a running
service runs on every engine, the cluster included (all its nodes killed and restarted),
against the app in this process (tests.inproc): what it checks is the app's engine client.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.backends import Backend
from tests.helpers import HTTP, event, seed_key
from tests.inproc import InProcessService, Service
from tests.servers import ServiceProcess
from tests.traffic import hammer

pytestmark = pytest.mark.slow


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(tmp_path / "data")
    svc.start()
    yield svc
    if svc.proc is not None and svc.proc.poll() is None:
        svc.stop()


def _bucket(svc: ServiceProcess, minute: datetime) -> int:
    r = HTTP.get(f"{svc.url}/analytics/minute-buckets/{seed_key(minute)}", timeout=10)
    assert r.status_code == 200, r.text
    count: int = r.json()["count"]
    return count


def test_sigkill_service_and_engine_keeps_every_ack(embedded: ServiceProcess) -> None:
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    bodies = [event(user=f"u{i % 50}", ts=minute + timedelta(seconds=i % 60)) for i in range(3000)]
    acked = asyncio.run(hammer(embedded.url, bodies, 400, embedded.kill_tree))
    assert len(acked) >= 400
    embedded.start()
    count = _bucket(embedded, minute)
    # Every acknowledged event survived; at most the requests in flight were added besides.
    assert len(acked) <= count <= len(acked) + 16
    # And each acknowledged event individually: a resend is a duplicate.
    for body in bodies:
        if body["event_id"] in acked:
            r = HTTP.post(f"{embedded.url}/events", json=body, timeout=10)
            assert r.status_code == 200, r.text


def test_sigkill_of_serve_alone_takes_the_engine_down(embedded: ServiceProcess) -> None:
    assert embedded.proc is not None
    assert HTTP.post(f"{embedded.url}/events", json=event()).status_code == 201
    children = subprocess.run(
        ["pgrep", "-P", str(embedded.proc.pid)], capture_output=True, text=True
    ).stdout.split()
    assert children, "the embedded engine should be a child of serve"
    os.kill(embedded.proc.pid, signal.SIGKILL)
    embedded.proc.wait()
    # Closed before the check: a failure below must not leave the log open for the next
    # test's unraisable-exception check to blame (a clean-clone run at load 20 did).
    embedded.log.close()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in children):
        assert time.monotonic() < deadline, "engine outlived its serve"
        time.sleep(0.05)
    embedded.start()  # the data dir is free again, and the data intact
    rows = HTTP.get(f"{embedded.url}/analytics/page_views_per_minute?minutes=2").json()
    assert sum(r["count"] for r in rows) == 1


def test_second_serve_on_same_data_dir_is_refused(embedded: ServiceProcess) -> None:
    other = subprocess.run(
        [sys.executable, "-m", "event_analytics", "serve", "--port", "0",
         "--data-dir", str(embedded.data_dir)],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "REDIS_URL"},
    )  # fmt: skip
    assert other.returncode == 1
    assert "in use by another event-analytics serve" in other.stderr
    assert str(embedded.proc.pid if embedded.proc else "") in other.stderr
    assert HTTP.get(f"{embedded.url}/health/ready").status_code == 200


def test_embedded_engine_crash_is_restarted(embedded: ServiceProcess) -> None:
    assert embedded.proc is not None
    assert HTTP.post(f"{embedded.url}/events", json=event()).status_code == 201
    (engine_pid,) = subprocess.run(
        ["pgrep", "-P", str(embedded.proc.pid), "valkey-server|redis-server"],
        capture_output=True,
        text=True,
    ).stdout.split()
    os.kill(int(engine_pid), signal.SIGKILL)
    statuses = _post_until_created(embedded, seconds=30)
    assert statuses[-1] == 201
    assert set(statuses) <= {201, 503}
    rows = HTTP.get(f"{embedded.url}/analytics/page_views_per_minute?minutes=2").json()
    assert sum(r["count"] for r in rows) == 2


def test_sigterm_stops_engine_with_service(embedded: ServiceProcess) -> None:
    assert embedded.proc is not None
    children = subprocess.run(
        ["pgrep", "-P", str(embedded.proc.pid)], capture_output=True, text=True
    ).stdout.split()
    assert embedded.stop() == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists()


def _post_until_created(svc: Service, seconds: float) -> list[int]:
    """POST fresh events until one is 201; every answer must come back (no hang)."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = svc.http.post(f"{svc.url}/events", json=event(), timeout=5)
        statuses.append(r.status_code)
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert r.headers["content-type"] == "application/problem+json"
        if r.status_code == 201:
            return statuses
        time.sleep(0.1)
    raise AssertionError(f"no recovery within {seconds} s: {statuses[-5:]}")


@pytest.mark.parametrize("killable", ["valkey", "redis", "cluster"], indirect=True)
def test_engine_restart_under_running_service(killable: Backend, tmp_path: Path) -> None:
    settings = killable.settings(data_dir=tmp_path / "data", key_prefix=killable.prefix)
    svc = InProcessService(settings, killable.env)
    svc.start()
    try:
        before = event()
        assert svc.http.post(f"{svc.url}/events", json=before).status_code == 201
        killable.kill()  # on the cluster: every node at once
        r = svc.http.post(f"{svc.url}/events", json=event(), timeout=5)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        ready = svc.http.get(f"{svc.url}/health/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["engine"]["reachable"] is False
        rows = svc.http.get(f"{svc.url}/analytics/page_views_per_minute", timeout=5)
        assert rows.status_code == 503
        killable.start()
        _post_until_created(svc, seconds=20)
        # The event acknowledged before the crash survived it (AOF, fsync always).
        dup = svc.http.post(f"{svc.url}/events", json=before, timeout=5)
        assert dup.status_code == 200 and dup.json()["duplicate"] is True
        assert svc.http.get(f"{svc.url}/health/ready").status_code == 200
    finally:
        svc.stop()
