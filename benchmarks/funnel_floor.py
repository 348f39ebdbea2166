"""What the archive funnel's time is made of: each part of ``scale_bench.py``'s 3-step
funnel run alone over the same Parquet copies, as CPU seconds of this process (DuckDB's
threads included) and wall seconds, the median of ``--runs``.

    python benchmarks/funnel_floor.py [--dir /tmp/ea-scale-10000000] [--runs 3]
        [--threads 2]

The parts: a bare count (the files' metadata), the read of the columns the funnel
needs with its range filter, that read with the steps' flags and filter (the service's
``step_sql``), a sort of the relevant events by (user hash, time) alone, the window
that finds each event's next step-2 event (without and with the tie check), and the
whole funnel as the service builds it (``funnel.build``). A plan that orders every
relevant event costs at least the read plus that window.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import analytics_bench as ab
import duckdb

from event_analytics.analytics import funnel
from event_analytics.analytics.snapshot import hour_files
from event_analytics.analytics.spec import FunnelSpec
from event_analytics.analytics.sql import Params, step_sql


def parts(spec: FunnelSpec, parquet: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, SQL, parameters) of each part, the relevant events in ``ev`` (a temp table)."""
    p = Params()
    src = f"read_parquet({p.bind(parquet)})"
    span = f'"timestamp" >= {p.bind(spec.start)} AND "timestamp" < {p.bind(funnel.span(spec)[1])}'
    flags = ", ".join(f"{step_sql(p, s)} AS s{i}" for i, s in enumerate(spec.steps, 1))
    relevant = " OR ".join(f"s{i}" for i in range(1, len(spec.steps) + 1))
    read = f"SELECT user_id, epoch_us(timestamp) AS ts, {flags} FROM {src} WHERE {span}"
    nx2 = "lead(CASE WHEN s2 THEN ts END IGNORE NULLS) OVER w"
    w = "WINDOW w AS (PARTITION BY uk ORDER BY ts)"
    sqls = [
        ("count(*) of the files (metadata)", f"SELECT count(*) FROM {src}"),
        ("read timestamp, range filter", f"SELECT max(timestamp) FROM {src} WHERE {span}"),
        (
            "read the columns the funnel needs",
            "SELECT max(hash(user_id)), max(timestamp), max(event_type), max(page_url), "
            f"max(length(payload)) FROM {src} WHERE {span}",
        ),
        (
            "read + step flags + filter",
            f"SELECT count(*), max(hash(user_id)), max(ts) FROM ({read}) WHERE {relevant}",
        ),
        (
            "sort relevant events by (user hash, time)",
            "CREATE OR REPLACE TEMP TABLE sorted AS SELECT uk, ts FROM ev ORDER BY uk, ts",
        ),
        ("window: next step-2 event", f"SELECT max(nx) FROM (SELECT {nx2} AS nx FROM ev {w})"),
        (
            "window: next step-2 event + tie check",
            f"SELECT max(nx), bool_or(tie) FROM (SELECT {nx2} AS nx, lag(ts) OVER w = ts AS tie "
            f"FROM ev {w})",
        ),
    ]
    setup = f"CREATE TEMP TABLE ev AS SELECT hash(user_id) AS uk, * FROM ({read}) WHERE {relevant}"

    def used(sql: str) -> dict[str, Any]:
        return {k: v for k, v in p.values.items() if re.search(rf"\${k}\b", sql)}

    return [(name, sql, used(sql)) for name, sql in [("(setup)", setup), *sqls]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default="/tmp/ea-scale-10000000", help="scale_bench's archive")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    root = Path(args.dir) / "archive"
    spec = FunnelSpec.model_validate(ab.questions(ab.END, 7)["3-step funnel, 7 days"][1])
    con = duckdb.connect(config={"threads": args.threads, "memory_limit": "2GB"})
    con.execute("SET TimeZone = 'UTC'")
    with hour_files(root, *funnel.span(spec)) as files:
        assert not files.jsonl and not files.parquet_old, "compact the archive first"
        work = parts(spec, files.parquet)
        work.append(("the whole funnel (funnel.build)", *funnel.build(spec, files)))
        print(f"load {os.getloadavg()[0]:.1f}, {len(files.parquet)} copies under {root}")
        for name, sql, params in work:
            if name == "(setup)":
                con.execute(sql, params)
                continue
            cpu, wall = [], []
            for _ in range(args.runs):
                began, times = time.perf_counter(), os.times()
                con.execute(sql, params).fetchall()
                after = os.times()
                wall.append(time.perf_counter() - began)
                cpu.append(after.user + after.system - times.user - times.system)
            print(
                f"{name:44s} CPU {statistics.median(cpu):5.2f} s  "
                f"wall {statistics.median(wall):5.2f} s  load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
