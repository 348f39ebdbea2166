"""A bounded cache of sessionized visits, in the process that answers archive queries.

Cutting a range's events into visits (``visits.ctes``: every event of the site in
``[from - timeout, to)`` read and sorted by visitor and time) is nearly all of a Stats API
query's cost, and one load of the site page asks eleven queries of the same range. An
entry holds what ``ctes`` gives for one (site, range, timeout, plan): ``visits`` with
every visit column and ``vev`` with every event's payload (the widest: any later query
of that key reads it), as two tables of an in-memory DuckDB database of its own, attached
to the engine's and compressed (``COMPRESS`` and a checkpoint: about an eighth of the
plain tables' memory); the queries then read those tables instead of the archive.

Exact, never stale: the key holds the identity of every archive file the range reads,
taken *before* they are read: each hour file's path, inode, size, modification and
change times, and the same of its Parquet copy and of the copy's record.
An appended line changes a size; a compaction adds a copy and a record; an erasure
renames a rewritten hour file over the old one (a new inode) and redoes its copy;
retention deletes hours; an import creates or appends to hour files. Any of these makes
a new key: the old entry is never read again (dropped when the next query of its range
finds the new files, else it ages out). Files read a moment after the key was taken can
only be newer than it, never older.

Bounded by memory (``EA_VISIT_CACHE_BYTES``): an entry's size is what DuckDB reports its
tables hold (``duckdb_memory()``, measured around the fill; fills run one at a time for
that); past the bound the least recently used entries not being read are detached. An
entry larger than the bound answers the queries that wait for it and is then dropped.

A fill costs more than one answer (about the dearest query of the page), so filling a
range whose files change between any two of its queries (a range holding the hour being
appended to on a busy site) would make every query dearer: such a range is answered
without filling until two queries in a row find the same files (``_churning``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from event_analytics.analytics import visits
from event_analytics.analytics.snapshot import hour_files
from event_analytics.analytics.sql import Params
from event_analytics.archive.compact import parquet_path
from event_analytics.archive.files import list_files
from event_analytics.timebucket import Interval, floor

Run = Callable[..., list[tuple[Any, ...]]]
MAX_QUESTIONS = 1024  # questions whose latest files are remembered (_churning)
# ``vev``'s own columns (its derived ones: archive/derived.py); the rest is its visit's
# row of ``visits``.
EVENT_COLUMNS = "event_id, ts, received_at, event_type, payload, " + ", ".join(visits.EVENT_COLUMNS)
_MEMORY_SQL = (
    "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = 'IN_MEMORY_TABLE'"
)


def _telemetry() -> ModuleType:
    # Imported when first counted, not with this module: the command line imports the
    # query engine before ``serve`` points prometheus_client at its directory.
    from event_analytics import telemetry

    return telemetry


def _stat(path: Path) -> tuple[int, ...] | None:
    try:
        s = os.stat(path)
    except FileNotFoundError:
        return None
    return s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns


def sources(root: Path, start: datetime, end: datetime) -> tuple[tuple[Any, ...], ...]:
    """The identity of the files ``hour_files(root, start, end)`` reads: each hour file's,
    its copy record's and its Parquet copy's (path, inode, size, times). Whether a copy is
    read instead of its JSONL (``compact.covered``) depends on nothing else: the record's
    content, the JSONL's inode, size and first line, the copy being there; each of those
    files is replaced by a rename or appended to, never rewritten in place. Stats only:
    this runs before every cached answer (``covered`` reads two files per hour)."""
    out = []
    for found in list_files(root, floor(start, Interval.HOUR), end):
        path = found.path
        # compact.py's copy record, beside the copy (as erase.py names it).
        record = path.with_suffix(".parquet.json")
        out.append((str(path), _stat(path), _stat(record), _stat(parquet_path(path))))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Key:
    root: str  # the archive (its files' paths say it, but a range may have none)
    site: str
    start: datetime
    end: datetime
    timeout_s: int
    fast_key: str | None  # the plan (visits.ctes): None is the exact one
    sources: tuple[tuple[Any, ...], ...]

    @property
    def shape(self) -> tuple[Any, ...]:
        """The key but its files: the same question of a changed archive."""
        return self.root, self.site, self.start, self.end, self.timeout_s, self.fast_key


@dataclass(slots=True)
class _Entry:
    name: str  # the attached database's name, made here (never request text)
    users: int = 0
    hits: int = 0
    size: int = 0
    kept: bool = True  # False: in no map any more, detached when its last user leaves
    failed: bool = False
    ready: threading.Event = field(default_factory=threading.Event)


class VisitCache:
    """Entries of sessionized visits; ``run`` runs one statement (the engine's fetch)."""

    def __init__(self, run: Run, bound_bytes: int, wait_s: float) -> None:
        self.bound_bytes = bound_bytes
        self._run = run
        self._wait_s = wait_s
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._lock = threading.Lock()  # the map, sizes and users
        self._memory = threading.Lock()  # one fill or detach at a time: sizes by difference
        self._detach: list[str] = []  # detached by the next holder of ``_memory``
        self._ids = itertools.count(1)
        # Per question (Key.shape): the files of its latest query, the newest first.
        self._latest: OrderedDict[tuple[Any, ...], Key] = OrderedDict()
        self.hits = self.misses = self.bypasses = self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.bound_bytes > 0

    def key(self, root: Path, site: str, start: datetime, end: datetime, timeout_s: int,
            fast_key: str | None) -> Key:  # fmt: skip
        found = sources(root, start - timedelta(seconds=timeout_s), end)
        return Key(str(root), site, start, end, timeout_s, fast_key, found)

    def size(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Drop every entry (those being read go when their readers leave)."""
        with self._lock:
            for e in self._entries.values():
                e.kept = False
                if e.users == 0:
                    self._detach.append(e.name)
            self._entries.clear()
            _telemetry().VISIT_CACHE_BYTES.set(0)
        with self._memory:
            self._detach_pending()

    @contextlib.contextmanager
    def lease(self, root: Path, key: Key) -> Iterator[str | None]:
        """The name of the database holding ``key``'s ``visits`` and ``vev`` (filled now
        on a miss), kept while the block runs; None: answer without the cache (it is off,
        or the fill another query was making failed)."""
        if not self.enabled:
            yield None
            return
        with self._lock:
            entry = self._entries.get(key)
            hit = entry is not None
            if entry is None and self._churning(key.shape, key):
                self.bypasses += 1
                entry = None
            elif entry is None:
                entry = _Entry(f"visit_cache_{next(self._ids)}")
                self._entries[key] = entry
                self.misses += 1
            else:
                self.hits += 1
                entry.hits += 1
            if entry is not None:
                self._entries.move_to_end(key)
                entry.users += 1
        outcome = "hit" if hit else "miss" if entry is not None else "bypass"
        _telemetry().VISIT_CACHE.labels(outcome).inc()
        if entry is None:
            yield None
            return
        try:
            if not hit:
                self._fill(root, key, entry)
            elif not entry.ready.wait(self._wait_s) or entry.failed:
                yield None
                return
            yield entry.name
        finally:
            self._release(entry)

    def _churning(self, shape: tuple[Any, ...], key: Key) -> bool:
        """Under ``_lock``, on a miss: whether the archive this question reads changes
        faster than it is asked (its files changed since its last query, and that query's
        entry was never read again, or there was none): then a fill, dearer than one
        answer, would be thrown away unread; answer without filling, and fill again once
        two queries in a row find the same files. The superseded entry is dropped."""
        last = self._latest.pop(shape, None)
        self._latest[shape] = key
        while len(self._latest) > MAX_QUESTIONS:
            self._latest.popitem(last=False)
        if last is None or last.sources == key.sources:
            return False
        old = self._entries.pop(last, None)
        if old is not None:
            old.kept = False
            if old.users == 0 and old.ready.is_set():
                self._detach.append(old.name)
        return old is None or old.hits == 0

    def _fill(self, root: Path, key: Key, entry: _Entry) -> None:
        try:
            with self._memory:
                self._detach_pending()
                before = self._run(_MEMORY_SQL)[0][0]
                self._run(f"ATTACH ':memory:' AS {entry.name} (COMPRESS)")
                self._tables(root, key, entry.name)
                size = max(0, self._run(_MEMORY_SQL)[0][0] - before)
                with self._lock:
                    entry.size = size
                    self._evict()
                self._detach_pending()
        except BaseException:
            entry.failed = True
            with self._lock:
                if entry.kept:
                    del self._entries[key]
                    entry.kept = False
            raise
        finally:
            entry.ready.set()

    def _tables(self, root: Path, key: Key, db: str) -> None:
        """``vev`` by the key's plan (again by the exact plan when the fast one says its
        order may be wrong), ``visits`` from it, then compressed."""
        plans = [key.fast_key, None] if key.fast_key is not None else [None]
        back = timedelta(seconds=key.timeout_s)
        with hour_files(root, key.start - back, key.end) as files:
            for plan in plans:
                p = Params()
                ctes = visits.ctes(p, files, key.site, key.start, key.end, key.timeout_s,
                                   fast_key=plan)  # fmt: skip
                self._run(f"CREATE OR REPLACE TABLE {db}.vev AS WITH {ctes} SELECT * FROM vev",
                          p.values)  # fmt: skip
                if not self._run(f"SELECT coalesce(bool_or(suspect), false) FROM {db}.vev")[0][0]:
                    break
        self._run(f"CREATE TABLE {db}.visits AS SELECT DISTINCT ON (uk, vn) "
                  f"* EXCLUDE ({EVENT_COLUMNS}) FROM {db}.vev")  # fmt: skip
        self._run(f"CHECKPOINT {db}")

    def _evict(self) -> None:
        """Under ``_lock``: drop least recently used entries not being read until the
        rest fit; an entry over the bound alone goes when its readers leave."""
        total = sum(e.size for e in self._entries.values())
        for key, e in list(self._entries.items()):
            if total <= self.bound_bytes:
                break
            if not e.ready.is_set() and e.size == 0:
                continue  # being filled: not measured yet
            if e.users == 0 or e.size > self.bound_bytes:
                del self._entries[key]
                e.kept = False
                total -= e.size
                self.evictions += 1
                _telemetry().VISIT_CACHE_EVICTIONS.inc()
                if e.users == 0:
                    self._detach.append(e.name)
        _telemetry().VISIT_CACHE_BYTES.set(total)

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.users -= 1
            if entry.users == 0 and not entry.kept and entry.ready.is_set():
                self._detach.append(entry.name)
            elif entry.users == 0:
                self._evict()  # what was over the bound while read may go now
        if self._memory.acquire(blocking=False):
            try:
                self._detach_pending()
            finally:
                self._memory.release()

    def _detach_pending(self) -> None:
        """Under ``_memory``."""
        with self._lock:
            names, self._detach = self._detach, []
        for name in names:
            with contextlib.suppress(Exception):  # never attached (its fill failed early)
                self._run(f"DETACH DATABASE IF EXISTS {name}")


def ctes(db: str) -> str:
    """``visits`` and ``vev`` from an entry's tables (the same columns as visits.ctes
    gives with every attribute and the payloads)."""
    return f"visits AS (SELECT * FROM {db}.visits),\nvev AS (SELECT * FROM {db}.vev)"
