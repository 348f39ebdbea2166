"""The engine watch's life: it ends when the app shuts down, whatever it was doing."""

from __future__ import annotations

import asyncio

from event_analytics.store import IngestWriter
from event_analytics.store.watch import EngineWatch
from tests.backends import Backend

# Stops asked of a watch that reads without pause: some land as a reading completes.
STOPS = 30


def test_a_stopped_watch_ends_even_when_the_cancel_meets_a_completing_read(
    db: Backend,
) -> None:
    # The app's shutdown stops and cancels the watch, then closes the engine's clients. A
    # cancel that arrives as a command completes is dropped by asyncio.wait_for (under
    # which redis-py sends each command) before Python 3.12: a watch ended by cancel
    # alone went on reading, on a loop about to stop, and its open connection was found
    # broken by a later test's garbage collection. Every stop here must end the watch.
    settings = db.settings(key_prefix=db.prefix)

    async def stops() -> list[int]:
        store = IngestWriter.from_settings(settings)
        still_running: list[int] = []
        try:
            for i in range(STOPS):
                watch = EngineWatch(store, settings, interval_s=0.0)
                task = asyncio.create_task(watch.run())
                for _ in range(i % 7 + 1):  # a different point of a reading each time
                    await asyncio.sleep(0)
                watch.stop()
                task.cancel()
                await asyncio.wait({task}, timeout=5.0)
                if not task.done():
                    still_running.append(i)
                    task.cancel()
                    await asyncio.wait({task}, timeout=5.0)
        finally:
            await store.close()
        return still_running

    assert asyncio.run(stops()) == []
