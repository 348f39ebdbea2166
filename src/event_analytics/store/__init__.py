"""Redis/Valkey access: connections, the ingest script, read queries, the embedded server."""

from event_analytics.store.prepared import Bucket, Caps, Outcome, PreparedEvent
from event_analytics.store.redis import Store, connect

__all__ = ["Bucket", "Caps", "Outcome", "PreparedEvent", "Store", "connect"]
