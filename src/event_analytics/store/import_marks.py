"""The days an import appended to but has not counted yet (``Keys.import_unfinished``).

An import marks a chunk's days before it appends their events and unmarks them once
the events are counted; what a killed import leaves marked, the next one rebuilds.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from event_analytics.store.errors import engine_errors
from event_analytics.store.writer import IngestWriter


def _name(day: datetime) -> str:
    return day.strftime("%Y-%m-%d")


async def mark(store: IngestWriter, days: Iterable[datetime]) -> None:
    names = sorted({_name(d) for d in days})
    if names:
        async with engine_errors(write=True):
            await store.client.sadd(store.keys.import_unfinished(), *names)


async def unmark(store: IngestWriter, days: Iterable[datetime]) -> None:
    names = sorted({_name(d) for d in days})
    if names:
        async with engine_errors(write=True):
            await store.client.srem(store.keys.import_unfinished(), *names)


async def marked(store: IngestWriter) -> list[datetime]:
    """The marked days (UTC midnights), oldest first; a name that is no day is dropped."""
    async with engine_errors():
        raw = await store.client.smembers(store.keys.import_unfinished())
    days = []
    for name in raw:
        text = name.decode() if isinstance(name, bytes) else str(name)
        try:
            days.append(datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC))
        except ValueError:
            continue
    return sorted(days)
