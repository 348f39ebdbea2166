"""archive/erase.py on real files: the rewrite against a model of the lines (Hypothesis),
the Parquet copy replaced, a writer waiting for the lock reopening the new file, and a
SIGKILL at each point of the rewrite leaving the old hour or the new one, whole."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_analytics.archive import compact, erase, files
from event_analytics.archive.record import Record, encode
from event_analytics.faults import ERASE_POINTS
from tests.helpers import wait_for

HOUR = datetime(2026, 11, 27, 13, tzinfo=UTC)


def line(user: str, n: int, hour: datetime = HOUR) -> bytes:
    rec = Record(
        uuid.UUID(int=n + 1),
        user,
        hour + timedelta(seconds=n % 3600),
        "page_view",
        {"page_url": f"https://a.example/{n % 3}"},
        hour,
    )
    return encode(rec) + b"\n"


def write_hour(root: Path, lines: list[bytes], hour: datetime = HOUR) -> Path:
    path = files.hour_path(root, hour)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path


def parquet_users(path: Path) -> list[str]:
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT user_id FROM read_parquet($p)", {"p": str(compact.parquet_path(path))}
        ).fetchall()
    return sorted(r[0] for r in rows)


USERS = st.sampled_from(["alice", "bob", 'q"uote', "ünï", "u\\x", "alice2"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    users=st.lists(USERS, min_size=0, max_size=40),
    forget=st.sets(USERS, min_size=1, max_size=3),
    offset_line=st.integers(0, 40),
)
def test_rewrite_equals_the_model(
    tmp_path_factory: pytest.TempPathFactory,
    users: list[str],
    forget: set[str],
    offset_line: int,
) -> None:
    root = tmp_path_factory.mktemp("archive")
    lines = [line(u, i) for i, u in enumerate(users)]
    path = write_hour(root, lines)
    report = erase.erase(root, forget, crash=lambda _p: None)
    want = [ln for ln, u in zip(lines, users, strict=True) if u not in forget]
    assert path.read_bytes() == b"".join(want)
    assert report.removed == len(lines) - len(want)
    assert len(report.hours) == (1 if report.removed else 0)
    # A destination that delivered the first ``offset_line`` old lines maps its offset.
    k = min(offset_line, len(lines))
    old_offset = sum(len(ln) for ln in lines[:k])
    kept_before = [ln for ln, u in zip(lines[:k], users[:k], strict=True) if u not in forget]
    if report.hours:
        assert report.hours[0].new_offset(old_offset, k) == (
            sum(len(ln) for ln in kept_before),
            len(kept_before),
        )
    assert not list(path.parent.glob(".*erase-tmp"))


def test_parquet_copy_is_replaced_or_deleted(tmp_path: Path) -> None:
    a = write_hour(tmp_path, [line("alice", 1), line("bob", 2), line("alice", 3)])
    later = HOUR + timedelta(hours=1)
    only = write_hour(tmp_path, [line("alice", 4, later)], later)
    for path in (a, only):
        assert compact.compact(path) is not None
    assert "alice" in parquet_users(a)
    report = erase.erase(tmp_path, ["alice"], crash=lambda _p: None)
    assert report.removed == 3
    assert parquet_users(a) == ["bob"]
    assert compact.covered(a) is not None  # the new copy covers the new file
    assert only.read_bytes() == b""  # the hour stays, empty: never missing
    assert not compact.parquet_path(only).exists()
    assert not only.with_suffix(".parquet.json").exists()


def _lock_waiters(path: Path) -> int:
    """Processes blocked on a lock of ``path``'s inode (``/proc/locks``: "->" lines)."""
    inode = f":{os.stat(path).st_ino} "
    return sum(
        1 for row in Path("/proc/locks").read_text().splitlines() if "->" in row and inode in row
    )


def test_a_writer_waiting_for_the_lock_appends_to_the_new_file(tmp_path: Path) -> None:
    path = write_hour(tmp_path, [line("alice", 1), line("bob", 2)])
    appended = line("carol", 3)

    def writer() -> None:
        with files.locked(path) as fd:
            files.append(fd, appended)

    with files.locked(path):
        thread = threading.Thread(target=writer)
        thread.start()
        # Until the writer waits for the old file's lock (bounded).
        wait_for(lambda: _lock_waiters(path) > 0)
        # The erasure's rename, while the writer waits for the old file's lock.
        scratch = path.with_name("scratch")
        scratch.write_bytes(line("bob", 2))
        os.replace(scratch, path)
    thread.join(30)
    assert not thread.is_alive()
    assert path.read_bytes() == line("bob", 2) + appended


CHILD = """
import sys
from pathlib import Path
from event_analytics.archive import erase
erase.erase(Path(sys.argv[1]), sys.argv[2:])
"""


@pytest.mark.parametrize("point", ERASE_POINTS)
def test_sigkill_leaves_the_old_hour_or_the_new_one(tmp_path: Path, point: str) -> None:
    old = [line("alice" if i % 3 == 0 else f"u{i}", i) for i in range(300)]
    new = [ln for i, ln in enumerate(old) if i % 3 != 0]
    path = write_hour(tmp_path, old)
    assert compact.compact(path) is not None
    env = {**os.environ, "EA_ERASE_CRASH_AT": point}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), "alice"], env=env, timeout=120, check=False
    )
    assert done.returncode == -9
    found = path.read_bytes()
    assert found == b"".join(old if point == "erase_written" else new)
    if point == "erase_renamed":
        # The old copy is on disk, but no longer names the file: never read.
        assert compact.covered(path) is None
        assert erase.stale_copies(tmp_path) == [path]
    # The next run (no crash) finishes: no alice anywhere, nothing left behind.
    report = erase.erase(tmp_path, ["alice"], crash=lambda _p: None)
    assert path.read_bytes() == b"".join(new)
    assert report.removed == (100 if point == "erase_written" else 0)
    assert "alice" not in parquet_users(path)
    assert compact.covered(path) is not None
    assert not list(path.parent.glob(".*erase-tmp"))
    assert all(orjson.loads(ln)["user_id"] != "alice" for ln in path.read_bytes().splitlines())
