"""What the container image runs, checked without a container engine (the image itself
is built and run in tests/test_containers.py): the wheel the Dockerfile's build stage
makes, installed on its own, started by the image's ENTRYPOINT + CMD with the image's
environment, must answer the image's HEALTHCHECK command, store and count an event,
archive it, and serve the dashboard. A file the package forgets (a Lua script, the
dashboard) fails here, fast and without building an image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import HTTP, event
from tests.servers import ServiceProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# Continuation lines joined: one instruction per line.
DOCKERFILE = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())


def _instruction(name: str) -> str:
    """The text of the last Dockerfile instruction ``name``."""
    found = re.findall(rf"^{name}\s+(.+)$", DOCKERFILE, re.M)
    assert found, name
    return str(found[-1])


def _image_env() -> dict[str, str]:
    """The ENV of the runtime stage (after the last FROM)."""
    runtime = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.+)$", runtime, re.M):
        env |= dict(re.findall(r"(\w+)=(\S+)", line))
    return env


def _build_context(into: Path) -> Path:
    """What the build stage COPYs (nothing else of this checkout, no stale build/)."""
    build_stage = DOCKERFILE.rsplit("\nFROM ", 1)[0]
    for line in re.findall(r"^COPY\s+(.+)$", build_stage, re.M):
        *sources, dest = line.split()
        for source in sources:
            target = into / dest / Path(source).name if dest.endswith("/") else into / dest
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
    return into


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built as the Dockerfile builds it, installed alone."""
    work = tmp_path_factory.mktemp("image")
    context, wheels, site = work / "context", work / "wheels", work / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels),
                    str(_build_context(context))], check=True, timeout=300)  # fmt: skip
    (wheel,) = wheels.glob("event_analytics-*.whl")
    # Dependencies come from this environment; the package itself only from the wheel.
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=300)  # fmt: skip
    return site


@pytest.fixture(scope="module")
def image_service(
    installed: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    entrypoint = json.loads(_instruction("ENTRYPOINT"))
    cmd = json.loads(_instruction("CMD"))
    data = tmp_path_factory.mktemp("image-data") / "data"
    data.mkdir()
    env = {
        **_image_env(),
        "PYTHONPATH": str(installed),
        "PATH": f"{installed / 'bin'}:{os.environ['PATH']}",
        # Loopback only on this machine (the image listens on all interfaces).
        "EA_HOST": "127.0.0.1",
        "EA_DATA_DIR": str(data),
    }
    command = [str(installed / "bin" / entrypoint[0]), *entrypoint[1:], *cmd]
    svc = ServiceProcess(data, env=env, command=command)
    svc.env["EA_PORT"] = str(svc.port)
    svc.start()
    yield svc
    svc.stop()


def test_image_answers_its_healthcheck_counts_archives_and_serves_the_dashboard(
    image_service: ServiceProcess, installed: Path
) -> None:
    check = json.loads(_instruction("HEALTHCHECK").split(" CMD ", 1)[1])
    check = [c.replace(":8000/", f":{image_service.port}/") for c in check]
    check[0] = sys.executable if check[0] == "python" else check[0]
    assert subprocess.run(check, timeout=10).returncode == 0

    # With the service's environment, the package is the wheel's, not this checkout's.
    where = subprocess.run(
        [sys.executable, "-c", "import event_analytics; print(event_analytics.__file__)"],
        env=image_service.env, capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert Path(where.strip()).is_relative_to(installed), where

    body = event(user="image")
    assert HTTP.post(f"{image_service.url}/events", json=body).status_code == 201
    minute = body["timestamp"][:16].replace("T", "_")
    r = HTTP.get(f"{image_service.url}/analytics/minute-buckets/page_view_{minute}")
    assert r.json()["count"] == 1

    dashboard = HTTP.get(f"{image_service.url}/dashboard")
    assert dashboard.status_code == 200 and "uPlot" in dashboard.text
    assert HTTP.get(f"{image_service.url}/dashboard/static/uPlot.iife.min.js").status_code == 200

    deadline = time.monotonic() + 30
    archived: list[Path] = []
    while not archived and time.monotonic() < deadline:
        archived = [p for p in image_service.data_dir.rglob("events_*.jsonl") if p.stat().st_size]
        time.sleep(0.2)
    assert archived, image_service.output()
    assert body["event_id"] in archived[0].read_text()
