"""Access to the per-app objects built at start-up."""

from __future__ import annotations

from datetime import datetime

from fastapi import Request

from event_analytics.analytics.freshness import archived_until
from event_analytics.analytics.pool import QueryEngine
from event_analytics.api.heavy import HeavyReads
from event_analytics.api.security import client_address, fingerprint, presented_key
from event_analytics.config import Settings
from event_analytics.ingest import Ingestor
from event_analytics.store import IngestWriter
from event_analytics.store.reads import Reads
from event_analytics.store.streams import StreamStore


def settings(request: Request) -> Settings:
    value: Settings = request.app.state.settings
    return value


def store(request: Request) -> IngestWriter:
    value: IngestWriter = request.app.state.store
    return value


def streams(request: Request) -> StreamStore:
    value: StreamStore = request.app.state.streams
    return value


def ingestor(request: Request) -> Ingestor:
    value: Ingestor = request.app.state.ingestor
    return value


def reads(request: Request) -> Reads:
    value: Reads = request.app.state.reads
    return value


def heavy_reads(request: Request) -> HeavyReads:
    value: HeavyReads = request.app.state.heavy_reads
    return value


def archive_reads(request: Request) -> HeavyReads:
    value: HeavyReads = request.app.state.archive_reads
    return value


def client_id(request: Request) -> str:
    """Whom a heavy read is counted against for fairness: its API key when keys are
    required (checked by then: ReadGuard), else its address (a made-up key is free)."""
    key = presented_key(request.scope) if settings(request).read_keys else None
    if key is not None:
        return "key:" + fingerprint(key)
    return "address:" + (client_address(request.scope) or "")


def query_engine(request: Request) -> QueryEngine:
    value: QueryEngine = request.app.state.query_engine
    return value


async def archived(request: Request) -> datetime:
    """The archive's ``archived_until`` now, for an answer read from the archive."""
    # An event is stamped at most the engine's timeout (plus a batch) before its entry.
    return await archived_until(streams(request), settings(request).redis_timeout_s + 0.5)
