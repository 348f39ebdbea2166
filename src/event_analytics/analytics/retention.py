"""Retention: cohorts by the period of a cohort event, and who returned k periods later.

``first_time``: a user's cohort is the period of their first cohort event in the whole
archive; ``recurring``: every period of the range in which they had one. Cohorts are
the periods whose start lies in ``[from, to)``. ``values[0]`` is the cohort's size,
``values[k]`` (k = 1..periods) its users with a return event in period ``cohort + k``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from event_analytics.analytics.periods import Period
from event_analytics.analytics.pool import QueryEngine
from event_analytics.analytics.snapshot import Sources, hour_files
from event_analytics.analytics.spec import RetentionSpec
from event_analytics.analytics.sql import Params, source, step_sql
from event_analytics.timebucket import iso_z


def build(spec: RetentionSpec, files: Sources, cohorts: list[int]) -> tuple[str, dict[str, Any]]:
    """SQL with rows (cohort index, k, users); k = 0 is the cohort's size."""
    p = Params()
    period = Period(spec.period)
    src = source(p, files)
    first, last = cohorts[0], cohorts[-1]
    cohort_end = p.bind(period.start(last + 1))
    if spec.type == "first_time":
        cohort = (
            f"SELECT user_id, {period.sql('min(ts)')} AS c FROM ev "
            f"WHERE is_cohort AND ts < {cohort_end} GROUP BY user_id"
        )
    else:
        cohort = (
            f"SELECT DISTINCT user_id, {period.sql('ts')} AS c FROM ev "
            f"WHERE is_cohort AND ts >= {p.bind(period.start(first))} AND ts < {cohort_end}"
        )
    lo, hi = p.bind(first), p.bind(last)
    ret_start = p.bind(period.start(first + 1))
    ret_end = p.bind(period.start(last + spec.periods + 1))
    # One pass over the files: the two selectors as flags of the rows either matches.
    sql = f"""
WITH events AS ({src}),
ev AS MATERIALIZED (SELECT * FROM (SELECT user_id, ts,
    {step_sql(p, spec.cohort_event)} AS is_cohort, {step_sql(p, spec.return_event)} AS is_return
    FROM events) WHERE is_cohort OR is_return),
cohort AS (SELECT * FROM ({cohort}) WHERE c BETWEEN {lo} AND {hi}),
ret AS (SELECT DISTINCT user_id, {period.sql("ts")} AS r FROM ev
    WHERE is_return AND ts >= {ret_start} AND ts < {ret_end})
SELECT c, 0 AS k, count(*) FROM cohort GROUP BY c
UNION ALL
SELECT c, r - c AS k, count(*) FROM cohort JOIN ret USING (user_id)
WHERE r - c BETWEEN 1 AND {p.bind(spec.periods)} GROUP BY c, k
"""
    return sql, p.values


def shape(
    spec: RetentionSpec, cohorts: list[int], rows: list[tuple[Any, ...]], archived_until: datetime
) -> dict[str, Any]:
    period = Period(spec.period)
    counts = {(int(c), int(k)): int(n) for c, k, n in rows}
    out = []
    kept = [0] * (spec.periods + 1)
    base = [0] * (spec.periods + 1)
    for c in cohorts:
        values = [counts.get((c, k), 0) for k in range(spec.periods + 1)]
        complete = [period.start(c + k + 1) <= archived_until for k in range(spec.periods + 1)]
        for k in range(spec.periods + 1):
            if complete[k]:
                kept[k] += values[k]
                base[k] += values[0]
        out.append(
            {"start": iso_z(period.start(c)), "users": values[0], "values": values,
             "complete": complete}
        )  # fmt: skip
    return {
        "from": iso_z(spec.start),
        "to": iso_z(spec.end),
        "period": spec.period,
        "periods": spec.periods,
        "type": spec.type,
        "method": "exact",
        "archived_until": iso_z(archived_until),
        "cohorts": out,
        # Over the cohorts whose period k has ended; None while none has.
        "mean": [round(kept[k] / base[k], 6) if base[k] else None for k in range(spec.periods + 1)],
    }


def span(spec: RetentionSpec) -> tuple[datetime | None, datetime] | None:
    """The range ``run`` reads files of (None: no cohort, nothing read)."""
    period = Period(spec.period)
    cohorts = period.starts(spec.start, spec.end)
    if not cohorts:
        return None
    # first_time looks back to the archive's start for each user's first cohort event.
    start = None if spec.type == "first_time" else period.start(cohorts[0])
    return start, period.start(cohorts[-1] + spec.periods + 1)


def run(
    engine: QueryEngine, spec: RetentionSpec, root: Path, archived_until: datetime
) -> dict[str, Any]:
    period = Period(spec.period)
    cohorts = period.starts(spec.start, spec.end)
    found = span(spec)
    if found is None:
        return shape(spec, [], [], archived_until)
    with hour_files(root, *found) as files:
        sql, params = build(spec, files, cohorts)
        rows = engine.fetch(sql, params)
    return shape(spec, cohorts, rows, archived_until)
