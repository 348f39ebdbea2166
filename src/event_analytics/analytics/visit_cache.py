"""A bounded cache of sessionized visits, in the process that answers archive queries.

Cutting a range's events into visits (``visits.ctes``: every event of the site in
``[from - timeout, to)`` read and sorted by visitor and time) is nearly all of a Stats API
query's cost, and one load of the site page asks eleven queries of the same range. An
entry holds the visits of one (site, range, timeout, plan), as ``visit_fill`` cuts them:
``visits`` with every visit column and ``vev`` with every event's own columns and payload
(the widest: any later query of that key reads it) and its visit's key, as two tables of
an in-memory DuckDB database of its own, attached to the engine's and compressed
(``COMPRESS`` and a checkpoint: about an eighth of the plain tables' memory); the queries
then read those tables instead of the archive (``ctes``).

Exact, never stale: the key holds the identity of every archive file the range reads,
taken *before* they are read: each hour file's path, inode, size, modification and
change times, and the same of its Parquet copy and of the copy's record. A query of the
same files reads the entry as it is. When they changed only by appended lines (the hour
being written, a late line, an import, a compaction: ``visit_cache_delta``), the entry
is brought up in place: only the visitors of the appended lines are cut into visits
again. Any other change (an erasure renames a rewritten hour file over the old one,
retention deletes hours) fills the entry again. Files read a moment after the key was
taken can only be newer than it, never older.

Bounded by memory (``EA_VISIT_CACHE_BYTES``): an entry's size is what DuckDB reports its
tables hold (``duckdb_memory()``, measured around the fill or update; fills and updates
run one at a time for that); past the bound the least recently used entries not being
read are detached. An entry larger than the bound answers the queries that wait for it
and is then dropped.

A fill costs more than one answer (about the dearest query of the page), so filling a
range whose files change other than by appended lines between any two of its queries
would make every query dearer: such a range is answered without filling until two
queries in a row find the same files (``_churning``).

Each entry remembers when a query last read it (``clock``): ``visit_refresh`` brings the
recently read ones up to the archive between queries (``refresh``), and fills the next
day's ranges of those ending with today, so that a reader's next load finds them warm.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from event_analytics.analytics import visit_fill
from event_analytics.analytics.snapshot import hour_files
from event_analytics.analytics.visit_cache_delta import Reads, Run, appended, merge
from event_analytics.archive.compact import parquet_path
from event_analytics.archive.files import list_files
from event_analytics.timebucket import Interval, floor

MAX_QUESTIONS = 1024  # questions whose latest files are remembered (_churning)
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
    key: Key  # the files it answers for exactly (taken before they were read)
    reads: Reads = field(default_factory=dict)  # what it read of each (visit_cache_delta)
    plan: str | None = None  # the plan its tables were cut by (``uk``'s expression)
    users: int = 0
    hits: int = 0
    size: int = 0
    kept: bool = True  # False: in no map any more, detached when its last user leaves
    failed: bool = False
    read_at: datetime | None = None  # when a query last read it (not a refresh)
    ready: threading.Event = field(default_factory=threading.Event)
    updating: threading.Lock = field(default_factory=threading.Lock)  # one update at a time


class VisitCache:
    """Entries of sessionized visits; ``run`` runs one statement (the engine's fetch).
    ``incremental`` False: an entry is filled again whenever its files change (the cache
    before visit_cache_delta; the benchmark's A/B)."""

    def __init__(self, run: Run, bound_bytes: int, wait_s: float) -> None:
        self.bound_bytes = bound_bytes
        self.incremental = True
        self._run = run
        self._wait_s = wait_s
        # One entry per question (Key.shape), the least recently used first.
        self._entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
        self._lock = threading.Lock()  # the map, sizes and users
        self._memory = threading.Lock()  # one fill or detach at a time: sizes by difference
        self._detach: list[str] = []  # detached by the next holder of ``_memory``
        self._ids = itertools.count(1)
        # Per question (Key.shape): the files of its latest query, the newest first.
        self._latest: OrderedDict[tuple[Any, ...], Key] = OrderedDict()
        self.hits = self.misses = self.bypasses = self.evictions = 0
        self.updates = self.updated_visitors = self.refreshes = 0
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # a test sets it

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
                self._drop(e)
            self._entries.clear()
            _telemetry().VISIT_CACHE_BYTES.set(0)
        with self._memory:
            self._detach_pending()

    @contextlib.contextmanager
    def lease(self, root: Path, key: Key, read: bool = True) -> Iterator[str | None]:
        """The name of the database holding ``key``'s ``visits`` and ``vev`` (filled or
        brought up to the files now on a miss), kept while the block runs; None: answer
        without the cache (it is off, or the fill another query was making failed).
        ``read``: a query's read (``recent`` lists it), not a refresh's."""
        if not self.enabled:
            yield None
            return
        entry = self._take(root, key)
        if entry is None:
            yield None
            return
        if read:
            entry.read_at = self.clock()
        try:
            yield entry.name
        finally:
            self._release(entry)

    def recent(self, since: datetime, limit: int) -> list[tuple[tuple[Any, ...], datetime]]:
        """The questions (``Key.shape``) of at most ``limit`` entries a query read at or
        after ``since``, the most recently read first, and when."""
        with self._lock:
            read = [(e.key.shape, e.read_at) for e in self._entries.values()
                    if e.read_at is not None and e.read_at >= since]  # fmt: skip
        return sorted(read, key=lambda r: r[1], reverse=True)[:limit]

    def refresh(self, root: Path, key: Key) -> bool:
        """Bring ``key``'s entry to its files as a query would (fill or update it),
        unless it reads them already; whether anything was done."""
        with self._lock:
            entry = self._entries.get(key.shape)
            if entry is not None and entry.key == key and not entry.failed:
                return False
        with self.lease(root, key, read=False) as db:
            if db is None:
                return False
        with self._lock:
            self.refreshes += 1
        return True

    def _count(self, outcome: str) -> None:
        _telemetry().VISIT_CACHE.labels(outcome).inc()

    def _take(self, root: Path, key: Key) -> _Entry | None:
        """The entry answering ``key``, with a user more; None: answer without it."""
        with self._lock:
            entry = self._entries.get(key.shape)
            if entry is None or entry.failed:
                fresh = self._new(key, None)
            else:
                fresh = None
                self._entries.move_to_end(key.shape)
                entry.users += 1
        if entry is None or entry.failed:
            return self._filled(root, key, fresh)
        if not entry.ready.wait(self._wait_s) or entry.failed:
            self._count("hit")  # as one: it waited for another query's fill
            self._release(entry)
            return None
        if self._brought_up(root, key, entry):
            return entry
        self._release(entry)
        with self._lock:
            if self._entries.get(key.shape) is entry:
                del self._entries[key.shape]
                self._drop(entry)
            if key.shape in self._entries:  # another query's entry since: this one without
                self.bypasses += 1
                self._count("bypass")
                return None
            fresh = self._new(key, entry)
        return self._filled(root, key, fresh)

    def _filled(self, root: Path, key: Key, entry: _Entry | None) -> _Entry | None:
        if entry is not None:
            try:
                self._fill(root, key, entry)
            except BaseException:
                self._release(entry)
                raise
        return entry

    def _brought_up(self, root: Path, key: Key, entry: _Entry) -> bool:
        """Whether ``entry`` now answers ``key``: it read those files (a hit; another
        query may have brought it up to them meanwhile), or is brought up to the files now
        by the lines appended since it read them (an update); False: they are not."""
        if entry.key == key:
            return self._hit(entry)
        with entry.updating:
            if entry.key == key:
                return self._hit(entry)
            if not self.incremental or not entry.kept:
                return False
            back = key.start - timedelta(seconds=key.timeout_s)
            with appended(root, entry.reads, back, key.end) as delta:
                if delta is None:
                    return False
                changed = 0
                if delta.tails:
                    with self._memory:
                        self._detach_pending()
                        before = self._run(_MEMORY_SQL)[0][0]
                        got = merge(self._run, entry.name, root, key.site, key.start, key.end,
                                    key.timeout_s, entry.plan, delta.tails)  # fmt: skip
                        if got is None:
                            return False
                        changed = got
                        if changed:
                            self._run(f"CHECKPOINT {entry.name}")
                        grown = self._run(_MEMORY_SQL)[0][0] - before
                        with self._lock:
                            entry.size = max(0, entry.size + grown)
                            self._evict()
            entry.key, entry.reads = key, delta.reads
            with self._lock:
                self.updates += 1
                self.updated_visitors += changed
                entry.hits += 1
            self._count("update")
            return True

    def _hit(self, entry: _Entry) -> bool:
        with self._lock:
            self.hits += 1
            entry.hits += 1
        self._count("hit")
        return True

    def _new(self, key: Key, dropped: _Entry | None) -> _Entry | None:
        """Under ``_lock``, no entry for ``key.shape``: a new one with a user, to fill (a
        miss), or None (a bypass: ``_churning``)."""
        if self._churning(key, dropped):
            self.bypasses += 1
            self._count("bypass")
            return None
        entry = _Entry(f"visit_cache_{next(self._ids)}", key, users=1)
        self._entries[key.shape] = entry
        self.misses += 1
        self._count("miss")
        return entry

    def _churning(self, key: Key, dropped: _Entry | None) -> bool:
        """Under ``_lock``, on a miss: whether the archive this question reads changes
        faster than it is asked, other than by appended lines (its files changed since its
        last query, and that query's entry was never read again, or there was none): then
        a fill, dearer than one answer, would be thrown away unread; answer without
        filling, and fill again once two queries in a row find the same files."""
        last = self._latest.pop(key.shape, None)
        self._latest[key.shape] = key
        while len(self._latest) > MAX_QUESTIONS:
            self._latest.popitem(last=False)
        if last is None or last.sources == key.sources:
            return False
        return dropped is None or dropped.hits == 0

    def _drop(self, entry: _Entry) -> None:
        """Under ``_lock``: out of the map (the caller's part); detached once unread."""
        entry.kept = False
        if entry.users == 0 and entry.ready.is_set():
            self._detach.append(entry.name)

    def _fill(self, root: Path, key: Key, entry: _Entry) -> None:
        try:
            with self._memory:
                self._detach_pending()
                before = self._run(_MEMORY_SQL)[0][0]
                self._run(f"ATTACH ':memory:' AS {entry.name} (COMPRESS)")
                entry.plan = self._tables(root, key, entry)
                size = max(0, self._run(_MEMORY_SQL)[0][0] - before)
                with self._lock:
                    entry.size = size
                    self._evict()
                self._detach_pending()
        except BaseException:
            entry.failed = True
            with self._lock:
                if entry.kept:
                    if self._entries.get(key.shape) is entry:
                        del self._entries[key.shape]
                    entry.kept = False
            raise
        finally:
            entry.ready.set()

    def _tables(self, root: Path, key: Key, entry: _Entry) -> str | None:
        """``vev`` and ``visits`` by the key's plan (again by the exact plan when the fast
        one says its order may be wrong: visit_fill.py), then compressed; the plan used."""
        db = entry.name
        plans = [key.fast_key, None] if key.fast_key is not None else [None]
        back = timedelta(seconds=key.timeout_s)
        for plan in plans:
            entry.reads = {}
            with hour_files(root, key.start - back, key.end, entry.reads) as files:
                if visit_fill.fill(self._run, db, files, key.site, key.start, key.end,
                                   key.timeout_s, plan):  # fmt: skip
                    break
        self._run(f"CHECKPOINT {db}")
        return plan

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


def ctes(db: str, visit_columns: bool = True) -> str:
    """``visits`` and ``vev`` from an entry's tables, as visits.ctes gives them with every
    attribute and the payloads; without ``visit_columns``, ``vev`` has only the event's
    own columns and its visit's key (the query reads no other: no join per event)."""
    vev = f"{db}.vev JOIN {db}.visits USING (uk, vn)" if visit_columns else f"{db}.vev"
    return f"visits AS (SELECT * FROM {db}.visits),\nvev AS (SELECT * FROM {vev})"
