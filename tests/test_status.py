"""``event-analytics status`` as a user runs it: the real CLI against the real service."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

from benchmarks.procs import free_port
from tests.helpers import event
from tests.servers import HTTP, ServiceProcess


def status(url: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "event_analytics", "status", "--url", url]
    # A wide terminal, so that no table cell is wrapped across lines.
    env = os.environ | {"COLUMNS": "160"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def test_status_of_a_ready_service(live: ServiceProcess) -> None:
    now = datetime.now(UTC)
    for i in range(7):
        assert HTTP.post(f"{live.url}/events", json=event(user=f"s{i % 3}", ts=now)).status_code
    run = status(live.url)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "healthy" in out and "ready" in out and "fsync_always" in out
    (row,) = [line for line in out.splitlines() if now.strftime("%H:%M") in line]
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[1:3] == ["7", "3"], row
    assert "Archive" in out and "events waiting in the stream" in out


def test_status_of_an_unreachable_service() -> None:
    run = status(f"http://127.0.0.1:{free_port()}")
    assert run.returncode == 1
    assert "unreachable" in run.stdout


def test_status_of_a_service_whose_engine_is_down(engine_down: ServiceProcess) -> None:
    run = status(engine_down.url)
    assert run.returncode == 1, run.stdout
    assert "healthy" in run.stdout and "not ready" in run.stdout
