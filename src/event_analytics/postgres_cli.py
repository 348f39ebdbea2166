"""``deliver``, ``sync --postgres`` and ``verify --postgres``: the PostgreSQL destination
from a shell (the delivery loop itself is destinations/delivery.py)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from event_analytics.archive import files, record
from event_analytics.archive.export import id_hash, ids_checksum
from event_analytics.config import Settings
from event_analytics.export_cli import BadArgument, check_range, parse_time
from event_analytics.timebucket import iso_z

SETTLE_WAIT_S = 30.0


def _need_url(settings: Settings, command: str) -> str | None:
    if not settings.postgres_url:
        print(f"event-analytics {command}: set EA_POSTGRES_URL (a libpq URL)", file=sys.stderr)
        return None
    return settings.postgres_url


def deliver(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics.destinations.delivery import Delivery

    if _need_url(settings, "deliver") is None:
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Delivery(settings).run(stop)
    return 0


def _range(args: argparse.Namespace, required: bool) -> tuple[datetime | None, datetime | None]:
    if not required and args.start is None and args.end is None:
        return None, None
    # verify's --from/--to are parsed by argparse already; sync's are text.
    start = args.start if isinstance(args.start, datetime) else parse_time("--from", args.start)
    end = args.end if isinstance(args.end, datetime) else parse_time("--to", args.end)
    check_range(start, end)
    return start.replace(minute=0, second=0, microsecond=0), end


def sync(args: argparse.Namespace, settings: Settings) -> int:
    """Make PostgreSQL's rows of the range exactly the archive's, hour by hour."""
    # psycopg here, not at the top: every CLI call builds this module's parser.
    import psycopg

    from event_analytics.destinations import postgres

    url = _need_url(settings, "sync")
    if url is None:
        return 2
    if not args.postgres:
        print("event-analytics sync: name a destination: --postgres", file=sys.stderr)
        return 2
    try:
        start, end = _range(args, required=True)
    except BadArgument as exc:
        print(f"event-analytics sync: {exc}", file=sys.stderr)
        return 2
    found = files.list_files(settings.archive_path, start, end)
    try:
        with postgres.connect(url) as conn:
            postgres.ensure_schema(conn)
            removed = written = 0
            for f in found:
                gone, added = postgres.resync(conn, f, _settled(f))
                removed, written = removed + gone, written + added
            # Hours with rows but no file: the archive is the truth, so they go.
            _, sums = postgres.snapshot(conn, start, end)
            have = {f.hour for f in found}
            for hour in sorted(set(sums) - have):
                removed += postgres.forget_file(conn, hour)
    except psycopg.Error as exc:
        print(f"event-analytics sync: PostgreSQL: {postgres.describe(exc, url)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"event-analytics sync: {exc}", file=sys.stderr)
        return 1
    print(f"synced {len(found)} hours: {written} rows written, {removed} rows replaced or removed")
    return 0


def _settled(f: files.ArchiveFile) -> int:
    """The file's settled size, waiting (bounded) for an archiver's write to finish."""
    from event_analytics.destinations.delivery import settled_size

    deadline = time.monotonic() + SETTLE_WAIT_S
    while (size := settled_size(f.path)) is None:
        if time.monotonic() > deadline:
            raise OSError(f"{f.relative} stayed locked by an archiver for {SETTLE_WAIT_S:.0f} s")
        time.sleep(0.01)
    return size


def _archive_sums(f: files.ArchiveFile, upto: int) -> tuple[int, int]:
    """(events, sum of id hashes) of the file's readable lines in its first ``upto`` bytes."""
    count = total = read = 0
    with f.path.open("rb") as handle:
        for line in handle:  # streamed: an hour file may be far larger than memory
            read += len(line)
            if read > upto:
                break
            try:
                record.decode(line)
            except record.InvalidRecord:
                continue
            count += 1
            total += id_hash(files.event_id_of(line))
    return count, total


def verify(args: argparse.Namespace, settings: Settings) -> int:
    """Per hour: the rows' count and id checksum against the archive's delivered lines."""
    # Here, not at the top: expiry reaches the store and so prometheus_client, which every
    # command's parser would then load before serve points it at its directory (cli._serve).
    import psycopg

    from event_analytics.destinations import postgres
    from event_analytics.destinations.postgres import Progress
    from event_analytics.expiry_totals import set_aside

    url = _need_url(settings, "verify")
    if url is None:
        return 2
    try:
        start, end = _range(args, required=False)
    except BadArgument as exc:
        print(f"event-analytics verify: {exc}", file=sys.stderr)
        return 2
    try:
        with postgres.connect(url) as conn:
            postgres.ensure_schema(conn)
            done, sums = postgres.snapshot(conn, start, end)
    except psycopg.Error as exc:
        print(f"event-analytics verify: PostgreSQL: {postgres.describe(exc, url)}", file=sys.stderr)
        return 1
    found = files.list_files(settings.archive_path, start, end)
    differ: list[tuple[datetime, str]] = []
    delivered = behind = 0
    for f in found:
        at = done.get(f.relative, Progress(0, 0))
        want = _archive_sums(f, at.offset)
        got = sums.pop(f.hour, (0, 0))
        delivered += want[0]
        behind += _lines(f) - at.lines
        if (got[0], got[1] % 2**64) != (want[0], want[1] % 2**64):
            differ.append((f.hour, _difference(f.hour, want, got)))
    for hour, got in sorted(sums.items()):  # rows of hours the archive has no file for
        differ.append((hour, _difference(hour, (0, 0), got)))
    differ, note = set_aside(settings, differ, lambda d: d[0])
    for _, line in differ:
        print(line)
    print(
        f"compared {len(found)} hours ({delivered} delivered events); {len(differ)} differ"
        + (f"; {behind} events not delivered yet" if behind else "")
    )
    if note:
        print(note)
    return 1 if differ else 0


def _lines(f: files.ArchiveFile) -> int:
    with f.path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def _difference(hour: datetime, want: tuple[int, int], got: tuple[int, int]) -> str:
    return (
        f"{iso_z(hour)}  archive {want[0]} events (ids {ids_checksum(want[1])})  "
        f"postgres {got[0]} rows (ids {ids_checksum(got[1])})"
    )


def add_commands(
    sub: argparse._SubParsersAction[Any],
    add_dirs: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser("deliver", help="deliver the archive to PostgreSQL (EA_POSTGRES_URL)")
    add_dirs(p)
    p.set_defaults(func=deliver)
    p = sub.add_parser("sync", help="re-deliver a range of hours to a destination, idempotently")
    add_dirs(p)
    p.add_argument("--postgres", action="store_true", help="to PostgreSQL (EA_POSTGRES_URL)")
    p.add_argument("--from", dest="start", help="ISO date/time (UTC if naive)")
    p.add_argument("--to", dest="end", help="ISO date/time, exclusive")
    p.set_defaults(func=sync)
