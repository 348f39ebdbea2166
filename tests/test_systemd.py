"""deploy/systemd: the unit restarts the service always, limits its memory and names the
data and archive paths; what it runs (ExecStart with its EnvironmentFile, the paths
moved under a temporary directory) starts, counts and archives an event. systemd itself
is not run here (no systemd as PID 1): ``systemd-analyze verify`` checks the unit's
syntax when it is installed.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.procs import free_port
from tests.helpers import HTTP, event
from tests.servers import ServiceProcess, stopped_after

pytestmark = pytest.mark.slow
DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
UNIT = DEPLOY / "event-analytics.service"
ENV_FILE = DEPLOY / "event-analytics.env"
STATE = "/var/lib/event-analytics"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def _env_file() -> dict[str, str]:
    out = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


def test_unit_restarts_always_limits_memory_and_names_the_paths() -> None:
    service = _unit()["Service"]
    assert service["Restart"] == "always"
    assert _unit()["Unit"]["StartLimitIntervalSec"] == "0"  # never gives up restarting
    assert service["MemoryMax"] and service["EnvironmentFile"] == "/etc/event-analytics.env"
    assert service["ExecStart"].endswith("event-analytics serve")
    env = _env_file()
    for name in ("EA_DATA_DIR", "EA_ARCHIVE_DIR", "EA_ENGINE_DIR"):
        assert env[name].startswith(STATE), name
    assert STATE in service["ReadWritePaths"].split()
    assert "event-analytics/archive" in service["StateDirectory"].split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    # verify also checks that ExecStart exists: point it at this interpreter.
    text = UNIT.read_text().replace(
        "ExecStart=/opt/event-analytics/bin/event-analytics serve",
        f"ExecStart={sys.executable} -m event_analytics serve",
    )
    unit = tmp_path / "event-analytics.service"
    unit.write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    complaints = [line for line in (out.stdout + out.stderr).splitlines() if str(unit) in line]
    assert not complaints, complaints


def test_what_the_unit_runs_serves_and_archives(tmp_path: Path) -> None:
    env = {k: v.replace(STATE, str(tmp_path / "state")) for k, v in _env_file().items()}
    env |= {"EA_HOST": "127.0.0.1", "EA_PORT": str(free_port())}
    svc = ServiceProcess(
        tmp_path / "state", env=env, command=[sys.executable, "-m", "event_analytics", "serve"]
    )
    svc.port = int(env["EA_PORT"])
    with stopped_after(svc):
        assert HTTP.post(f"{svc.url}/events", json=event()).status_code == 201
        deadline = time.monotonic() + 20
        archive = Path(env["EA_ARCHIVE_DIR"])
        while not any(archive.rglob("*.jsonl")):
            assert time.monotonic() < deadline, "not archived"
            time.sleep(0.1)
        assert any(Path(env["EA_ENGINE_DIR"]).glob("appendonlydir*"))
