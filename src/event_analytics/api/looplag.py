"""How late the process's event loop runs a timer: what any request on it waits for the
work of others (a read's Python merge, a refusal's JSON), measured by the loop itself."""

from __future__ import annotations

import asyncio
import time

from event_analytics import telemetry

PERIOD_S = 0.05


async def sample(role: str) -> None:
    """Every PERIOD_S, record how much later than asked the loop woke up; until cancelled."""
    lag = telemetry.LOOP_LAG.labels(role)
    while True:
        asked = time.perf_counter()
        await asyncio.sleep(PERIOD_S)
        lag.observe(max(0.0, time.perf_counter() - asked - PERIOD_S))
