"""event-analytics: exact, live, per-minute event counts on Redis/Valkey."""

__version__ = "0.1.0"
