"""Retention (EA_ARCHIVE_RETENTION_DAYS, expiry.py) on real servers: an engine of each
kind, a real PostgreSQL, the real archive files and their Parquet copies.

The model: the records written, each in its UTC hour; a pass deletes exactly the records
of the whole days before the horizon (now minus the limit, floored to a day), unless a day
is held back, and then that day and every later one stay. What stays must be what the
archive, PostgreSQL, the counters and the totals show, and ``verify`` finds no difference.
A kill -9 at each of the job's crash points leaves a state the next pass finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from benchmarks.pg import PostgresServer
from benchmarks.procs import free_port
from event_analytics.archive import compact, files, rebuild, record, verify
from event_analytics.config import SETTINGS_ENV, Settings
from event_analytics.destinations import postgres
from event_analytics.destinations.delivery import Delivery
from event_analytics.expiry import Expiry, Preview, Totals, horizon, read_totals
from event_analytics.store import IngestWriter
from event_analytics.timebucket import DAY, HOUR, Interval, floor
from tests.backends import Backend
from tests.inproc import in_process
from tests.test_postgres import model, pg_server, table

__all__ = ["pg_server"]  # the session's PostgreSQL, a fixture used by name

DAYS = 10


@pytest.fixture
def db(engine: Backend) -> Backend:
    """The emptied engine, under a key prefix of its own: the session's service (prefix
    ea:) may run beside these tests, and its archiver's heartbeat would change the keys
    the dry run's snapshot compares (CI failed so after test_alerts had started it)."""
    engine.flush()
    return Backend(engine.kind, engine.engine, prefix="expiry:")


@pytest.fixture
def pgdb(pg_server: PostgresServer) -> str:
    """A new, empty database's URL."""
    return pg_server.new_database()


# A test begun this close to the end of a UTC day waits for the next one: the expire and
# import commands read the real clock, so a test across midnight would see two horizons.
LAST_MINUTES = timedelta(minutes=3)


@pytest.fixture
def now() -> datetime:
    """Half past midnight (UTC) today: the time the passes are run at and the records are
    placed back from. The records then lie at the same hours of the same days before it
    whatever the hour the test runs, and so do the horizon and what a pass deletes (a NOW
    at the hour of the run, records every 5 hours back from it, moved the oldest day's
    hours with the clock: two tests failed so at some hours). The date is the real one,
    as the commands, run as processes, read the real clock."""
    real = datetime.now(UTC)
    midnight = floor(real, Interval.DAY) + DAY
    if midnight - real < LAST_MINUTES:
        time.sleep((midnight - real).total_seconds() + 1)
        real = datetime.now(UTC)
    return floor(real, Interval.DAY) + timedelta(minutes=30)


PAGE = {"page_url": "https://a.example/p1"}


def records_over(
    days: int, now: datetime, per_hour: int = 2, step_h: int = 5
) -> list[record.Record]:
    """Records every ``step_h`` hours over the ``days`` days before ``now`` (some hours of
    each day), a few users and pages, two event types."""
    out = []
    for h in range(step_h, days * 24, step_h):
        hour = floor(now - HOUR * h, Interval.HOUR)
        for i in range(per_hour):
            ts = hour + timedelta(minutes=7 * i + 1, seconds=h % 60)
            payload = {"page_url": f"https://a.example/p{(h + i) % 3}"}
            kind = "page_view" if i % 2 == 0 else "signup"
            out.append(record.Record(uuid.uuid4(), f"u{(h + i) % 5}", ts, kind, payload, ts))
    return out


def write(root: Path, records: list[record.Record]) -> None:
    for rec in records:
        path = files.hour_path(root, floor(rec.timestamp, Interval.HOUR))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as out:
            out.write(record.encode(rec) + b"\n")


def settings_for(db: Backend, tmp: Path, url: str | None, **more: object) -> Settings:
    return db.settings(
        key_prefix=db.prefix, data_dir=tmp / "data", archive_dir=tmp / "archive",
        postgres_url=url, archive_retention_days=DAYS, **more,
    )  # fmt: skip


async def _with_store(settings: Settings, job: str, now: datetime | None = None) -> Totals | None:
    store = IngestWriter.from_settings(settings)
    try:
        if job == "rebuild":
            await rebuild.rebuild(settings, store, files.list_files(settings.archive_path))
            return None
        if job == "verify":
            differences: list[verify.Difference] = []
            found = files.list_files(settings.archive_path)
            await verify.verify(store, found, settings.minute_retention_s, differences)
            assert differences == []
            return None
        return await Expiry(settings, store).run_pass(now)
    finally:
        await store.close()


def setup(settings: Settings, records: list[record.Record]) -> None:
    """The archive, its counters (rebuilt from it), PostgreSQL delivered, some Parquet."""
    write(settings.archive_path, records)
    asyncio.run(_with_store(settings, "rebuild"))
    if settings.postgres_url:
        with postgres.connect(settings.postgres_url) as conn:
            postgres.ensure_schema(conn)
            for f in files.list_files(settings.archive_path):
                postgres.resync(conn, f, f.size_bytes)
    for f in files.list_files(settings.archive_path)[::3]:
        assert compact.compact(f.path) is not None


def expire(settings: Settings, now: datetime) -> Totals:
    done = asyncio.run(_with_store(settings, "expire", now))
    assert done is not None
    return done


def check(db: Backend, settings: Settings, records: list[record.Record], first_kept: datetime):
    """Everything equals the model of what stays: the records of days from ``first_kept``."""
    kept = [r for r in records if r.timestamp >= first_kept]
    gone = [r for r in records if r.timestamp < first_kept]
    root = settings.archive_path
    hours = {floor(r.timestamp, Interval.HOUR) for r in kept}
    assert {f.hour for f in files.list_files(root)} == hours
    # Nothing of a deleted hour is left: no Parquet copy, lock or empty directory.
    for path in root.rglob("*"):
        if path.is_file():
            stem = path.name.split(".")[0] + ".jsonl"
            hour = files.hour_of(path.with_name(stem))
            assert hour is not None and hour >= first_kept, path
        else:
            assert any(path.iterdir()), f"empty directory left: {path}"
    for day in sorted({floor(r.timestamp, Interval.DAY) for r in gone}):
        label = f"{day:%Y-%m-%d}"
        for pattern in (f":d:{label}:", f":h:{label}T", f":m:{label}T"):
            assert db.scan(f"{db.prefix}*{pattern}*") == [], (label, pattern)
    # The kept days' day counters are the model's (sum over shards).
    want = Counter((r.event_type, f"{r.timestamp:%Y-%m-%d}") for r in kept)
    with contextlib.closing(db.client(decode_responses=True)) as c:
        got = Counter[tuple[str, str]]()
        for name in db.scan(f"{db.prefix}*:d:*:count"):
            kind, _, label = name.split(":")[-4:-1]
            got[(kind, label)] += int(c.get(name) or 0)
    assert got == want
    asyncio.run(_with_store(settings, "verify"))
    if settings.postgres_url:
        assert table(settings.postgres_url) == model(kept)
        with psycopg.connect(settings.postgres_url) as conn:
            recorded = conn.execute(f"SELECT file FROM {postgres.PROGRESS}").fetchall()
        assert sorted(r[0] for r in recorded) == sorted(f.relative for f in files.list_files(root))


def test_whole_old_days_leave_the_archive_postgres_and_the_counters(
    db: Backend, tmp_path: Path, pgdb: str, now: datetime
) -> None:
    records = records_over(DAYS + 4, now)
    settings = settings_for(db, tmp_path, pgdb)
    setup(settings, records)
    first_kept = horizon(now, DAYS)
    assert first_kept == floor(now - timedelta(days=DAYS), Interval.DAY)
    gone = [r for r in records if r.timestamp < first_kept]
    assert gone and len(gone) < len(records)
    done = expire(settings, now)
    check(db, settings, records, first_kept)
    assert done.hours_deleted == len({floor(r.timestamp, Interval.HOUR) for r in gone})
    assert done.events_deleted == len(gone) == done.postgres_rows_deleted
    assert done.deleted_days == sorted({f"{r.timestamp:%Y-%m-%d}" for r in gone})
    assert done.held_back is None and done.horizon == f"{first_kept:%Y-%m-%dT%H:%M:%SZ}"
    # Kept across passes and processes (the file), and a second pass deletes nothing.
    again = expire(settings, now)
    assert (again.passes, again.hours_deleted, again.events_deleted) == (
        2, done.hours_deleted, done.events_deleted,
    )  # fmt: skip
    assert read_totals(settings) == again
    check(db, settings, records, first_kept)
    # A day later, one more day goes.
    later = expire(settings, now + DAY)
    check(db, settings, records, first_kept + DAY)
    assert later.deleted_days == [f"{first_kept:%Y-%m-%d}"]


def test_without_postgres_the_archive_and_counters_still_go(
    db: Backend, tmp_path: Path, now: datetime
) -> None:
    records = records_over(DAYS + 2, now)
    settings = settings_for(db, tmp_path, None)
    setup(settings, records)
    done = expire(settings, now)
    check(db, settings, records, horizon(now, DAYS))
    assert done.postgres_rows_deleted == 0 and done.events_deleted > 0


def _undelivered(
    settings: Settings, records: list[record.Record], index: int, now: datetime
) -> tuple[list[datetime], record.Record]:
    """``setup``, then a line appended (an import, say) to an hour of the ``index``-th day
    past the limit after that hour was delivered: not delivered yet. The days past the
    limit, and that line."""
    setup(settings, records)
    first_kept = horizon(now, DAYS)
    days = sorted({floor(r.timestamp, Interval.DAY) for r in records if r.timestamp < first_kept})
    late = records_over(1, now)[0]
    late.timestamp = days[index] + timedelta(hours=3, minutes=5)
    write(settings.archive_path, [late])
    asyncio.run(_with_store(settings, "rebuild"))
    return days, late


def test_an_undelivered_hour_holds_its_day_and_every_later_one(
    db: Backend, tmp_path: Path, pgdb: str, now: datetime
) -> None:
    records = records_over(DAYS + 4, now)
    settings = settings_for(db, tmp_path, pgdb)
    days, late = _undelivered(settings, records, 1, now)
    held, first_kept = days[1], horizon(now, DAYS)
    done = expire(settings, now)
    assert done.held_back is not None and "not delivered to PostgreSQL" in done.held_back
    assert done.deleted_days == [f"{days[0]:%Y-%m-%d}"]
    on_disk = [*records, late]
    assert {f.hour for f in files.list_files(settings.archive_path)} == {
        floor(r.timestamp, Interval.HOUR) for r in on_disk if r.timestamp >= held
    }
    # Once delivered, the next pass takes the day and the later ones too.
    with postgres.connect(pgdb) as conn:
        for f in files.list_files(settings.archive_path):
            postgres.resync(conn, f, f.size_bytes)
    expire(settings, now)
    check(db, settings, on_disk, first_kept)


def _snapshot(db: Backend, settings: Settings) -> tuple[object, ...]:
    """Everything a pass may change: the archive's files and sizes, every key of the
    engine with its type and size, the PostgreSQL rows and delivery records, the totals."""
    root = settings.archive_path
    on_disk = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))
    with contextlib.closing(db.client()) as c:  # bytes: some key names are not UTF-8
        keys = sorted(set(c.scan_iter(match=f"{db.prefix}*", count=1000)))
        values = [c.dump(k) for k in keys]
    rows: list[object] = []
    if settings.postgres_url:
        with psycopg.connect(settings.postgres_url) as conn:
            progress = conn.execute(f"SELECT * FROM {postgres.PROGRESS} ORDER BY 1").fetchall()
        rows = [table(settings.postgres_url), progress]
    return on_disk, keys, values, rows, read_totals(settings)


def test_a_dry_run_shows_what_a_pass_would_delete_and_deletes_nothing(
    db: Backend, tmp_path: Path, pgdb: str, now: datetime
) -> None:
    records = records_over(DAYS + 4, now)
    settings = settings_for(db, tmp_path, pgdb)
    # The third day old enough has a line not delivered yet: it and the later days stay.
    days, _ = _undelivered(settings, records, 2, now)
    held = days[2]
    before = _snapshot(db, settings)

    async def preview() -> Preview:
        store = IngestWriter.from_settings(settings)
        try:
            return await Expiry(settings, store).preview(now)
        finally:
            await store.close()

    seen = asyncio.run(preview())
    want = [
        (f"{day:%Y-%m-%d}", len({floor(r.timestamp, Interval.HOUR) for r in of_day}), len(of_day))
        for day in days[:2]
        if (of_day := [r for r in records if floor(r.timestamp, Interval.DAY) == day])
    ]
    assert seen.days == want
    assert seen.held_back is not None and seen.held_back.startswith(f"{held:%Y-%m-%d}: ")
    assert "not delivered to PostgreSQL" in seen.held_back
    assert seen.horizon == f"{held:%Y-%m-%dT%H:%M:%SZ}"
    assert _snapshot(db, settings) == before  # nothing deleted, no pass counted
    # The command says the same.
    shown = _expire_cli(settings, flag="--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        *(f"would delete {day}: {hours} hour files, {n} events" for day, hours, n in want),
        f"would delete {len(want)} days ({sum(w[1] for w in want)} hour files, "
        f"{sum(w[2] for w in want)} events); first day kept: {held:%Y-%m-%dT%H:%M:%SZ}",
        f"held back: {seen.held_back}",
    ]
    assert _snapshot(db, settings) == before
    # A pass deletes what the dry run showed.
    done = expire(settings, now)
    assert done.deleted_days == [w[0] for w in want]
    assert (done.hours_deleted, done.events_deleted) == (
        sum(w[1] for w in want), sum(w[2] for w in want),
    )  # fmt: skip


def test_a_locked_hour_and_a_stale_stream_hold_back(
    db: Backend, tmp_path: Path, now: datetime
) -> None:
    records = records_over(DAYS + 2, now)
    settings = settings_for(db, tmp_path, None)
    setup(settings, records)
    first_kept = horizon(now, DAYS)
    oldest = files.list_files(settings.archive_path)[0]
    # A writer holds the oldest hour's lock (the archiver or an import mid-append).
    with files.locked(oldest.path):
        done = expire(settings, now)
    assert done.held_back == f"{oldest.hour:%Y-%m-%d}: {oldest.relative} is being written"
    assert done.deleted_days == [] and oldest.path.exists()
    # What the retention alert watches: the hour held back is the oldest one left.
    assert done.oldest_hour == f"{oldest.hour:%Y-%m-%dT%H:%M:%SZ}"
    assert done.horizon == f"{oldest.hour:%Y-%m-%dT00:00:00Z}"
    # A stream entry received long ago may hold events of any day up to EA_MAX_AGE_S
    # before it: until it is archived, those days stay.
    # Received a minute past EA_MAX_AGE_S after the oldest hour began: the oldest event it
    # may carry falls in that hour, so in the oldest day whatever the hour (an hour past
    # it, as before, left the oldest day free when that hour was 23:00: failed at 20:40).
    received = oldest.hour + timedelta(seconds=settings.max_age_s, minutes=1)
    with contextlib.closing(db.client()) as c:
        c.xadd(db.keys().stream(0), {"e": b"-"}, id=f"{int(received.timestamp() * 1000)}-0")
    done = expire(settings, now)
    assert done.held_back is not None and "streams hold events" in done.held_back
    assert done.deleted_days == []
    with contextlib.closing(db.client()) as c:
        c.delete(db.keys().stream(0))
    expire(settings, now)
    check(db, settings, records, first_kept)


def test_retention_must_outlast_the_accepted_age() -> None:
    with pytest.raises(ValueError, match="must be longer than EA_MAX_AGE_S"):
        Settings(archive_retention_days=7)  # the default EA_MAX_AGE_S is 7 days
    assert Settings(archive_retention_days=8).archive_retention_days == 8
    assert Settings().archive_retention_days is None  # keep forever


def test_a_writer_that_opened_an_expired_file_writes_to_a_new_one(tmp_path: Path) -> None:
    """The expiry job unlinks an hour file under its lock; a writer that opened the name
    before and waited for the lock must not append to the unlinked file (lost lines)."""
    path = files.hour_path(tmp_path, datetime(2026, 1, 1, tzinfo=UTC))
    with files.locked(path) as held:
        os.write(held, b'{"x": 1}\n')
        done = threading.Event()

        def append() -> None:
            with files.locked(path) as fd:
                files.append(fd, b"late\n")
            done.set()

        writer = threading.Thread(target=append)
        writer.start()
        # Wait until the writer has the file open (then it waits for the lock).
        for _ in range(2000):
            if _open_count(path) >= 2:
                break
            done.wait(0.01)
        assert _open_count(path) >= 2, "the writer never opened the file"
        path.unlink()
    writer.join(timeout=60)
    assert done.is_set()
    assert path.read_bytes() == b"late\n"


def _open_count(path: Path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                n += 1
    return n


# -- kill -9 ------------------------------------------------------------------------------


def _cli(settings: Settings, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != SETTINGS_ENV}
    base |= {SETTINGS_ENV: settings.model_dump_json(), **env}
    return subprocess.run(
        [sys.executable, "-m", "event_analytics", *argv],
        env=base, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _expire_cli(
    settings: Settings, flag: str = "--once", **env: str
) -> subprocess.CompletedProcess[str]:
    return _cli(settings, "expire", flag, **env)


@contextlib.contextmanager
def _delivery(settings: Settings) -> Iterator[Delivery]:
    d = Delivery(settings)
    d._connect()
    try:
        yield d
    finally:
        d._close()


@pytest.mark.slow  # runs the expire command as a process, twice per point
@pytest.mark.parametrize("engine", ["valkey"], indirect=True)  # the steps are engine-blind
@pytest.mark.parametrize("point", ["after_counters", "after_postgres", "mid_files"])
def test_kill_9_at_each_point_then_the_next_pass_finishes(
    db: Backend, tmp_path: Path, pgdb: str, point: str, now: datetime
) -> None:
    records = records_over(DAYS + 3, now)
    # Two more hour files late on the oldest day: killed after its first file, the day
    # must keep files for verify to set aside (with one file only, as records every 5
    # hours gave it when the layout moved with the clock, from ~17:00 UTC on, the day had
    # nothing left to differ, so no note). The layout of ``now`` gives it more already;
    # these keep the premise if DAYS or the step change.
    first_day = floor(min(r.timestamp for r in records), Interval.DAY)
    for h in (22, 23):
        ts = first_day + timedelta(hours=h, minutes=30)
        records.append(record.Record(uuid.uuid4(), "u1", ts, "page_view", PAGE, ts))
    # Minute buckets kept past the limit: `verify` compares the minutes of the day killed in.
    settings = settings_for(db, tmp_path, pgdb, minute_retention_s=(DAYS + 5) * 86400)
    setup(settings, records)
    first_kept = horizon(now, DAYS)
    oldest = files.list_files(settings.archive_path)[0]
    killed = _expire_cli(settings, EA_EXPIRY_CRASH_AT=point)
    assert killed.returncode == -9, killed.stderr
    # `verify` leaves out the day being deleted (its counters, or its rows, are gone while
    # some of its files are not) and says so; everything else agrees.
    day = f"{oldest.hour:%Y-%m-%d}"
    for argv in (["verify"], ["verify", "--postgres"]):
        shown = _cli(settings, *argv)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert " 0 differ" in shown.stdout, shown.stdout
        noted = argv == ["verify"] or point != "after_counters"  # rows go after counters
        assert (f"differences in {day} not counted" in shown.stdout) == noted, shown.stdout
    # Killed within the oldest day: its files are there still (but the first at mid_files).
    assert oldest.path.exists() == (point != "mid_files")
    # The delivery process, running meanwhile, sends nothing again of the day.
    with _delivery(settings) as d:
        assert d._pass(threading.Event()) is False
    day_rows = [r for r in table(pgdb) if floor(r[1], Interval.DAY) == oldest.hour.replace(hour=0)]
    assert (day_rows == []) == (point != "after_counters")
    finished = _expire_cli(settings)
    assert finished.returncode == 0, finished.stderr
    assert "deleted days:" in finished.stdout
    totals = read_totals(settings)
    assert totals is not None and totals.expiring is None
    check(db, settings, records, first_kept)


def test_status_and_metrics_count_what_was_deleted(
    db: Backend, tmp_path: Path, now: datetime
) -> None:
    records = records_over(DAYS + 2, now)
    settings = settings_for(db, tmp_path, None)
    setup(settings, records)
    with in_process(settings, db.env) as svc:
        before = svc.http.get("/persistent/status").json()["retention"]
        assert before == {"days": DAYS, "passes": 0}
        metrics = svc.http.get("/metrics").text
        assert "ea_expiry_events_deleted_total 0.0" in metrics
        assert math.isnan(_metric(metrics, "ea_archive_oldest_hour_timestamp_seconds"))
        assert _metric(metrics, "ea_archive_retention_days") == DAYS
        done = expire(settings, now)
        status = svc.http.get("/persistent/status").json()["retention"]
        metrics = svc.http.get("/metrics").text
    gone = [r for r in records if r.timestamp < horizon(now, DAYS)]
    oldest = min(floor(r.timestamp, Interval.HOUR) for r in records if r not in gone)
    assert status["oldest_hour"] == f"{oldest:%Y-%m-%dT%H:%M:%SZ}" == done.oldest_hour
    assert _metric(metrics, "ea_archive_oldest_hour_timestamp_seconds") == oldest.timestamp()
    assert status["events_deleted"] == len(gone) == done.events_deleted
    assert status["hours_deleted"] == done.hours_deleted > 0
    assert status["days"] == DAYS and status["deleted_days"] == done.deleted_days
    assert f"ea_expiry_events_deleted_total {float(len(gone))}" in metrics
    assert f"ea_expiry_hours_deleted_total {float(done.hours_deleted)}" in metrics
    assert "ea_expiry_passes_total 1.0" in metrics


def _metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in a Prometheus exposition."""
    (value,) = [line.split()[1] for line in text.splitlines() if line.split(" ")[0] == name]
    return float(value)


def test_a_failed_pass_claims_no_horizon_and_shows_the_oldest_hour(
    db: Backend, tmp_path: Path, now: datetime
) -> None:
    """PostgreSQL unreachable: nothing is deleted, so no day is claimed as the first kept,
    and the oldest hour (the alert's figure) is the oldest on disk, past the limit."""
    records = records_over(DAYS + 2, now)
    settings = settings_for(db, tmp_path, None)
    setup(settings, records)
    down = settings.model_copy(update={"postgres_url": f"postgresql://127.0.0.1:{free_port()}/x"})
    with pytest.raises(psycopg.OperationalError):
        expire(down, now)
    failed = read_totals(settings)
    assert failed is not None and failed.last_error and failed.deleted_days == []
    assert failed.horizon is None
    oldest = min(floor(r.timestamp, Interval.HOUR) for r in records)
    assert oldest < horizon(now, DAYS)
    assert failed.oldest_hour == f"{oldest:%Y-%m-%dT%H:%M:%SZ}"
    # The next pass that gets through says the first day kept again.
    done = expire(settings, now)
    assert done.horizon == f"{horizon(now, DAYS):%Y-%m-%dT%H:%M:%SZ}" and done.last_error is None


def test_import_refuses_what_retention_would_delete(
    db: Backend, tmp_path: Path, now: datetime
) -> None:
    """An import past the limit would race the job deleting its day (the job's pass and
    the import's rebuild of that day's counters): it is refused with its own reason."""
    records = records_over(DAYS + 3, now)
    source = tmp_path / "history.ndjson"
    source.write_bytes(b"".join(record.encode(r) + b"\n" for r in records))
    first_kept = horizon(now, DAYS)
    env = {k: v for k, v in os.environ.items() if k != SETTINGS_ENV} | db.env
    env |= {"EA_ARCHIVE_DIR": str(tmp_path / "archive"), "EA_DATA_DIR": str(tmp_path / "data"),
            "EA_ARCHIVE_RETENTION_DAYS": str(DAYS)}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "event_analytics", "import", str(source)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    past = [r for r in records if r.timestamp < first_kept]
    assert past
    assert f"rejected past_retention: {len(past)}" in done.stdout
    assert f"the first day EA_ARCHIVE_RETENTION_DAYS={DAYS} keeps" in done.stdout
    # The days wholly older than the live window (importing.py's settled days): written
    # straight to the archive; the rest go through live ingest (no archiver runs here).
    live_from = floor(now - timedelta(days=7), Interval.DAY)
    direct = {floor(r.timestamp, Interval.HOUR) for r in records if first_kept <= r.timestamp}
    found = {f.hour for f in files.list_files(tmp_path / "archive")}
    assert {h for h in direct if h < live_from} <= found <= direct
