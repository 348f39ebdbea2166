"""Erasure and the PostgreSQL destination, on a real PostgreSQL server: a running
delivery notices an hour file rewritten under it (a new inode) and delivers the hour
again from the new file; ``forget`` with EA_POSTGRES_URL removes the rows itself, and
``verify --postgres`` then finds 0 differences."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
import pytest

from event_analytics.archive import erase
from tests.test_export import write
from tests.test_postgres import caught_up, cli, delivering, model, pg, pg_server, spread, table

__all__ = ["pg", "pg_server"]  # the fixtures, used by name
pytestmark = pytest.mark.slow


def test_delivery_notices_a_rewritten_hour(tmp_path: Path, pg: str) -> None:
    records = spread(300)
    root = tmp_path / "archive"
    write(root, records)
    with delivering(tmp_path, pg) as d:
        d.wait(caught_up, "not caught up")
        assert table(pg) == model(records)
        report = erase.erase(root, ["u3"], crash=lambda _p: None)
        kept = [r for r in records if r.user_id != "u3"]
        assert report.removed == len(records) - len(kept) > 0
        d.wait(lambda s: caught_up(s) and len(table(pg)) == len(kept), "rows not removed")
        assert table(pg) == model(kept)
        # New lines of a rewritten hour follow as before.
        more = spread(20, start=5000)
        write(root, more)
        d.wait(lambda s: caught_up(s) and len(table(pg)) == len(kept) + 20, "not delivered")
        assert table(pg) == model(kept + more)
    done = cli(tmp_path, pg, "verify", "--postgres")
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 differ" in done.stdout


def test_forget_removes_the_rows_and_verify_agrees(tmp_path: Path, pg: str) -> None:
    records = spread(200)
    write(tmp_path / "archive", records)
    synced = cli(tmp_path, pg, "sync", "--postgres", "--from", "2000-01-01", "--to", "2100-01-01")
    assert synced.returncode == 0, synced.stderr
    # A progress table made before inodes were recorded: forget upgrades it.
    with psycopg.connect(pg) as conn:
        conn.execute("ALTER TABLE ea_delivered DROP COLUMN inode")
    done = cli(tmp_path, pg, "forget", "u1", "u2")
    assert done.returncode == 0, done.stderr
    audit = orjson.loads(done.stdout)
    kept = [r for r in records if r.user_id not in ("u1", "u2")]
    assert audit["events_removed"] == audit["postgres_rows_removed"] == len(records) - len(kept)
    assert table(pg) == model(kept)
    checked = cli(tmp_path, pg, "verify", "--postgres")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert " 0 differ" in checked.stdout
