"""An ingest + stream session on one engine, for the command-line tools."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from event_analytics.config import Settings
from event_analytics.ingest import Ingestor
from event_analytics.store import IngestWriter
from event_analytics.store.streams import StreamStore


@contextlib.asynccontextmanager
async def open_session(settings: Settings) -> AsyncIterator[tuple[Ingestor, StreamStore]]:
    store = IngestWriter.from_settings(settings)
    try:
        yield Ingestor(settings, store), StreamStore(store.client, store.keys)
    finally:
        await store.close()
