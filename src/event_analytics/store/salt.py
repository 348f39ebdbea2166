"""The daily secret salt of browser visitor ids, kept in the engine.

Every worker and node reads the same salt (the first to ask for a day creates it);
it expires a minute after its UTC day ends, so yesterday's ids can no longer be tied to
today's, nor to an IP. Each process asks the engine once a day.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from event_analytics.keys import Keys
from event_analytics.store.connect import Client
from event_analytics.store.errors import engine_errors

GRACE_S = 60


class DailySalt:
    def __init__(self, client: Client, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._day = ""
        self._salt = b""

    async def of(self, now: datetime) -> bytes:
        """The salt of ``now``'s UTC day (StorageUnavailable when the engine is away)."""
        day = now.astimezone(UTC).date()
        label = day.isoformat()
        if label == self._day:
            return self._salt
        key = self.keys.salt(label)
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        mine = secrets.token_hex(32)
        async with engine_errors():
            # NX with GET (Redis 7, Valkey): one round trip that sets ours or returns theirs.
            theirs = await self.client.set(
                key, mine, nx=True, get=True, exat=int(midnight.timestamp()) + GRACE_S
            )
        value = mine if theirs is None else theirs
        text = value.decode() if isinstance(value, bytes) else str(value)
        self._day, self._salt = label, bytes.fromhex(text)
        return self._salt
