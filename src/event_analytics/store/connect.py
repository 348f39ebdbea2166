"""Connections to the engine: a single node or a cluster client for the engine the
settings choose, the read client when reads have their own, and hiredis command packing.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from event_analytics.config import Settings
from event_analytics.store.cluster import cluster_info, connect_cluster
from event_analytics.store.errors import engine_errors

# A single-node client or a cluster client: the commands used here exist on both.
Client = aioredis.Redis | RedisCluster


def connect(settings: Settings) -> Client:
    """An asyncio client for the engine the settings name (``Settings.engine_kind``).

    The embedded engine has no URL until it runs: ``serve`` and ``engine_settings`` start
    or find it and put its URL in ``redis_url``.
    """
    if settings.redis_cluster_url:
        return connect_cluster(settings, settings.redis_cluster_url)
    if not settings.redis_url:
        raise ValueError("no Redis URL: start the embedded server or set REDIS_URL")
    # One quick retry covers a pooled connection that went stale across an engine restart;
    # short timeouts make an outage answer 503 within about a second instead of hanging.
    client = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        max_connections=settings.redis_max_connections,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )
    pool = client.connection_pool
    pool.connection_class = _hiredis_packing(pool.connection_class)
    return client


def connect_reads(settings: Settings) -> tuple[Client | None, bool]:
    """The client of analytics reads when they have their own, and whether its scripts go
    as EVALSHA_RO: REDIS_READ_URL (one node, e.g. a replica), or the cluster's replicas
    with EA_READ_FROM_REPLICAS; (None, False) reads where ingest writes."""
    if settings.redis_cluster_url and settings.read_from_replicas:
        return connect_cluster(settings, settings.redis_cluster_url, replicas=True), True
    if settings.redis_read_url:
        read = settings.model_copy(
            update={"redis_url": settings.redis_read_url, "redis_cluster_url": None}
        )
        return connect(read), False
    return None, False


class _HiredisPacking:
    """Encode commands with hiredis (C) instead of redis-py's per-argument Python loop.

    An ingest call carried 23 arguments per event before names went once per call (5 now):
    profiled then, redis-py's pack_command was ~30% of a rebuild's CPU and ~15% of the live
    hot path; hiredis.pack_command is ~8x faster on such calls. redis-py itself uses it
    only for its synchronous client.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        # redis-py passes multi-word commands ("SCRIPT LOAD") as one argument.
        if isinstance(args[0], str) and " " in args[0]:
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


_PACKING: dict[type[Any], type[Any]] = {}


def _hiredis_packing(base: type[Any]) -> type[Any]:
    """``base`` with hiredis packing (one class per base, so pools stay comparable)."""
    if base not in _PACKING:
        _PACKING[base] = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    return _PACKING[base]


async def engine_info(client: Client) -> dict[str, Any]:
    """Reachability and durability facts of the engine ``client`` talks to (/health/ready)."""
    if isinstance(client, RedisCluster):
        async with engine_errors():
            return await cluster_info(client)
    async with engine_errors():
        await client.ping()
        info = await client.info("server")
        persistence = await client.info("persistence")
        try:
            fsync = (await client.config_get("appendfsync")).get("appendfsync")
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
