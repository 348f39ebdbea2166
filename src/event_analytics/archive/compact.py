"""Parquet copies of hour files, used only where they provably hold the same events.

``compact`` writes ``events_…-HH.parquet`` beside an hour's JSONL from its complete
lines, then checks the copy against the JSONL itself (event count and a checksum of the
event ids, read from the JSONL by plain Python, not DuckDB) and records the JSONL's
inode and byte length it covers in ``events_…-HH.parquet.json``. Besides the record's
columns a copy holds the columns derived from each event (``derived.DERIVED``, computed
by the same SQL the JSONL read runs), and its record says which list (``schema``).
The JSONL stays the source of truth: a copy is read only while that record still matches
the JSONL's inode, and covers at most its length; lines appended after it (late events)
are read from the JSONL, so a grown hour is still answered exactly.

One compaction of an hour at a time (an flock on ``events_…-HH.parquet.lock``): two
archivers, or an archiver and ``event-analytics compact``, never write one copy at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from event_analytics.archive import derived
from event_analytics.archive import record as codec
from event_analytics.archive.files import event_id_of, list_files

# The archive record as DuckDB reads it (the codec's column list).
COLUMNS = dict(codec.COLUMNS)


def parquet_path(jsonl: Path) -> Path:
    return jsonl.with_suffix(".parquet")


def _record_path(jsonl: Path) -> Path:
    return jsonl.with_suffix(".parquet.json")


@contextlib.contextmanager
def _hour_lock(jsonl: Path) -> Iterator[None]:
    fd = os.open(jsonl.with_suffix(".parquet.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close, or by the kernel on a crash
        yield
    finally:
        os.close(fd)


def checksum(ids: list[str] | None = None) -> tuple[int, int]:
    """(count, sum of the first 8 bytes of each id's SHA-256, mod 2**64)."""
    total = 0
    for event_id in ids or []:
        total += int.from_bytes(hashlib.sha256(event_id.encode()).digest()[:8], "big")
    return len(ids or []), total % 2**64


@dataclass(frozen=True, slots=True)
class Covered:
    """What a Parquet copy holds: the first ``jsonl_bytes`` of the JSONL with ``inode``,
    whose first line hashes to ``head`` (an inode number is reused once a file is deleted:
    a recreated hour file must not pass for the one that was compacted)."""

    inode: int
    jsonl_bytes: int
    events: int
    checksum: int
    head: str
    # derived.SCHEMA_VERSION when written; a record without it is of a version-1 copy.
    schema: int = 1


def _head(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _first_line(jsonl: Path) -> bytes:
    with jsonl.open("rb") as handle:
        return handle.readline(_MAX_LINE)


# The longest line the archive writes is far below this; readline stops here regardless.
_MAX_LINE = 1 << 20


def covered(jsonl: Path) -> Covered | None:
    """The record of a valid copy of ``jsonl``, or None (then read the JSONL)."""
    try:
        raw = json.loads(_record_path(jsonl).read_text())
        record = Covered(**raw)
        stat = jsonl.stat()
    except (OSError, ValueError, TypeError):
        return None
    if record.inode != stat.st_ino or record.jsonl_bytes > stat.st_size:
        return None
    try:
        if _head(_first_line(jsonl)) != record.head:
            return None
    except OSError:
        return None
    if not parquet_path(jsonl).exists():
        return None
    return record


def _jsonl_prefix(jsonl: Path) -> tuple[int, list[str], str]:
    """The complete-line prefix length of ``jsonl``, its event ids and its first line's
    hash, in one pass."""
    ids: list[str] = []
    length = 0
    head = ""
    with jsonl.open("rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            if not ids:
                head = _head(line)
            ids.append(event_id_of(line))
            length += len(line)
    return length, ids, head


def compact(jsonl: Path, crash_point: Callable[[str], None] | None = None) -> Covered | None:
    """Write and check the Parquet copy of ``jsonl``'s complete lines; None if none.

    An hour with a valid copy is left alone: a copy in use is never replaced (a query
    that chose it reads the copy it chose); lines appended since are its JSONL tail.
    ``crash_point`` is the archiver's fault injection (its crash tests die there).
    """
    with _hour_lock(jsonl):
        return _compact(jsonl, crash_point or (lambda _point: None))


def _compact(jsonl: Path, crash_point: Callable[[str], None]) -> Covered | None:
    existing = covered(jsonl)
    if existing is not None:
        return existing
    # No record while the copy is being replaced: a crash leaves the JSONL in use.
    _record_path(jsonl).unlink(missing_ok=True)
    length, ids, head = _jsonl_prefix(jsonl)
    if not ids:
        return None
    inode = jsonl.stat().st_ino
    target = parquet_path(jsonl)
    scratch = target.with_suffix(".parquet.tmp")
    prefix = jsonl.with_suffix(".prefix.tmp")
    with jsonl.open("rb") as src, prefix.open("wb") as out:
        out.write(src.read(length))
    connection = _connection()
    try:
        connection.execute(
            f"COPY (SELECT *, {derived.select_sql()} FROM (SELECT event_id, user_id, "
            '"timestamp", event_type, payload, received_at, '
            "payload->>'page_url' AS page_url FROM read_json($path, format='newline_delimited', "
            "columns=$columns))) TO '" + str(scratch).replace("'", "''") + "' (FORMAT parquet)",
            {"path": str(prefix), "columns": COLUMNS},
        )
        stored = [
            row[0]
            for row in connection.execute(
                "SELECT event_id FROM read_parquet($p)", {"p": str(scratch)}
            ).fetchall()
        ]
    finally:
        connection.close()
        prefix.unlink(missing_ok=True)
    want = checksum(ids)
    if checksum(stored) != want:
        scratch.unlink(missing_ok=True)
        raise ValueError(f"{jsonl}: the Parquet copy differs from the JSONL; not used")
    with scratch.open("rb") as handle:
        os.fsync(handle.fileno())
    crash_point("compact_written")
    os.replace(scratch, target)
    crash_point("compact_renamed")
    record = Covered(
        inode=inode,
        jsonl_bytes=length,
        events=want[0],
        checksum=want[1],
        head=head,
        schema=derived.SCHEMA_VERSION,
    )
    staged = jsonl.with_suffix(".parquet.json.tmp")
    staged.write_text(json.dumps(asdict(record)))
    os.replace(staged, _record_path(jsonl))
    return record


_database: list[duckdb.DuckDBPyConnection] = []  # the process's one, once opened
_database_lock = threading.Lock()


def _connection() -> duckdb.DuckDBPyConnection:
    """A connection of its own (a cursor) to the process's one DuckDB database for
    copies, on one thread (compaction runs beside the archive's writes). Opening a
    database costs ~20 ms of CPU, as much as copying a small hour; a cursor ~0.2 ms.
    Nothing is kept in it between copies: each is a COPY from a file to a file."""
    with _database_lock:
        if not _database:
            database = duckdb.connect(config={"threads": 1})
            database.execute("SET GLOBAL TimeZone = 'UTC'")  # every cursor's, set once
            _database.append(database)
        return _database[0].cursor()


def uncompacted(root: Path, before: datetime) -> list[Path]:
    """The hour files that ended by ``before`` and have no valid copy, oldest first."""
    return [
        found.path
        for found in list_files(root, None, before - timedelta(hours=1))
        if covered(found.path) is None
    ]


def compact_closed(root: Path, before: datetime) -> tuple[int, int]:
    """Compact every hour that ended before ``before``; (hours compacted, events in them)."""
    hours = events = 0
    for path in uncompacted(root, before):
        record = compact(path)
        if record is not None:
            hours += 1
            events += record.events
    return hours, events
