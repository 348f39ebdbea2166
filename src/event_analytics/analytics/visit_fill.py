"""A visit cache entry's tables, cut from the archive's files: ``vev`` (one row per event
of a visit starting in the range: the visit's key and the event's own columns) and
``visits`` (one row per such visit: every visit column, ``VISIT_COLUMNS``' order).

``visits.ctes`` cuts visits in one statement whose windows sort every event with all it
carries (payload, page, names, revenue, the visit fields), twice (the visit number is a
running sum over the first window's flags), and then joins each event to its visit's
columns: the fill wrote, compressed and held about a kilobyte per event, and that was
most of a cold site page (benchmarks/site_page_bench.py). By the fast plan (the key
``visits.FAST_KEY``: no two of a visitor's events at one timestamp, else it says so) this
module sorts only (visitor, timestamp): each event's visit is keyed by its start, found
by an as-of join to the events that start one; the events' own columns then join that
narrow map by (visitor, timestamp), which is unique there, and each visit's columns are
aggregated from the same join, its first event's values read from the one row that
starts it. The exact plan (the fast one's order was not exact) keeps ``visits.ctes``.

Both plans give the same visits and events; ``vn`` is only a key of a visit among its
visitor's (a number by the exact plan, the start's microseconds by the fast one).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from event_analytics.analytics import visits
from event_analytics.analytics.snapshot import Sources
from event_analytics.analytics.sql import Params, source
from event_analytics.archive.derived import FIELDS, UTM

Run = Callable[..., list[tuple[Any, ...]]]
# ``vev``'s columns after (uk, vn): what the event-scoped queries read of an event, and
# what its visit's metrics do (visits.visit_columns).
EVENT_COLUMNS = ("ts", "event_type", *visits.EVENT_COLUMNS, "payload", "f_interactive")
# ``visits``' columns, in its order (both plans, and an update's rows, write this order).
VISIT_COLUMNS = ("uk", "vn", "start", "duration_us", "visit_pageviews", "visit_events",
                 "bounce", "entry_page", "exit_page", "source", "referrer", "device",
                 *UTM, "browser", "os", "country", "suspect")  # fmt: skip
_ALL = frozenset(visits.VISIT_COLUMNS.values())
# The visit columns aggregated over its events, and those of its first event.
_METRICS = VISIT_COLUMNS[2:9]
_FIRST = VISIT_COLUMNS[9:-1]


def _events(p: Params, files: Sources, uk: str, site: str, back: datetime, end: datetime,
            only: str | None, columns: str, keep: str | None = None) -> str:  # fmt: skip
    """The site's events in ``[back, end)`` (no bots), ``uk`` and ``columns`` of each;
    ``keep``: only those whose (uk, timestamp) it selects, kept in the read itself, before
    any column is derived (a copy of the older schema or the JSONL derives them)."""
    terms = [f"{uk} IN (SELECT uk FROM {only})"] if only is not None else []
    terms += [f'({uk}, "timestamp") IN ({keep})'] if keep is not None else []
    among = " AND ".join(terms) or None
    return (
        f"SELECT {uk} AS uk, {columns} FROM ({source(p, files, among)}) WHERE ts >= "
        f"{p.bind(back)} AND ts < {p.bind(end)} AND NOT starts_with(event_type, 'bot_') "
        f"AND site = {p.bind(site)}"
    )


def fill(run: Run, db: str, files: Sources, site: str, start: datetime, end: datetime,
         timeout_s: int, plan: str | None, only: str | None = None,
         names: tuple[str, str] = ("vev", "visits")) -> bool:  # fmt: skip
    """Make ``db``'s tables ``names`` (vev, visits) of the site's visits starting in
    ``[start, end)`` by ``plan`` (a fast key, or None: the exact plan), of the visitors in
    table ``only`` when given (made by the cache, never request text). False: the fast
    plan's order may be wrong here (nothing is made; fill by the exact plan)."""
    if plan is None:
        _exact(run, db, files, site, start, end, timeout_s, only, names)
        return True
    back = start - timedelta(seconds=timeout_s)
    vmap = f"{db}.vmap"
    try:
        # Each event's visit: the start of the latest event at or before it that starts
        # one (its own when it does). Narrow rows only: this sort is the fill's one.
        p = Params()
        run(f"CREATE OR REPLACE TABLE {vmap} AS WITH "
            f"ev AS ({_events(p, files, plan, site, back, end, only, 'user_id, ts')}),\n"
            f"s AS (SELECT uk, ts, {visits.starts(p, timeout_s)} AS starts, "
            f"{visits.SUSPECT} AS suspect FROM ev "
            f"WINDOW w AS (PARTITION BY uk ORDER BY ts))\n"
            f"SELECT s.uk, s.ts, s.starts, s.suspect, epoch_us(f.ts) AS vn FROM s "
            f"ASOF JOIN (SELECT uk, ts FROM s WHERE starts = 1) f "
            f"ON s.uk = f.uk AND s.ts >= f.ts", p.values)  # fmt: skip
        # Any tie or shared key, wherever it is (one before the range can still merge a
        # visitor's first visit in it with another's): the exact plan answers.
        if run(f"SELECT coalesce(bool_or(suspect), false) FROM {vmap}")[0][0]:
            return False
        p = Params()
        own = ", ".join(EVENT_COLUMNS)
        rows = _events(p, files, plan, site, back, end, only, own)
        run(f"CREATE OR REPLACE TABLE {db}.{names[0]} AS SELECT m.uk, m.vn, {own} "
            f"FROM ({rows}) e JOIN {_mapped(p, vmap, start)} USING (uk, ts)", p.values)  # fmt: skip
        # Each visit's metrics and pages over its events (in ``vev``); its first event's
        # columns from the one row that starts it (no string kept per visit while
        # aggregating).
        p = Params()
        metrics = visits.visit_columns(_ALL, order="ts", names=_METRICS)
        first = visits.visit_columns(_ALL, first=lambda expr: expr, names=_FIRST)
        read = ", ".join(f"f_{name}" for name in FIELDS if name != "interactive")
        # Copies of the older schema derive the visit fields from each event's payload:
        # only for the events that start a visit (a semi-join dearer than reading them
        # from a copy that holds them). No parameter in it: a read of no files drops it.
        starting = f"SELECT uk, ts FROM {vmap} WHERE starts = 1" if files.parquet_old else None
        firsts = _events(p, files, plan, site, back, end, only, f"ts, {read}", starting)
        run(f"CREATE OR REPLACE TABLE {db}.{names[1]} AS SELECT {', '.join(VISIT_COLUMNS)} "
            f"FROM (SELECT uk, vn, {metrics} FROM {db}.{names[0]} GROUP BY uk, vn) "
            f"JOIN (SELECT uk, vn, {first}, false AS suspect FROM ({firsts}) e "
            f"JOIN {_mapped(p, vmap, start, 'AND starts = 1')} USING (uk, ts)) "
            f"USING (uk, vn)", p.values)  # fmt: skip
        return True
    finally:
        run(f"DROP TABLE IF EXISTS {vmap}")


# Always true on the map (none of its keys is NULL: ``uk`` is a hash, ``ts`` was compared,
# ``vn`` comes from an inner join), but DuckDB takes each for an equality that keeps few
# rows: the map's side, narrow, is then the join's build side. Left to its estimates
# DuckDB builds the hash table from the archive's side (it guesses a fifth of the rows
# there and all of them here), every event with its payload and pages: the join was 7.3
# of the event table's 9.7 s in a profile, and a third less wall and CPU with this
# (README, "The site page's load").
_NARROW_BUILD = "AND uk = uk AND ts = ts AND vn = vn"


def _mapped(p: Params, vmap: str, start: datetime, more: str = "") -> str:
    """The map's events of visits starting at or after ``start`` (the build side of a
    join to the archive's events: ``_NARROW_BUILD``)."""
    return (
        f"(SELECT uk, ts, starts, vn FROM {vmap} WHERE vn >= epoch_us({p.bind(start)}) "
        f"{more} {_NARROW_BUILD}) m"
    )


def _exact(run: Run, db: str, files: Sources, site: str, start: datetime, end: datetime,
           timeout_s: int, only: str | None, names: tuple[str, str]) -> None:  # fmt: skip
    """The tables by the exact plan (``visits.ctes``, keyed by the user id)."""
    p = Params()
    ctes = visits.ctes(p, files, site, start, end, timeout_s, fast_key=None, only=only)
    run(f"CREATE OR REPLACE TABLE {db}.{names[0]} AS WITH {ctes} "
        f"SELECT uk, vn, {', '.join(EVENT_COLUMNS)} FROM vev", p.values)  # fmt: skip
    p = Params()
    ctes = visits.ctes(p, files, site, start, end, timeout_s, events=False, payload=False,
                       fast_key=None, only=only)  # fmt: skip
    run(f"CREATE OR REPLACE TABLE {db}.{names[1]} AS WITH {ctes} "
        f"SELECT {', '.join(VISIT_COLUMNS)} FROM visits", p.values)  # fmt: skip
