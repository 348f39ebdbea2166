"""``event-analytics forget`` against a running service (its engine found through
--data-dir, as ``backup`` does), with live traffic of other users meanwhile: the
archive, its Parquet copies and the counters end as if the erased users had never come
(checked against a model archive that never had their events: the same analytics
answers), ``verify`` finds 0 differences, their late or retried events are refused
with ``user_erased``, and the audit record names the backup taken before."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from event_analytics.archive import compact, files
from event_analytics.faults import ERASE_POINTS
from tests import analytics_model as model
from tests.helpers import HTTP, cli, event
from tests.inproc import InProcessService
from tests.readback import archived, wait_archived
from tests.servers import ServiceProcess, stopped_after
from tests.test_archive_compaction import answers

pytestmark = pytest.mark.slow
ERASED = ["alice", "bob"]
TYPES = ["view", "join", "buy"]
PAGES = ["https://shop.example/", "https://shop.example/pricing"]


def sent_events(first: datetime, n: int) -> list[dict[str, Any]]:
    users = [*ERASED, *(f"u{i}" for i in range(8))]
    return [
        event(
            user=users[i % len(users)],
            ts=first + timedelta(seconds=i * 7),
            event_type=TYPES[i % len(TYPES)],
            url=PAGES[i % len(PAGES)],
        )
        for i in range(n)
    ]


def post_batch(url: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    reply = HTTP.post(f"{url}/events/batch", json={"events": events}, timeout=30)
    assert reply.status_code in (200, 201, 207), reply.text
    results: list[dict[str, Any]] = reply.json()["results"]
    return results


class LiveTraffic:
    """Other users sending batches from a thread until stopped: ``sent`` holds every
    event that was accepted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.sent: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stop.is_set() and len(self.sent) < 2000:
            batch = [event(user=f"live{i % 5}", event_type="view") for i in range(20)]
            if all(r["status"] == "accepted" for r in post_batch(self.url, batch)):
                self.sent.extend(batch)

    def __enter__(self) -> LiveTraffic:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


def test_forget_while_others_keep_sending(tmp_path: Path) -> None:
    data = tmp_path / "data"
    root = data / "persistent_events"
    env = {"EA_DATA_DIR": str(data)}
    first = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    sent = sent_events(first, 600)
    with stopped_after(ServiceProcess(data, env={"EA_COMPACT_AFTER_S": "1"})) as svc:
        for start in range(0, len(sent), 200):
            assert {r["status"] for r in post_batch(svc.url, sent[start : start + 200])} == {
                "accepted"
            }
        wait_archived(svc.url)
        copies = [compact.compact(f.path) for f in files.list_files(root)]
        assert len(copies) >= 2 and all(copies)  # copies of every hour, the open one too
        backup = cli(["backup", str(tmp_path / "backup"), "--data-dir", str(data)], env)
        assert backup.returncode == 0, backup.stderr

        # Other users keep sending while the erasure runs: each counted once.
        with LiveTraffic(svc.url) as live:
            done = cli(["forget", *ERASED, "--data-dir", str(data)], env, timeout=300)
        during = live.sent
        assert done.returncode == 0, done.stderr
        assert during  # the erasure ran beside live traffic
        audit = orjson.loads(done.stdout)
        erased_sent = [e for e in sent if e["user_id"] in ERASED]
        assert audit["events_removed"] == len(erased_sent)
        assert sum(audit["hours"].values()) == len(erased_sent)
        assert audit["user_sha256"] == sorted(
            hashlib.sha256(u.encode()).hexdigest() for u in ERASED
        )
        assert "alice" not in done.stdout
        assert [b["dir"] for b in audit["backups_holding_data"]] == [
            str((tmp_path / "backup").resolve())
        ]
        assert "still hold the data" in done.stderr

        # Late events and retries of theirs are refused, with the reason.
        late = event(user="alice")
        reply = HTTP.post(f"{svc.url}/events", json=late, timeout=10)
        assert reply.status_code == 422, reply.text
        assert reply.headers["content-type"].startswith("application/problem+json")
        assert reply.json()["errors"][0]["code"] == "user_erased"
        retried = post_batch(svc.url, [erased_sent[0]])[0]
        assert retried["status"] == "rejected"
        assert retried["errors"][0]["code"] == "user_erased"

        wait_archived(svc.url)
        kept = [e for e in sent if e["user_id"] not in ERASED]
        in_archive = archived(data)
        assert sorted(r["event_id"] for r in in_archive) == sorted(
            e["event_id"] for e in kept + during
        )
        # No copy that a query would read holds them, and none is left stale.
        for found in files.list_files(root):
            if compact.parquet_path(found.path).exists():
                assert compact.covered(found.path) is not None

        checked = cli(["verify", "--data-dir", str(data)], env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert " 0 differ" in checked.stdout

        # The analytics answers equal those over an archive that never had them.
        never = tmp_path / "never"
        model.archive(never, [_as_record(e) for e in kept + during])
        assert answers(root, first, 2) == answers(never, first, 2)


def _without_erased(data: bytes) -> bytes:
    return b"".join(
        ln for ln in data.splitlines(keepends=True) if orjson.loads(ln)["user_id"] not in ERASED
    )


@pytest.mark.parametrize("point", ERASE_POINTS)
def test_a_killed_erasure_leaves_whole_hours_and_the_next_run_finishes(
    tmp_path: Path, point: str
) -> None:
    """``forget`` SIGKILLed in an hour's rewrite (after writing the scratch file, or
    after its rename: the first hour done, the second, a day later, not), live traffic
    of other users going on: every hour file is its old or its new content, whole, and
    no other user's event is lost or doubled; ``forget`` run again finishes: the first
    hour's day is rebuilt from the killed run's record although nothing is left to
    remove in it (without the record its counters would keep the erased events), and
    then the archive, the counters (``verify``) and the analytics answers are those of a
    service that never had the erased users' events."""
    data = tmp_path / "data"
    root = data / "persistent_events"
    env = {"EA_DATA_DIR": str(data)}
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    firsts = [today - timedelta(days=2, hours=-10), today - timedelta(days=1, hours=-10)]
    sent = [e for first in firsts for e in sent_events(first, 300)]  # 35 minutes each
    with stopped_after(ServiceProcess(data)) as svc:
        for start in range(0, len(sent), 200):
            post_batch(svc.url, sent[start : start + 200])
        wait_archived(svc.url)
        hours = [files.hour_path(root, first) for first in firsts]
        old = [path.read_bytes() for path in hours]
        new = [_without_erased(data) for data in old]
        assert all(o != n for o, n in zip(old, new, strict=True))
        killed_env = env | {"EA_ERASE_CRASH_AT": point, "EA_BACKUP_PAUSE_TTL_S": "5"}
        with LiveTraffic(svc.url) as live:
            killed = cli(["forget", *ERASED, "--data-dir", str(data)], killed_env, timeout=300)
            assert killed.returncode == -9, killed.stderr
            got = [path.read_bytes() for path in hours]
            # The first hour is rewritten first (list order); the kill stops it there.
            assert got == ([new[0], old[1]] if point == "erase_renamed" else old)
            # The next run waits out the killed run's pause (its TTL), then finishes.
            done = cli(["forget", *ERASED, "--data-dir", str(data)], env, timeout=300)
        assert done.returncode == 0, done.stderr
        assert live.sent
        finished(orjson.loads(done.stdout), point, old, hours)
        as_if_never(svc.url, data, tmp_path, sent, live.sent, firsts)


def finished(audit: dict[str, Any], point: str, old: list[bytes], hours: list[Path]) -> None:
    """A run that finished one killed at ``point`` (in the first of ``hours``, which
    held ``old``) removed the rest, rebuilt both days, left every hour new and whole."""
    left = [old[1]] if point == "erase_renamed" else old
    assert audit["events_removed"] == sum(
        d.count(b"\n") - _without_erased(d).count(b"\n") for d in left
    )
    assert audit["days_rebuilt"] == 2  # the killed run's first hour's day included
    assert [path.read_bytes() for path in hours] == [_without_erased(d) for d in old]
    root = hours[0].parents[3]  # root/YYYY/MM/DD/events_….jsonl
    assert not list(root.glob("**/.*erase-tmp"))


def as_if_never(
    url: str,
    data: Path,
    tmp_path: Path,
    sent: list[dict[str, Any]],
    during: list[dict[str, Any]],
    firsts: list[datetime],
) -> None:
    """The archive holds every other user's event exactly once, ``verify`` finds 0
    differences, and the answers equal those over an archive that never had ERASED."""
    wait_archived(url)
    kept = [e for e in sent if e["user_id"] not in ERASED]
    assert sorted(r["event_id"] for r in archived(data)) == sorted(
        e["event_id"] for e in kept + during
    )  # other users' events, each exactly once
    checked = cli(["verify", "--data-dir", str(data)], {"EA_DATA_DIR": str(data)})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert " 0 differ" in checked.stdout
    never = tmp_path / "never"
    model.archive(never, [_as_record(e) for e in kept + during])
    for first in firsts:
        assert answers(data / "persistent_events", first, 1) == answers(never, first, 1)


def _as_record(sent: dict[str, Any]) -> dict[str, Any]:
    return {**sent, "event_id": str(uuid.UUID(sent["event_id"])), "received_at": sent["timestamp"]}


ADMIN = "admin-key-0123456789abcdef"
WRITE = "write-key-0123456789abcdef"
READ = "read-key-0123456789abcdef0"


def test_the_admin_route_takes_the_admin_scope_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    keys = {"EA_ADMIN_KEYS": ADMIN, "EA_WRITE_KEYS": WRITE, "EA_READ_KEYS": READ}
    with stopped_after(ServiceProcess(data, env=keys)) as svc:
        sent = [event(user="carol"), event(user="dave"), event(user="carol")]
        reply = HTTP.post(
            f"{svc.url}/events/batch",
            json={"events": sent},
            headers={"Authorization": f"Bearer {WRITE}"},
            timeout=30,
        )
        assert reply.status_code in (200, 201, 207), reply.text
        url = f"{svc.url}/api/v1/admin/forget"
        body = {"user_ids": ["carol"]}
        for headers, status in (
            ({}, 401),
            ({"Authorization": f"Bearer {READ}"}, 403),
            ({"Authorization": f"Bearer {WRITE}"}, 403),
            ({"X-API-Key": "not-a-key-0123456789abcdef"}, 401),
        ):
            refused = HTTP.post(url, json=body, headers=headers, timeout=30)
            assert refused.status_code == status, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
        admin = {"Authorization": f"Bearer {ADMIN}"}
        for bad, code in (
            ({"user_ids": []}, "invalid_user_ids"),
            ({"user_ids": ["ok", "bad\u0001id"]}, "invalid_user_ids"),
            ({"users": ["carol"]}, "invalid_body"),
            ({"user_ids": ["carol"], "extra": 1}, "unknown_field"),
        ):
            refused = HTTP.post(url, json=bad, headers=admin, timeout=30)
            assert refused.status_code == 422, refused.text
            assert refused.json()["errors"][0]["code"] == code
        queued = HTTP.post(url, json=body, headers=admin, timeout=30)
        assert queued.status_code == 202, queued.text
        job = queued.json()
        assert queued.headers["location"] == f"/api/v1/admin/forget/{job['id']}"
        assert job["state"] in ("queued", "running") and job["result"] is None
        assert job["user_sha256"] == [hashlib.sha256(b"carol").hexdigest()]
        assert "carol" not in queued.text
        # Refused from the 202 on, before the job has run.
        late = HTTP.post(
            f"{svc.url}/events",
            json=event(user="carol"),
            headers={"Authorization": f"Bearer {WRITE}"},
            timeout=10,
        )
        assert late.status_code == 422 and late.json()["errors"][0]["code"] == "user_erased"
        for headers in ({"Authorization": f"Bearer {READ}"}, {}):
            refused = HTTP.get(f"{svc.url}{queued.headers['location']}", headers=headers)
            assert refused.status_code in (401, 403), refused.text
        ended = wait_job(svc.url, job["id"], admin)
        assert ended["state"] == "done", ended
        assert ended["attempts"] == 1 and ended["error"] is None
        audit = ended["result"]
        assert audit["events_removed"] == 2
        assert audit["user_sha256"] == [hashlib.sha256(b"carol").hexdigest()]
        assert audit["backups_holding_data"] == []
        assert ended["progress"]["events_removed"] == 2 and ended["progress"]["phase"] == "done"
        assert [r["user_id"] for r in archived(data)] == ["dave"]
        for unknown in ("0" * 32, "not-a-job"):
            missing = HTTP.get(f"{url}/{unknown}", headers=admin, timeout=10)
            assert missing.status_code == 404, missing.text
            assert missing.headers["content-type"].startswith("application/problem+json")
        checked = cli(["verify", "--data-dir", str(data)], {"EA_DATA_DIR": str(data)})
        assert checked.returncode == 0, checked.stdout + checked.stderr


def wait_job(url: str, job_id: str, headers: dict[str, str], timeout_s: float = 300) -> Any:
    """The erasure job once it has ended (done or failed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = HTTP.get(f"{url}/api/v1/admin/forget/{job_id}", headers=headers, timeout=10)
        assert got.status_code == 200, got.text
        if got.json()["state"] in ("done", "failed"):
            return got.json()
        assert time.monotonic() < deadline, got.text
        time.sleep(0.2)


def test_the_admin_route_is_closed_without_admin_keys(api: InProcessService) -> None:
    reply = api.http.post(f"{api.url}/api/v1/admin/forget", json={"user_ids": ["x"]})
    assert reply.status_code == 403, reply.text
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert "EA_ADMIN_KEYS" in reply.json()["detail"]
