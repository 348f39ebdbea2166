"""The Stats API v2 planner: a parsed ``StatsQuery`` as one DuckDB statement over visits,
and its answer in Plausible's shape.

Rows are built from ``visits.ctes``. The filters are read per event of a visit (a
``visit:*`` dimension reads the event's visit, an ``event:*`` one the event itself); a
visit is counted when at least one of its events passes them, and ``events`` and
``pageviews`` count the passing events. Grouped by an ``event:*`` dimension, a visit
counts once under each value its passing events have. Visit metrics (visits, bounce
rate, duration) always take the whole visit. SQL returns exact integer sums; the ratios
are rounded here from exact fractions, as docs/api.md says.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

from event_analytics.analytics import visits
from event_analytics.analytics.periods import Period
from event_analytics.analytics.pool import QueryEngine
from event_analytics.analytics.snapshot import Sources, hour_files
from event_analytics.analytics.sql import Params
from event_analytics.analytics.stats_spec import Condition, Done, Filter, Logic, Not, StatsQuery
from event_analytics.archive.files import list_files
from event_analytics.timebucket import iso_z

# Goal metrics and the event:goal dimension plug in here: a goal is an event-level
# predicate (page pattern or event name), so ``event:goal`` becomes one more entry of
# ``_event_sql`` (the matching goal's name per event, one row per goal matched) and
# conversion_rate = visitors of the goal rows / visitors of the unfiltered query.
GOAL_HOOK = None
# The integer sums every row carries, in this order after the dimensions.
SUMS = ("visits", "visitors", "pageviews", "events", "bounces", "duration_us", "visit_pageviews")
_ORDER_SQL = {
    "visits": "visits", "visitors": "visitors", "pageviews": "pageviews", "events": "events",
    "percentage": "visitors", "bounce_rate": "bounces / nullif(visits, 0)",
    "visit_duration": "duration_us / nullif(visits, 0)",
    "views_per_visit": "visit_pageviews / nullif(visits, 0)",
}  # fmt: skip


def time_unit(dimension: str, start: datetime, end: datetime) -> str:
    """``time`` picks the unit from the range's length: hour up to a day, day up to 40
    days, month beyond."""
    if dimension != "time":
        return dimension.removeprefix("time:")
    span = end - start
    return "hour" if span <= timedelta(days=1) else "day" if span <= timedelta(days=40) else "month"


def _dimension_sql(p: Params, name: str, start: datetime, end: datetime) -> str:
    if name.startswith("time"):
        unit = time_unit(name, start, end)
        assert unit in ("hour", "day", "week", "month")  # a fixed list, not request text
        return f"date_trunc('{unit}', start)"
    if name in visits.VISIT_COLUMNS:
        return visits.VISIT_COLUMNS[name]
    if name.startswith("event:props:"):
        return visits.prop_sql(p, name.removeprefix("event:props:"))
    return visits.EVENT_SQL[name]


def filter_sql(p: Params, f: Filter, start: datetime, end: datetime) -> str:
    """A filter over one row of ``vev`` as a never-NULL boolean."""
    if isinstance(f, Not):
        return f"(NOT {filter_sql(p, f.inner, start, end)})"
    if isinstance(f, Done):
        inner = filter_sql(p, f.inner, start, end)
        return f"(user_id {'NOT ' if f.negated else ''}IN (SELECT user_id FROM vev WHERE {inner}))"
    if isinstance(f, Logic):
        joiner = " AND " if f.op == "and" else " OR "
        return "(" + joiner.join(filter_sql(p, g, start, end) for g in f.items) + ")"
    return _condition_sql(p, f, start, end)


def _condition_sql(p: Params, c: Condition, start: datetime, end: datetime) -> str:
    column = _dimension_sql(p, c.dimension, start, end)
    base = c.op.removesuffix("_not")
    # case_sensitive: false lower-cases both sides with DuckDB's lower(), one judge.
    fold = (lambda sql: sql) if c.case_sensitive else (lambda sql: f"lower({sql})")
    if base == "is":
        listed = ", ".join(fold(p.bind(v)) for v in c.values)
        positive = f"coalesce({fold(column)} IN ({listed}), false)"
    elif base == "contains":
        either = " OR ".join(f"contains({fold(column)}, {fold(p.bind(v))})" for v in c.values)
        positive = f"coalesce({either}, false)"
    else:
        flags = "" if c.case_sensitive else ", 'i'"
        either = " OR ".join(f"regexp_matches({column}, {p.bind(v)}{flags})" for v in c.values)
        positive = f"coalesce({either}, false)"
    return f"(NOT {positive})" if c.op.endswith("_not") else positive


def order_terms(q: StatsQuery) -> list[tuple[str, str]]:
    """Explicit terms, else time ascending or the first metric descending; then every
    dimension ascending, so pages are stable."""
    terms = list(q.order_by)
    if not terms:
        times = [d for d in q.dimensions if d.startswith("time")]
        terms = [(times[0], "asc")] if times else [(q.metrics[0], "desc")]
    named = {name for name, _ in terms}
    return terms + [(d, "asc") for d in q.dimensions if d not in named]


def _attributes(q: StatsQuery) -> frozenset[str]:
    """The visit columns the query's dimensions and filters read."""
    names = set(q.dimensions)
    stack: list[Filter] = list(q.filters)
    while stack:
        f = stack.pop()
        if isinstance(f, Condition):
            names.add(f.dimension)
        elif isinstance(f, Logic):
            stack.extend(f.items)
        else:
            stack.append(f.inner)
    return frozenset(visits.VISIT_COLUMNS[n] for n in names if n in visits.VISIT_COLUMNS)


def build(
    q: StatsQuery, files: Sources, start: datetime, end: datetime, timeout_s: int
) -> tuple[str, dict[str, Any]]:
    p = Params()
    ctes = visits.ctes(p, files, q.site_id, start, end, timeout_s, _attributes(q))
    dims = [_dimension_sql(p, d, start, end) for d in q.dimensions]
    where = " AND ".join(filter_sql(p, f, start, end) for f in q.filters) or "true"
    aliases = [f"d{i}" for i in range(len(dims))]
    picked = "".join(f"{sql} AS {alias}, " for sql, alias in zip(dims, aliases, strict=True))
    keys = "".join(f"{alias}, " for alias in aliases)
    group = f"GROUP BY {', '.join(aliases)}" if aliases else ""
    alias_of = dict(zip(q.dimensions, aliases, strict=True))
    order = ", ".join(
        f"{alias_of.get(name) or _ORDER_SQL[name]} {direction.upper()} NULLS LAST"
        for name, direction in order_terms(q)
    )
    if q.event_scoped:
        sel = f"""SELECT user_id, vn, {picked}count(*) AS events,
    count_if(event_type = 'page_view') AS pageviews FROM vev WHERE {where} GROUP BY ALL"""
    else:  # every event of a visit passes or none: one row per visit, no join back
        sel = f"""SELECT user_id, vn, {picked}visit_events AS events,
    visit_pageviews AS pageviews FROM visits WHERE {where}"""
    sql = f"""WITH {ctes},
sel AS ({sel}),
grp AS (SELECT {keys}count(*) AS visits, count(DISTINCT s.user_id) AS visitors,
    coalesce(sum(s.pageviews), 0) AS pageviews, coalesce(sum(s.events), 0) AS events,
    coalesce(count_if(v.bounce), 0) AS bounces, coalesce(sum(v.duration_us), 0) AS duration_us,
    coalesce(sum(v.visit_pageviews), 0) AS visit_pageviews
    FROM sel s JOIN visits v USING (user_id, vn) {group})
SELECT {keys}{", ".join(SUMS)}, count(*) OVER () AS total,
    (SELECT count(DISTINCT user_id) FROM sel) AS all_visitors
FROM grp ORDER BY {order} LIMIT {p.bind(q.limit)} OFFSET {p.bind(q.offset)}"""
    return sql, p.values


def _ratio(numerator: int, denominator: int) -> Fraction:
    return Fraction(numerator, denominator) if denominator else Fraction(0)


def metric_values(q: StatsQuery, sums: dict[str, int], all_visitors: int) -> list[int | float]:
    """The requested metrics from a row's exact sums (Python's round: half to even)."""
    visits_ = sums["visits"]
    values: dict[str, int | float] = {
        "visitors": sums["visitors"],
        "visits": visits_,
        "pageviews": sums["pageviews"],
        "events": sums["events"],
        "views_per_visit": float(round(_ratio(sums["visit_pageviews"], visits_), 2)),
        "bounce_rate": round(_ratio(100 * sums["bounces"], visits_)),
        "visit_duration": round(_ratio(sums["duration_us"], visits_ * 1_000_000)),
        "percentage": float(round(_ratio(100 * sums["visitors"], all_visitors), 1)),
    }
    return [values[m] for m in q.metrics]


def label(value: Any, unit: str) -> str:
    """A time bucket as Plausible writes it: ``2024-01-31`` or ``2024-01-31 13:00:00``."""
    assert isinstance(value, datetime)
    return value.strftime("%Y-%m-%d %H:%M:%S" if unit == "hour" else "%Y-%m-%d")


def time_labels(unit: str, start: datetime, end: datetime) -> list[str]:
    period = Period(unit)
    last = period.number(end - timedelta(microseconds=1))
    return [label(period.start(i), unit) for i in range(period.number(start), last + 1)]


def resolve_start(q: StatsQuery, root: Path) -> datetime:
    """The range's start; for "all", the day of the first archived hour."""
    if q.start is not None:
        return q.start
    found = list_files(root, None, q.end)
    first = found[0].hour if found else q.end - timedelta(days=1)
    return first.replace(hour=0, minute=0, second=0, microsecond=0)


def run(
    engine: QueryEngine, q: StatsQuery, root: Path, archived_until: datetime, timeout_s: int
) -> dict[str, Any]:
    start = resolve_start(q, root)
    with hour_files(root, start - timedelta(seconds=timeout_s), q.end) as files:
        sql, params = build(q, files, start, q.end, timeout_s)
        rows = engine.fetch(sql, params)
    n = len(q.dimensions)
    units = {d: time_unit(d, start, q.end) for d in q.dimensions if d.startswith("time")}
    results = []
    for row in rows:
        sums = dict(zip(SUMS, (int(v) for v in row[n : n + len(SUMS)]), strict=True))
        dims = [
            label(v, units[d]) if d in units else v
            for d, v in zip(q.dimensions, row[:n], strict=True)
        ]
        results.append({"metrics": metric_values(q, sums, int(row[-1])), "dimensions": dims})
    total = int(rows[0][-2]) if rows else 0
    if not rows and q.offset:
        # A page past the end still says how many rows there are.
        from dataclasses import replace

        head = replace(q, limit=1, offset=0)
        with hour_files(root, start - timedelta(seconds=timeout_s), q.end) as files:
            first = engine.fetch(*build(head, files, start, q.end, timeout_s))
        total = int(first[0][-2]) if first else 0
    meta: dict[str, Any] = {"archived_until": iso_z(archived_until), "method": "exact"}
    if q.include.imports:
        meta["imports_included"] = False
    if q.include.time_labels:
        (unit,) = units.values()
        meta["time_labels"] = time_labels(unit, start, q.end)
    if q.include.total_rows:
        meta["total_rows"] = total
    return {"results": results, "meta": meta, "query": echo(q, start)}


def echo(q: StatsQuery, start: datetime) -> dict[str, Any]:
    """The query as it was understood (Plausible's ``query``): the range resolved."""
    return {
        "site_id": q.site_id,
        "metrics": list(q.metrics),
        "date_range": [iso_z(start), iso_z(q.end)],
        "dimensions": list(q.dimensions),
        "filters": [_filter_json(f) for f in q.filters],
        "order_by": [list(t) for t in order_terms(q)],
        "include": {
            "imports": q.include.imports,
            "time_labels": q.include.time_labels,
            "total_rows": q.include.total_rows,
        },
        "pagination": {"limit": q.limit, "offset": q.offset},
    }


def _filter_json(f: Filter) -> list[Any]:
    if isinstance(f, Done):
        return ["has_not_done" if f.negated else "has_done", _filter_json(f.inner)]
    if isinstance(f, Not):
        return ["not", _filter_json(f.inner)]
    if isinstance(f, Logic):
        return [f.op, [_filter_json(g) for g in f.items]]
    modifiers = [] if f.case_sensitive else [{"case_sensitive": False}]
    return [f.op, f.dimension, list(f.values), *modifiers]
