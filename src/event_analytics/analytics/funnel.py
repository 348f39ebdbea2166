"""Funnels: which users reached which step, how long each step took (docs/api.md).

A user's events are ordered by (timestamp, received_at, event_id), so ties have one
order. From every entry (a step-1 event in ``[from, to)``) the chain takes, for each
next step, the first later matching event (``ordered``), the very next event of the
user if it matches (``strict``); it stops at the first step out of the window. The
earliest next match is always the best choice, so this finds the furthest step any
chain of that entry reaches. ``any`` only asks, per step, whether a matching event
other than the entry lies in ``[t1, t1 + window]``. Each user counts once, with the
chain reaching furthest (the earliest entry among equals): its step-1 event is the
user's breakdown value, its step times their durations.

Two plans give the same answer: a fast one, which orders events by time alone and
says when that order is not exact here, and then the exact one (``_sequence_sql``).
A funnel whose data has such ties runs both, each within the engine's time limit.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from event_analytics.analytics.pool import QueryEngine
from event_analytics.analytics.snapshot import Sources, hour_files
from event_analytics.analytics.spec import FunnelSpec, parse_field
from event_analytics.analytics.sql import Params, field_sql, source, step_sql
from event_analytics.timebucket import iso_z

TOP_BREAKDOWNS = 20
OTHER = "(other)"
NONE = "(none)"
# The fast plan's user number (``_sequence_sql``).
FAST_KEY = "hash(user_id)"


def _chains(n: int) -> str:
    """``chains`` over ``c<n>``: a chain's level is 1 + the steps it reached (``t<k>`` is
    NULL where step k was not reached, in every plan)."""
    level = " + ".join(["1"] + [f"(t{k} IS NOT NULL)::INTEGER" for k in range(2, n + 1)])
    times = ", ".join(f"t{k}" for k in range(2, n + 1))
    return f"chains AS (SELECT uk, bd, n1, t1, {times}, {level} AS level FROM c{n})"


def _windowed_chain_sql(spec: FunnelSpec, w: str) -> str:
    """``ordered`` on the fast plan: every row of ``seq`` carries ``nx2``, the time of the
    user's next step-2 event after it (computed in the sort ``seq`` already makes); an
    entry's step 2 is its own ``nx2``. Step k > 2 is the next step-k event after the
    step k-1 event, found by (user, time) (without ties a user's time names one event)
    in ``nx<k>``: the same ``lead`` over only the user's step k-1 and step k events, a
    small sort, where a ``lead(... IGNORE NULLS)`` over every relevant event walked each
    entry's row to the next match (1-2 s of a 10 M-event funnel's window)."""
    n = len(spec.steps)
    ctes = [f"c2 AS (SELECT c.*, CASE WHEN c.nx2 <= c.t1 + {w} THEN c.nx2 END AS t2 FROM c1 c)"]
    for k in range(3, n + 1):
        ctes.append(
            f"nx{k} AS (SELECT uk, ts, s{k - 1}, lead(CASE WHEN s{k} THEN ts END IGNORE NULLS) "
            f"OVER (PARTITION BY uk ORDER BY ts) AS nx{k} FROM seq WHERE s{k - 1} OR s{k})"
        )
        ctes.append(
            f"c{k} AS (SELECT c.*, CASE WHEN m.nx{k} <= c.t1 + {w} THEN m.nx{k} END AS t{k} "
            f"FROM c{k - 1} c LEFT JOIN (SELECT uk, ts, nx{k} FROM nx{k} WHERE s{k - 1}) m "
            f"ON m.uk = c.uk AND m.ts = c.t{k - 1})"
        )
    return ", ".join([*ctes, _chains(n)])


def _windowed_any_sql(spec: FunnelSpec, w: str) -> str:
    """``any`` on the fast plan: step k is reached when the user's next step-k event after
    the entry (``nx<k>`` of the entry's row) is within the window. Without ties no other
    event shares the entry's time, so none before it in the order can count."""
    n = len(spec.steps)
    oks = ", ".join(f"coalesce(nx{k} <= t1 + {w}, false) AS ok{k}" for k in range(2, n + 1))
    return _any_chains(n, f"SELECT *, {oks} FROM c1")


def _any_chains(n: int, with_oks: str) -> str:
    """``chains`` for ``any`` over a SELECT of the entries with ``ok<k>``: the level is
    the first step not reached, minus one (no step times: they have no order)."""
    level = " ".join(f"WHEN NOT ok{k} THEN {k - 1}" for k in range(2, n + 1))
    times = ", ".join(f"NULL::BIGINT AS t{k}" for k in range(2, n + 1))
    return (
        f"chains AS (SELECT uk, bd, n1, t1, {times}, CASE {level} ELSE {n} END AS level "
        f"FROM ({with_oks}))"
    )


def _chain_sql(spec: FunnelSpec, w: str) -> str:
    """CTEs c2..cn extending the entries, and ``chains``: the last one with ``level``."""
    n = len(spec.steps)
    ctes = []
    if spec.order == "any":
        oks = []
        for k in range(2, n + 1):
            ctes.append(
                f"a{k} AS (SELECT c.uk, c.n1, "
                f"(coalesce(nx.ts <= c.t1 + {w}, false) OR coalesce(pv.ts = c.t1, false)) AS ok "
                f"FROM c1 c "
                f"ASOF LEFT JOIN (SELECT uk, n, ts FROM seq WHERE s{k}) nx "
                f"ON c.uk = nx.uk AND nx.n > c.n1 "
                f"ASOF LEFT JOIN (SELECT uk, n, ts FROM seq WHERE s{k}) pv "
                f"ON c.uk = pv.uk AND pv.n < c.n1)"
            )
            oks.append(f"a{k}.ok AS ok{k}")
        joins = " ".join(f"JOIN a{k} USING (uk, n1)" for k in range(2, n + 1))
        body = _any_chains(n, f"SELECT c1.*, {', '.join(oks)} FROM c1 {joins}")
        return ", ".join([*ctes, body])
    for k in range(2, n + 1):
        prev = f"c{k - 1}"
        if spec.order == "ordered":
            ctes.append(
                f"c{k} AS (SELECT c.*, "
                f"CASE WHEN m.ts <= c.t1 + {w} THEN m.n END AS n{k}, "
                f"CASE WHEN m.ts <= c.t1 + {w} THEN m.ts END AS t{k} "
                f"FROM {prev} c ASOF LEFT JOIN (SELECT uk, n, ts FROM seq WHERE s{k}) m "
                f"ON c.uk = m.uk AND m.n > c.n{k - 1})"
            )
        else:  # strict: the user's very next event
            ctes.append(
                f"c{k} AS (SELECT c.*, m.n AS n{k}, m.ts AS t{k} FROM {prev} c "
                f"LEFT JOIN seq m ON m.uk = c.uk AND m.n = c.n{k - 1} + 1 "
                f"AND m.s{k} AND m.ts <= c.t1 + {w})"
            )
    return ", ".join([*ctes, _chains(n)])


def _sequence_sql(fast_key: str | None, nexts: int) -> str:
    """``seq``: the relevant events with ``uk`` (the user as an integer) and ``n`` (their
    position in one order by user, then (timestamp, received_at, event_id)), and
    ``suspect``: whether that order may be wrong.

    Sorting every relevant event is most of a funnel's cost, and string keys make it
    slow: (user_id, ts, received_at, event_id) took 0.50 s for 1.3 M events where
    (integer, ts) took 0.24. The fast plan sorts by (hash of the user, ts) and flags, in
    the same sorted pass, the two cases where that is not the exact order: two events
    with the same hash and timestamp (a tie the full order would break), and two users
    with the same hash (their events would pass for one user's). A flagged answer is
    thrown away and the exact plan runs: dense user numbers from a join and the full
    sort key. ``fast_key`` is the hash (a test passes a colliding one).
    """
    if fast_key is None:
        return """users AS (SELECT user_id, row_number() OVER () AS uk
    FROM (SELECT DISTINCT user_id FROM ev)),
seq AS MATERIALIZED (SELECT ev.*, uk, row_number() OVER (
    ORDER BY uk, ts, received_at, event_id) AS n, false AS suspect
    FROM ev JOIN users USING (user_id))"""
    nx = "".join(
        f"lead(CASE WHEN s{k} THEN ts END IGNORE NULLS) OVER w AS nx{k}, "
        for k in range(2, nexts + 1)
    )
    return f"""seq AS MATERIALIZED (SELECT *, row_number() OVER w AS n, {nx}
    coalesce(lag(user_id) OVER w <> user_id OR lag(ts) OVER w = ts, false) AS suspect
    FROM (SELECT *, {fast_key} AS uk FROM ev) WINDOW w AS (PARTITION BY uk ORDER BY ts))"""


def build(
    spec: FunnelSpec, files: Sources, fast_key: str | None = FAST_KEY
) -> tuple[str, dict[str, Any]]:
    """The funnel's SQL: one row per (breakdown label, step) aggregate set, its last
    column whether the fast plan's order was suspect (then run it with ``fast_key=None``)."""
    p = Params()
    n = len(spec.steps)
    src = source(p, files)
    start, end = p.bind(spec.start), p.bind(spec.end)
    read_end = p.bind(spec.end + timedelta(seconds=spec.window_s))
    # Inside the funnel a time is its epoch microseconds (BIGINT): ``t1 + window`` on a
    # TIMESTAMPTZ is calendar arithmetic per row, ~5x an integer add; same order, same
    # equalities. The range filter stays on the file's column, where the scan uses it.
    w = f"{p.bind(spec.window_s * 1_000_000)}::BIGINT"
    matches = ", ".join(f"{step_sql(p, s)} AS s{i}" for i, s in enumerate(spec.steps, 1))
    bd = (
        field_sql(p, parse_field(spec.breakdown, bare_is_property=False))
        if spec.breakdown
        else "NULL::VARCHAR"
    )
    # Strict needs every event of the user (any other event breaks the chain); the other
    # orders only the events that are an entry or match a later step (a step-1 match
    # after ``to`` is neither: read only for the window of the entries before it).
    later = "".join(f" OR s{i}" for i in range(2, n + 1))
    relevant = "" if spec.order == "strict" else f"WHERE (s1 AND ts < epoch_us({end})){later}"
    # On the fast plan ``seq`` carries nx2 (ordered) or nx2..nx<n> (any); an entry takes
    # the ones it reads itself.
    if fast_key is not None and spec.order == "ordered":
        chains, seq_nexts, entry_nexts = _windowed_chain_sql(spec, w), 2, 2
    elif fast_key is not None and spec.order == "any":
        chains, seq_nexts, entry_nexts = _windowed_any_sql(spec, w), n, n
    else:
        chains, seq_nexts, entry_nexts = _chain_sql(spec, w), 0, 0
    nexts = "".join(f", nx{k}" for k in range(2, entry_nexts + 1))
    # Each user's chain: the furthest level, then the earliest entry (n1 is unique per
    # user), chosen by one aggregate instead of a sort of every entry.
    key = "level * 4294967296 - n1"
    durations = [f"arg_max_null((t{k} - t{k - 1}) / 1e6, {key}) AS d{k}" for k in range(2, n + 1)]
    aggregates = ["count(*) AS u1"]
    for k in range(2, n + 1):
        aggregates += [
            f"count(*) FILTER (level >= {k}) AS u{k}",
            f"median(d{k}) FILTER (level >= {k}) AS m{k}",
            f"avg(d{k}) FILTER (level >= {k}) AS a{k}",
        ]
    sql = f"""
WITH events AS ({src}),
ev AS (SELECT * FROM (
    SELECT user_id, epoch_us(ts) AS ts, received_at, event_id, {bd} AS bd, {matches}
    FROM (SELECT * FROM events WHERE ts >= {start} AND ts < {read_end})) {relevant}),
{_sequence_sql(fast_key, seq_nexts)},
c1 AS (SELECT uk, bd, n AS n1, ts AS t1{nexts} FROM seq
    WHERE s1 AND ts >= epoch_us({start}) AND ts < epoch_us({end})),
{chains},
best AS (SELECT uk, coalesce(arg_max_null(bd, {key}), '{NONE}') AS bd, max(level) AS level,
    {", ".join(durations)} FROM chains GROUP BY uk),
grp AS (SELECT bd, count(*) AS entered FROM best GROUP BY bd),
ranked AS (SELECT bd, CASE WHEN row_number() OVER (ORDER BY entered DESC, bd)
    <= {TOP_BREAKDOWNS} THEN bd ELSE '{OTHER}' END AS label FROM grp)
SELECT label, {", ".join(aggregates)},
    (SELECT coalesce(bool_or(suspect), false) FROM seq) AS suspect
FROM best JOIN ranked USING (bd) GROUP BY label ORDER BY u1 DESC, label
"""
    return sql, p.values


def _steps(spec: FunnelSpec, row: tuple[Any, ...]) -> list[dict[str, Any]]:
    n = len(spec.steps)
    users = [int(row[1])] + [int(row[2 + 3 * (k - 2)]) for k in range(2, n + 1)]
    out = []
    for i, step in enumerate(spec.steps):
        k = i + 1
        median = avg = None
        if k > 1 and spec.order != "any":
            median, avg = row[3 + 3 * (k - 2)], row[4 + 3 * (k - 2)]
        out.append(
            {
                "index": k,
                "event_type": step.event_type,
                "page_url": step.page_url,
                "users": users[i],
                "conversion_from_start": _share(users[i], users[0]),
                "conversion_from_previous": _share(users[i], users[i - 1]) if i else 1.0,
                "dropped": users[i - 1] - users[i] if i else 0,
                "median_s_from_previous": _seconds(median),
                "average_s_from_previous": _seconds(avg),
            }
        )
    return out


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 6)


def shape(
    spec: FunnelSpec, rows: list[tuple[Any, ...]], archived_until: datetime
) -> dict[str, Any]:
    """The answer for the aggregate rows of ``build``'s SQL."""
    answer: dict[str, Any] = {
        "from": iso_z(spec.start),
        "to": iso_z(spec.end),
        "window_s": spec.window_s,
        "order": spec.order,
        "breakdown": spec.breakdown,
        "method": "exact",
        "archived_until": iso_z(archived_until),
    }
    if spec.breakdown is None:
        empty = (NONE, 0, *([0, None, None] * (len(spec.steps) - 1)))
        answer["steps"] = _steps(spec, rows[0] if rows else empty)
        return answer
    # (other) last, whatever its size: it is not one value.
    ordered = sorted(rows, key=lambda r: r[0] == OTHER)
    answer["breakdowns"] = [{"value": r[0], "steps": _steps(spec, r)} for r in ordered]
    total = [0] * len(spec.steps)
    for r in rows:
        for i, step in enumerate(_steps(spec, r)):
            total[i] += step["users"]
    answer["steps"] = [
        {"index": i + 1, "event_type": s.event_type, "page_url": s.page_url, "users": total[i]}
        for i, s in enumerate(spec.steps)
    ]
    return answer


def span(spec: FunnelSpec) -> tuple[datetime, datetime]:
    """The range ``run`` reads files of: a step may end a window after the range."""
    return spec.start, spec.end + timedelta(seconds=spec.window_s)


def run(
    engine: QueryEngine,
    spec: FunnelSpec,
    root: Path,
    archived_until: datetime,
    fast_key: str | None = FAST_KEY,
) -> dict[str, Any]:
    """Read the hour files of ``[from, to + window)`` and answer (in the engine's pool)."""
    with hour_files(root, *span(spec)) as files:
        rows = engine.fetch(*build(spec, files, fast_key))
        if any(row[-1] for row in rows):
            rows = engine.fetch(*build(spec, files, None))
    return shape(spec, [row[:-1] for row in rows], archived_until)
