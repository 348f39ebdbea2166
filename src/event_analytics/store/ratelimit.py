"""Fixed-window request counters in Redis, shared by every worker and every service node."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from event_analytics.keys import Keys
from event_analytics.store.connect import Client
from event_analytics.store.errors import engine_errors


def digest(text: str) -> str:
    """A fixed-length name for a key or address in key names (never the text itself)."""
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


@dataclass(frozen=True, slots=True)
class Limited:
    """Over the limit: which counter, and when its window ends."""

    kind: str
    limit: int
    retry_after_s: int


class RateLimits:
    """Per-key and per-address limits over windows of ``window_s`` seconds: of requests
    (``hit``) and, separately, of events (``take``).

    One round trip per request: INCR and EXPIRE of each counter, pipelined (plain
    commands: nothing to reload after an engine restart, and each counter is one key,
    so it works unchanged on a cluster). Fixed windows aligned on the clock: a client
    may send up to twice the limit around a window boundary, never more.
    """

    def __init__(
        self,
        client: Client,
        keys: Keys,
        per_key: int,
        per_address: int,
        window_s: int,
        events_per_key: int = 0,
        events_per_address: int = 0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.per_key = per_key
        self.per_address = per_address
        self.window_s = window_s
        self.events_per_key = events_per_key
        self.events_per_address = events_per_address

    @property
    def counts_events(self) -> bool:
        return bool(self.events_per_key or self.events_per_address)

    async def take(self, key_id: str | None, address: str | None, n: int) -> Limited | None:
        """Count ``n`` events; a Limited (and the ``n`` given back) when that is over one of
        the event limits: a refused batch stores nothing, so it costs nothing either."""
        counters = _counters(key_id, address, self.events_per_key, self.events_per_address)
        limited = await self._count([(f"{k}_events", lim, name) for k, lim, name in counters], n)
        if limited is None:
            return None
        async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
            for kind, _, name in counters:
                pipe.decrby(self.keys.rate(f"{kind}_events", name, limited.window), n)
            await pipe.execute()
        return Limited(limited.kind.removesuffix("_events"), limited.limit, limited.retry_after_s)

    async def hit(self, key_id: str | None, address: str | None) -> Limited | None:
        """Count one request; a Limited when it is over one of the limits."""
        counters = _counters(key_id, address, self.per_key, self.per_address)
        limited = await self._count(counters, 1)
        if limited is None:
            return None
        return Limited(limited.kind, limited.limit, limited.retry_after_s)

    async def _count(self, counters: list[tuple[str, int, str]], n: int) -> _Over | None:
        """Add ``n`` to each (kind, limit, name) counter of this window; the first over."""
        if not counters:
            return None
        now = time.time()
        window = int(now // self.window_s)
        # Twice the window: a counter outlives its window even when clocks differ a little.
        ttl = 2 * self.window_s
        async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
            for kind, _, name in counters:
                key = self.keys.rate(kind, name, window)
                pipe.incrby(key, n)
                pipe.expire(key, ttl)
            replies = await pipe.execute()
        for (kind, limit, _), count in zip(counters, replies[0::2], strict=True):
            if int(count) > limit:
                retry = math.ceil((window + 1) * self.window_s - now)
                return _Over(kind, limit, max(1, retry), window)
        return None


@dataclass(frozen=True, slots=True)
class _Over:
    kind: str
    limit: int
    retry_after_s: int
    window: int


def _counters(
    key_id: str | None, address: str | None, per_key: int, per_address: int
) -> list[tuple[str, int, str]]:
    """(kind, limit, name) of each limit that applies: the address's first, then the key's."""
    counters: list[tuple[str, int, str]] = []
    if per_address and address:
        counters.append(("address", per_address, digest(address)))
    if per_key and key_id:
        counters.append(("key", per_key, key_id))
    return counters
