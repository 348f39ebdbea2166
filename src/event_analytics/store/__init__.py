"""Redis/Valkey access: connections, the ingest writer and its script, reads, streams,
the embedded server."""

from event_analytics.store.connect import connect
from event_analytics.store.prepared import Bucket, Caps, Outcome, PreparedEvent
from event_analytics.store.writer import IngestWriter

__all__ = ["Bucket", "Caps", "IngestWriter", "Outcome", "PreparedEvent", "connect"]
