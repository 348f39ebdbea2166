"""Bulk ingest for tests: the real Ingestor and ingest script, without the HTTP hop."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from event_analytics.config import Settings
from event_analytics.ingest import Ingestor
from event_analytics.model import EVENT_ADAPTER
from event_analytics.store import IngestWriter

BATCH = 2000


def ingest(
    env: Mapping[str, str],
    bodies: list[dict[str, Any]],
    uniques: Literal["exact", "approx"] = "exact",
    shards: int | None = None,
    prefix: str | None = None,
) -> list[bool]:
    """Store events as POST /events would; True where new.

    ``env``: a service's engine variables (``Backend.env``, ``ServiceProcess.env``):
    REDIS_URL, or REDIS_CLUSTER_URL (16 shards unless ``shards``), and EA_KEY_PREFIX
    unless ``prefix``.
    """
    prefix = prefix or env.get("EA_KEY_PREFIX", "ea:")

    async def main() -> list[bool]:
        urls: dict[str, Any] = (
            {"redis_cluster_url": env["REDIS_CLUSTER_URL"], "redis_url": None}
            if "REDIS_CLUSTER_URL" in env
            else {"redis_url": env["REDIS_URL"]}
        )
        if shards is not None:
            urls["shards"] = shards
        settings = Settings(**urls, uniques=uniques, key_prefix=prefix)
        store = IngestWriter.from_settings(settings)
        ingestor = Ingestor(settings, store)
        flags: list[bool] = []
        try:
            now = datetime.now(UTC)
            for start in range(0, len(bodies), BATCH):
                prepared = [
                    ingestor.prepare(EVENT_ADAPTER.validate_python(b), now)
                    for b in bodies[start : start + BATCH]
                ]
                flags += await store.ingest(prepared)
        finally:
            await store.close()
        return flags

    return asyncio.run(main())
