"""Redis/Valkey access: connections, the ingest script, read queries, the embedded server."""

from event_analytics.store.redis import PreparedEvent, Store, connect

__all__ = ["PreparedEvent", "Store", "connect"]
