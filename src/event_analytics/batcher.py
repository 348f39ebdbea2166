"""Group commit: concurrent ingest calls share one storage round trip.

Each call adds its events and waits. A flush is scheduled with ``call_soon``, so every
request handled in the same event-loop iteration joins the same batch; while flushes
are in flight (at most ``max_inflight``), new events accumulate and go together in the
next one. Under load batches grow by themselves; alone, an event waits for no timer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from event_analytics.store import IngestWriter, Outcome, PreparedEvent

Waiter = tuple[Sequence[PreparedEvent], "asyncio.Future[list[Outcome]]"]


class GroupCommit:
    def __init__(self, store: IngestWriter, max_batch: int = 1000, max_inflight: int = 2) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self._waiting: deque[Waiter] = deque()
        self._scheduled = False
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, events: Sequence[PreparedEvent]) -> list[Outcome]:
        """Store ``events`` with whatever else is waiting; their outcomes."""
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._waiting.append((events, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if not self._scheduled and self._inflight < self.max_inflight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._scheduled = False
        if not self._waiting or self._inflight >= self.max_inflight:
            return
        batch: list[Waiter] = []
        size = 0
        # Whole requests only; one request over max_batch still goes alone.
        while self._waiting and (not batch or size + len(self._waiting[0][0]) <= self.max_batch):
            waiter = self._waiting.popleft()
            batch.append(waiter)
            size += len(waiter[0])
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._waiting:
            self._schedule()

    async def _flush(self, batch: list[Waiter]) -> None:
        try:
            flags = await self.store.ingest_each([e for events, _ in batch for e in events])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            start = 0
            for events, future in batch:
                mine = flags[start : start + len(events)]
                start += len(events)
                # A caller that went away (client disconnect) no longer waits.
                if future.done():
                    continue
                outcomes = [f for f in mine if not isinstance(f, Exception)]
                if len(outcomes) < len(mine):
                    failed = next(f for f in mine if isinstance(f, Exception))
                    future.set_exception(failed)  # its shard's outage: 503, retry is safe
                else:
                    future.set_result(outcomes)
        finally:
            self._inflight -= 1
            if self._waiting:
                self._schedule()

    async def close(self) -> None:
        """Wait for flushes in flight (the lifespan's end)."""
        while self._tasks or self._waiting:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            else:
                await asyncio.sleep(0)
