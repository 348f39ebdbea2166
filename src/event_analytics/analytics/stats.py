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

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from event_analytics.analytics import stats_compare, stats_goals, visit_cache, visits
from event_analytics.analytics.periods import Period
from event_analytics.analytics.pool import QueryEngine
from event_analytics.analytics.snapshot import Sources, hour_files
from event_analytics.analytics.sql import Params, source
from event_analytics.analytics.stats_spec import (
    GOAL,
    REVENUE_METRICS,
    Condition,
    Done,
    Filter,
    Logic,
    Not,
    StatsQuery,
)
from event_analytics.archive.files import list_files
from event_analytics.revenue import SQL_TYPE
from event_analytics.timebucket import iso_z

# The sums every row carries, in this order after the dimensions: integers, and ``rev``
# an exact DECIMAL (or NULL).
SUMS = ("visits", "visitors", "pageviews", "events", "bounces", "duration_us", "visit_pageviews",
        "rev", "rev_n", "dropped", "group_total")  # fmt: skip
_ORDER_SQL = {
    "visits": "visits", "visitors": "visitors", "pageviews": "pageviews", "events": "events",
    "percentage": "visitors", "bounce_rate": "bounces / nullif(visits, 0)",
    "visit_duration": "duration_us / nullif(visits, 0)",
    "views_per_visit": "visit_pageviews / nullif(visits, 0)",
    "conversion_rate": "visitors", "group_conversion_rate": "visitors / nullif(group_total, 0)",
    "total_revenue": "rev", "average_revenue": "rev / nullif(rev_n, 0)",
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
    if name == GOAL:
        return "goal_name"  # a column of the goal rows (stats_goals.goal_rows_sql)
    return visits.EVENT_SQL[name]


class _Where:
    """Filters as SQL over rows of ``vev`` (or of the goal rows when ``goal_rows``)."""

    def __init__(self, p: Params, q: StatsQuery, start: datetime, end: datetime) -> None:
        self.p, self.q, self.start, self.end = p, q, start, end

    def sql(self, f: Filter, goal_rows: bool) -> str:
        """A filter over one event row as a never-NULL boolean."""
        if isinstance(f, Not):
            return f"(NOT {self.sql(f.inner, goal_rows)})"
        if isinstance(f, Done):  # over the visitors' events, not goal rows
            inner = self.sql(f.inner, False)
            negated = "NOT " if f.negated else ""
            return f"(uk {negated}IN (SELECT uk FROM vev WHERE {inner}))"
        if isinstance(f, Logic):
            joiner = " AND " if f.op == "and" else " OR "
            return "(" + joiner.join(self.sql(g, goal_rows) for g in f.items) + ")"
        if f.dimension == GOAL and not goal_rows:
            return stats_goals.any_goal_sql(self.p, f, self.q.goals)
        return _condition_sql(self.p, f, self.start, self.end)

    def all(self, filters: tuple[Filter, ...], goal_rows: bool) -> str:
        return " AND ".join(self.sql(f, goal_rows) for f in filters) or "true"


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


def _dimensions_read(q: StatsQuery) -> set[str]:
    """The dimensions the query groups by or filters on."""
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
    return names


def _attributes(q: StatsQuery) -> frozenset[str]:
    """The visit columns the query's dimensions and filters read."""
    names = _dimensions_read(q)
    return frozenset(visits.VISIT_COLUMNS[n] for n in names if n in visits.VISIT_COLUMNS)


def _reads_visit_columns(q: StatsQuery) -> bool:
    """Whether the query reads a visit's columns from its events' rows (a ``visit:*`` or
    time dimension or filter: the time buckets are the visit's start)."""
    return any(n in visits.VISIT_COLUMNS or n.startswith("time") for n in _dimensions_read(q))


def _reads_props(q: StatsQuery) -> bool:
    """Whether the query reads custom properties (the only reader of events' payload)."""
    return any(n.startswith("event:props:") for n in _dimensions_read(q))


def build(
    q: StatsQuery,
    files: Sources,
    start: datetime,
    end: datetime,
    timeout_s: int,
    fast_key: str | None = visits.FAST_KEY,
    cached: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The statement; its rows end with ``suspect`` (the fast plan's order may be wrong
    here: run it with ``fast_key=None``). With ``cached`` (a visit cache entry's
    database), ``visits`` and ``vev`` are that entry's tables and ``files`` is not read."""
    p = Params()
    by_goal = GOAL in q.dimensions
    conversion = bool({"conversion_rate", "group_conversion_rate"} & set(q.metrics))
    # Only these read ``vev`` (events' own fields); the others read ``visits`` alone, and
    # their windows need not carry each event's columns (benchmarks/analytics_bench.py).
    events = q.event_scoped or by_goal or bool(q.filters) or conversion
    if cached is not None:
        ctes = visit_cache.ctes(cached, _reads_visit_columns(q))
    else:
        ctes = visits.ctes(
            p,
            files,
            q.site_id,
            start,
            end,
            timeout_s,
            _attributes(q),
            events,
            fast_key,
            payload=_reads_props(q),
        )
    dims = [_dimension_sql(p, d, start, end) for d in q.dimensions]
    rows = "gev" if by_goal else "vev"
    if by_goal:
        ctes += f",\ngev AS ({stats_goals.goal_rows_sql(p, q.goals, 'vev')})"
    w = _Where(p, q, start, end)
    where = w.all(q.filters, by_goal)
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
        currency = "goal_cur" if by_goal else p.bind(stats_goals.query_currency(q))
        amount, code = stats_goals.AMOUNT_SQL, stats_goals.CURRENCY_SQL
        sel = f"""SELECT uk, vn, {picked}count(*) AS events,
    count_if(event_type = 'page_view') AS pageviews,
    sum({amount}) FILTER (WHERE {code} = {currency}) AS rev,
    count({amount}) FILTER (WHERE {code} = {currency}) AS rev_n,
    count({amount}) FILTER (WHERE {currency} IS NOT NULL AND {code} IS DISTINCT FROM {currency})
    AS dropped FROM {rows} WHERE {where} GROUP BY ALL"""
    else:  # every event of a visit passes or none: one row per visit, its own columns
        sel = f"""SELECT uk, vn, {picked}visit_events AS events,
    visit_pageviews AS pageviews, NULL::{SQL_TYPE} AS rev, 0 AS rev_n, 0 AS dropped,
    bounce, duration_us, visit_pageviews FROM visits WHERE {where}"""
    # The conversion rates' denominators: visitors of the query without its top-level
    # goal and property filters, in all and per group of the other dimensions.
    totals, joined, group_total = "", "", "NULL AS group_total"
    if conversion:
        kept = w.all(stats_goals.strip_for_totals(q.filters), False)
        others = [(a, sql) for d, a, sql in zip(q.dimensions, aliases, dims, strict=True)
                  if d != GOAL]  # fmt: skip
        gpicked = "".join(f"{sql} AS g{a}, " for a, sql in others)
        gkeys = ", ".join(f"g{a}" for a, _ in others)
        totals = f""",
tot AS (SELECT DISTINCT {gpicked}uk FROM vev WHERE {kept}),
gt AS (SELECT {gkeys + ", " if gkeys else ""}count(DISTINCT uk) AS group_total FROM tot
    {"GROUP BY " + gkeys if gkeys else ""})"""
        on = " AND ".join(f"{a} IS NOT DISTINCT FROM g{a}" for a, _ in others) or "true"
        joined, group_total = f"LEFT JOIN gt ON {on}", "coalesce(group_total, 0) AS group_total"
    sql = f"""WITH {ctes},
sel AS ({sel}),
grp AS (SELECT {keys}count(*) AS visits, count(DISTINCT uk) AS visitors,
    coalesce(sum(pageviews), 0) AS pageviews, coalesce(sum(events), 0) AS events,
    coalesce(count_if(bounce), 0) AS bounces, coalesce(sum(duration_us), 0) AS duration_us,
    coalesce(sum(visit_pageviews), 0) AS visit_pageviews, sum(rev) AS rev,
    coalesce(sum(rev_n), 0) AS rev_n, coalesce(sum(dropped), 0) AS dropped
    FROM {"sel JOIN visits USING (uk, vn)" if q.event_scoped else "sel"} {group}){totals}
SELECT * FROM (SELECT {keys}{", ".join(SUMS[:-1])}, {group_total}, count(*) OVER () AS total,
    sum(dropped) OVER () AS all_dropped,
    {"(SELECT count(DISTINCT uk) FROM tot)" if totals else "0"} AS conv_total,
    (SELECT count(DISTINCT uk) FROM sel) AS all_visitors,
    (SELECT coalesce(bool_or(suspect), false) FROM visits) AS suspect FROM grp {joined})
ORDER BY {order} LIMIT {p.bind(q.limit)} OFFSET {p.bind(q.offset)}"""
    return sql, p.values


def _ratio(numerator: int, denominator: int) -> Fraction:
    return Fraction(numerator, denominator) if denominator else Fraction(0)


@dataclass(frozen=True, slots=True)
class Totals:
    """A query's figures over all its rows (not one page)."""

    rows: int = 0
    dropped: int = 0  # revenue amounts not summed: another currency than the goal's
    converting: int = 0  # visitors of the query without its goal and property filters
    visitors: int = 0  # visitors of all rows (percentage's denominator)


def metric_values(
    q: StatsQuery, sums: dict[str, Any], totals: Totals, currency: str | None
) -> list[Any]:
    """The requested metrics from a row's exact sums (Python's round: half to even)."""
    visits_ = sums["visits"]
    values: dict[str, Any] = {
        "visitors": sums["visitors"],
        "visits": visits_,
        "pageviews": sums["pageviews"],
        "events": sums["events"],
        "views_per_visit": float(round(_ratio(sums["visit_pageviews"], visits_), 2)),
        "bounce_rate": round(_ratio(100 * sums["bounces"], visits_)),
        "visit_duration": round(_ratio(sums["duration_us"], visits_ * 1_000_000)),
        "percentage": float(round(_ratio(100 * sums["visitors"], totals.visitors), 1)),
        "conversion_rate": float(round(_ratio(100 * sums["visitors"], totals.converting), 2)),
        "group_conversion_rate": float(
            round(_ratio(100 * sums["visitors"], sums["group_total"] or 0), 2)
        ),
    }
    if REVENUE_METRICS[0] in q.metrics or REVENUE_METRICS[1] in q.metrics:
        total = Decimal(sums["rev"] or 0)
        count = sums["rev_n"]
        average = total / count if count else Decimal(0)
        values["total_revenue"] = stats_goals.money(total, currency) if currency else None
        values["average_revenue"] = stats_goals.money(average, currency) if currency else None
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


def spans(q: StatsQuery, root: Path, timeout_s: int) -> list[tuple[datetime | None, datetime]]:
    """The ranges ``run`` reads files of: the query's (from a visit's timeout before its
    start) and its comparison's; admission's estimate."""
    start = resolve_start(q, root)
    back = timedelta(seconds=timeout_s)
    out: list[tuple[datetime | None, datetime]] = [(start - back, q.end)]
    if q.include.comparisons is not None:
        first, end = stats_compare.comparison_range(q.include.comparisons, start, q.end)
        out.append((first - back, end))
    return out


def _rows(
    engine: QueryEngine, q: StatsQuery, root: Path, start: datetime, timeout_s: int,
    fast_key: str | None,
) -> list[Any]:  # fmt: skip
    """The statement's rows: from the engine's visit cache when it is on, else the fast
    plan's, else the exact plan's (when the fast one is suspect, or has no row to say
    whether it is)."""
    cache = engine.visit_cache
    if cache.enabled:
        key = cache.key(root, q.site_id, start, q.end, timeout_s, fast_key)
        with cache.lease(root, key) as db:
            if db is not None:
                return engine.fetch(*build(q, Sources(), start, q.end, timeout_s, cached=db))
    with hour_files(root, start - timedelta(seconds=timeout_s), q.end) as files:
        if fast_key is not None:
            rows = engine.fetch(*build(q, files, start, q.end, timeout_s, fast_key))
            if rows and not rows[0][-1]:
                return rows
        return engine.fetch(*build(q, files, start, q.end, timeout_s, None))


def fetch(
    engine: QueryEngine, q: StatsQuery, root: Path, start: datetime, timeout_s: int,
    fast_key: str | None = visits.FAST_KEY,
) -> tuple[list[tuple[list[Any], dict[str, Any]]], Totals]:  # fmt: skip
    """The rows of one page (dimension values as DuckDB gives them, and sums), and the
    query's totals."""
    rows = _rows(engine, q, root, start, timeout_s, fast_key)
    if not rows and q.offset:
        # A page past the end still says how many rows there are.
        head = replace(q, limit=1, offset=0)
        first = _rows(engine, head, root, start, timeout_s, fast_key)
        return [], _totals(first[0]) if first else Totals()
    n = len(q.dimensions)
    out = [(list(row[:n]), dict(zip(SUMS, row[n : n + len(SUMS)], strict=True))) for row in rows]
    return out, _totals(rows[0]) if rows else Totals()


def _totals(row: Any) -> Totals:
    return Totals(*(int(v or 0) for v in row[-5:-1]))


def _currency(q: StatsQuery, dims: list[Any]) -> str | None:
    if GOAL in q.dimensions:
        return stats_goals.row_currency(q, dims[q.dimensions.index(GOAL)])
    return stats_goals.query_currency(q)


def run(
    engine: QueryEngine, q: StatsQuery, root: Path, archived_until: datetime, timeout_s: int,
    fast_key: str | None = visits.FAST_KEY,
) -> dict[str, Any]:  # fmt: skip
    """The answer; ``fast_key`` is the fast plan's visitor key (None: the exact plan)."""
    start = resolve_start(q, root)
    rows, totals = fetch(engine, q, root, start, timeout_s, fast_key)
    units = {d: time_unit(d, start, q.end) for d in q.dimensions if d.startswith("time")}
    results = []
    for dims, sums in rows:
        shown = [
            label(v, units[d]) if d in units else v for d, v in zip(q.dimensions, dims, strict=True)
        ]
        metrics = metric_values(q, sums, totals, _currency(q, dims))
        results.append({"metrics": metrics, "dimensions": shown})
    meta: dict[str, Any] = {"archived_until": iso_z(archived_until), "method": "exact"}
    compared = q.include.comparisons
    if compared is not None:
        other = stats_compare.comparison_range(compared, start, q.end)
        _compare(engine, q, root, (timeout_s, fast_key), (start, q.end), other, rows, results)
        if q.include.time_labels:
            (unit,) = units.values()
            meta["comparison_time_labels"] = time_labels(unit, *other)
    if q.include.imports:
        meta["imports_included"] = False
    if q.include.time_labels:
        (unit,) = units.values()
        meta["time_labels"] = time_labels(unit, start, q.end)
    if q.include.total_rows:
        meta["total_rows"] = totals.rows
    if set(REVENUE_METRICS) & set(q.metrics):
        meta["revenue_dropped_events"] = totals.dropped
    answer: dict[str, Any] = {"results": results, "meta": meta, "query": echo(q, start)}
    if compared is not None:
        answer["query"]["comparison_date_range"] = [iso_z(t) for t in other]
    return answer


def _compare(
    engine: QueryEngine, q: StatsQuery, root: Path, plan: tuple[int, str | None],
    main: tuple[datetime, datetime], other: tuple[datetime, datetime],
    rows: list[tuple[list[Any], dict[str, Any]]], results: list[dict[str, Any]],
) -> None:  # fmt: skip
    """Each result row gains ``comparison``: the other range's row of the same dimension
    values (time buckets by position), its metrics, and the change of each."""
    units = {d: time_unit(d, *main) for d in q.dimensions if d.startswith("time")}
    # The other range in the main range's time unit, all its rows.
    dims = tuple(f"time:{units[d]}" if d in units else d for d in q.dimensions)
    cq = replace(q, start=other[0], end=other[1], dimensions=dims, order_by=(),
                 limit=2**62, offset=0)  # fmt: skip
    crows, ctotals = fetch(engine, cq, root, other[0], *plan)

    def key(values: list[Any], start: datetime) -> tuple[Any, ...]:
        return tuple(
            Period(units[d]).number(v) - Period(units[d]).number(start) if d in units else v
            for d, v in zip(q.dimensions, values, strict=True)
        )

    found = {key(values, other[0]): (values, sums) for values, sums in crows}
    zero: dict[str, Any] = {name: 0 for name in SUMS} | {"rev": None, "group_total": None}
    for (values, _), result in zip(rows, results, strict=True):
        k = key(values, main[0])
        cvalues, csums = found.get(k, (None, zero))
        if cvalues is None:  # none that range: the same values, the bucket at that place
            cvalues = [
                Period(units[d]).start(Period(units[d]).number(other[0]) + i) if d in units else v
                for d, v, i in zip(q.dimensions, values, k, strict=True)
            ]
        metrics = metric_values(cq, csums, ctotals, _currency(q, values))
        result["comparison"] = {
            "dimensions": [
                label(v, units[d]) if d in units else v
                for d, v in zip(q.dimensions, cvalues, strict=True)
            ],
            "metrics": metrics,
            "change": [
                stats_compare.change(m, old, new)
                for m, old, new in zip(q.metrics, metrics, result["metrics"], strict=True)
            ],
        }


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
            **_comparisons_json(q),
        },
        "pagination": {"limit": q.limit, "offset": q.offset},
    }


def _comparisons_json(q: StatsQuery) -> dict[str, Any]:
    c = q.include.comparisons
    if c is None:
        return {}
    custom = {"date_range": c.date_range} if c.mode == "custom" else {}
    return {"comparisons": {"mode": c.mode, **custom}}


def _filter_json(f: Filter) -> list[Any]:
    if isinstance(f, Done):
        return ["has_not_done" if f.negated else "has_done", _filter_json(f.inner)]
    if isinstance(f, Not):
        return ["not", _filter_json(f.inner)]
    if isinstance(f, Logic):
        return [f.op, [_filter_json(g) for g in f.items]]
    modifiers = [] if f.case_sensitive else [{"case_sensitive": False}]
    return [f.op, f.dimension, list(f.values), *modifiers]


REALTIME = timedelta(minutes=5)


def current_visitors(engine: QueryEngine, site: str, root: Path, now: datetime) -> int:
    """Plausible's realtime figure: the site's visitors with an event (bots' aside) in the
    last five minutes, whenever their visit started."""
    p = Params()
    with hour_files(root, now - REALTIME, now) as files:
        sql = f"""SELECT count(DISTINCT user_id) FROM ({source(p, files)})
WHERE ts >= {p.bind(now - REALTIME)} AND ts < {p.bind(now)}
    AND NOT starts_with(event_type, 'bot_') AND site = {p.bind(site)}"""
        rows = engine.fetch(sql, p.values)
    return int(rows[0][0])
