"""Admission of heavy reads, per process and lane: counter reads (top pages, time series)
and archive queries (DuckDB) each have their own slots, so a cheap counter read never
queues behind a 30-day funnel, and one client holds at most half of a lane's slots.

A read past its lane's slots (or its client's share) waits up to ``wait_s`` for one, then
is refused (503 reads-busy) before doing any work, rather than queue without bound.
With ``serve --query-workers`` this runs in the query processes (api/forward.py): a
refusal costs the ingest workers only the bytes they pass back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from event_analytics import telemetry
from event_analytics.analytics.pool import QueryBusy
from event_analytics.errors import EventAnalyticsError, ReadsBusy


class ArchiveBusy(QueryBusy):
    """The archive lane's refusal: 503 analytics-busy, as the engine's own (the dashboard
    waits out its Retry-After and asks again), with the reason it was refused."""

    def __init__(self, what: str) -> None:
        EventAnalyticsError.__init__(self, what)


class HeavyReads:
    def __init__(
        self, limit: int, wait_s: float, lane: str = "counter", *, reported: bool = True
    ) -> None:
        """``reported``: this process serves the lane (its slots count in /metrics)."""
        self.limit = limit
        self.wait_s = wait_s
        self.lane = lane
        # One client (API key, else address) cannot hold every slot of a lane of two or more.
        self.per_client = max(1, limit // 2)
        self._in_use = 0
        self._held: dict[str, int] = {}
        self._released = asyncio.Event()
        self._gauge = telemetry.QUERY_SLOTS_IN_USE.labels(lane)
        if reported:
            telemetry.QUERY_SLOTS.labels(lane).set(limit)

    def _refusal(self, client: str) -> str | None:
        if self._in_use >= self.limit:
            return "busy"
        if self._held.get(client, 0) >= self.per_client:
            return "client_share"
        return None

    @asynccontextmanager
    async def slot(self, client: str = "") -> AsyncIterator[None]:
        """Hold one of the lane's slots for ``client`` while the read runs."""
        start = time.monotonic()
        deadline = start + self.wait_s
        reason = self._refusal(client)
        while reason is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            released = self._released
            with suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), left)
            reason = self._refusal(client)
        if reason is not None:
            telemetry.QUERY_REFUSALS.labels(self.lane, reason).inc()
            kind = "analytics queries" if self.lane == "archive" else "heavy reads"
            what = (
                f"{self.limit} {kind} are running, the most allowed at once"
                if reason == "busy"
                else f"this client already runs {self.per_client} of the {self.limit} "
                f"{kind} allowed at once"
            )
            raise ArchiveBusy(what) if self.lane == "archive" else ReadsBusy(what)
        # No await from the check to here: the slot is this read's.
        self._in_use += 1
        self._held[client] = self._held.get(client, 0) + 1
        telemetry.QUERY_WAIT.labels(self.lane).observe(time.monotonic() - start)
        self._gauge.inc()
        cpu = time.process_time()
        try:
            yield
        finally:
            # Synchronous, so that a cancelled read (its client left) still gives it back.
            telemetry.QUERY_CPU.labels(self.lane).observe(time.process_time() - cpu)
            self._gauge.dec()
            self._in_use -= 1
            held = self._held[client] - 1
            if held:
                self._held[client] = held
            else:
                del self._held[client]
            # Every waiter looks again (the freed slot may be one only some may take).
            self._released.set()
            self._released = asyncio.Event()
