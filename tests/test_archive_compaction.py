"""The archiver compacts closed hours to Parquet by itself (EA_COMPACT, EA_COMPACT_AFTER_S),
with real archiver processes: answers over the copies equal those over the JSONL and the
model of what was written, and a SIGKILL mid-compaction leaves no copy that queries use.
"""

from __future__ import annotations

import random
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from event_analytics.analytics import funnel, query, retention
from event_analytics.analytics.pool import QueryEngine
from event_analytics.analytics.snapshot import hour_files
from event_analytics.analytics.spec import FunnelSpec, QuerySpec, RetentionSpec
from event_analytics.archive import files
from event_analytics.archive.compact import checksum, covered, parquet_path
from tests import analytics_model as model
from tests.backends import Backend
from tests.helpers import wait_for
from tests.servers import ArchiverProcess

pytestmark = pytest.mark.slow
ENGINE = QueryEngine(max_concurrent=1, timeout_s=60)
TYPES = ["view", "join", "buy"]
PAGES = ["https://shop.example/", "https://shop.example/pricing", "https://shop.example/blog"]
WAIT_S = 90.0


def iso(ts: datetime) -> str:
    return ts.isoformat()[:-6] + "Z"


def hours_ago(n: int) -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=n)


def records(first: datetime, hours: int, per_hour: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for h in range(hours):
        for _ in range(per_hour):
            ts = first + timedelta(hours=h, seconds=rng.randrange(3600))
            out.append(
                {
                    "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                    "user_id": f"u{rng.randrange(40)}",
                    "timestamp": iso(ts),
                    "event_type": rng.choice(TYPES),
                    "payload": {"page_url": rng.choice(PAGES), "n": rng.randrange(3)},
                    "received_at": iso(ts),
                }
            )
    return out


def bodies(first: datetime, hours: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    frm, to = first - timedelta(hours=1), first + timedelta(hours=hours + 1)
    q = {"date_range": [iso(frm), iso(to)], "metrics": ["events", "visitors"],
         "dimensions": ["event_type", "page_url"], "pagination": {"limit": 100}}  # fmt: skip
    steps = [{"event_type": t} for t in TYPES]
    f = {"from": iso(frm), "to": iso(to), "window_s": 3600, "steps": steps}
    r = {"from": iso(first), "to": iso(first + timedelta(hours=hours)), "period": "hour",
         "periods": 2, "cohort_event": {"event_type": "view"},
         "return_event": {"event_type": "buy"}}  # fmt: skip
    return q, f, r


def answers(root: Path, first: datetime, hours: int) -> tuple[Any, ...]:
    """The analytics answers over the archive (whatever copies it has)."""
    q, f, r = bodies(first, hours)
    now = datetime.now(UTC)
    got_q = query.run(ENGINE, QuerySpec.model_validate(q), root, now, now)
    got_f = funnel.run(ENGINE, FunnelSpec.model_validate(f), root, now)
    got_r = retention.run(ENGINE, RetentionSpec.model_validate(r), root, now)
    return (
        got_q["meta"]["total_rows"],
        got_q["results"],
        [s["users"] for s in got_f["steps"]],
        [(c["start"], c["values"]) for c in got_r["cohorts"]],
    )


def assert_model(
    got: tuple[Any, ...], recs: list[dict[str, Any]], first: datetime, hours: int
) -> None:
    q, f, _ = bodies(first, hours)
    frm, to = first - timedelta(hours=1), first + timedelta(hours=hours + 1)
    want = model.query(recs, q, frm, to)
    assert got[0] == want["total_rows"]
    assert got[1] == [
        {"dimensions": [model.iso_or(v) for v in w["dimensions"]], "metrics": w["metrics"]}
        for w in want["results"]
    ]
    want_f = model.funnel(recs, {**f, "from": frm.isoformat(), "to": to.isoformat()})
    assert got[2] == [s["users"] for s in want_f["steps"]]


def assert_copies_true(root: Path) -> int:
    """Every copy queries would use holds exactly its JSONL's first lines; how many."""
    used = 0
    for found in files.list_files(root):
        record = covered(found.path)
        if record is None:
            continue
        used += 1
        with found.path.open("rb") as handle:
            head = handle.read(record.jsonl_bytes)
        want = checksum([files.event_id_of(line) for line in head.splitlines(keepends=True)])
        ids = duckdb.sql(f"SELECT event_id FROM read_parquet('{parquet_path(found.path)}')")
        assert (
            checksum([row[0] for row in ids.fetchall()]) == want == (record.events, record.checksum)
        )
    return used


def closed(root: Path, first: datetime, hours: int) -> list[Path]:
    return [files.hour_path(root, first + timedelta(hours=h)) for h in range(hours)]


def test_archiver_compacts_closed_hours_and_answers_stay_the_same(
    db: Backend, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    first, hours = hours_ago(5), 3
    recs = records(first, hours, 300, seed=1)
    current = records(hours_ago(0), 1, 50, seed=2)  # this hour: still open, not compacted
    model.archive(root, recs + current)
    before = answers(root, first, hours)
    assert_model(before, recs, first, hours)
    with hour_files(root, first, first + timedelta(hours=hours)) as found:
        assert not found.parquet  # nothing compacted yet: the JSONL answers
    env = db.env | {"EA_ARCHIVE_DIR": str(root)}
    with ArchiverProcess(env, tmp_path / "archiver.log"):
        wait_for(
            lambda: all(covered(p) is not None for p in closed(root, first, hours)),
            WAIT_S,
            on_fail=lambda: sorted(p.name for p in root.rglob("*.parquet")),
        )
    assert covered(files.hour_path(root, hours_ago(0))) is None
    assert assert_copies_true(root) == hours
    with hour_files(root, first, first + timedelta(hours=hours)) as found:
        assert len(found.parquet) == hours and not found.jsonl  # the copies answer
    assert answers(root, first, hours) == before


@pytest.mark.parametrize("crash_at", ["compact_written", "compact_renamed"])
def test_sigkill_mid_compaction_leaves_no_copy_in_use_then_restart_compacts(
    db: Backend, tmp_path: Path, crash_at: str
) -> None:
    """Killed after the copy is written (temp name) or renamed into place (its record not
    yet written): no copy is used, answers are unchanged, and a restarted archiver
    compacts every closed hour."""
    root = tmp_path / "archive"
    first, hours = hours_ago(4), 2
    recs = records(first, hours, 400, seed=3)
    model.archive(root, recs)
    before = answers(root, first, hours)
    assert_model(before, recs, first, hours)
    env = db.env | {"EA_ARCHIVE_DIR": str(root)}
    crasher = ArchiverProcess(env | {"EA_ARCHIVER_CRASH_AT": crash_at}, tmp_path / "a1.log")
    assert crasher.proc.wait(timeout=WAIT_S) == -signal.SIGKILL  # died mid-compaction
    crasher.stop()
    # What the crash left: a copy under its temp name, or in place without its record.
    left = list(root.rglob("*.parquet.tmp" if crash_at == "compact_written" else "*.parquet"))
    assert left, sorted(p.name for p in root.rglob("*"))
    assert assert_copies_true(root) == 0
    assert answers(root, first, hours) == before
    with ArchiverProcess(env, tmp_path / "a2.log"):
        wait_for(
            lambda: all(covered(p) is not None for p in closed(root, first, hours)),
            WAIT_S,
            on_fail=lambda: sorted(p.name for p in root.rglob("*")),
        )
    assert assert_copies_true(root) == hours
    assert answers(root, first, hours) == before


def test_concurrent_compactions_of_one_hour_write_one_true_copy(tmp_path: Path) -> None:
    """Two archivers (or one and ``event-analytics compact``) on one hour: the per-hour
    lock lets one write the copy and the others find it valid."""
    from concurrent.futures import ThreadPoolExecutor

    from event_analytics.archive.compact import compact

    root = tmp_path / "archive"
    first = hours_ago(3)
    recs = records(first, 1, 2000, seed=4)
    model.archive(root, recs)
    before = answers(root, first, 1)
    (path,) = closed(root, first, 1)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: compact(path), range(4)))
    assert {r.events for r in results if r is not None} == {len(recs)}
    assert assert_copies_true(root) == 1
    assert answers(root, first, 1) == before


def test_a_copy_is_not_used_for_another_file_on_the_same_inode(tmp_path: Path) -> None:
    """An hour file deleted and written again may get the same inode number back; its old
    copy must not pass for it. Rewriting the file in place (same inode, at least as long)
    is that case made deterministic."""
    from event_analytics.archive.compact import compact

    root = tmp_path / "archive"
    first = hours_ago(3)
    model.archive(root, records(first, 1, 300, seed=5))
    (path,) = closed(root, first, 1)
    assert compact(path) is not None and covered(path) is not None
    other = tmp_path / "other"
    recs = records(first, 1, 400, seed=6)
    model.archive(other, recs)
    (replacement,) = closed(other, first, 1)
    with path.open("r+b") as handle:  # same inode, other events
        handle.write(replacement.read_bytes())
    assert covered(path) is None
    fresh = tmp_path / "fresh"
    model.archive(fresh, recs)
    assert answers(root, first, 1) == answers(fresh, first, 1)
