"""A concurrency cap for heavy analytics reads (top pages, time series), per worker.

Such a read makes many engine calls; fifty at once kept the engine busy for seconds and
ingest waited behind them. Reads past the cap wait a little for a slot, then are
refused (503 reads-busy) rather than queue without bound; ingest is not capped here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from event_analytics.errors import ReadsBusy


class HeavyReads:
    def __init__(self, limit: int, wait_s: float) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self._slots = asyncio.Semaphore(limit)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if not self._slots.locked():
            await self._slots.acquire()  # free: at once (wait_for(..., 0) may time out)
        else:
            try:
                await asyncio.wait_for(self._slots.acquire(), self.wait_s)
            except TimeoutError:
                raise ReadsBusy(f"{self.limit} heavy reads are in progress") from None
        try:
            yield
        finally:
            self._slots.release()
