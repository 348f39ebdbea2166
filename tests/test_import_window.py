"""``event-analytics import`` at the edge of the live window, and after a kill between
appending and counting.

An event the live path accepted a moment ago may still sit in the stream, unarchived,
after its timestamp has left the live window; and the UTC day the window starts in
holds live events the archive does not have yet. The import must neither write such an
event a second time (the archiver writes the stream's copy) nor rebuild such a day's
counters from the archive (which would drop the live events not archived yet). Real
import commands, a real engine, the real ingest path and archiver (in-process).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from event_analytics.archive import worker
from event_analytics.keys import Keys
from event_analytics.store import connect
from event_analytics.store.streams import StreamStore
from event_analytics.timebucket import Interval
from tests.backends import Backend
from tests.direct import ingest
from tests.helpers import cli
from tests.readback import archive_ids
from tests.test_import import env_for, history, run_import, write_ndjson

WINDOW_S = 60  # the live window in these tests (EA_MAX_AGE_S's least)


def one(ts: datetime, user: str = "u1") -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "user_id": user, "timestamp": ts.isoformat(),
            "event_type": "page_view", "payload": {"page_url": "https://a.example/"}}  # fmt: skip


def archive_stream(db: Backend, env: dict[str, str], root: Path) -> None:
    """Run an archiver over the test's streams until they are empty (bounded)."""
    settings = db.settings(key_prefix=env["EA_KEY_PREFIX"], archive_dir=root)
    keys = Keys.from_settings(settings)

    async def main() -> None:
        client = connect(settings)
        archiver = worker.Archiver(settings, StreamStore(client, keys), root, "import-test")
        try:
            await archiver._beat(force=True)
            for _ in range(100):
                if not await archiver._tick():
                    break
            assert sum([await client.xlen(keys.stream(s)) for s in range(keys.shards)]) == 0
        finally:
            await client.aclose()

    asyncio.run(main())


def day_count(db: Backend, prefix: str, day: datetime) -> int:
    keys = Keys(prefix, db.shards)
    with db.client() as c:
        return sum(
            int(c.get(keys.count(s, "page_view", Interval.DAY, day)) or 0)
            for s in range(keys.shards)
        )


def wait_until(when: datetime) -> None:
    while (left := (when - datetime.now(UTC)).total_seconds()) > 0:
        time.sleep(min(left, 1.0))


def test_an_event_accepted_live_and_not_archived_yet_is_not_written_twice(
    db: Backend, tmp_path: Path
) -> None:
    """Accepted live while inside the window, still in the stream when its timestamp has
    left the window: the import finds it a duplicate (live path, dedup memory), and
    after the archiver ran the archive holds it once."""
    root = tmp_path / "archive"
    # The dedup memory's defaults, as tests/direct.py's ingest has them (its generations
    # are named by the window: the live path and the import must share it).
    env = env_for(db, root) | {"EA_MAX_AGE_S": str(WINDOW_S)}
    del env["EA_DEDUP_WINDOW_S"]
    event = one(datetime.now(UTC) - timedelta(seconds=WINDOW_S - 10))
    assert ingest(env, [event]) == [True]
    wait_until(datetime.fromisoformat(event["timestamp"]) + timedelta(seconds=WINDOW_S + 1))
    done = run_import(env, str(write_ndjson(tmp_path / "late.ndjson", [event])))
    assert "accepted 0, duplicate 1, rejected 0" in done.stdout, done.stdout
    archive_stream(db, env, root)
    assert archive_ids(root) == {event["event_id"]: 1}


def test_the_edge_days_counters_keep_live_events_not_archived_yet(
    db: Backend, tmp_path: Path
) -> None:
    """Older than the window but on the day it starts in: imported events are counted on
    top of what live ingest counted; a rebuild of the day from the archive would drop
    the live event still in the stream."""
    root = tmp_path / "archive"
    prefix = f"imp-{uuid.uuid4().hex[:8]}:"
    env = env_for(db, root, prefix) | {"EA_MAX_AGE_S": str(WINDOW_S)}
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    wait_until(today + timedelta(seconds=WINDOW_S + 20))  # room for old events today
    now = datetime.now(UTC)
    live = one(now - timedelta(seconds=5))
    assert ingest(env, [live]) == [True]
    if now.date() != today.date():
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    old_ts = max(today + timedelta(seconds=1), now - timedelta(minutes=5))
    imported = [one(old_ts, user=f"u{i}") for i in range(20)]
    done = run_import(env, str(write_ndjson(tmp_path / "today.ndjson", imported)))
    assert "accepted 20, duplicate 0, rejected 0" in done.stdout, done.stdout
    assert day_count(db, prefix, today) == 21


def test_killed_between_append_and_count_the_next_run_rebuilds_those_days(
    db: Backend, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    env = env_for(db, root)
    events = history(300, hours=30)
    src = write_ndjson(tmp_path / "h.ndjson", events)
    killed = cli(["import", str(src)], env | {"EA_IMPORT_CRASH_AFTER_APPEND": "1"})
    assert killed.returncode == -9, killed.stderr
    assert archive_ids(root) == {e["event_id"]: 1 for e in events}  # appended, not counted
    done = run_import(env, str(src))
    assert "accepted 0, duplicate 300, rejected 0" in done.stdout, done.stdout
    assert "counters rebuilt for 2 day(s) a killed import left" in done.stdout, done.stdout
    checked = cli(["verify"], env)
    assert checked.returncode == 0 and "0 differ" in checked.stdout, checked.stdout
    again = run_import(env, str(src))
    assert "counters rebuilt" not in again.stdout


def test_a_second_import_at_once_is_refused(db: Backend, tmp_path: Path) -> None:
    """One import at a time per archive (a file lock, released by a killed holder too)."""
    import fcntl
    import os

    root = tmp_path / "archive"
    root.mkdir()
    fd = os.open(root / ".import.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        done = run_import(env_for(db, root), str(write_ndjson(tmp_path / "a.ndjson", history(3))))
        assert done.returncode == 1
        assert "another import into this archive is running" in done.stderr
    finally:
        os.close(fd)
    done = run_import(env_for(db, root), str(tmp_path / "a.ndjson"))
    assert "accepted 3, duplicate 0" in done.stdout, done.stdout
