"""``event-analytics import``: history into the archive once by id, counters rebuilt.

Every run is the real command as a subprocess on the session's engines, into a real
archive directory; the archive is read back and compared with the model (the events
written to the import file). The live window is shortened (EA_MAX_AGE_S) so that the
imported "history" is still within minute retention and ``verify`` really compares it.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from event_analytics.archive import files, record
from event_analytics.keys import Keys
from tests.backends import Backend
from tests.helpers import cli
from tests.readback import archive_ids

HOUR = timedelta(hours=1)


def env_for(db: Backend, root: Path, prefix: str | None = None) -> dict[str, str]:
    """A key prefix of the test's own: the session's service archives (and trims) the
    default prefix's streams on this engine, and the import reads its stream's backlog."""
    return {**db.env, "EA_MAX_AGE_S": "3600", "EA_DEDUP_WINDOW_S": "3600",
            "EA_ARCHIVE_DIR": str(root),
            "EA_KEY_PREFIX": prefix or f"imp-{uuid.uuid4().hex[:8]}:"}  # fmt: skip


def settled_end() -> datetime:
    """The end of the day before yesterday (UTC): a day wholly older than the live window
    (one hour here), whatever the time of day; its events take the archive path."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1)


def history(n: int, hours: int = 4, start: datetime | None = None) -> list[dict[str, Any]]:
    """``n`` events spread over ``hours`` hours ending with a settled day (``settled_end``)."""
    first = start or settled_end() - timedelta(hours=hours)
    span = max(hours * 3600, 600)
    return [
        {
            "event_id": str(uuid.uuid4()),
            "user_id": f"u{i % 13}",
            "timestamp": (first + timedelta(seconds=i * span // n)).isoformat(),
            "event_type": "page_view" if i % 3 else "click",
            "payload": {"page_url": f"https://a.example/p{i % 5}", "country": "DE"},
        }
        for i in range(n)
    ]


def write_ndjson(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def run_import(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = cli(["import", *args], env)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    return done


def archived(root: Path) -> dict[str, record.Record]:
    out = {}
    for f in files.list_files(root):
        for line in files.read_lines([f.path]):
            rec = record.decode(line)
            assert files.hour_of(f.path) == rec.timestamp.replace(minute=0, second=0)
            out[str(rec.event_id)] = rec
    return out


def lines(root: Path) -> list[bytes]:
    return sorted(ln for f in files.list_files(root) for ln in files.read_lines([f.path]))


def same(rec: record.Record, sent: dict[str, Any]) -> bool:
    ts = datetime.fromisoformat(sent["timestamp"])
    return (rec.user_id, rec.timestamp, rec.event_type, rec.payload) == (
        sent["user_id"], ts, sent["event_type"], sent["payload"])  # fmt: skip


def test_ndjson_import_is_the_model_twice_changes_nothing_verify_agrees(
    db: Backend, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    env = env_for(db, root)
    events = history(600)
    # Some were archived already (ingested live long ago): they must stay single.
    live = [record.Record(uuid.UUID(e["event_id"]), e["user_id"],
                          datetime.fromisoformat(e["timestamp"]), e["event_type"], e["payload"],
                          datetime.now(UTC)) for e in events[:50]]  # fmt: skip
    for rec in live:
        path = files.hour_path(root, rec.timestamp.replace(minute=0, second=0))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as out:
            out.write(record.encode(rec) + b"\n")
    # ... and counted (the live path counted them as it streamed them): the import counts
    # what it appends on top of counters that agree with the archive.
    assert cli(["rebuild"], env).returncode == 0
    src = write_ndjson(tmp_path / "history.ndjson", events)
    done = run_import(env, str(src))
    assert done.returncode == 0, done.stderr
    assert "accepted 550, duplicate 50, rejected 0" in done.stdout
    assert "counted into the counters: 550" in done.stdout
    got = archived(root)
    assert set(got) == {e["event_id"] for e in events}
    assert all(same(got[e["event_id"]], e) for e in events)
    assert set(archive_ids(root).values()) == {1}
    before = {f.relative: f.path.read_bytes() for f in files.list_files(root)}
    again = run_import(env, str(src))
    assert "accepted 0, duplicate 600, rejected 0" in again.stdout
    assert {f.relative: f.path.read_bytes() for f in files.list_files(root)} == before
    checked = cli(["verify"], env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 differ" in checked.stdout
    assert f"{len(events)} events" in checked.stdout or "600" in checked.stdout


def test_export_csv_and_ndjson_round_trip(db: Backend, tmp_path: Path) -> None:
    env_a = env_for(db, tmp_path / "a")
    events = history(200)
    assert run_import(env_a, str(write_ndjson(tmp_path / "h.ndjson", events))).returncode == 0
    first, last = min(e["timestamp"] for e in events), max(e["timestamp"] for e in events)
    span = ["--from", first, "--to", (datetime.fromisoformat(last) + HOUR).isoformat()]
    for fmt in ("csv", "ndjson"):
        out = tmp_path / f"out.{fmt}"
        exported = cli(["export", *span, "--format", fmt, "--output", str(out)], env_a)
        assert exported.returncode == 0, exported.stderr
        db.flush()
        root_b = tmp_path / f"b-{fmt}"
        done = run_import(env_for(db, root_b), str(out))
        assert "accepted 200, duplicate 0, rejected 0" in done.stdout, done.stdout
        # Byte for byte: our records keep their received_at through export and import.
        assert lines(root_b) == lines(tmp_path / "a")


def test_segment_file(db: Backend, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    ts = settled_end() - timedelta(hours=3)
    messages = [
        {"type": "track", "event": "Signed Up", "userId": "u1", "messageId": "m-1",
         "timestamp": ts.isoformat(), "sentAt": datetime.now(UTC).isoformat(),
         "properties": {"plan": "pro"}},
        {"type": "page", "anonymousId": "a2", "messageId": "m-2", "timestamp": ts.isoformat(),
         "context": {"page": {"url": "https://a.example/x"}}},
        {"type": "identify", "userId": "u3", "messageId": "m-3", "timestamp": ts.isoformat()},
        {"type": "track", "userId": "u4", "messageId": "m-4", "timestamp": ts.isoformat()},
        {"type": "page", "anonymousId": "a5", "messageId": "m-5"},
    ]  # fmt: skip
    src = write_ndjson(tmp_path / "segment-archive.json", messages)
    done = run_import(env_for(db, root), "--format", "segment", str(src))
    assert done.returncode == 0, done.stderr
    assert "accepted 3, duplicate 0, rejected 2" in done.stdout
    assert "rejected missing_event: 1" in done.stdout
    assert "rejected missing_timestamp: 1" in done.stdout
    assert "segment-archive.json:4: missing_event" in done.stdout
    got = archived(root)
    assert len(got) == 3
    # The message's own time, not corrected by sentAt (which is the upload's, not the event's).
    assert {r.timestamp for r in got.values()} == {ts}
    again = run_import(env_for(db, root), "--format", "segment", str(src))
    assert "accepted 0, duplicate 3, rejected 2" in again.stdout


def test_bad_lines_are_counted_with_line_and_reason(db: Backend, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    good = history(2)
    future = {**good[0], "event_id": str(uuid.uuid4()),
              "timestamp": (datetime.now(UTC) + timedelta(days=2)).isoformat()}  # fmt: skip
    ancient = {**good[0], "event_id": str(uuid.uuid4()), "timestamp": "1970-01-01T00:00:00Z"}
    lines = [
        orjson.dumps(good[0]),
        b"{not json",
        b"[1, 2]",
        orjson.dumps({**good[1], "event_id": "../../etc/passwd"}),
        orjson.dumps(future),
        orjson.dumps(ancient),
        b"",
        orjson.dumps(good[1]),
        b"x" * (2 << 20),
    ]
    src = tmp_path / "bad.ndjson"
    src.write_bytes(b"\n".join(lines) + b"\n")
    done = run_import(env_for(db, root), str(src))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "accepted 2, duplicate 0, rejected 6" in out
    for where in ("bad.ndjson:2: malformed_json", "bad.ndjson:3: invalid_line",
                  "bad.ndjson:5: timestamp_in_future", "bad.ndjson:6: timestamp_too_old",
                  "bad.ndjson:9: line_too_long"):  # fmt: skip
        assert where in out, out
    assert "bad.ndjson:4: " in out
    assert not (tmp_path / "etc").exists()
    assert set(archived(root)) == {good[0]["event_id"], good[1]["event_id"]}
    # A CSV without the needed columns, and one with a ragged row.
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("event_id,user_id\n1,2\n")
    done = run_import(env_for(db, root), str(bad_csv))
    assert "rejected missing_columns: 1" in done.stdout
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow(["event_id", "user_id", "timestamp", "event_type"])
    w.writerow([good[0]["event_id"], "u", good[0]["timestamp"]])
    bad_csv.write_text(rows.getvalue())
    done = run_import(env_for(db, root), str(bad_csv))
    assert "bad.csv:2: malformed_csv" in done.stdout


def test_kill_9_halfway_then_again_gives_every_event_once(db: Backend, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    env = env_for(db, root)
    # Some 9 MB of hour files: the kill lands after the first 1 MB, well before the end
    # (150,000 events, 34 MB, made the rerun and verify most of the file's time).
    events = history(40_000, hours=48)
    src = write_ndjson(tmp_path / "big.ndjson", events)
    proc = subprocess.Popen(
        [sys.executable, "-m", "event_analytics", "import", str(src)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # Kill once it has written some but (most likely) not all: the first hour files.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(f.size_bytes for f in files.list_files(root)) > 1_000_000:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = archive_ids(root)
    assert partial, "the import wrote nothing before the kill"
    assert set(partial.values()) == {1}
    done = run_import(env, str(src))
    assert done.returncode == 0, done.stderr
    ids = archive_ids(root)
    assert ids == Counter({e["event_id"]: 1 for e in events})
    assert f"accepted {len(events) - len(partial)}, duplicate {len(partial)}" in done.stdout
    checked = cli(["verify"], env)
    assert checked.returncode == 0 and "0 differ" in checked.stdout, checked.stdout


def test_live_window_events_go_through_live_dedup(db: Backend, tmp_path: Path) -> None:
    """Events younger than the live window take the live path: the stream (the archiver
    writes them) and the live dedup memory, so importing them again, or a live resend,
    is a duplicate; none is written straight into an hour file."""
    root = tmp_path / "archive"
    # A prefix of its own: the session's service (its archiver) runs on this engine with
    # the default one and would archive and trim this stream while the test reads it.
    prefix = "import-live:"
    env = env_for(db, root) | {"EA_KEY_PREFIX": prefix}
    recent = history(40, hours=0, start=datetime.now(UTC) - timedelta(minutes=20))
    old = history(10)
    src = write_ndjson(tmp_path / "mixed.ndjson", recent + old)
    done = run_import(env, str(src))
    assert "accepted 50, duplicate 0, rejected 0" in done.stdout, done.stdout
    assert set(archive_ids(root)) == {e["event_id"] for e in old}
    keys = Keys(prefix, db.shards)
    with db.client() as c:
        streamed = sum(int(c.xlen(keys.stream(s))) for s in range(keys.shards))
    assert streamed > 0  # a stream entry may carry several events: for the archiver
    again = run_import(env, str(src))
    assert "accepted 0, duplicate 50, rejected 0" in again.stdout, again.stdout


def test_import_into_a_compacted_hour_is_read_past_its_copy(db: Backend, tmp_path: Path) -> None:
    """A Parquet copy covers only the JSONL bytes it was made from: the events an import
    appends later are the JSONL tail past it, so a reader of copy + tail sees them all."""
    from event_analytics.archive import compact

    root = tmp_path / "archive"
    env = env_for(db, root)
    start = settled_end() - timedelta(hours=5)
    first, second = history(30, hours=0, start=start), history(20, hours=0, start=start)
    run_import(env, str(write_ndjson(tmp_path / "one.ndjson", first)))
    path = files.hour_path(root, start)
    made = compact.compact(path)
    assert made is not None and made.events == 30
    done = run_import(env, str(write_ndjson(tmp_path / "two.ndjson", first + second)))
    assert "accepted 20, duplicate 30, rejected 0" in done.stdout, done.stdout
    cover = compact.covered(path)
    assert cover is not None and cover.jsonl_bytes < path.stat().st_size
    with path.open("rb") as handle:
        handle.seek(cover.jsonl_bytes)
        tail = {files.event_id_of(line) for line in handle}
    assert tail == {e["event_id"] for e in second}


def test_an_erased_users_events_are_refused_on_both_paths(db: Backend, tmp_path: Path) -> None:
    """A user on the suppression list (``forget``) is not brought back by an import: old
    events (written straight into hour files) and live-window ones are rejected with
    user_erased; everyone else's are imported."""
    root = tmp_path / "archive"
    prefix = "import-erased:"  # its own: the session's service shares this engine
    env = env_for(db, root) | {"EA_KEY_PREFIX": prefix}
    recent = history(26, hours=0, start=datetime.now(UTC) - timedelta(minutes=20))
    old = history(39)
    keys = Keys(prefix, db.shards)
    with db.client() as c:
        c.sadd(keys.erased(keys.shard_of("u1")), "u1")
    src = write_ndjson(tmp_path / "mixed.ndjson", recent + old)
    done = run_import(env, str(src))
    gone = [e for e in recent + old if e["user_id"] == "u1"]
    assert 0 < len([e for e in old if e["user_id"] == "u1"]) < len(gone)
    assert f"accepted {65 - len(gone)}, duplicate 0, rejected {len(gone)}" in done.stdout, (
        done.stdout
    )
    assert f"rejected user_erased: {len(gone)}" in done.stdout, done.stdout
    assert "u1" not in {r.user_id for r in archived(root).values()}
