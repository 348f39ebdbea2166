"""The hour files a query reads, each cut to its complete lines.

Lines up to a file's last newline never change (the archiver only appends whole lines
and cuts back only a torn tail past the last newline), so a file ending in a newline is
read in place. A file that does not (a tail torn by a crashed archiver, or a line being
written this instant) is copied up to its last newline, and the copy is read instead.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from event_analytics.archive.files import list_files
from event_analytics.timebucket import Interval, floor

_BLOCK = 1 << 16


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


def _copy_prefix(fd: int, length: int, target: Path) -> None:
    with target.open("wb") as out:
        offset = 0
        while offset < length:
            sent = os.sendfile(out.fileno(), fd, offset, length - offset)
            if sent == 0:
                break
            offset += sent


@contextlib.contextmanager
def hour_files(root: Path, start: datetime | None, end: datetime) -> Iterator[list[str]]:
    """Paths to read for events with timestamps in ``[start, end)``; copies are removed after."""
    first = floor(start, Interval.HOUR) if start is not None else None
    with tempfile.TemporaryDirectory(prefix="ea-query-") as scratch:
        paths: list[str] = []
        for found in list_files(root, first, end):
            try:
                fd = os.open(found.path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                size = os.fstat(fd).st_size
                if size == 0:
                    continue
                if os.pread(fd, 1, size - 1) == b"\n":
                    paths.append(str(found.path))
                    continue
                keep = _last_newline(fd, size)
                if keep:
                    copy = Path(scratch) / found.path.name
                    _copy_prefix(fd, keep, copy)
                    paths.append(str(copy))
            finally:
                os.close(fd)
        yield paths
