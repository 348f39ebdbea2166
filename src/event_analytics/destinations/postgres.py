"""PostgreSQL as a destination of the archive: the table, and exactly-once batches.

Every archived event becomes one row of ``ea_events``, partitioned by day of its UTC
timestamp (declarative range partitions, created when a day first gets a row). What
has been delivered is recorded per hour file in ``ea_delivered`` (bytes and lines from
the file's start) in the same transaction as the rows: a crash or a lost connection at
any instant leaves both or neither, so delivery resumes at the recorded offset with no
row lost or doubled. The rows go through a staging table and ``ON CONFLICT DO NOTHING``
on the primary key (event_id, ts) as well, so an event already in the table (a schema
that already held rows, a restored dump) is never written twice either.

The record names the file's inode too: an hour file rewritten by an erasure (a new
file renamed over the old one, archive/erase.py) is a new inode, so a delivery that
read the old one is refused by the check in its own transaction, and the hour is
delivered again whole from the new file (``resync``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO

import psycopg
from psycopg import sql

from event_analytics.archive import files, record
from event_analytics.archive.export import ENRICHED, row

log = logging.getLogger(__name__)
_PASSWORD = re.compile(r"://[^:/@]*:([^@]+)@")
TABLE = "ea_events"
PROGRESS = "ea_delivered"
# pg_advisory_xact_lock key: one writer of ea_events at a time (delivery and sync).
LOCK_KEY = 0x6561_6576  # "eaev"
Crash = Callable[[str], None]  # fault injection for the crash tests (delivery.py)
ROW_COLUMNS = ("event_id", "user_id", "ts", "received_at", "event_type", "site", "page",
               *ENRICHED, "payload")  # fmt: skip

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    event_id uuid NOT NULL,
    user_id text NOT NULL,
    ts timestamptz NOT NULL,
    received_at timestamptz,
    event_type text NOT NULL,
    site text,
    page text,
    {", ".join(f"{name} text" for name in ENRICHED)},
    payload jsonb NOT NULL,
    PRIMARY KEY (event_id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX IF NOT EXISTS {TABLE}_ts ON {TABLE} (ts);
CREATE INDEX IF NOT EXISTS {TABLE}_type_ts ON {TABLE} (event_type, ts);
CREATE TABLE IF NOT EXISTS {PROGRESS} (
    file text PRIMARY KEY,
    hour timestamptz NOT NULL,
    offset_bytes bigint NOT NULL,
    lines bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    inode bigint
);
"""
# A progress table made before the inode was recorded gains the column (NULL: unknown).
ADD_INODE = f"ALTER TABLE {PROGRESS} ADD COLUMN IF NOT EXISTS inode bigint"
# sum of the first 8 bytes of md5(id) as signed bigints: export.ids_checksum's sum.
ID_SUM = "sum(('x' || left(md5(event_id::text), 16))::bit(64)::bigint)"


@dataclass(frozen=True, slots=True)
class Progress:
    offset: int
    lines: int
    inode: int | None = None  # of the file delivered from (None: not recorded)


def connect(url: str, timeout_s: float = 5.0) -> psycopg.Connection[Any]:
    return psycopg.connect(url, connect_timeout=max(1, int(timeout_s)), autocommit=False)


def describe(exc: BaseException, url: str) -> str:
    """An error's text for logs and the status, without the URL or its password
    (libpq quotes a URL it cannot parse whole)."""
    text = " ".join(str(exc).split())  # libpq's messages span lines: one line here
    found = _PASSWORD.search(url)  # by hand: urlsplit raises on some URLs libpq quotes
    for secret, shown in ((url, "<EA_POSTGRES_URL>"), (found[1] if found else "", "***")):
        if secret:
            text = text.replace(secret, shown)
    return f"{type(exc).__name__}: {text}"[:500]


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the table, its indexes and the progress table if they are missing (no DDL
    when they exist: a database that takes no writes still tells how far delivery is)."""
    with conn.transaction():
        found = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM information_schema.columns "
            "WHERE table_name = %s AND column_name = 'inode')",
            (TABLE, PROGRESS, PROGRESS),
        ).fetchone()
    if found and found[0]:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(SCHEMA.encode())
        conn.execute(ADD_INODE.encode())


def progress(conn: psycopg.Connection[Any]) -> dict[str, Progress]:
    """What has been delivered, per hour file (its path relative to the archive root)."""
    with conn.transaction():
        rows = conn.execute(f"SELECT file, offset_bytes, lines, inode FROM {PROGRESS}").fetchall()
    return {file: Progress(offset, lines, inode) for file, offset, lines, inode in rows}


def _partition(conn: psycopg.Connection[Any], day: datetime) -> None:
    name = sql.Identifier(f"{TABLE}_{day:%Y%m%d}")
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
        ).format(
            name,
            sql.Identifier(TABLE),
            sql.Literal(day.isoformat()),
            sql.Literal((day + timedelta(days=1)).isoformat()),
        )
    )


def _stage(
    conn: psycopg.Connection[Any],
    lines: Iterable[bytes],
    crash: Crash | None = None,
    crash_at: int = 0,
) -> tuple[int, int]:
    """COPY the readable ones of ``lines`` into the staging table; (rows, unreadable).
    With ``crash``, it is called ("mid_copy") once ``crash_at`` rows are sent."""
    conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS ea_stage (LIKE {TABLE} INCLUDING DEFAULTS) "
        "ON COMMIT DELETE ROWS"
    )
    n = bad = 0
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in ROW_COLUMNS)
    with conn.cursor().copy(sql.SQL("COPY ea_stage ({}) FROM STDIN").format(columns)) as copy:
        for line in lines:
            try:
                rec = record.decode(line)
            except record.InvalidRecord:
                bad += 1  # never archived by the service; rebuild and verify skip it too
                continue
            if b"\\u0000" in line:
                rec.payload = _without_nul(rec.payload)
            copy.write_row(row(rec))
            n += 1
            if crash is not None and n == crash_at:
                crash("mid_copy")
    return n, bad


def _without_nul(value: Any) -> Any:
    """``value`` with each NUL character of its strings (keys too) replaced by U+FFFD:
    PostgreSQL stores no NUL in text or jsonb, and one such event must not stop delivery
    of all that follow. The archive keeps the original."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _insert(conn: psycopg.Connection[Any], hour: datetime) -> int:
    _partition(conn, hour.replace(hour=0))
    cur = conn.execute(f"INSERT INTO {TABLE} SELECT * FROM ea_stage ON CONFLICT DO NOTHING")
    return cur.rowcount


def deliver(
    conn: psycopg.Connection[Any],
    relative: str,
    hour: datetime,
    data: bytes,
    at: Progress,
    crash: Crash | None = None,
    inode: int | None = None,
) -> tuple[Progress, int] | None:
    """Deliver ``data`` (whole lines of the file ``relative``, inode ``inode``, from byte
    ``at.offset``) in one transaction with the new progress; None if the recorded
    progress is not ``at`` (another writer, a rewritten file, or a stale view): the
    caller re-reads it. Returns the new progress and the rows inserted (fewer than the
    lines if some were there already)."""
    lines = data.splitlines(keepends=True)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        found = conn.execute(
            f"SELECT offset_bytes, lines, inode FROM {PROGRESS} WHERE file = %s", (relative,)
        ).fetchone()
        recorded = Progress(*found) if found else Progress(0, 0)
        if recorded != at or (at.inode is not None and inode != at.inode):
            return None
        _stage(conn, lines, crash, len(lines) // 2 + 1)
        inserted = _insert(conn, hour)
        done = Progress(at.offset + len(data), at.lines + len(lines), inode)
        _record(conn, relative, hour, done)
        if crash is not None:
            crash("before_commit")
    if crash is not None:
        crash("after_commit")
    return done, inserted


def _record(conn: psycopg.Connection[Any], relative: str, hour: datetime, done: Progress) -> None:
    conn.execute(
        f"INSERT INTO {PROGRESS} (file, hour, offset_bytes, lines, inode) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (file) DO UPDATE SET "
        "offset_bytes = EXCLUDED.offset_bytes, lines = EXCLUDED.lines, "
        "inode = EXCLUDED.inode, updated_at = now()",
        (relative, hour, done.offset, done.lines, done.inode),
    )


def resync(conn: psycopg.Connection[Any], found: files.ArchiveFile, size: int) -> tuple[int, int]:
    """Make the hour's rows exactly the file's complete lines in its first ``size`` bytes
    (a settled size: delivery.settled_size), in one transaction:
    delete them, copy the file again, record it delivered. (rows removed, rows written).
    The file is streamed line by line: an hour file may be far larger than memory.
    The progress names the inode of the file read."""
    seen = [0, 0]  # bytes and lines copied: the progress to record

    def lines(handle: BinaryIO) -> Iterator[bytes]:
        for line in handle:
            if not line.endswith(b"\n") or seen[0] + len(line) > size:
                return  # a torn tail, or past the size listed: not yet
            seen[0] += len(line)
            seen[1] += 1
            yield line

    with found.path.open("rb") as handle, conn.transaction():
        inode = os.fstat(handle.fileno()).st_ino
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        removed = delete_hour(conn, found.hour)
        _stage(conn, lines(handle))
        inserted = _insert(conn, found.hour)
        _record(conn, found.relative, found.hour, Progress(seen[0], seen[1], inode))
    return removed, inserted


def delete_hour(conn: psycopg.Connection[Any], hour: datetime) -> int:
    cur = conn.execute(
        f"DELETE FROM {TABLE} WHERE ts >= %s AND ts < %s", (hour, hour + timedelta(hours=1))
    )
    return cur.rowcount


def snapshot(
    conn: psycopg.Connection[Any], start: datetime | None, end: datetime | None
) -> tuple[dict[str, Progress], dict[datetime, tuple[int, int]]]:
    """The progress record and, per UTC hour of [start, end), (rows, sum of the ids'
    hashes) in the table: both as of one instant (a delivery may commit meanwhile)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        done = conn.execute(f"SELECT file, offset_bytes, lines FROM {PROGRESS}").fetchall()
        rows = conn.execute(
            f"SELECT date_trunc('hour', ts), count(*), {ID_SUM} FROM {TABLE} "
            "WHERE (%s::timestamptz IS NULL OR ts >= %s) AND (%s::timestamptz IS NULL OR ts < %s) "
            "GROUP BY 1",
            (start, start, end, end),
        ).fetchall()
    sums = {hour: (count, int(total)) for hour, count, total in rows}
    return {file: Progress(offset, lines) for file, offset, lines in done}, sums


def forget_file(conn: psycopg.Connection[Any], hour: datetime) -> int:
    """Delete an hour that has no file in the archive (any more): its rows, its record."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(f"DELETE FROM {PROGRESS} WHERE hour = %s", (hour,))
        return delete_hour(conn, hour)
