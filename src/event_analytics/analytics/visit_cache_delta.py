"""The visit cache's incremental update: an entry brought up to the archive's files when
they differ from those it read only by appended lines.

An hour file's lines up to its last newline never change (snapshot.py); an erasure
renames a new file over it, retention deletes it; a Parquet copy holds exactly a prefix
of its JSONL's lines (compact.py checks that). So the events of a range's files now are
the events an entry read plus the lines after what it read of each file, if every file
it read is still there with the same device and inode, at least as long, and the same
first and last bytes before that length (``snapshot.Read``; a reused inode number fails
the last check) — whatever compactions happened meanwhile. A new hour file's lines are
all new. Anything else (a file gone, shorter, renamed over) is not an append: the entry
is filled again.

The appended lines (``appended``) name the visitors with a new event of the site in the
range's read window; every visit of such a visitor may change (a late event can join two
visits, or split none but renumber them), and no other visitor's can (a visit is one
visitor's events). ``merge`` cuts those visitors' events, all of them in the range read
again, into visits (``visit_fill`` restricted to them: a semi-join of the files on the
visitors) and replaces their rows in the entry's tables
in one transaction: a reader's statement sees the entry before or after, never between.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from event_analytics.analytics import visit_fill
from event_analytics.analytics.snapshot import (
    Read,
    Sources,
    copy_range,
    hour_files,
    mark,
    whole_lines,
)
from event_analytics.analytics.sql import Params, source
from event_analytics.archive.files import list_files
from event_analytics.timebucket import Interval, floor

Run = Callable[..., list[tuple[Any, ...]]]
Reads = dict[str, Read]
# The changed visitors' tables before they replace their rows in the entry's.
FRESH = ("fresh_vev", "fresh_visits")


@dataclass(frozen=True, slots=True)
class Delta:
    """The lines appended since an entry's reads (copies in a scratch directory) and the
    reads the entry stands for once they are merged."""

    tails: list[str]
    reads: Reads


def _tail(path: str, old: Read | None, scratch: str, n: int) -> tuple[Read, str | None] | None:
    """Of one hour file: its read after the merge and a copy of its lines after ``old``
    (None: none); None: not ``old`` with lines appended."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None if old is not None else (Read(0, 0, 0, b""), None)
    try:
        stat = os.fstat(fd)
        begin = 0
        if old is not None:
            same = (stat.st_dev, stat.st_ino) == (old.dev, old.ino)
            if not same or stat.st_size < old.length or mark(fd, old.length) != old.mark:
                return None
            begin = old.length
        whole = whole_lines(fd, stat.st_size)
        if whole <= begin:
            return (old or Read(stat.st_dev, stat.st_ino, 0, mark(fd, 0))), None
        part = os.path.join(scratch, f"{n}.jsonl")
        copy_range(fd, begin, whole, Path(part))
        return Read(stat.st_dev, stat.st_ino, whole, mark(fd, whole)), part
    finally:
        os.close(fd)


@contextlib.contextmanager
def appended(root: Path, reads: Reads, start: datetime, end: datetime) -> Iterator[Delta | None]:
    """The lines the hour files of ``[start, end)`` hold past ``reads`` (copies removed
    after); None when the files are not those read with lines appended."""
    with tempfile.TemporaryDirectory(prefix="ea-visit-delta-") as scratch:
        listed = [str(f.path) for f in list_files(root, floor(start, Interval.HOUR), end)]
        if not set(reads) <= set(listed):
            yield None  # an hour file read is gone (retention)
            return
        tails: list[str] = []
        now: Reads = {}
        for n, path in enumerate(listed):
            got = _tail(path, reads.get(path), scratch, n)
            if got is None:
                yield None
                return
            read, part = got
            if read.length or path in reads:
                now[path] = read
            if part is not None:
                tails.append(part)
        yield Delta(tails, now)


def merge(run: Run, db: str, root: Path, site: str, start: datetime, end: datetime,
          timeout_s: int, plan: str | None, tails: list[str]) -> int | None:  # fmt: skip
    """Replace the visits in ``db``'s tables of every visitor with an event of ``site``
    in ``tails`` (their visits cut again from all their events in the range's files);
    the number of such visitors, or None when the fast ``plan``'s order may be wrong for
    them (then nothing is changed: fill the entry again by the exact plan)."""
    back = start - timedelta(seconds=timeout_s)
    uk = plan if plan is not None else "user_id"
    p = Params()
    run(f"CREATE OR REPLACE TABLE {db}.changed AS SELECT DISTINCT {uk} AS uk FROM "
        f"({source(p, Sources(jsonl=tails))}) WHERE ts >= {p.bind(back)} AND ts < "
        f"{p.bind(end)} AND NOT starts_with(event_type, 'bot_') AND site = {p.bind(site)}",
        p.values)  # fmt: skip
    try:
        changed = int(run(f"SELECT count(*) FROM {db}.changed")[0][0])
        if changed == 0:
            return 0
        with hour_files(root, back, end) as files:
            if not visit_fill.fill(run, db, files, site, start, end, timeout_s, plan,
                                   only=f"{db}.changed", names=FRESH):  # fmt: skip
                return None
        # One statement list, one transaction: readers see the entry before or after.
        run(f"BEGIN TRANSACTION;"
            f"DELETE FROM {db}.vev WHERE uk IN (SELECT uk FROM {db}.changed);"
            f"INSERT INTO {db}.vev SELECT * FROM {db}.{FRESH[0]};"
            f"DELETE FROM {db}.visits WHERE uk IN (SELECT uk FROM {db}.changed);"
            f"INSERT INTO {db}.visits SELECT * FROM {db}.{FRESH[1]};"
            f"COMMIT")  # fmt: skip
        return changed
    finally:
        run(
            f"DROP TABLE IF EXISTS {db}.{FRESH[0]}; DROP TABLE IF EXISTS {db}.{FRESH[1]}; "
            f"DROP TABLE IF EXISTS {db}.changed"
        )
