"""``event-analytics forget USER_ID…``: erase people's events everywhere (forgetting.py).

Like every command, it works against a running service (its engine, found through
``--data-dir``, or REDIS_URL / REDIS_CLUSTER_URL) or on a stopped one's data. The audit
record goes to standard output as JSON: ids as SHA-256, events removed per hour, and
the backups taken before that still hold the data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import orjson

from event_analytics.config import Settings


def _forget(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics.forgetting import ForgetError, check_users

    try:
        users = check_users(args.users)
    except ValueError as exc:
        print(f"event-analytics forget: {exc}", file=sys.stderr)
        return 2

    async def run(settings: Settings) -> int:
        from event_analytics.forgetting import forget
        from event_analytics.store import IngestWriter

        store = IngestWriter.from_settings(settings)
        try:
            report = await forget(settings, store, users, wait_s=args.wait)
        except ForgetError as exc:
            print(f"event-analytics forget: {exc}", file=sys.stderr)
            return 1
        finally:
            await store.close()
        sys.stdout.write(orjson.dumps(report.record(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
        if report.backups_holding_data:
            print(
                f"note: {len(report.backups_holding_data)} backup(s) taken before this erasure "
                "still hold the data (backups_holding_data): delete them or erase again "
                "after restoring one",
                file=sys.stderr,
            )
        return 0

    from event_analytics.target import run_with_engine

    return run_with_engine(settings, run)


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run the erasure jobs the API queues until stopped (``serve`` starts it)."""
    import asyncio
    import signal

    from event_analytics.forget_worker import NICENESS, ForgetWorker
    from event_analytics.store import IngestWriter
    from event_analytics.supervisor import lower_priority

    lower_priority(NICENESS)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        store = IngestWriter.from_settings(settings)
        try:
            await ForgetWorker(settings, store).run(stop)
        finally:
            await store.close()
        return 0

    return asyncio.run(run())


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} is not between 1 and 3600 seconds")
    return value


def add_commands(
    sub: argparse._SubParsersAction[Any],
    add_dirs: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser(
        "forget", help="erase every event of these users everywhere, and refuse their events"
    )
    add_dirs(p)
    p.add_argument("users", nargs="+", metavar="USER_ID")
    p.add_argument(
        "--wait",
        type=_seconds,
        default=60.0,
        help="seconds to wait for the archiver to catch up and pause (default 60)",
    )
    p.set_defaults(func=_forget)
    w = sub.add_parser(
        "forget-worker",
        help="run the erasure jobs of POST /api/v1/admin/forget, one at a time "
        "(serve starts it while EA_ADMIN_KEYS is set)",
    )
    add_dirs(w)
    w.set_defaults(func=_worker)
