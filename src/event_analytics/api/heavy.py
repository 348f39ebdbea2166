"""Admission of heavy reads by their estimated cost, per process and lane, decided before
the work: counter reads (top pages, time series: entries to merge and points to read),
their cheap ones (a few buckets: the dashboard's live figures), and archive queries
(DuckDB: bytes of archive files to scan, from the file listing) each have their own slots
and cost budget, so a cheap read never queues behind a 30-day funnel, and one client holds
at most half of a lane's slots.

A read is admitted when a slot is free, its client is under its share and the lane's
budget holds its cost next to the reads running; a read costing more than the whole budget
(but under the oversize bound, 422 query_too_costly, checked by the caller) is charged the
whole budget, so it runs alone. Otherwise it waits up to ``wait_s``, then is refused (503
reads-busy / analytics-busy) before doing any work, rather than queue without bound.
With ``serve --query-workers`` this runs in the query processes (api/forward.py): a
refusal costs the ingest workers only the bytes they pass back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
        self,
        limit: int,
        wait_s: float,
        lane: str = "counter",
        *,
        budget: int | None = None,
        unit: str = "entries",
        reported: bool = True,
    ) -> None:
        """``budget``: the cost the lane's running reads may add up to (None: only slots
        count); ``reported``: this process serves the lane (its figures count in /metrics)."""
        self.limit = limit
        self.wait_s = wait_s
        self.lane = lane
        self.budget = budget
        self.unit = unit
        # One client (API key, else address) cannot hold every slot of a lane of two or more.
        self.per_client = max(1, limit // 2)
        self._in_use = 0
        self._spent = 0
        self._held: dict[str, int] = {}
        self._released = asyncio.Event()
        self._gauge = telemetry.QUERY_SLOTS_IN_USE.labels(lane)
        self._budget_gauge = telemetry.QUERY_BUDGET_IN_USE.labels(lane)
        if reported:
            telemetry.QUERY_SLOTS.labels(lane).set(limit)
            telemetry.QUERY_BUDGET.labels(lane).set(budget or 0)

    def charge(self, cost: int) -> int:
        """What a read of ``cost`` takes from the budget: at most all of it."""
        return max(0, cost) if self.budget is None else min(max(0, cost), self.budget)

    def _refusal(self, client: str, charge: int) -> str | None:
        if self._in_use >= self.limit:
            return "busy"
        if self._held.get(client, 0) >= self.per_client:
            return "client_share"
        if self.budget is not None and self._spent + charge > self.budget:
            return "budget"
        return None

    def _refused(self, reason: str, charge: int) -> EventAnalyticsError:
        telemetry.QUERY_REFUSALS.labels(self.lane, reason).inc()
        kind = "analytics queries" if self.lane == "archive" else "heavy reads"
        if reason == "busy":
            what = f"{self.limit} {kind} are running, the most allowed at once"
        elif reason == "client_share":
            what = (
                f"this client already runs {self.per_client} of the {self.limit} "
                f"{kind} allowed at once"
            )
        else:
            what = (
                f"the {kind} running cost {self._spent} of the {self.budget} {self.unit} "
                f"allowed at once, and this one needs {charge} more"
            )
        return ArchiveBusy(what) if self.lane == "archive" else ReadsBusy(what)

    async def _room(self, client: str, charge: int, deadline: float) -> None:
        """Wait until a read of ``charge`` fits, at most until ``deadline``; else refuse."""
        reason = self._refusal(client, charge)
        while reason is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._refused(reason, charge)
            released = self._released
            with suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), left)
            reason = self._refusal(client, charge)

    @asynccontextmanager
    async def slot(
        self, client: str = "", cost: int = 0, sized: Callable[[], Awaitable[int]] | None = None
    ) -> AsyncIterator[None]:
        """Hold a slot and ``cost`` of the budget for ``client`` while the read runs.

        ``sized``: what sizes the rest of the cost with engine work of its own (ZCARDs), run
        only once the lane has room for the read at all: in a storm, a read refused on a
        full lane costs the engine nothing."""
        start = time.monotonic()
        deadline = start + self.wait_s
        await self._room(client, self.charge(cost), deadline)
        if sized is not None:
            cost += await sized()
            await self._room(client, self.charge(cost), deadline)
        charge = self.charge(cost)
        # No await from the last check to here: the slot is this read's.
        self._in_use += 1
        self._spent += charge
        self._held[client] = self._held.get(client, 0) + 1
        telemetry.QUERY_WAIT.labels(self.lane).observe(time.monotonic() - start)
        self._gauge.inc()
        self._budget_gauge.inc(charge)
        cpu = time.process_time()
        try:
            yield
        finally:
            # Synchronous, so that a cancelled read (its client left) still gives it back.
            telemetry.QUERY_CPU.labels(self.lane).observe(time.process_time() - cpu)
            self._gauge.dec()
            self._budget_gauge.dec(charge)
            self._in_use -= 1
            self._spent -= charge
            held = self._held[client] - 1
            if held:
                self._held[client] = held
            else:
                del self._held[client]
            # Every waiter looks again (the freed slot may be one only some may take).
            self._released.set()
            self._released = asyncio.Event()
