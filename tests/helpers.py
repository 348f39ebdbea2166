"""Small builders shared by tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx

# One client for all tests: httpx.post() builds a new client (and TLS context) per call,
# ~50 ms each, which made request loops in tests slow.
HTTP = httpx.Client(timeout=10)


def event(
    *,
    user: str = "user_1",
    ts: datetime | str | None = None,
    event_type: str = "page_view",
    url: str | None = "https://example.com/page-1",
    event_id: str | None = None,
    **payload: Any,
) -> dict[str, Any]:
    if ts is None:
        ts = datetime.now(UTC)
    body: dict[str, Any] = {
        "event_id": event_id or str(uuid.uuid4()),
        "user_id": user,
        "timestamp": ts if isinstance(ts, str) else ts.isoformat(),
        "event_type": event_type,
        "payload": dict(payload),
    }
    if url is not None:
        body["payload"]["page_url"] = url
    return body


IST = timezone(timedelta(hours=5, minutes=30))


def seed_key(minute: datetime, event_type: str = "page_view") -> str:
    return f"{event_type}_{minute.astimezone(UTC).strftime('%Y-%m-%d_%H:%M')}"
