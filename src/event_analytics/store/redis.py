"""The one place that talks to Redis/Valkey (single node; cluster builds on the same calls)."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from event_analytics import metrics
from event_analytics.config import Settings
from event_analytics.keys import Keys
from event_analytics.model import StorageUnavailable
from event_analytics.timebucket import Interval

INGEST_LUA = resources.files("event_analytics.store").joinpath("ingest.lua").read_text()

# Errors meaning "the engine cannot serve this now; the same request may succeed later".
_TRANSIENT_REPLIES = (
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "MISCONF",
    "OOM",
    "NOREPLICAS",
    # The script did not run (flushed, or an engine restart lost it, between the load and
    # the call): nothing was written, and the next call loads it again.
    "NOSCRIPT",
)


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """An event reduced to what the ingest script needs: its shard, key names and values."""

    shard: int
    keys: tuple[str, ...]
    args: tuple[str | bytes | int, ...]


def _is_transient(exc: rx.ResponseError) -> bool:
    return str(exc).startswith(_TRANSIENT_REPLIES)


@contextlib.asynccontextmanager
async def engine_errors() -> AsyncIterator[None]:
    """Turn an outage of the engine into StorageUnavailable (HTTP 503 in the API)."""
    try:
        yield
    except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
        metrics.engine_error("unreachable")
        raise StorageUnavailable(f"storage unreachable: {type(exc).__name__}") from exc
    except rx.ResponseError as exc:
        if _is_transient(exc):
            metrics.engine_error("busy")
            raise StorageUnavailable(f"storage busy: {str(exc).split(' ', 1)[0]}") from exc
        raise


def connect(settings: Settings, url: str | None = None) -> aioredis.Redis:
    """An asyncio client for ``url`` (default: the configured REDIS_URL)."""
    target = url or settings.redis_url
    if not target:
        raise ValueError("no Redis URL: start the embedded server or set REDIS_URL")
    # One quick retry covers a pooled connection that went stale across an engine restart;
    # short timeouts make an outage answer 503 within about a second instead of hanging.
    return aioredis.Redis.from_url(
        target,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        max_connections=settings.redis_max_connections,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


class Store:
    """Ingest and read operations over one Redis connection pool."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._ingest_script = client.register_script(INGEST_LUA)

    async def close(self) -> None:
        await self.client.aclose()

    async def ingest(self, events: Sequence[PreparedEvent], *, stream: bool = True) -> list[bool]:
        """Apply events atomically per shard; True where new, False where a duplicate.

        Each shard's events go in ONE script call, and all calls in one round trip.
        ``stream=False`` replays archived events: counted, but not streamed again.
        """
        by_shard: dict[int, list[int]] = defaultdict(list)
        for index, event in enumerate(events):
            by_shard[event.shard].append(index)
        results: list[bool] = [False] * len(events)
        async with engine_errors():
            if len(by_shard) == 1:
                ((shard, indexes),) = by_shard.items()
                replies = [await self._call(shard, [events[i] for i in indexes], stream)]
            else:
                async with self.client.pipeline(transaction=False) as pipe:
                    for shard, indexes in by_shard.items():
                        await self._call(shard, [events[i] for i in indexes], stream, pipe)
                    replies = await pipe.execute()
        for (_, indexes), reply in zip(by_shard.items(), replies, strict=True):
            for i, flag in zip(indexes, reply, strict=True):
                results[i] = bool(flag)
        return results

    async def _call(
        self, shard: int, batch: list[PreparedEvent], stream: bool, pipe: Any = None
    ) -> list[int]:
        keys: list[str] = [self.keys.stream(shard)]
        args: list[str | bytes | int] = [len(batch), 1 if stream else 0]
        for event in batch:
            keys.extend(event.keys)
            args.extend(event.args)
        reply: list[int] = await self._ingest_script(keys=keys, args=args, client=pipe)
        return reply

    async def minute_stats(
        self, event_type: str, minutes: Sequence[datetime]
    ) -> list[tuple[int, int]]:
        """(count, unique users) of each minute, summed over the disjoint user shards."""
        shards = range(self.keys.shards)
        async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
            for minute in minutes:
                for shard in shards:
                    pipe.get(self.keys.count(shard, event_type, Interval.MINUTE, minute))
                    pipe.scard(self.keys.users(shard, event_type, Interval.MINUTE, minute))
            replies = await pipe.execute()
        per_minute = 2 * self.keys.shards
        out: list[tuple[int, int]] = []
        for start in range(0, len(replies), per_minute):
            chunk = replies[start : start + per_minute]
            out.append((sum(int(c or 0) for c in chunk[0::2]), sum(chunk[1::2])))
        return out

    async def stream_length(self) -> int:
        """Events in all shards' streams (not yet trimmed by the archiver)."""
        async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
            for shard in range(self.keys.shards):
                pipe.xlen(self.keys.stream(shard))
            return sum(await pipe.execute())

    async def engine_info(self) -> dict[str, Any]:
        """Reachability and durability facts for /health/ready."""
        async with engine_errors():
            await self.client.ping()
            info = await self.client.info("server")
            persistence = await self.client.info("persistence")
            try:
                fsync = (await self.client.config_get("appendfsync")).get("appendfsync")
            except rx.ResponseError:  # CONFIG is often disabled on managed services
                fsync = None
        name = "valkey" if "valkey_version" in info else "redis"
        version = info.get("valkey_version") or info.get("redis_version")
        aof = bool(int(persistence.get("aof_enabled", 0)))
        return {
            "engine": name,
            "version": str(version),
            "aof_enabled": aof,
            "appendfsync": _as_str(fsync) if fsync is not None else "unknown",
        }


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
