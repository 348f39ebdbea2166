"""The archive queries' time against archive size, over Parquet: the 3-step funnel, the
daily retention matrix and a Stats API aggregate of visits (visitors, visits, pageviews,
bounce rate, visit duration), each through the code the service runs
(``analytics.funnel/retention/stats.run``, DuckDB), against ClickHouse (chdb, in this
process) over the same Parquet copies, with its own idioms (``windowFunnel``, one pass
per user for the cohorts, window functions for the visits).

    python benchmarks/scale_bench.py [--sizes 3000000,10000000,30000000] [--runs 5]
        [--dir-prefix /tmp/ea-scale] [--threads 2] [--chdb-threads 2]

Each size's archive is the one ``analytics_bench.py`` makes (its generator, the
archive's own writer and compaction), kept under ``<dir-prefix>-<events>`` and reused.
The two engines run in turn, query by query, run by run, so their ratio is of one
moment of a shared machine; the load average is printed with every size. Each engine's
answer is checked against the other's (users per funnel step, retention cells, visit
totals) before it is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import analytics_bench as ab
from chdb import session as chdb_session
from rich.console import Console
from rich.table import Table

from event_analytics.analytics import funnel, retention, stats
from event_analytics.analytics.periods import Period
from event_analytics.analytics.pool import QueryEngine
from event_analytics.analytics.snapshot import hour_files
from event_analytics.analytics.spec import FunnelSpec, RetentionSpec
from event_analytics.analytics.stats_spec import parse_query
from event_analytics.archive.compact import compact_closed
from event_analytics.config import Settings

FUNNEL = "funnel, 3 steps"
RETENTION = "retention, daily"
AGGREGATE = "aggregate, visits"  # visitors, visits, pageviews, bounce rate, duration
TARGET_S = 1.0  # the funnel's p50 at 10 M events (issue 23)
LEAD = 2.0  # every query at least this many times faster than ClickHouse
TIMEOUT_S = Settings.model_fields["session_timeout_s"].default
# The columns ClickHouse reads, typed as the copies hold them (payload as its JSON text).
CH_COLUMNS = (
    "user_id String, timestamp DateTime64(6), event_type String, "
    "page_url Nullable(String), payload String, f_interactive Nullable(String)"
)


def aggregate_body(days: int) -> dict[str, Any]:
    """The Stats API v2 aggregate over the whole archive (``POST /api/v2/query``)."""
    return {
        "site_id": ab.SITE,
        "metrics": ["visitors", "visits", "pageviews", "bounce_rate", "visit_duration"],
        "date_range": [ab.iso(ab.END - timedelta(days=days)), ab.iso(ab.END)],
    }


def _ts(value: str) -> str:
    """A request's ``...Z`` time as ClickHouse's literal (the session is in UTC)."""
    return value.replace("T", " ").removesuffix("Z")


def ch_funnel(body: dict[str, Any], files: str) -> str:
    """``windowFunnel``: per user the furthest step reached from an entry within the
    window, which is what the funnel's step counts are (it gives no step durations)."""
    step1, step2, step3 = body["steps"]
    (_, prop, values), = step3["where"]  # fmt: skip
    listed = ", ".join(f"'{v}'" for v in values)
    window_us = body["window_s"] * 1_000_000
    end = _ts(body["to"])
    return f"""SELECT level, count() FROM (SELECT user_id,
    windowFunnel({window_us})(toUInt64(toUnixTimestamp64Micro(timestamp)),
        event_type = '{step1["event_type"]}' AND page_url = '{step1["page_url"]}'
            AND timestamp < '{end}',
        event_type = '{step2["event_type"]}',
        event_type = '{step3["event_type"]}' AND JSONExtractString(payload, '{prop}') IN ({listed}))
    AS level
  FROM file('{files}', Parquet, '{CH_COLUMNS}')
  WHERE timestamp >= '{_ts(body["from"])}'
    AND timestamp < toDateTime64('{end}', 6) + INTERVAL {body["window_s"]} SECOND
  GROUP BY user_id) WHERE level > 0 GROUP BY level"""


def ch_retention(body: dict[str, Any], files: str) -> str:
    """First-time daily cohorts: per user the day of the first cohort event and the days
    of return events, in one pass; then (cohort day, days after) counts."""
    cohort, back = body["cohort_event"]["event_type"], body["return_event"]["event_type"]
    start, end = _ts(body["from"]), _ts(body["to"])
    last = f"toDate('{end}') + {body['periods']}"
    return f"""SELECT c, k, count() FROM (
  SELECT user_id, minIf(toDate(timestamp), event_type = '{cohort}') AS c,
    groupUniqArrayIf(toDate(timestamp), event_type = '{back}') AS days
  FROM file('{files}', Parquet, '{CH_COLUMNS}')
  WHERE event_type IN ('{cohort}', '{back}') AND timestamp < {last}
  GROUP BY user_id HAVING countIf(event_type = '{cohort}') > 0)
ARRAY JOIN arrayConcat([0], arrayFilter(k -> k BETWEEN 1 AND {body["periods"]},
    arrayMap(d -> toInt32(d - c), days))) AS k
WHERE c >= toDate('{start}') AND c < toDate('{end}') GROUP BY c, k"""


def ch_aggregate(body: dict[str, Any], files: str) -> str:
    """Visits as the service cuts them (a gap over the session timeout starts one; the
    events from a timeout before the range decide), then the aggregate's metrics."""
    start, end = (_ts(v) for v in body["date_range"])
    return f"""SELECT uniqExact(user_id), count(), sum(pv),
    round(100 * avg(bounce)), round(avg(duration_s)) FROM (
  SELECT user_id, vn, min(timestamp) AS began, countIf(event_type = 'page_view') AS pv,
    pv = 1 AND countIf(event_type != 'page_view' AND ifNull(f_interactive, '') != 'false') = 0
      AS bounce,
    (toUnixTimestamp64Micro(max(timestamp)) - toUnixTimestamp64Micro(began)) / 1e6
      AS duration_s
  FROM (SELECT *, sum(starts) OVER (PARTITION BY user_id ORDER BY timestamp
      ROWS UNBOUNDED PRECEDING) AS vn FROM (
    SELECT user_id, timestamp, event_type, f_interactive,
      if(row_number() OVER w > 1 AND toUnixTimestamp64Micro(timestamp)
        - toUnixTimestamp64Micro(lagInFrame(timestamp) OVER w) <= {TIMEOUT_S * 1_000_000},
        0, 1) AS starts
    FROM file('{files}', Parquet, '{CH_COLUMNS}')
    WHERE timestamp >= toDateTime64('{start}', 6) - INTERVAL {TIMEOUT_S} SECOND
      AND timestamp < '{end}' AND NOT startsWith(event_type, 'bot_')
    WINDOW w AS (PARTITION BY user_id ORDER BY timestamp
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)))
  GROUP BY user_id, vn HAVING began >= '{start}')"""


def _rows(text: str) -> list[list[str]]:
    return [line.split(",") for line in text.strip().splitlines()]


def _check(name: str, ours: Any, theirs: Any) -> None:
    if ours != theirs:
        raise SystemExit(f"{name}: the engines disagree: ours {ours}, ClickHouse {theirs}")


def queries(
    engine: QueryEngine, ch: Any, root: Path, days: int
) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """Per query: (ours, ClickHouse's), after checking that their answers agree."""
    asked = ab.questions(ab.END, days)
    f_body, r_body = asked["3-step funnel, 7 days"][1], asked["daily retention, 7 days"][1]
    a_body = aggregate_body(days)
    f_spec, r_spec = FunnelSpec.model_validate(f_body), RetentionSpec.model_validate(r_body)
    a_query = parse_query(a_body, ab.END)
    with hour_files(root, None, ab.END) as found:
        # The same copies the service reads; every hour is compacted (no JSONL part).
        assert not found.jsonl and not found.parquet_old, "compact the archive first"
        files = str(root / "*" / "*" / "*" / "events_*.parquet")
        assert sorted(found.parquet) == sorted(map(str, root.glob(files[len(str(root)) + 1 :])))
    sqls = {FUNNEL: ch_funnel(f_body, files), RETENTION: ch_retention(r_body, files),
            AGGREGATE: ch_aggregate(a_body, files)}  # fmt: skip

    def ours_funnel() -> Any:
        return funnel.run(engine, f_spec, root, ab.END)

    def ours_retention() -> Any:
        return retention.run(engine, r_spec, root, ab.END)

    def ours_aggregate() -> Any:
        return stats.run(engine, a_query, root, ab.END, TIMEOUT_S)

    def theirs(name: str) -> Callable[[], str]:
        return lambda: str(ch.query(sqls[name], "CSV"))

    steps = [s["users"] for s in ours_funnel()["steps"]]
    levels = {int(level): int(n) for level, n in _rows(theirs(FUNNEL)())}
    _check(FUNNEL, steps, [sum(n for lv, n in levels.items() if lv >= k) for k in (1, 2, 3)])
    cohorts = ours_retention()["cohorts"]
    cells = {(_day(c["start"]), k): v for c in cohorts for k, v in enumerate(c["values"]) if v}
    their_cells = {(_day(c), int(k)): int(n) for c, k, n in _rows(theirs(RETENTION)())}
    _check(RETENTION, cells, their_cells)
    (row,) = ours_aggregate()["results"]
    (ch_row,) = _rows(theirs(AGGREGATE)())
    _check(AGGREGATE, row["metrics"], [int(float(v)) for v in ch_row])
    return {
        FUNNEL: (ours_funnel, theirs(FUNNEL)),
        RETENTION: (ours_retention, theirs(RETENTION)),
        AGGREGATE: (ours_aggregate, theirs(AGGREGATE)),
    }


def _day(text: str) -> int:
    """An answer's day (``2026-10-25T00:00:00Z``, ClickHouse's ``"2026-10-25"``) as its
    period number."""
    return Period.DAY.number(datetime.fromisoformat(text.strip('"')[:10]).replace(tzinfo=UTC))


def paired(runs: int, ours: Callable[[], Any], theirs: Callable[[], Any]) -> dict[str, Any]:
    """p50/p95 of each, run in turn (one warm-up each): both see the same moment's load."""
    ours()
    theirs()
    samples: dict[str, list[float]] = {"ours": [], "chdb": []}
    for _ in range(runs):
        for key, work in (("ours", ours), ("chdb", theirs)):
            began = time.perf_counter()
            work()
            samples[key].append(time.perf_counter() - began)
    out: dict[str, Any] = {}
    for key, values in samples.items():
        values.sort()
        out[key] = {
            "p50_s": statistics.median(values),
            "p95_s": values[min(len(values) - 1, round(0.95 * (len(values) - 1)))],
        }
    out["lead"] = out["chdb"]["p50_s"] / out["ours"]["p50_s"]
    return out


def measure(args: argparse.Namespace, events: int, console: Console) -> dict[str, Any]:
    """One size: its archive (made once, compacted), then the queries in turn."""
    kept = argparse.Namespace(**{k: getattr(args, k) for k in ("days", "users", "pages")})
    kept.events, kept.dir = events, Path(f"{args.dir_prefix}-{events}")
    root, _ = ab.archive(kept, console)
    began = time.perf_counter()
    hours, _ = compact_closed(root, ab.END + timedelta(hours=1))
    if hours:
        console.print(f"compacted {hours} hours in {time.perf_counter() - began:.0f} s")
    parquet = sum(p.stat().st_size for p in root.rglob("*.parquet"))
    engine = QueryEngine(max_concurrent=1, timeout_s=900, memory_limit=args.memory,
                         threads=args.threads)  # fmt: skip
    ch = chdb_session.Session()
    ch.query("SET session_timezone = 'UTC'")
    ch.query(f"SET max_threads = {args.chdb_threads}")
    try:
        work = queries(engine, ch, root, args.days)
        load = os.getloadavg()
        results = {name: paired(args.runs, *pair) for name, pair in work.items()}
        load_after = os.getloadavg()
    finally:
        engine.close()
        ch.close()
    return {"events": events, "parquet_bytes": parquet, "queries": results,
            "load": [round(load[0], 2), round(load_after[0], 2)]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=lambda v: [int(n) for n in v.split(",")],
                        default=[3_000_000, 10_000_000, 30_000_000])  # fmt: skip
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir-prefix", default="/tmp/ea-scale")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    parser.add_argument("--memory", default="2GB", help="DuckDB memory limit")
    parser.add_argument("--chdb-threads", type=int, default=2)
    args = parser.parse_args()
    console = Console(width=150)  # the table unwrapped in make's log
    table = Table(title=(
        f"Archive queries over Parquet by size ({args.days} days, {args.users:,} users), "
        f"{args.runs} runs each, DuckDB threads {args.threads} vs ClickHouse (chdb) threads "
        f"{args.chdb_threads}, in turn"))  # fmt: skip
    for col in ("events", "Parquet MB", "query", "p50 s", "p95 s", "chdb p50 s", "chdb p95 s",
                "lead", "load avg"):  # fmt: skip
        table.add_column(col, justify="left" if col == "query" else "right")
    measured = []
    ok = True
    for events in args.sizes:
        m = measure(args, events, console)
        measured.append(m)
        for name, r in m["queries"].items():
            lead_ok = r["lead"] >= LEAD
            target = name != FUNNEL or events != 10_000_000 or r["ours"]["p50_s"] <= TARGET_S
            ok = ok and lead_ok and target
            table.add_row(
                f"{events:,}", f"{m['parquet_bytes'] / 1e6:,.0f}", name,
                f"{r['ours']['p50_s']:.3f}", f"{r['ours']['p95_s']:.3f}",
                f"{r['chdb']['p50_s']:.3f}", f"{r['chdb']['p95_s']:.3f}",
                f"{r['lead']:.1f}x" + ("" if lead_ok else " (< 2x)"),
                "{} -> {}".format(*m["load"]),
            )  # fmt: skip
    console.print(table)
    console.print(f"target: funnel p50 <= {TARGET_S:g} s at 10,000,000 events, every query "
                  f">= {LEAD:g}x ClickHouse: {'met' if ok else 'missed'}")  # fmt: skip
    out = Path(__file__).parent / "results" / "scale.json"
    out.write_text(json.dumps(measured, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
