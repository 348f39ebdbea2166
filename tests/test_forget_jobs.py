"""Erasure jobs (POST /api/v1/admin/forget) survive the service: the whole service
SIGKILLed in the middle of a job's hour rewrites (after writing an hour's scratch file,
or after its rename: its erasure worker stopped right there), then started again, and
the job finishes by itself, other users sending meanwhile: every hour file ends as it
would without the erased users, ``verify`` finds 0 differences, and the analytics
answers equal those of an archive that never had them. Two jobs sent at once run one
after the other, the second queued behind the first."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from event_analytics.archive import files
from event_analytics.faults import ERASE_POINTS
from tests.helpers import HTTP, wait_for
from tests.readback import wait_archived
from tests.servers import ServiceProcess, _descendants, stopped_after
from tests.test_forget import (
    ADMIN,
    ERASED,
    LiveTraffic,
    _without_erased,
    as_if_never,
    finished,
    post_batch,
    sent_events,
    wait_job,
)

pytestmark = pytest.mark.slow
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
# Short leases: the restarted service takes over the killed one's pause and job lease.
ENV = {"EA_ADMIN_KEYS": ADMIN, "EA_BACKUP_PAUSE_TTL_S": "5", "EA_ARCHIVER_LEASE_S": "3"}


def _stopped_pids(svc: ServiceProcess) -> list[int]:
    """The service's processes that have stopped themselves (EA_ERASE_STOP_AT)."""
    assert svc.proc is not None
    out = []
    for pid in _descendants(svc.proc.pid):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except (FileNotFoundError, IndexError):
            continue
        if state == "T":
            out.append(pid)
    return out


def _stopped(svc: ServiceProcess) -> bool:
    return bool(_stopped_pids(svc))


def _state(url: str, job_id: str) -> str:
    got = HTTP.get(f"{url}/api/v1/admin/forget/{job_id}", headers=HEADERS, timeout=10)
    assert got.status_code == 200, got.text
    state: str = got.json()["state"]
    return state


@pytest.mark.parametrize("point", ERASE_POINTS)
def test_a_job_killed_with_the_service_finishes_after_the_restart(
    tmp_path: Path, point: str
) -> None:
    data = tmp_path / "data"
    root = data / "persistent_events"
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    firsts = [today - timedelta(days=2, hours=-10), today - timedelta(days=1, hours=-10)]
    sent = [e for first in firsts for e in sent_events(first, 300)]
    hours = [files.hour_path(root, first) for first in firsts]
    first_run = ServiceProcess(data, env=ENV | {"EA_ERASE_STOP_AT": point})
    with stopped_after(first_run) as svc:
        for start in range(0, len(sent), 200):
            post_batch(svc.url, sent[start : start + 200])
        wait_archived(svc.url)
        old = [path.read_bytes() for path in hours]
        new = [_without_erased(d) for d in old]
        queued = HTTP.post(
            f"{svc.url}/api/v1/admin/forget", json={"user_ids": ERASED}, headers=HEADERS
        )
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["id"]
        wait_for(lambda: _stopped(svc), 120, svc.output)
        got = HTTP.get(f"{svc.url}/api/v1/admin/forget/{job_id}", headers=HEADERS).json()
        assert got["state"] == "running" and got["attempts"] == 1, got
        # The first hour is rewritten first; the worker stopped in it.
        assert [p.read_bytes() for p in hours] == (
            [new[0], old[1]] if point == "erase_renamed" else old
        )
        svc.kill_tree()

    with stopped_after(ServiceProcess(data, env=ENV)) as svc:
        with LiveTraffic(svc.url) as live:
            ended = wait_job(svc.url, job_id, HEADERS)
        assert ended["state"] == "done", ended
        assert ended["attempts"] == 2
        finished(ended["result"], point, old, hours)
        as_if_never(svc.url, data, tmp_path, sent, live.sent, firsts)


def test_a_second_job_waits_for_the_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    sent = sent_events(first, 200)
    env = ENV | {"EA_ERASE_STOP_AT": "erase_written"}
    with stopped_after(ServiceProcess(data, env=env)) as svc:
        post_batch(svc.url, sent)
        wait_archived(svc.url)
        url = f"{svc.url}/api/v1/admin/forget"
        one = HTTP.post(url, json={"user_ids": ["alice"]}, headers=HEADERS).json()
        wait_for(lambda: _stopped(svc), 120, svc.output)
        two = HTTP.post(url, json={"user_ids": ["bob"]}, headers=HEADERS)
        assert two.status_code == 202, two.text
        assert two.json()["state"] == "queued" and two.json()["position"] == 2
        assert HTTP.get(f"{url}/{one['id']}", headers=HEADERS).json()["state"] == "running"
        # Let them go on: the fault stops the worker once in each hour it rewrites.
        ids = [one["id"], two.json()["id"]]
        deadline = time.monotonic() + 300
        while not all(_state(svc.url, j) in ("done", "failed") for j in ids):
            assert time.monotonic() < deadline, svc.output()
            for pid in _stopped_pids(svc):
                os.kill(pid, signal.SIGCONT)
            time.sleep(0.2)
        ended = [wait_job(svc.url, j, HEADERS) for j in ids]
    assert [e["state"] for e in ended] == ["done", "done"]
    assert ended[0]["finished_at"] <= ended[1]["started_at"]
    assert [e["result"]["events_removed"] for e in ended] == [
        sum(1 for e in sent if e["user_id"] == u) for u in ("alice", "bob")
    ]
