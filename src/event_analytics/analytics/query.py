"""Breakdown queries (Plausible Stats API v2 in spirit): metrics by dimensions, filtered.

Rows are ordered by ``order_by``, else by the time dimension ascending or the first
metric descending; then by every dimension ascending, so pages are stable. NULL (a
property an event lacks) sorts last either way.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from event_analytics.analytics.pool import QueryEngine
from event_analytics.analytics.snapshot import Sources, hour_files
from event_analytics.analytics.spec import Pagination, QuerySpec, parse_field
from event_analytics.analytics.sql import Params, field_sql, filters_sql, source
from event_analytics.timebucket import iso_z

_METRIC_SQL = {
    "events": "events",
    "visitors": "visitors",
    "events_per_visitor": "events / visitors",
}


def _dimension_sql(p: Params, name: str) -> str:
    if name.startswith("time:"):
        unit = name.removeprefix("time:")
        # From the fixed list TIME_DIMENSIONS (validated), not from the request's text.
        assert unit in ("minute", "hour", "day", "week", "month")
        return f"date_trunc('{unit}', ts)"
    return field_sql(p, parse_field(name, bare_is_property=False))


def order_terms(spec: QuerySpec) -> list[tuple[str, str]]:
    """(metric or dimension name, asc|desc), explicit first, then the stable tail."""
    terms: list[tuple[str, str]] = [(name, direction) for name, direction in spec.order_by]
    if not terms:
        time = [d for d in spec.dimensions if d.startswith("time:")]
        terms = [(time[0], "asc")] if time else [(spec.metrics[0], "desc")]
    named = {name for name, _ in terms}
    return terms + [(d, "asc") for d in spec.dimensions if d not in named]


def build(
    spec: QuerySpec, files: Sources, start: datetime, end: datetime
) -> tuple[str, dict[str, Any]]:
    p = Params()
    src = source(p, files)
    dims = [f"{_dimension_sql(p, d)} AS d{i}" for i, d in enumerate(spec.dimensions)]
    where = filters_sql(p, spec.parsed_filters)
    group = "GROUP BY ALL" if dims else ""
    alias = {d: f"d{i}" for i, d in enumerate(spec.dimensions)}
    order = ", ".join(
        f"{alias.get(name) or _METRIC_SQL[name]} {direction.upper()} NULLS LAST"
        for name, direction in order_terms(spec)
    )
    select = ", ".join([*[f"d{i}" for i in range(len(dims))], "events", "visitors"])
    sql = f"""
WITH events AS ({src}),
grouped AS (SELECT {", ".join([*dims, "count(*) AS events", "count(DISTINCT user_id) AS visitors"])}
    FROM events WHERE ts >= {p.bind(start)} AND ts < {p.bind(end)} AND {where} {group})
SELECT {select}, count(*) OVER () AS total FROM grouped
ORDER BY {order} LIMIT {p.bind(spec.pagination.limit)} OFFSET {p.bind(spec.pagination.offset)}
"""
    return sql, p.values


def _dimension_value(value: Any) -> Any:
    return iso_z(value) if isinstance(value, datetime) else value


def _metrics(spec: QuerySpec, events: int, visitors: int) -> list[int | float]:
    values: dict[str, int | float] = {
        "events": events,
        "visitors": visitors,
        "events_per_visitor": round(events / visitors, 2) if visitors else 0.0,
    }
    return [values[m] for m in spec.metrics]


def shape(
    spec: QuerySpec,
    rows: list[tuple[Any, ...]],
    total: int,
    start: datetime,
    end: datetime,
    archived_until: datetime,
) -> dict[str, Any]:
    n = len(spec.dimensions)
    results = [
        {
            "dimensions": [_dimension_value(v) for v in row[:n]],
            "metrics": _metrics(spec, int(row[n]), int(row[n + 1])),
        }
        for row in rows
    ]
    query = spec.model_dump(mode="json")
    query["date_range"] = [iso_z(start), iso_z(end)]
    return {
        "results": results,
        "meta": {
            "total_rows": total,
            "archived_until": iso_z(archived_until),
            "method": "exact",
        },
        "query": query,
    }


def run(
    engine: QueryEngine, spec: QuerySpec, root: Path, archived_until: datetime, now: datetime
) -> dict[str, Any]:
    start, end = spec.time_range(now)
    with hour_files(root, start, end) as files:
        sql, params = build(spec, files, start, end)
        rows = engine.fetch(sql, params)
        total = int(rows[0][-1]) if rows else 0
        if not rows and spec.pagination.offset:
            # A page past the end still says how many rows there are.
            first = spec.model_copy(update={"pagination": Pagination(limit=1, offset=0)})
            sql, params = build(first, files, start, end)
            head = engine.fetch(sql, params)
            total = int(head[0][-1]) if head else 0
    return shape(spec, rows, total, start, end, archived_until)
