"""The delivery process's status file (delivery.py writes it; /persistent/status and
/metrics read it), apart from the loop itself: its readers never load PostgreSQL's client."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from event_analytics.config import Settings

# A status file older than this: the delivery process is not running.
STALE_S = 15.0


def status_path(settings: Settings) -> Path:
    return settings.data_dir / "destinations" / "postgres.json"


def read_status(settings: Settings) -> dict[str, Any] | None:
    """The delivery process's last status (None if it never wrote one); ``state`` is
    ``not_running`` when it is older than STALE_S."""
    try:
        found: dict[str, Any] = orjson.loads(status_path(settings).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    age = time.time() - float(found.get("heartbeat") or 0)
    if age > STALE_S:
        found["state"] = "not_running"
    return found
