"""A/B of DuckDB's ``read_json`` options over the analytics bench's JSONL archive, and the
parse bound: events per second per DuckDB thread when only parsing the hour files.

    python benchmarks/jsonl_levers.py [--dir /tmp/ea-analytics-bench] [--runs 3]

Run ``benchmarks/analytics_bench.py`` first (it generates the archive under --dir). Each
variant runs once to warm the page cache, then ``--runs`` times; the table shows the p50
in seconds and events per second per thread. Every variant must count every event: a
fast wrong answer is a failure (exit 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
from rich.console import Console
from rich.table import Table

from event_analytics.analytics.sql import COLUMNS
from event_analytics.archive import files

NEEDED = {"user_id": "VARCHAR", "timestamp": "TIMESTAMPTZ", "event_type": "VARCHAR"}
# page_url is the one payload property the top-pages query needs: read it as a struct
# field instead of keeping the payload's JSON text and extracting it per row.
PAGE_STRUCT = {**NEEDED, "payload": "STRUCT(page_url VARCHAR)"}
PAGE_JSON = {**NEEDED, "payload": "JSON"}


def variants() -> dict[str, tuple[str, dict[str, Any]]]:
    base = "FROM read_json($files, format='newline_delimited', columns=$columns{extra})"
    count = "SELECT count(*) " + base
    pages = (
        "SELECT count(*) FROM (SELECT {page} AS p, count(*), count(DISTINCT user_id) "
        + base
        + " WHERE event_type = 'page_view' GROUP BY p)"
    )
    return {
        "parse: all columns (today)": (count.format(extra=""), dict(COLUMNS)),
        "parse: all, ignore_errors (today's source)": (
            count.format(extra=", ignore_errors=true"), dict(COLUMNS)),
        "parse: user_id, timestamp, event_type": (count.format(extra=""), NEEDED),
        "parse: timestamp as VARCHAR": (
            count.format(extra=""), {**NEEDED, "timestamp": "VARCHAR"}),
        "parse: all, records=true": (count.format(extra=", records=true"), dict(COLUMNS)),
        "parse: all, maximum_object_size=4096": (
            count.format(extra=", maximum_object_size=4096"), dict(COLUMNS)),
        "top pages: payload JSON ->> (today)": (
            pages.format(page="payload->>'page_url'", extra=""), PAGE_JSON),
        "top pages: payload STRUCT(page_url)": (
            pages.format(page="payload.page_url", extra=""), PAGE_STRUCT),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ea-analytics-bench"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    found = files.list_files(args.dir / "archive")
    if not found:
        print(f"no archive under {args.dir}: run benchmarks/analytics_bench.py first")
        return 1
    paths = [str(f.path) for f in found]
    events = sum(1 for _ in files.read_lines(f.path for f in found))
    size = sum(f.size_bytes for f in found)
    console = Console(width=140)
    table = Table(title=f"read_json over {events:,} events ({size / 1e6:,.0f} MB JSONL)")
    for col in ("variant", "threads", "p50 s", "events/s per thread", "MB/s per thread"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    failed = False
    for threads in args.threads:
        db = duckdb.connect(config={"threads": threads})
        db.execute("SET TimeZone = 'UTC'")
        for name, (sql, columns) in variants().items():
            params = {"files": paths, "columns": columns}
            got = db.execute(sql, params).fetchone()  # warm
            if name.startswith("parse") and (got is None or got[0] != events):
                console.print(f"[red]{name}: counted {got} of {events} events")
                failed = True
            samples = []
            for _ in range(args.runs):
                began = time.perf_counter()
                db.execute(sql, params).fetchall()
                samples.append(time.perf_counter() - began)
            p50 = statistics.median(samples)
            table.add_row(name, str(threads), f"{p50:.3f}", f"{events / p50 / threads:,.0f}",
                          f"{size / 1e6 / p50 / threads:,.0f}")  # fmt: skip
        db.close()
    console.print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
