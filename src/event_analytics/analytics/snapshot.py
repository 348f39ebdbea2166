"""The hour files a query reads, each cut to its complete lines.

Lines up to a file's last newline never change (the archiver only appends whole lines
and cuts back only a torn tail past the last newline), so a file ending in a newline is
read in place. A file that does not (a tail torn by a crashed archiver, or a line being
written this instant) is copied up to its last newline, and the copy is read instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from event_analytics.archive.compact import Covered, covered, parquet_path
from event_analytics.archive.derived import SCHEMA_VERSION
from event_analytics.archive.files import list_files
from event_analytics.timebucket import Interval, floor

_BLOCK = 1 << 16
_MARK = 4096  # bytes hashed at each end of a read prefix (``Read.mark``)


def _last_newline(fd: int, size: int) -> int:
    """The length of the file's complete-line prefix (0 when it has no newline)."""
    end = size
    while end > 0:
        start = max(0, end - _BLOCK)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def whole_lines(fd: int, size: int) -> int:
    """The complete-line prefix of a file of ``size`` bytes."""
    if size == 0:
        return 0
    return size if os.pread(fd, 1, size - 1) == b"\n" else _last_newline(fd, size)


def mark(fd: int, length: int) -> bytes:
    """A hash of the first and the last bytes of the prefix ``[0, length)``: with the inode
    and a size of at least ``length``, what says the prefix is still the one read (an
    inode number is reused once a file is deleted; compaction's record checks the first
    line likewise)."""
    n = min(_MARK, length)
    return hashlib.sha256(os.pread(fd, n, 0) + os.pread(fd, n, length - n)).digest()


@dataclass(frozen=True, slots=True)
class Read:
    """Of one hour file a query read: its JSONL's device and inode, the length of its
    complete lines whose events the query read for sure (from a copy or the JSONL; lines
    after it may have been read too), and the ``mark`` of that prefix. An inode of -1:
    what was read is not provably a prefix of this file (a copy of another inode)."""

    dev: int
    ino: int
    length: int
    mark: bytes


def copy_range(fd: int, start: int, end: int, target: Path) -> None:
    with target.open("wb") as out:
        offset = start
        while offset < end:
            sent = os.sendfile(out.fileno(), fd, offset, end - offset)
            if sent == 0:
                break
            offset += sent


@dataclass(slots=True)
class Sources:
    """What to read: Parquet copies (compact.py) and JSONL files or their tails.
    ``parquet`` copies hold the derived columns (``derived.SCHEMA_VERSION``);
    ``parquet_old`` ones, written before, only the record's (the reader derives the rest)."""

    parquet: list[str] = field(default_factory=list)
    jsonl: list[str] = field(default_factory=list)
    parquet_old: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Scan:
    """What a query over a range will read: files and their bytes, from the listing."""

    files: int
    bytes: int


def estimate(root: Path, start: datetime | None, end: datetime) -> Scan:
    """The files and bytes ``hour_files`` gives for ``[start, end)``, from the archive's
    listing and the copies' records (no file is opened but those): admission's cost."""
    first = floor(start, Interval.HOUR) if start is not None else None
    files = size = 0
    for found in list_files(root, first, end):
        copy = covered(found.path)
        done = 0
        if copy is not None:
            with contextlib.suppress(FileNotFoundError):
                size += parquet_path(found.path).stat().st_size
                files += 1
            done = copy.jsonl_bytes
        if found.size_bytes > done:  # a tail after the copy, or the whole JSONL
            files += 1
            size += found.size_bytes - done
    return Scan(files, size)


@contextlib.contextmanager
def hour_files(
    root: Path, start: datetime | None, end: datetime, reads: dict[str, Read] | None = None
) -> Iterator[Sources]:
    """The files to read for events with timestamps in ``[start, end)``; copies are
    removed after. ``reads`` is given each opened hour file's ``Read``."""
    first = floor(start, Interval.HOUR) if start is not None else None
    with tempfile.TemporaryDirectory(prefix="ea-query-") as scratch:
        out = Sources()
        for found in list_files(root, first, end):
            copy = covered(found.path)
            try:
                fd = os.open(found.path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                stat = os.fstat(fd)
                size = stat.st_size
                done = 0
                provable = reads is not None and _note(reads, str(found.path), fd, stat, copy)
                if copy is not None:
                    fresh = copy.schema == SCHEMA_VERSION
                    (out.parquet if fresh else out.parquet_old).append(
                        str(parquet_path(found.path))
                    )
                    done = copy.jsonl_bytes
                if size <= done:
                    continue
                whole = whole_lines(fd, size)
                if reads is not None and provable and whole > done:
                    reads[str(found.path)] = _read(fd, stat, whole)
                if whole <= done:
                    continue
                if done == 0 and whole == size:
                    out.jsonl.append(str(found.path))
                else:  # a tail after the copy, or a file whose last line is not whole
                    part = Path(scratch) / f"{found.path.stem}.{done}.jsonl"
                    copy_range(fd, done, whole, part)
                    out.jsonl.append(str(part))
            finally:
                os.close(fd)
        yield out


def _read(fd: int, stat: os.stat_result, length: int) -> Read:
    return Read(stat.st_dev, stat.st_ino, length, mark(fd, length))


def _note(reads: dict[str, Read], path: str, fd: int, stat: os.stat_result,
          copy: Covered | None) -> bool:  # fmt: skip
    """Note the read of a file before its tail (the copy's prefix, or none); False: what is
    read is not provably a prefix of this file."""
    if copy is not None and copy.inode != stat.st_ino:
        # Renamed over since ``covered`` looked (an erasure): the copy is of another file.
        reads[path] = Read(stat.st_dev, -1, 0, b"")
        return False
    done = copy.jsonl_bytes if copy is not None else 0
    reads[path] = _read(fd, stat, min(done, stat.st_size))
    return True
