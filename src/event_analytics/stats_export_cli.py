"""``event-analytics stats-export``: the site page's export (GET /api/v1/sites/export) from a
shell: the same queries (analytics/stats_export.py) through the same planner, on the archive
of the command's settings, written as a zip.

The site's goals come from the engine (as ``goals list``); archived_until from its streams
when it can be reached (as ``query``). Bad arguments are one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from event_analytics.analytics import stats_export
from event_analytics.config import Settings
from event_analytics.errors import EventAnalyticsError, InvalidInput
from event_analytics.goals import Goal, check_site

# The query planner and its parser are imported by the command: every CLI call builds
# this module's parser.
if TYPE_CHECKING:
    from event_analytics.analytics.stats_spec import StatsQuery

NAME = "event-analytics stats-export"


def _plan(args: argparse.Namespace) -> tuple[str, list[tuple[str, dict[str, Any], StatsQuery]]]:
    """The site and every query, parsed (InvalidInput or ValueError on bad arguments)."""
    from event_analytics.analytics.stats_spec import StatsQueryError, date_range, parse_query

    site = check_site(args.site)
    filters = []
    for text in args.filter or []:
        try:
            f = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"--filter {text!r} is not JSON: e.g. "
                             '\'["is", "visit:source", ["Google"]]\'') from None  # fmt: skip
        filters.append(f)
    raw: Any = args.range.split(",") if "," in args.range else args.range
    now = datetime.now(UTC)
    try:
        date_range(raw, now)
    except StatsQueryError as exc:  # its words are for the v2 body: say it for the flag
        raise ValueError(f"--range: {exc.message} (here: --range 7d, or two ISO dates or "
                         "date-times joined by a comma)") from None  # fmt: skip
    plan = stats_export.plan(site, raw, filters, args.interval, goals=False)
    return site, [(name, body, parse_query(body, now)) for name, body in plan]


def _goals(settings: Settings, site: str) -> list[Goal]:
    from event_analytics.store import IngestWriter
    from event_analytics.store.goals import GoalStore
    from event_analytics.target import run_with_engine

    found: list[Goal] = []

    async def run(resolved: Settings) -> int:
        store = IngestWriter.from_settings(resolved)
        try:
            found.extend(await GoalStore(store.client, store.keys).list(site))
        finally:
            await store.close()
        return 0

    if run_with_engine(settings, run) != 0:
        raise EventAnalyticsError("the engine could not be reached for the site's goals")
    return found


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics.analytics import stats
    from event_analytics.analytics.stats_spec import StatsQueryError, parse_query, with_goals
    from event_analytics.archive_cli import archived_until_now, cli_engine

    try:
        site, queries = _plan(args)
    except (InvalidInput, ValueError) as exc:
        print(f"{NAME}: {exc.detail() if isinstance(exc, InvalidInput) else exc}", file=sys.stderr)
        return 2
    try:
        goals = _goals(settings, site)
        if goals:  # the conversions file, and every query told the site's goals
            raw = queries[0][1]
            now = datetime.now(UTC)
            plan = stats_export.plan(site, raw["date_range"], raw["filters"], args.interval, True)
            queries = [(n, b, with_goals(parse_query(b, now), goals)) for n, b in plan]
        until = archived_until_now(settings)
        engine = cli_engine(settings)
        files = [
            (name, body, stats.run(engine, q, settings.archive_path, until,
                                   settings.session_timeout_s))
            for name, body, q in queries
        ]  # fmt: skip
    except StatsQueryError as exc:
        print(f"{NAME}: {exc.detail()}", file=sys.stderr)
        return 2
    except EventAnalyticsError as exc:
        print(f"{NAME}: {exc.detail()}", file=sys.stderr)
        return 1
    data = stats_export.zip_bytes(files, site)
    with open(args.output, "wb") as out:
        out.write(data)
    print(f"wrote {args.output}: {len(files)} CSV files, {len(data):,} bytes")
    return 0


def add_commands(sub: Any, add_dirs: Any) -> None:
    """Register ``stats-export`` on ``cli.py``'s subparsers."""
    p = sub.add_parser(
        "stats-export", help="a site's view as CSV files in a zip (the site page's export)"
    )
    add_dirs(p)
    p.add_argument("--site", required=True, help="the site's domain, e.g. example.com")
    p.add_argument(
        "--range", default="30d", help="7d, 30d, month, … or two ISO dates joined by a comma"
    )
    p.add_argument("--filter", action="append",
                   help='a v2 filter as JSON, e.g. \'["is", "visit:source", ["Google"]]\' '
                        "(repeatable: all hold)")  # fmt: skip
    p.add_argument("--interval", choices=stats_export.INTERVALS, default="day",
                   help="the graph's (visitors.csv) bucket (default day)")  # fmt: skip
    p.add_argument("--output", required=True, help="the zip to write")
    p.set_defaults(func=_run)
