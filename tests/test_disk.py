"""Disk (issue 13): a full data disk is a 503 storage-full with readiness red, never a
dead engine or a SIGBUS'd serve, and it recovers by itself; the streams are bounded
while the archiver is blocked (503 archive-backlog-full); each kind of file may live
on a path of its own.

The full disk is a real one: a tmpfs of a few MB mounted for the test (needs root).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from benchmarks.procs import EngineProcess
from event_analytics.config import Settings
from tests.helpers import HTTP, event, seed_key
from tests.inproc import Service, in_process
from tests.servers import ServiceProcess, stopped_after

pytestmark = pytest.mark.slow
DISK_BYTES = 24 * 1024 * 1024
MIN_FREE = 4 * 1024 * 1024


def _until(check: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_BYTES mounted at a fresh directory."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root (CI runs as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mnt)],
                   check=True)  # fmt: skip
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full; the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        for _ in range(DISK_BYTES // len(chunk) + 1):  # bounded: the disk's size
            try:
                written += f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    return written


def _ready(svc: Service) -> tuple[int, dict[str, object]]:
    r = svc.http.get(f"{svc.url}/health/ready")
    return r.status_code, r.json()


def test_full_data_disk_is_503_storage_full_and_recovers(small_disk: Path, tmp_path: Path) -> None:
    """Table row: the whole data dir on a full disk: the embedded engine exited on its AOF
    write error and serve died of SIGBUS (the metrics' mmap files), down until restarted."""
    data = small_disk / "data"
    env = {"EA_MIN_FREE_DISK_BYTES": str(MIN_FREE), "EA_ENGINE_MAXMEMORY": "64mb"}
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    svc = ServiceProcess(data, env=env)
    svc.log_path = tmp_path / "serve.log"  # not on the disk that fills up
    with stopped_after(svc):
        acked = 0
        for _ in range(5):
            assert HTTP.post(f"{svc.url}/events", json=event(ts=minute)).status_code == 201
            acked += 1
        filler = small_disk / "filler"
        assert _fill(filler) > 0
        _until(lambda: _ready(svc)[1].get("reason") == "storage_full")
        status, body = _ready(svc)
        assert status == 503, body
        r = HTTP.post(f"{svc.url}/events", json=event(ts=minute))
        assert r.status_code == 503 and r.json()["type"].endswith(":storage-full"), r.text
        assert int(r.headers["retry-after"]) >= 1
        batch = HTTP.post(f"{svc.url}/events/batch", json={"events": [event(ts=minute)]})
        assert batch.status_code == 503, batch.text
        # New metric series while the disk is full (rejections, new routes and statuses):
        # their values files were reserved, so this is no SIGBUS.
        for i in range(20):
            HTTP.post(
                f"{svc.url}/events", content=b"{", headers={"content-type": "application/json"}
            )
            HTTP.get(f"{svc.url}/no-such-path-{i}")
            HTTP.get(f"{svc.url}/analytics/top-pages?limit={i + 1}")
        assert HTTP.get(f"{svc.url}/metrics").status_code == 200
        assert svc.proc is not None and svc.proc.poll() is None, svc.output()
        # Space comes back: the service recovers by itself, nothing acknowledged is lost.
        filler.unlink()
        _until(lambda: _ready(svc)[0] == 200)
        assert HTTP.post(f"{svc.url}/events", json=event(ts=minute)).status_code == 201
        acked += 1
        got = HTTP.get(f"{svc.url}/analytics/minute-buckets/{seed_key(minute)}").json()
        assert got["count"] == acked


def test_files_on_separate_paths(tmp_path: Path) -> None:
    paths = {name: tmp_path / name for name in ("engine", "archive", "metrics")}
    env = {
        "EA_ENGINE_DIR": str(paths["engine"]),
        "EA_ARCHIVE_DIR": str(paths["archive"]),
        "EA_METRICS_DIR": str(paths["metrics"]),
    }
    with stopped_after(ServiceProcess(tmp_path / "data", env=env)) as svc:
        assert HTTP.post(f"{svc.url}/events", json=event()).status_code == 201
        _until(lambda: any(paths["archive"].rglob("*.jsonl")))
        assert any(paths["engine"].glob("appendonlydir*")), list(paths["engine"].iterdir())
        (run,) = paths["metrics"].iterdir()
        files = list(run.glob("*.db"))
        # Reserved up front: every values file has its blocks allocated, not sparse.
        assert files and all(os.stat(f).st_blocks * 512 >= 1024 * 1024 for f in files), files
        disk = _ready(svc)[1]["engine"]["disk"]  # type: ignore[index]
        assert disk["engine_free_bytes"] > 0 and disk["archive_free_bytes"] > 0, disk
    assert not (tmp_path / "data" / "valkey" / "appendonlydir").exists()


def test_stream_is_bounded_while_the_archiver_is_blocked(
    own_valkey: EngineProcess, tmp_path: Path
) -> None:
    """Table row: archive disk full: ingest went on and the stream grew without bound.

    The service is the app in this process (tests.inproc): its backlog bound is the app's
    engine watch; it runs no archiver. The archiver that comes back is a process."""
    bound = 60
    env = {"REDIS_URL": own_valkey.url, "EA_MAX_ARCHIVE_BACKLOG": str(bound),
           "EA_ARCHIVE_DIR": str(tmp_path / "archive")}  # fmt: skip
    settings = Settings(
        redis_url=own_valkey.url,
        data_dir=tmp_path / "data",
        archive_dir=tmp_path / "archive",
        max_archive_backlog=bound,
    )
    client = redis.Redis(port=own_valkey.port)
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    try:
        # No archiver: the backlog only grows.
        with in_process(settings, env) as svc:
            batch = {"events": [event(ts=minute, user=f"u{i}") for i in range(bound)]}
            r = svc.http.post(f"{svc.url}/events/batch", json=batch)
            assert r.status_code == 200 and r.json()["accepted"] == bound, r.text
            _until(
                lambda: svc.http.post(f"{svc.url}/events", json=event(ts=minute)).status_code == 503
            )
            r = svc.http.post(f"{svc.url}/events", json=event(ts=minute))
            assert r.json()["type"].endswith(":archive-backlog-full"), r.text
            status, body = _ready(svc)
            assert status == 503 and body["reason"] == "archive_backlog_full", body
            stored = svc.http.get(f"{svc.url}/analytics/minute-buckets/{seed_key(minute)}").json()
            # Precise to what one poll interval lets in: here, the events sent before the
            # service saw the bound (none arrive concurrently in this test).
            assert bound <= stored["count"] <= bound + 1 + 20, stored
            # The archiver comes back: it archives and trims, and ingest resumes.
            with (tmp_path / "archiver.log").open("ab") as log:
                archiver = subprocess.Popen(
                    [sys.executable, "-m", "event_analytics", "archiver"],
                    env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
                try:
                    _until(lambda: _ready(svc)[0] == 200, timeout_s=30)
                    r = svc.http.post(f"{svc.url}/events", json=event(ts=minute))
                    assert r.status_code == 201, r.text
                finally:
                    archiver.terminate()
                    archiver.wait(timeout=20)
    finally:
        with contextlib.suppress(redis.RedisError):
            client.close()
