"""``event-analytics expire``: the retention job (expiry.py), a pass now or for good.

``serve`` starts it (``expire``, restarted if it dies) when EA_ARCHIVE_RETENTION_DAYS is
set; ``expire --once`` runs one pass from a shell and prints what it deleted;
``expire --dry-run`` prints what a pass would delete now, deleting nothing (before setting
the limit on an archive that already holds years, say).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from event_analytics.config import Settings
from event_analytics.errors import StorageUnavailable

if TYPE_CHECKING:
    from event_analytics.expiry import Preview


def expire(args: argparse.Namespace, settings: Settings) -> int:
    import psycopg  # here, not at the top: every CLI call builds this module's parser

    from event_analytics.expiry import Expiry, describe
    from event_analytics.store import IngestWriter
    from event_analytics.target import run_with_engine

    if not settings.archive_retention_days:
        print(
            "event-analytics expire: set EA_ARCHIVE_RETENTION_DAYS (days of hours to keep)",
            file=sys.stderr,
        )
        return 2

    async def run(settings: Settings) -> int:
        store = IngestWriter.from_settings(settings)
        job = Expiry(settings, store)
        try:
            if args.dry_run:
                try:
                    seen = await job.preview()
                except (StorageUnavailable, psycopg.Error, OSError) as exc:
                    why = f"{type(exc).__name__}: {describe(exc, settings)}"
                    print(f"event-analytics expire: {why}", file=sys.stderr)
                    return 1
                _print_preview(seen)
                return 0
            if not args.once:
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, stop.set)
                await job.run(stop)
                return 0
            try:
                done = await job.run_pass()
            except (StorageUnavailable, psycopg.Error, OSError):
                print(f"event-analytics expire: {job.totals.last_error}", file=sys.stderr)
                return 1
        finally:
            await store.close()
        days = ", ".join(done.deleted_days) or "none"
        print(f"deleted days: {days} (first day kept: {done.horizon})")
        if done.held_back:
            print(f"held back: {done.held_back}")
        print(
            f"totals: {done.hours_deleted} hour files, {done.events_deleted} events, "
            f"{done.postgres_rows_deleted} PostgreSQL rows in {done.passes} passes"
        )
        return 0

    return run_with_engine(settings, run)


def _print_preview(seen: Preview) -> None:
    for day, hours, events in seen.days:
        print(f"would delete {day}: {hours} hour files, {events} events")
    if seen.days:
        hours, events = sum(d[1] for d in seen.days), sum(d[2] for d in seen.days)
        print(
            f"would delete {len(seen.days)} days ({hours} hour files, {events} events); "
            f"first day kept: {seen.horizon}"
        )
    else:
        print(f"would delete nothing; first day kept: {seen.horizon}")
    if seen.held_back:
        print(f"held back: {seen.held_back}")


def add_commands(
    sub: argparse._SubParsersAction[Any],
    add_dirs: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser(
        "expire",
        help="delete whole days older than EA_ARCHIVE_RETENTION_DAYS from the archive, "
        "PostgreSQL and the counters (serve runs it by itself)",
    )
    add_dirs(p)
    p.add_argument("--once", action="store_true", help="one pass, then print what it deleted")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what a pass would delete now (and what it would hold back), deleting nothing",
    )
    p.set_defaults(func=expire)
