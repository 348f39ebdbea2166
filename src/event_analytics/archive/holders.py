"""Which hour files can hold some users' events: the erasure's pre-pass, before any parsing.

An erasure used to read and test every line of every hour file. Most hours hold none of
the users, so it first asks, per hour, the cheapest question that can only err towards
"maybe":

- An hour with a valid Parquet copy (``compact.covered``): DuckDB reads the copies'
  ``user_id`` column (one query for all of them; the values there are the decoded ids,
  compared exactly); lines appended after the copy (its JSONL tail) are searched as below.
- Any other hour, or a tail: its bytes are searched for each user's ``record.user_field``,
  the exact bytes the codec writes for that id (JSON escaping included). A line without
  them cannot be that user's event (``record.archive_line`` re-encodes a line that would
  lack them). A hit may still be no event of theirs (the bytes in a payload): the caller
  parses the hour and the codec decides.

A copy DuckDB cannot read is not trusted: its hour is searched as JSONL instead.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from event_analytics.archive import compact, record
from event_analytics.archive.files import ArchiveFile

_CHUNK = 8 << 20  # bytes searched at a time: memory stays flat for any hour's size
# Past this many users one pass extracting every user field beats one search per user.
_MANY = 16
# A canonical user field: the codec's key, then a JSON string (escapes included).
_KEY = b'"user_id":'
_FIELD = re.compile(rb'"user_id":("(?:[^"\\]|\\.)*")')


@dataclass(frozen=True, slots=True)
class Needles:
    """Some users' fields as the codec writes them, ready to search bytes for."""

    fields: tuple[bytes, ...]
    strings: frozenset[bytes]  # the JSON strings alone (the many-users pass)

    @classmethod
    def of(cls, users: Collection[str]) -> Needles:
        fields = tuple(record.user_field(u) for u in sorted(users))
        return cls(fields, frozenset(f.removeprefix(_KEY) for f in fields))

    def found_in(self, data: bytes) -> bool:
        if len(self.fields) <= _MANY:
            return any(f in data for f in self.fields)
        return any(m.group(1) in self.strings for m in _FIELD.finditer(data))


def jsonl_holds(path: Path, needles: Needles, start: int = 0) -> bool:
    """Whether the bytes of ``path`` from ``start`` (a line's start) on contain one of
    the fields (a missing file holds nothing)."""
    keep = max(len(f) for f in needles.fields) - 1
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            tail = b""
            while chunk := handle.read(_CHUNK):
                data = tail + chunk
                if needles.found_in(data):
                    return True
                # Search on from the last partial line's start: a field may straddle
                # two chunks, and the many-users pattern must start on a line's start.
                cut = data.rfind(b"\n") + 1
                tail = data[cut:] if len(data) - cut <= _CHUNK else data[-keep:]
    except FileNotFoundError:
        return False
    return False


def _parquet_holders(copies: dict[Path, ArchiveFile], users: Collection[str]) -> set[Path] | None:
    """The copies (by path) with a row of some user; None if DuckDB could not read them."""
    if not copies:
        return set()
    connection = duckdb.connect(config={"threads": 1, "memory_limit": "256MB"})
    try:
        rows = connection.execute(
            "SELECT DISTINCT filename FROM read_parquet($files, filename = true) "
            "WHERE user_id IN (SELECT unnest($users))",
            {"files": [str(p) for p in copies], "users": sorted(users)},
        ).fetchall()
    except duckdb.Error:
        return None
    finally:
        connection.close()
    return {Path(row[0]) for row in rows}


def hours_holding(found: Sequence[ArchiveFile], users: Collection[str]) -> list[ArchiveFile]:
    """The files of ``found`` that can hold an event of ``users`` (a superset of those
    that do), in ``found``'s order."""
    if not users:
        return []
    needles = Needles.of(users)
    maybe: set[Path] = set()
    copies: dict[Path, ArchiveFile] = {}
    for f in found:
        covered = compact.covered(f.path)
        if covered is None:
            if jsonl_holds(f.path, needles):
                maybe.add(f.path)
            continue
        copies[compact.parquet_path(f.path)] = f
        size = 0
        with contextlib.suppress(FileNotFoundError):
            size = f.path.stat().st_size
        if size > covered.jsonl_bytes and jsonl_holds(f.path, needles, covered.jsonl_bytes):
            maybe.add(f.path)
    held = _parquet_holders(copies, users)
    if held is None:  # unreadable copies: their JSONL decides
        maybe.update(f.path for f in copies.values() if jsonl_holds(f.path, needles))
    else:
        maybe.update(copies[p].path for p in held if p in copies)
    return [f for f in found if f.path in maybe]
