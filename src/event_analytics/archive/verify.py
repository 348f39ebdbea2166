"""Compare live minute counters with the archive, minute by minute."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from event_analytics.archive import files, record
from event_analytics.store import IngestWriter
from event_analytics.store.reads import Reads
from event_analytics.timebucket import MINUTE, Interval, floor


@dataclass(frozen=True, slots=True)
class Difference:
    event_type: str
    minute: datetime
    archive_count: int
    live_count: int
    archive_users: int
    live_users: int


@dataclass
class VerifyReport:
    minutes_compared: int = 0
    events_in_archive: int = 0
    skipped_expired: int = 0
    unreadable: int = 0


async def verify(
    store: IngestWriter,
    found: list[files.ArchiveFile],
    retention_s: int,
    differences: list[Difference],
) -> VerifyReport:
    """Append every minute whose live count or unique users differ from the archive's.

    Minutes older than the minute retention are skipped (live has let them expire).
    Works a day at a time so memory stays bounded by one day of user sets.
    """
    report = VerifyReport()
    reads = Reads(store)
    oldest_live = floor(datetime.now(UTC) - timedelta(seconds=retention_s), Interval.MINUTE)
    for day, day_files in files.by_day(found):
        counts: dict[tuple[str, datetime], int] = defaultdict(int)
        users: dict[tuple[str, datetime], set[str]] = defaultdict(set)
        for line in files.read_lines(f.path for f in day_files):
            try:
                got = record.decode(line)
            except record.InvalidRecord:
                report.unreadable += 1  # rebuild skips it too: it is in no counter
                continue
            key = (got.event_type, floor(got.timestamp, Interval.MINUTE))
            counts[key] += 1
            users[key].add(got.user_id)
            report.events_in_archive += 1
        start = max(day, oldest_live + MINUTE)
        minutes = []
        m = start
        while m < day + timedelta(days=1):
            minutes.append(m)
            m += MINUTE
        report.skipped_expired += sum(1 for (_, minute) in counts if minute < start)
        for event_type in sorted({t for t, _ in counts}):
            live = await reads.minute_stats(event_type, minutes)
            for minute, (live_count, live_users) in zip(minutes, live, strict=True):
                key = (event_type, minute)
                want_count, want_users = counts.get(key, 0), len(users.get(key, ()))
                report.minutes_compared += 1
                if (want_count, want_users) != (live_count, live_users):
                    differences.append(
                        Difference(
                            event_type, minute, want_count, live_count, want_users, live_users
                        )
                    )
    return report
