"""Keeping the visit cache warm for what its readers look at (issue 25).

A site page's ranges end with "today" (``stats_spec``: "7d" is the seven days ending with
today, its comparison the seven before), so when the day changes every question of the
page is a new key and its first load fills its entries from the archive: seconds at
millions of events, where a warm load is a fraction of that. The hours between two loads
leave appended lines (the hour being written) for that load to merge. This thread does
that work between the loads instead, in the query process, when it answers nothing.

When: once an hour (the first tick, every ``EVERY_S``, after the hour changes, so after
midnight and after the archiver's hourly compaction), for the entries a query read within
the last ``RECENT`` (at most ``LIMIT``, the most recently read first): each question is
moved by the days passed since its last read when it ended with that day, or is the
previous period of one that did (``moved``: a "7d" read yesterday is asked again ending
at tomorrow's start; any other range, or the same day: the same range), and brought to
the files now, as a query would (``VisitCache.refresh``: a fill for a new key, an update
for appended lines, nothing when the entry already reads these files). Only while no
query runs: a query arriving meanwhile runs beside the entry being refreshed (sharing
the cores until it is done; one of that range waits for it, as for a query's fill), and
the next entry waits for the next tick. An entry the refresh made is not "read": unless a reader
comes back, it is not refreshed again, and the memory bound evicts it as any other.

What it costs: per recently read question, once a day a fill (the cold page's fill: the
README's "The site page's load"), each other hour an update of that hour's lines or
nothing; never more than ``LIMIT`` of them an hour.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from event_analytics.analytics.visit_cache import VisitCache
from event_analytics.timebucket import Interval, floor

EVERY_S = 60.0
RECENT = timedelta(days=1)
LIMIT = 8

log = logging.getLogger(__name__)


def moved(start: datetime, end: datetime, read_at: datetime, today: datetime) -> timedelta:
    """How far the question of ``[start, end)`` read at ``read_at`` has moved by
    ``today``: by the whole days since, when it ended with the day it was read ("day",
    "7d", "30d", a custom range ending that day) or is the previous period of such a
    range (the page's comparison: as long, ending where it starts); else not at all (a
    month is the same range all month, a past range never moves)."""
    tomorrow = floor(read_at, Interval.DAY) + timedelta(days=1)
    if end == tomorrow or end + (end - start) == tomorrow:
        return today - floor(read_at, Interval.DAY)
    return timedelta(0)


class Refresher:
    """Refreshes ``cache``'s recently read questions once an hour while ``idle()``."""

    def __init__(self, cache: VisitCache, idle: Callable[[], bool], every_s: float = EVERY_S,
                 recent: timedelta = RECENT, limit: int = LIMIT) -> None:  # fmt: skip
        self._cache, self._idle = cache, idle
        self._every_s, self._recent, self._limit = every_s, recent, limit
        self._done: datetime | None = None  # the hour whose refresh is complete
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self, now: datetime) -> int:
        """The hour's refresh, unless done: the entries filled or brought up (it stops
        early, to go on at the next tick, when a query runs)."""
        hour = floor(now, Interval.HOUR)
        if hour == self._done or not self._cache.enabled:
            return 0
        today = floor(now, Interval.DAY)
        done: set[tuple[object, ...]] = set()
        count = 0
        for shape, read_at in self._cache.recent(now - self._recent, self._limit):
            root, site, start, end, timeout_s, plan = shape
            shift = moved(start, end, read_at, today)
            key = self._cache.key(Path(root), site, start + shift, end + shift, timeout_s, plan)
            if key.shape in done:
                continue
            if not self._idle():
                return count
            done.add(key.shape)
            count += self._cache.refresh(Path(root), key)
        self._done = hour
        return count

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="visit-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # Not past the statement in progress: the engine closed after this ends it.
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self.tick(datetime.now(UTC))
            except Exception:  # a refresh is an optimisation: the next query fills instead
                log.exception("refreshing the visit cache failed")
