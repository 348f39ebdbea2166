"""``event-analytics sql|funnel|retention|query``: the archive's analytics from a shell.

``sql`` is the operator's: one read-only SELECT against a view ``events`` of the archive.
The others take the HTTP API's JSON (``--json FILE``, ``-`` for stdin) or a few flags,
and answer from the archive files the same way the service does.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from event_analytics.config import Settings
from event_analytics.errors import EventAnalyticsError

# DuckDB, rich and the analytics are imported by the commands that run them: every CLI
# call builds this module's parsers, and those imports cost ~0.6 s of CPU to each.
if TYPE_CHECKING:
    from event_analytics.analytics.pool import QueryEngine
    from event_analytics.analytics.snapshot import Sources

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def cli_engine(settings: Settings) -> QueryEngine:
    from event_analytics.analytics.pool import QueryEngine

    return QueryEngine(
        max_concurrent=1,
        timeout_s=settings.analytics_timeout_s,
        memory_limit=settings.analytics_memory_limit,
        threads=settings.analytics_threads,
        visit_cache_bytes=settings.visit_cache_bytes,  # an export asks one range many times
        spill_dir=settings.spill_path,
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _view(found: Sources) -> str:
    """The archive's records; a view cannot hold parameters, so the paths (our own file
    names) are quoted literals."""
    from event_analytics.analytics.sql import COLUMNS

    names = ", ".join(f'"{c}"' for c in COLUMNS)
    parts = []
    # The record's columns are in copies of every schema; one read per schema, as the
    # files of one read_parquet must agree on their columns.
    for copies in (found.parquet, found.parquet_old):
        if copies:
            listed = ", ".join(_literal(p) for p in copies)
            parts.append(f"SELECT {names} FROM read_parquet([{listed}])")
    if found.jsonl:
        listed = ", ".join(_literal(p) for p in found.jsonl)
        columns = "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in COLUMNS.items())
        parts.append(
            f"SELECT {names} FROM read_json([{listed}], format='newline_delimited', "
            f"columns={columns}}}, ignore_errors=true) WHERE event_id IS NOT NULL"
        )
    if not parts:
        nulls = ", ".join(f"NULL::{t} AS {k}" for k, t in COLUMNS.items())
        return f"SELECT {nulls} WHERE false"
    return " UNION ALL ".join(parts)


def _compact(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics.archive.compact import compact_closed

    began = datetime.now(UTC)
    hours, events = compact_closed(settings.archive_path, began)
    print(f"compacted {hours} hours ({events:,} events) to Parquet")
    return 0


def _sql(args: argparse.Namespace, settings: Settings) -> int:
    import duckdb

    from event_analytics.analytics.snapshot import hour_files

    try:
        statements = duckdb.extract_statements(args.statement)
    except duckdb.Error as exc:
        print(f"event-analytics sql: {exc}", file=sys.stderr)
        return 2
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        print("event-analytics sql: one read-only SELECT statement, please", file=sys.stderr)
        return 2
    engine = cli_engine(settings)
    with hour_files(settings.archive_path, None, datetime(9000, 1, 1, tzinfo=UTC)) as found:
        engine.fetch(f"CREATE OR REPLACE VIEW events AS {_view(found)}")
        try:
            names, rows = engine.describe(args.statement)
        except duckdb.Error as exc:
            print(f"event-analytics sql: {exc}", file=sys.stderr)
            return 1
    _print_rows(names, rows, args.format)
    return 0


def _print_rows(names: list[str], rows: list[tuple[Any, ...]], fmt: str) -> None:
    from rich.console import Console
    from rich.table import Table

    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(names)
        writer.writerows(rows)
    elif fmt == "json":
        print(json.dumps([dict(zip(names, r, strict=True)) for r in rows], default=str))
    else:
        table = Table()
        for name in names:
            table.add_column(name)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        Console().print(table)


def archived_until_now(settings: Settings) -> datetime:
    """From the engine's streams when it can be reached; else the epoch (nothing promised)."""
    from event_analytics.analytics.freshness import archived_until
    from event_analytics.session import open_session
    from event_analytics.store.embedded import DataDirInUse
    from event_analytics.target import engine_settings

    async def read(resolved: Settings) -> datetime:
        async with open_session(resolved) as (_, streams):
            return await archived_until(streams, resolved.redis_timeout_s + 0.5)

    try:
        with engine_settings(settings) as resolved:
            return asyncio.run(read(resolved))
    except (DataDirInUse, EventAnalyticsError, OSError) as exc:
        print(f"note: archived_until unknown ({exc}); the answer promises nothing", file=sys.stderr)
        return EPOCH


def _body(args: argparse.Namespace) -> dict[str, Any]:
    if args.json:
        text = sys.stdin.read() if args.json == "-" else open(args.json).read()  # noqa: SIM115
        body: dict[str, Any] = json.loads(text)
        return body
    if args.command == "funnel":
        steps = [dict(zip(("event_type", "page_url"), s.split("=", 1), strict=False))
                 for s in args.step]  # fmt: skip
        return {"from": args.start, "to": args.end, "steps": steps, "window_s": args.window,
                "order": args.order, "breakdown": args.breakdown}  # fmt: skip
    if args.command == "retention":
        return {"from": args.start, "to": args.end, "period": args.period, "periods": args.periods,
                "cohort_event": {"event_type": args.cohort},
                "return_event": {"event_type": args.back}, "type": args.type}  # fmt: skip
    return {"date_range": args.range, "metrics": args.metric or ["events", "visitors"],
            "dimensions": args.dimension or [], "pagination": {"limit": args.limit}}  # fmt: skip


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics.analytics import funnel, query, retention
    from event_analytics.analytics.spec import FunnelSpec, QuerySpec, RetentionSpec

    try:
        body = _body(args)
        spec: FunnelSpec | RetentionSpec | QuerySpec
        if args.command == "funnel":
            spec = FunnelSpec.model_validate(body)
        elif args.command == "retention":
            spec = RetentionSpec.model_validate(body)
        else:
            spec = QuerySpec.model_validate(body)
    except (OSError, ValueError) as exc:
        detail = exc if not isinstance(exc, ValidationError) else _errors(exc)
        print(f"event-analytics {args.command}: {detail}", file=sys.stderr)
        return 2
    until = archived_until_now(settings)
    engine = cli_engine(settings)
    root = settings.archive_path
    if isinstance(spec, FunnelSpec):
        answer = funnel.run(engine, spec, root, until)
    elif isinstance(spec, RetentionSpec):
        answer = retention.run(engine, spec, root, until)
    else:
        answer = query.run(engine, spec, root, until, datetime.now(UTC))
    if args.format == "json":
        print(json.dumps(answer, indent=2))
    else:
        _print_answer(args.command, answer)
    return 0


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
    )


def _print_answer(kind: str, answer: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if kind == "funnel":
        for group in answer.get("breakdowns") or [{"value": None, "steps": answer["steps"]}]:
            title = f"Funnel ({answer['order']})" + (
                f": {group['value']}" if group["value"] else ""
            )
            table = Table(title=title)
            for col in ("step", "event", "users", "from start", "from previous", "median s"):
                table.add_column(col, justify="right" if col != "event" else "left")
            for s in group["steps"]:
                median = s.get("median_s_from_previous")
                table.add_row(str(s["index"]), f"{s['event_type']} {s.get('page_url') or ''}",
                              f"{s['users']:,}", f"{s.get('conversion_from_start', 0):.1%}",
                              f"{s.get('conversion_from_previous', 0):.1%}",
                              "" if median is None else f"{median:.1f}")  # fmt: skip
            console.print(table)
    elif kind == "retention":
        table = Table(title=f"Retention ({answer['type']}, by {answer['period']})")
        table.add_column("cohort")
        table.add_column("users", justify="right")
        for k in range(1, answer["periods"] + 1):
            table.add_column(f"+{k}", justify="right")
        for c in answer["cohorts"]:
            pairs = zip(c["values"][1:], c["complete"][1:], strict=True)
            cells = [f"{v / c['users']:.0%}" + ("" if done else "*") if c["users"] else "-"
                     for v, done in pairs]  # fmt: skip
            table.add_row(c["start"], f"{c['users']:,}", *cells)
        console.print(table)
    else:
        names = [*answer["query"]["dimensions"], *answer["query"]["metrics"]]
        rows = [tuple(r["dimensions"] + r["metrics"]) for r in answer["results"]]
        _print_rows(names, rows, "table")
        console.print(f"{answer['meta']['total_rows']:,} rows")
    until = answer.get("archived_until") or answer["meta"]["archived_until"]
    console.print(f"exact; every event received before {until} is counted")


def add_commands(sub: Any, add_dirs: Any) -> None:
    """Register the commands on ``cli.py``'s subparsers."""
    sql = sub.add_parser("sql", help="run one read-only SELECT against the view `events`")
    add_dirs(sql)
    sql.add_argument("statement", help='e.g. "SELECT event_type, count(*) FROM events GROUP BY 1"')
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sql.set_defaults(func=_sql)
    compact = sub.add_parser(
        "compact", help="Parquet copies of closed hours (used only while equal to the JSONL)"
    )
    add_dirs(compact)
    compact.set_defaults(func=_compact)
    for name, text in (
        ("funnel", "users reaching each step of a funnel (POST /analytics/funnel)"),
        ("retention", "cohort retention (POST /analytics/retention)"),
        ("query", "metrics by dimensions (POST /analytics/query)"),
    ):
        p = sub.add_parser(name, help=text)
        add_dirs(p)
        p.add_argument("--json", metavar="FILE", help="the API's JSON body ('-': stdin)")
        p.add_argument("--format", choices=("table", "json"), default="table")
        if name in ("funnel", "retention"):
            p.add_argument("--from", dest="start", help="ISO time")
            p.add_argument("--to", dest="end", help="ISO time, exclusive")
        if name == "funnel":
            p.add_argument("--step", action="append", default=[], help="TYPE or TYPE=URL-glob")
            p.add_argument("--window", type=int, default=86400, help="seconds (default a day)")
            p.add_argument("--order", choices=("ordered", "strict", "any"), default="ordered")
            p.add_argument("--breakdown", help="page_url, event_type or property:NAME")
        elif name == "retention":
            p.add_argument("--period", choices=("hour", "day", "week", "month"), default="day")
            p.add_argument("--periods", type=int, default=7)
            p.add_argument("--cohort", default="signup", help="cohort event type")
            p.add_argument("--return", dest="back", default="page_view", help="return event type")
            p.add_argument("--type", choices=("first_time", "recurring"), default="first_time")
        else:
            p.add_argument("--range", default="7d", help="1h, 24h, 7d, 30d")
            p.add_argument("--metric", action="append", help="events, visitors, ...")
            p.add_argument("--dimension", action="append", help="page_url, time:day, ...")
            p.add_argument("--limit", type=int, default=100)
        p.set_defaults(func=_report)
