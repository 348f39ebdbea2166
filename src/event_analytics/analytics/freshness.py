"""``archived_until``: the receive time before which every accepted event is archived."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from event_analytics.store.streams import StreamStore


async def archived_until(streams: StreamStore, in_flight_s: float) -> datetime:
    """From the streams' backlog, as /persistent/status computes the archive's lag.

    Archived entries leave the stream, so every entry older than its oldest one is in
    the archive; with none left, every entry added before the backlog was read is. An
    event's ``received_at`` is stamped before its entry is added, at most
    ``in_flight_s`` before (the engine's timeout plus batching): that much is taken off.
    """
    read_at_ms = int(time.time() * 1000)
    backlog = await streams.backlog()
    oldest = backlog["oldest_unarchived_ms"] or read_at_ms
    return datetime.fromtimestamp(min(oldest, read_at_ms) / 1000 - in_flight_s, UTC)
