"""``event-analytics loadtest``: send page views, report what came back, check the counts.

Exit status: 0 when the service's counts match what it acknowledged (PASS), 1 when they
do not (FAIL), 2 when the test could not run (service unreachable or not ready, batch
endpoint missing).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aiohttp
from rich.console import Console
from rich.table import Table

from event_analytics.config import client_headers
from event_analytics.loadtest.check import Verdict, read_buckets, verify
from event_analytics.loadtest.send import (
    CannotRun,
    LoadTest,
    Options,
    Outcome,
    Tally,
    check_ready,
    percentile,
)
from event_analytics.timebucket import Interval, floor, iso_z

__all__ = ["Options", "main"]


def main(options: Options, out: Console | None = None, err: Console | None = None) -> int:
    """Run the whole load test; the process exit status."""
    out = out or Console()
    err = err or Console(stderr=True)
    try:
        return asyncio.run(_run(options, out, err))
    except CannotRun as exc:
        err.print(f"[bold red]loadtest: {exc}", soft_wrap=True)  # one line, however wide
        return 2


async def _run(options: Options, out: Console, err: Console) -> int:
    timeout = aiohttp.ClientTimeout(total=options.timeout_s)
    async with aiohttp.ClientSession(
        options.url, timeout=timeout, headers=client_headers()
    ) as session:
        await check_ready(session)
        # Read before sending: the current minute may hold events from earlier runs.
        start_minute = floor(datetime.now(UTC), Interval.MINUTE)
        baseline = await read_buckets(session, [start_minute])
        tally = await LoadTest(options, err).run()
        report(options, tally, out)
        verdict = await verify(session, tally, baseline)
    show_verdict(tally, verdict, out)
    return 0 if verdict.passed else 1


def report(options: Options, tally: Tally, console: Console) -> None:
    """The closing table: what was sent, what came back, how fast."""
    lat = sorted(tally.latencies_s)
    secs = max(tally.elapsed_s, 1e-9)
    target = (
        f"POST /events/batch ({options.batch} per request)" if options.batch else "POST /events"
    )
    console.print(
        f"[bold]Load test[/]: {target} on {options.url}, {options.concurrency} connections"
        + (f", {options.rate:g} events/s" if options.rate else "")
    )
    table = Table()
    table.add_column("measure")
    table.add_column("value", justify="right")
    o = tally.outcomes
    rows = [
        ("requests", f"{tally.requests:,}"),
        ("events sent", f"{tally.sent:,}"),
        ("  of which resends", f"{tally.resends:,}"),
        ("accepted", f"{o[Outcome.ACCEPTED]:,}"),
        ("duplicates", f"{o[Outcome.DUPLICATE]:,}"),
        ("rejected", f"{o[Outcome.REJECTED]:,}"),
        ("errors", f"{o[Outcome.ERROR] + o[Outcome.UNAVAILABLE]:,}"),
        ("elapsed", f"{tally.elapsed_s:.2f} s"),
        ("requests/s", f"{tally.requests / secs:,.0f}"),
        ("events/s", f"{tally.sent / secs:,.0f}"),
        ("latency p50", f"{percentile(lat, 50) * 1000:.1f} ms"),
        ("latency p90", f"{percentile(lat, 90) * 1000:.1f} ms"),
        ("latency p99", f"{percentile(lat, 99) * 1000:.1f} ms"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def show_verdict(tally: Tally, verdict: Verdict, console: Console) -> None:
    """The per-minute comparison, then PASS or FAIL with the reasons."""
    table = Table(title="Count check: GET /analytics/minute-buckets/page_view_<minute>")
    for name in ("minute (UTC)", "count", "expected", "unique users", "expected", ""):
        table.add_column(name, justify="right")
    for row in verdict.minutes:
        users = (
            str(row.users_low)
            if row.users_low == row.users_high
            else f"{row.users_low}-{row.users_high}"
        )
        mark = "[green]ok" if row.ok else "[bold red]MISMATCH"
        table.add_row(
            iso_z(row.minute),
            f"{row.count:,}",
            f"{row.expected_count:,}",
            f"{row.users:,}",
            users,
            mark,
        )
    console.print(table)
    if verdict.resolved:
        console.print(
            f"{verdict.resolved} events whose answer was lost were resent to settle them "
            "(same event_id: never counted twice)"
        )
    for problem in verdict.problems:
        console.print(f"[red]- {problem}")
    acknowledged = sum(1 for e in tally.events if e.stored is True)
    if verdict.passed:
        console.print(
            f"[bold green]PASS[/]: the service counted exactly the {acknowledged:,} distinct "
            f"events it acknowledged, in {len(verdict.minutes)} minute(s)"
        )
    else:
        bad = sum(1 for m in verdict.minutes if not m.ok)
        console.print(
            f"[bold red]FAIL[/]: {bad} of {len(verdict.minutes)} minute(s) differ from the "
            f"{acknowledged:,} acknowledged events"
            + (f"; {len(verdict.problems)} other problem(s)" if verdict.problems else "")
        )
