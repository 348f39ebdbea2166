"""The PostgreSQL destination on a real PostgreSQL server (one per session, a database
per test): delivery equals the archive, exactly once through kill -9 and a PostgreSQL
restart, a table that already has rows, verify naming tampered hours, sync idempotent.

The model is the archive as written (records through the record codec, as the archiver
writes them) or the events sent to the real service.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from benchmarks.pg import PostgresServer
from event_analytics.archive import files, record
from event_analytics.config import SETTINGS_ENV
from event_analytics.sites import site_of
from tests.helpers import event
from tests.servers import HTTP, ServiceProcess, stopped_after
from tests.test_alerts import DESTINATION_METRICS
from tests.test_export import make, write

pytestmark = pytest.mark.slow  # starts the service or delivery processes

WAIT_S = 120.0


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.init()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(AssertionError):
            server.stop("immediate")
        server.remove()


@pytest.fixture
def pg(pg_server: PostgresServer) -> str:
    """A new, empty database's URL."""
    return pg_server.new_database()


class Deliverer:
    """``event-analytics deliver`` as a subprocess."""

    def __init__(self, tmp: Path, url: str, **settings: str) -> None:
        self.data = tmp / "data"
        self.env = {k: v for k, v in os.environ.items() if k != SETTINGS_ENV} | {
            "EA_DATA_DIR": str(self.data), "EA_ARCHIVE_DIR": str(tmp / "archive"),
            "EA_POSTGRES_URL": url, **settings,
        }  # fmt: skip
        self.log = (tmp / "deliver.log").open("ab")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **more: str) -> Deliverer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "event_analytics", "deliver"], env=self.env | more,
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        return self

    def status(self) -> dict[str, Any]:
        try:
            found: dict[str, Any] = orjson.loads(
                (self.data / "destinations" / "postgres.json").read_bytes()
            )
        except (OSError, orjson.JSONDecodeError):
            return {}
        return found

    def wait(self, check: Any, what: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status()
            if check(status):
                return status
            assert time.monotonic() < deadline, f"{what}: {status}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@contextlib.contextmanager
def delivering(tmp: Path, url: str, **settings: str) -> Iterator[Deliverer]:
    d = Deliverer(tmp, url, **settings).start()
    try:
        yield d
    finally:
        d.stop()
        d.log.close()


def caught_up(status: dict[str, Any]) -> bool:
    return status.get("state") == "running" and status.get("events_behind") == 0


def table(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        return conn.execute(
            "SELECT event_id::text, ts, user_id, event_type, site, page, country, browser, "
            "payload, received_at FROM ea_events ORDER BY event_id"
        ).fetchall()


def model(records: list[record.Record]) -> list[tuple[Any, ...]]:
    return sorted(
        (str(r.event_id), r.timestamp, r.user_id, r.event_type, site_of(r.payload),
         r.payload.get("page_url"), r.payload.get("country"), r.payload.get("browser"),
         r.payload, r.received_at)
        for r in records
    )  # fmt: skip


def cli(
    tmp: Path, url: str, *args: str, archive: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != SETTINGS_ENV}
    env |= {"EA_ARCHIVE_DIR": str(archive or tmp / "archive"), "EA_DATA_DIR": str(tmp / "data"),
            "EA_POSTGRES_URL": url}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "event_analytics", *args], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def spread(n: int, hours: int = 30, start: int = 0) -> list[record.Record]:
    """``n`` records over ``hours`` hours (two UTC days), half of them tracker events."""
    return [make((start + i) * hours * 60 // max(n, 1) % (hours * 60), start + i, i % 2 == 0)
            for i in range(n)]  # fmt: skip


def test_delivery_equals_the_archive_and_verify_agrees(tmp_path: Path, pg: str) -> None:
    records = spread(300)
    write(tmp_path / "archive", records)
    with delivering(tmp_path, pg, EA_POSTGRES_BATCH_BYTES="20000") as d:
        d.wait(caught_up, "not caught up")
        assert table(pg) == model(records)
        # An open hour grows: the new lines follow.
        more = [make(29 * 60 + 30, 10_000 + i) for i in range(25)]
        write(tmp_path / "archive", more)
        d.wait(lambda s: caught_up(s) and len(table(pg)) == 325, "new lines not delivered")
        assert table(pg) == model(records + more)
        assert d.status()["events_already_there"] == 0
    with psycopg.connect(pg) as conn:
        partitions = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'ea_events'::regclass"
        ).fetchone()
    assert partitions == (2,)  # one per UTC day: 30 hours span two
    done = cli(tmp_path, pg, "verify", "--postgres")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compared 30 hours (325 delivered events); 0 differ" in done.stdout


@pytest.mark.parametrize("point", ["mid_copy", "before_commit", "after_commit"])
def test_kill_at_a_crash_point_then_restart_delivers_each_event_once(
    tmp_path: Path, pg: str, point: str
) -> None:
    records = spread(400)
    write(tmp_path / "archive", records)
    d = Deliverer(tmp_path, pg, EA_POSTGRES_BATCH_BYTES="30000")
    try:
        d.start(EA_POSTGRES_CRASH_AT=point)
        assert d.proc is not None and d.proc.wait(timeout=WAIT_S) == -signal.SIGKILL
        rows = len(table(pg))
        # Rows and progress together, or neither: the first batch's rows iff it committed.
        with psycopg.connect(pg) as conn:
            found = conn.execute("SELECT coalesce(sum(lines), 0) FROM ea_delivered").fetchone()
        assert found is not None and int(found[0]) == rows
        assert (rows > 0) == (point == "after_commit")
        d.start()
        status = d.wait(caught_up, "not caught up after the restart")
    finally:
        d.stop()
        d.log.close()
    assert table(pg) == model(records)
    # Nothing was sent twice: no row of the restarted run was already there.
    assert status["events_already_there"] == 0


def test_random_kill_9_under_delivery_loses_and_doubles_nothing(tmp_path: Path, pg: str) -> None:
    records = spread(3000)
    write(tmp_path / "archive", records)
    d = Deliverer(tmp_path, pg, EA_POSTGRES_BATCH_BYTES="8000")
    rng = random.Random(26)
    kills = 0
    try:
        for _ in range(6):
            d.start()
            d.wait(lambda s: s.get("state") == "running", "never ran")
            time.sleep(rng.uniform(0.05, 0.6))
            if d.proc is not None and d.proc.poll() is None:
                d.kill()
                kills += 1
        d.start()
        status = d.wait(caught_up, "not caught up after the kills")
    finally:
        d.stop()
        d.log.close()
    assert kills >= 3
    assert table(pg) == model(records)
    assert status["events_already_there"] == 0


def test_a_table_that_already_has_rows(tmp_path: Path, pg: str) -> None:
    records = spread(120, hours=6)
    write(tmp_path / "archive", records)
    # Someone loaded part of the history before: the table exists and holds 40 of the
    # archive's events, plus one the archive does not have, and no progress record.
    foreign = make(30, 99_999)
    with psycopg.connect(pg) as conn:
        _copy_in(conn, [*records[:40], foreign])
    with delivering(tmp_path, pg) as d:
        status = d.wait(caught_up, "not caught up")
    assert status["events_already_there"] == 40
    assert table(pg) == model([*records, foreign])
    # verify names the hour with the row the archive does not have; sync removes it.
    hour = foreign.timestamp.replace(minute=0, second=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    found = cli(tmp_path, pg, "verify", "--postgres")
    assert found.returncode == 1
    assert [ln.split()[0] for ln in found.stdout.splitlines()[:-1]] == [hour]
    assert "1 differ" in found.stdout
    fixed = cli(tmp_path, pg, "sync", "--postgres", "--from", hour, "--to", "2026-11-28")
    assert fixed.returncode == 0, fixed.stderr
    assert table(pg) == model(records)
    assert cli(tmp_path, pg, "verify", "--postgres").returncode == 0


def _copy_in(conn: psycopg.Connection[Any], records: list[record.Record]) -> None:
    from event_analytics.destinations import postgres

    postgres.ensure_schema(conn)
    with conn.transaction():
        postgres._stage(conn, [record.encode(r) + b"\n" for r in records])
        for day in {r.timestamp.replace(hour=0, minute=0, second=0) for r in records}:
            postgres._partition(conn, day)
        conn.execute("INSERT INTO ea_events SELECT * FROM ea_stage")


def test_verify_names_a_tampered_hour_and_sync_is_idempotent(tmp_path: Path, pg: str) -> None:
    records = spread(200, hours=10)
    write(tmp_path / "archive", records)
    with delivering(tmp_path, pg) as d:
        d.wait(caught_up, "not caught up")
    victim = records[17]
    hour = victim.timestamp.replace(minute=0, second=0)
    with psycopg.connect(pg) as conn:
        conn.execute("DELETE FROM ea_events WHERE event_id = %s", (victim.event_id,))
        other = records[55]
        conn.execute(  # same count, other id: only the checksum can tell
            "UPDATE ea_events SET event_id = %s WHERE event_id = %s",
            (uuid.uuid4(), other.event_id),
        )
    other_hour = other.timestamp.replace(minute=0, second=0)
    found = cli(tmp_path, pg, "verify", "--postgres")
    assert found.returncode == 1
    named = {ln.split()[0] for ln in found.stdout.splitlines()[:-1]}
    assert named == {h.strftime("%Y-%m-%dT%H:%M:%SZ") for h in (hour, other_hour)}
    args = ["sync", "--postgres", "--from", "2026-11-27T00:00Z", "--to", "2026-11-28T00:00Z"]
    assert cli(tmp_path, pg, *args).returncode == 0
    once = table(pg)
    assert once == model(records)
    again = cli(tmp_path, pg, *args)
    assert again.returncode == 0, again.stderr
    assert table(pg) == once
    assert cli(tmp_path, pg, "verify", "--postgres").returncode == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["sync", "--postgres"], "--from is required"),
        (["sync", "--postgres", "--from", "2026-11-28", "--to", "2026-11-27"], "later than"),
        (["sync", "--from", "2026-11-27", "--to", "2026-11-28"], "--postgres"),
    ],
)
def test_sync_bad_arguments_exit_2_with_one_line(
    tmp_path: Path, pg_server: PostgresServer, args: list[str], says: str
) -> None:
    done = cli(tmp_path, pg_server.url(), *args)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and says in done.stderr


def test_service_delivers_what_was_sent_through_a_postgres_restart(
    tmp_path: Path, pg_server: PostgresServer
) -> None:
    url = pg_server.new_database()
    now = datetime.now(UTC).replace(microsecond=0)
    env = {"EA_POSTGRES_URL": url}
    sent: list[dict[str, Any]] = []
    stop = threading.Event()
    with stopped_after(ServiceProcess(tmp_path / "data", env=env)) as svc:

        def send(n: int) -> None:
            batch = [event(user=f"u{i % 9}", ts=now - timedelta(minutes=i % 90),
                           url=f"https://a.example/p{i}") for i in range(n)]  # fmt: skip
            r = httpx.post(f"{svc.url}/events/batch", json={"events": batch}, timeout=30)
            assert r.status_code == 200, r.text
            sent.extend(batch)

        def load() -> None:
            while not stop.wait(0.05):
                send(20)

        def status() -> dict[str, Any]:
            found: dict[str, Any] = HTTP.get(f"{svc.url}/persistent/status", timeout=10).json()
            return found["destinations"]["postgres"] or {}

        def wait(check: Any, what: str) -> dict[str, Any]:
            deadline = time.monotonic() + WAIT_S
            while not check(got := status()):
                assert time.monotonic() < deadline, f"{what}: {got}"
                time.sleep(0.2)
            return got

        send(100)
        wait(lambda s: caught_up(s) and len(table(url)) == len(sent), "first batch")
        metrics = HTTP.get(f"{svc.url}/metrics", timeout=10).text
        assert 'ea_destination_lag_events{destination="postgres"} 0.0' in metrics
        assert 'ea_destination_up{destination="postgres"} 1.0' in metrics
        assert 'ea_destination_lag_seconds{destination="postgres"} 0.0' in metrics
        assert {ln.split("{")[0] for ln in metrics.splitlines()} >= DESTINATION_METRICS
        loader = threading.Thread(target=load)
        loader.start()
        try:
            time.sleep(0.5)
            pg_server.stop("immediate")
            try:
                # Ingest goes on; the delivery lags, says so, and waits.
                behind = wait(
                    lambda s: s.get("state") == "unreachable" and (s.get("events_behind") or 0) > 0,
                    "lag not shown",
                )
                assert behind["seconds_behind"] > 0
                metrics = HTTP.get(f"{svc.url}/metrics", timeout=10).text
                assert 'ea_destination_up{destination="postgres"} 0.0' in metrics
            finally:
                pg_server.start()
            time.sleep(1.0)
        finally:
            stop.set()
            loader.join(timeout=60)
        wait(lambda s: caught_up(s) and len(table(url)) == len(sent), "did not catch up")
    got = table(url)
    assert sorted(r[0] for r in got) == sorted(e["event_id"] for e in sent)
    assert len({r[0] for r in got}) == len(got)
    archive = tmp_path / "data" / "persistent_events"
    checked = cli(tmp_path / "cli", url, "verify", "--postgres", archive=archive)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_nul_in_a_payload_does_not_stop_delivery(tmp_path: Path, pg: str) -> None:
    # The API accepts NUL in payload strings; PostgreSQL stores none in text or jsonb.
    records = spread(20, hours=2)
    odd = make(10, 500)
    odd.payload = {**odd.payload, "note": "a\x00b", "k\x00": ["\x00"]}
    write(tmp_path / "archive", [*records[:10], odd, *records[10:]])
    with delivering(tmp_path, pg) as d:
        d.wait(caught_up, "stuck on the NUL")
    got = {r[0]: r for r in table(pg)}
    assert len(got) == 21
    clean = {k: v for k, v in odd.payload.items() if k != "k\x00"}
    assert got[str(odd.event_id)][8] == {**clean, "note": "a\ufffdb", "k\ufffd": ["\ufffd"]}
    assert cli(tmp_path, pg, "verify", "--postgres").returncode == 0


def test_a_refusing_database_shows_the_exact_lag_then_catches_up(
    tmp_path: Path, pg_server: PostgresServer
) -> None:
    url = pg_server.new_database()
    name = url.rsplit("/", 1)[1]
    records = spread(50, hours=3)
    write(tmp_path / "archive", records)
    with delivering(tmp_path, url) as d:
        d.wait(caught_up, "not caught up")
    more = [make(100 + i, 1000 + i) for i in range(25)]
    write(tmp_path / "archive", more)
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        with delivering(tmp_path, url) as d:
            blocked = d.wait(
                lambda s: s.get("state") == "blocked" and s.get("events_behind") == 25,
                "lag not shown",
            )
            assert blocked["seconds_behind"] > 0
            assert "read-only" in blocked["last_error"]
            admin.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
            d.wait(caught_up, "did not catch up by itself")
    assert table(url) == model(records + more)


@pytest.mark.parametrize(
    "url", ["postgresql://ea:s3cret-pw@[::1/db", "postgresql://ea:s3cret-pw@127.0.0.1:1/db"]
)
def test_errors_never_show_the_password(tmp_path: Path, url: str) -> None:
    done = cli(tmp_path, url, "verify", "--postgres")
    assert done.returncode == 1
    assert "s3cret-pw" not in done.stderr + done.stdout
    assert len(done.stderr.splitlines()) == 1 and "PostgreSQL: " in done.stderr
    with delivering(tmp_path, url) as d:
        status = d.wait(lambda s: s.get("last_error"), "no error shown")
    assert status["state"] in ("blocked", "unreachable")
    assert "s3cret-pw" not in status["last_error"]
    assert "s3cret-pw" not in (tmp_path / "deliver.log").read_text()


def test_a_write_still_under_the_archivers_lock_is_not_delivered(tmp_path: Path, pg: str) -> None:
    """An append the archiver may still cut back (it fails before its fsync) is not
    delivered: only bytes seen under a shared flock, as files.locked writes them."""
    records = spread(30, hours=2)
    root = tmp_path / "archive"
    write(root, records)
    path = sorted(root.glob("*/*/*/*.jsonl"))[-1]
    with delivering(tmp_path, pg) as d:
        d.wait(caught_up, "not caught up")
        with files.locked(path) as fd:
            before = os.fstat(fd).st_size
            extra = make(90, 7777)
            os.write(fd, record.encode(extra) + b"\n")  # complete, but not yet settled
            beat = d.status()["heartbeat"]
            # Two whole passes of the delivery while the archiver holds the file.
            for _ in range(2):
                beat = d.wait(lambda s, b=beat: s.get("heartbeat", 0) > b, "stalled")["heartbeat"]
            assert str(extra.event_id) not in {r[0] for r in table(pg)}
            os.ftruncate(fd, before)  # the failed append is cut back, as files.append does
        later = make(95, 8888)
        write(root, [later])
        d.wait(lambda s: caught_up(s) and len(table(pg)) == 31, "not caught up again")
    assert table(pg) == model([*records, later])
    assert cli(tmp_path, pg, "verify", "--postgres").returncode == 0
