"""Every archiver paused for a block: what ``backup`` and ``forget`` need.

The pause is a key with a TTL (``keys.archive_pause``, ``StreamStore.pause``): renewed
every third of its TTL while the block runs, it expires by itself after a process that
died holding it. Archivers check it between batches and say "paused" in a heartbeat;
the block starts once every live one has said so after the pause was asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from event_analytics.store.streams import StreamStore


class PauseFailed(Exception):
    """``kind``: "busy" (another owner holds the pause), "not_paused" (``waiting`` did
    not pause in time) or "expired" (the pause was lost while the block ran)."""

    def __init__(self, kind: str, waiting: list[str] | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.waiting = waiting or []


async def _keep(streams: StreamStore, owner: str, ttl_ms: int) -> None:
    while True:
        await asyncio.sleep(ttl_ms / 3000)
        if not await streams.renew_pause(owner, ttl_ms):
            raise PauseFailed("expired")


async def _wait_paused(streams: StreamStore, since: float, fresh_s: float, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        live = await streams.archivers(fresh_s=fresh_s)
        waiting = [
            name
            for name, status in live.items()
            if status.get("state") != "paused" or float(status.get("heartbeat", 0)) < since
        ]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise PauseFailed("not_paused", sorted(waiting))
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def archivers_paused(
    streams: StreamStore, owner: str, ttl_ms: int, fresh_s: float, wait_s: float
) -> AsyncIterator[None]:
    """The block runs with every live archiver paused; PauseFailed otherwise (also when
    the pause expired meanwhile, raised as the block ends)."""
    if not await streams.pause(owner, ttl_ms):
        raise PauseFailed("busy")
    renewing = asyncio.create_task(_keep(streams, owner, ttl_ms))
    try:
        await _wait_paused(streams, time.time(), fresh_s, wait_s)
        yield
        if renewing.done():
            renewing.result()  # the pause was lost: raises why
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError, PauseFailed):
            await renewing
        await streams.resume(owner)
