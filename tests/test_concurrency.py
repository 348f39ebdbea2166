"""Counts stay exact under concurrency, offsets and retries (the seed lost all three)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.helpers import IST, event, seed_key
from tests.servers import HTTP, ServiceProcess
from tests.traffic import send_all

EVENTS = 5_000


def test_concurrent_offsets_and_retries_are_exact(two_workers: ServiceProcess) -> None:
    rng = random.Random(20261127)
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=3)
    minutes = [base + timedelta(minutes=i) for i in range(3)]
    bodies = []
    for _ in range(EVENTS):
        ts = base + timedelta(seconds=rng.uniform(0, 180 - 0.001))
        when: Any = ts.astimezone(IST) if rng.random() < 0.2 else ts
        bodies.append(event(user=f"u{rng.randrange(400)}", ts=when))
    offset_share = sum("+05:30" in b["timestamp"] for b in bodies) / EVENTS
    assert 0.17 < offset_share < 0.23
    # Model: per UTC minute, the count and the distinct users of what was sent once.
    counts: dict[datetime, int] = defaultdict(int)
    users: dict[datetime, set[str]] = defaultdict(set)
    for b in bodies:
        minute = (
            datetime.fromisoformat(b["timestamp"]).astimezone(UTC).replace(second=0, microsecond=0)
        )
        counts[minute] += 1
        users[minute].add(b["user_id"])

    first = asyncio.run(send_all(two_workers.url, bodies))
    assert first.count(201) == EVENTS, {s: first.count(s) for s in set(first)}
    resend = rng.sample(bodies, EVENTS // 10)
    again = asyncio.run(send_all(two_workers.url, resend))
    assert again.count(200) == len(resend), {s: again.count(s) for s in set(again)}

    for minute in minutes:
        r = HTTP.get(f"{two_workers.url}/analytics/minute-buckets/{seed_key(minute)}")
        got = r.json()
        assert (got["count"], got["unique_users"]) == (counts[minute], len(users[minute]))
    rows = HTTP.get(f"{two_workers.url}/analytics/page_views_per_minute?minutes=10").json()
    served = {r["minute_timestamp"]: (r["count"], r["unique_users"]) for r in rows}
    for minute in minutes:
        key = minute.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert served[key] == (counts[minute], len(users[minute]))
    assert sum(c for c, _ in served.values()) == EVENTS
