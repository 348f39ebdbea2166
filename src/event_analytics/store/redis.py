"""The one place that talks to Redis/Valkey: a single node or a cluster, the same calls."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from event_analytics import metrics
from event_analytics.config import Settings
from event_analytics.keys import Keys
from event_analytics.model import EngineFull, StorageUnavailable
from event_analytics.store.cluster import cluster_info, connect_cluster
from event_analytics.store.scripts import Call, call_per_shard
from event_analytics.timebucket import Interval

INGEST_LUA = resources.files("event_analytics.store").joinpath("ingest.lua").read_text()

# Count and unique users of each minute bucket of ONE shard: KEYS = count, users, count...
MINUTE_STATS_LUA = """
local out = {}
for i = 1, #KEYS, 2 do
  out[i] = tonumber(redis.call('GET', KEYS[i])) or 0
  out[i + 1] = redis.call('SCARD', KEYS[i + 1])
end
return out"""

# A single-node client or a cluster client: the commands used here exist on both.
Client = aioredis.Redis | RedisCluster

# Replies meaning "the engine cannot serve this now; the same request may succeed later".
# redis-py maps each reply code to its own class (LOADING, a ConnectionError subclass, is
# caught as unreachable before these).
_BUSY = (
    rx.ReadOnlyError,  # READONLY: a replica, or a master demoted by a failover
    rx.ClusterError,  # CLUSTERDOWN, MASTERDOWN, and the cluster client's own give-ups
    rx.TryAgainError,  # TRYAGAIN: a slot migrating
    rx.AskError,
    rx.SlotNotCoveredError,  # no master serves the slot (a failover in progress)
    # The script did not run (flushed, or an engine restart lost it, between the load and
    # the call): nothing was written, and the next call loads it again.
    rx.NoScriptError,
)
# The two transient replies redis-py has no class for: they arrive as ResponseError with
# the code as the first word.
_BUSY_UNMAPPED = ("MISCONF", "NOREPLICAS")


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """An event reduced to what the ingest script needs: its shard, key names and values."""

    shard: int
    keys: tuple[str, ...]
    args: tuple[str | bytes | int, ...]


# redis-py raises a bare RedisClusterException when no seed node answers at all.
_CLUSTER_UNREACHABLE = ("Redis Cluster cannot be connected", "All slots are not covered")
_CONNECTION_CODE = ("redis/asyncio/connection.py", "uvloop/", "asyncio/streams.py")


def _raised_in_connection(exc: BaseException) -> bool:
    """Whether ``exc`` came from the socket layer of the client (not from our code)."""
    tb, where = exc.__traceback__, ""
    while tb is not None:
        where, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return any(part in where for part in _CONNECTION_CODE)


@contextlib.asynccontextmanager
async def engine_errors() -> AsyncIterator[None]:
    """Turn an outage of the engine into StorageUnavailable (HTTP 503 in the API)."""
    try:
        yield
    except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
        metrics.engine_error("unreachable")
        raise StorageUnavailable(f"storage unreachable: {type(exc).__name__}") from exc
    except rx.OutOfMemoryError as exc:
        # OOM: at maxmemory with noeviction. A script is refused at its first write, so
        # nothing of it was written.
        metrics.engine_error("full")
        raise EngineFull("storage full: OOM") from exc
    except _BUSY as exc:
        metrics.engine_error("busy")
        code = getattr(exc, "status_code", None) or type(exc).__name__
        raise StorageUnavailable(f"storage busy: {code}") from exc
    except rx.ResponseError as exc:
        code = str(exc).split(" ", 1)[0]
        if code in _BUSY_UNMAPPED:
            metrics.engine_error("busy")
            raise StorageUnavailable(f"storage busy: {code}") from exc
        raise
    except (RuntimeError, AttributeError) as exc:
        # When a node dies, redis-py's cluster client may close a pooled connection while
        # another request is writing to it: uvloop then raises RuntimeError ("handler is
        # closed"), or the connection's writer is already None (AttributeError). redis-py
        # has no class for these, so where they were raised tells them from a bug of ours.
        # The request was not answered by the engine: a 503 (retry) is the truthful reply.
        if not _raised_in_connection(exc):
            raise
        metrics.engine_error("unreachable")
        raise StorageUnavailable("storage unreachable: connection closed") from exc
    except rx.RedisClusterException as exc:
        if str(exc).startswith(_CLUSTER_UNREACHABLE):
            metrics.engine_error("unreachable")
            raise StorageUnavailable("storage unreachable: no cluster node answers") from exc
        raise


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


class _HiredisPacking:
    """Encode commands with hiredis (C) instead of redis-py's per-argument Python loop.

    An ingest call carries 23 arguments per event: profiled, redis-py's pack_command was
    ~30% of a rebuild's CPU and ~15% of the live hot path; hiredis.pack_command is ~8x
    faster on such calls. redis-py itself uses it only for its synchronous client.
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


class Store:
    """Ingest and read operations over one Redis connection pool."""

    def __init__(self, client: Client, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._ingest_script = client.register_script(INGEST_LUA)
        self._minute_stats_script = client.register_script(MINUTE_STATS_LUA)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The one factory: the client of the engine the settings choose, and its Keys."""
        return cls(connect(settings), Keys.from_settings(settings))

    async def close(self) -> None:
        await self.client.aclose()

    async def ingest(self, events: Sequence[PreparedEvent], *, stream: bool = True) -> list[bool]:
        """Apply events atomically per shard; True where new, False where a duplicate.

        Each shard's events go in ONE script call, and all calls in one round trip.
        ``stream=False`` replays archived events: counted, but not streamed again.
        """
        by_shard, calls = self._calls(events, stream)
        async with engine_errors():
            replies = await call_per_shard(self.client, self._ingest_script, calls)
        results: list[bool] = [False] * len(events)
        for indexes, reply in zip(by_shard.values(), replies, strict=True):
            for i, flag in zip(indexes, reply, strict=True):
                results[i] = bool(flag)
        return results

    async def ingest_each(self, events: Sequence[PreparedEvent]) -> list[bool | Exception]:
        """Like ingest(), but a shard that fails fails only its own events.

        The group-commit batcher mixes many requests' events: on a cluster, a master in
        failover must not refuse the requests whose shards live on healthy masters. So
        each shard's call runs on its own (concurrently); an event of a failed shard
        gets that shard's StorageUnavailable in place of its flag.
        """
        by_shard, calls = self._calls(events, True)

        async def one(call: Call) -> list[Any]:
            async with engine_errors():
                replies = await call_per_shard(self.client, self._ingest_script, [call])
            return list(replies[0])

        outcomes = await asyncio.gather(*(one(c) for c in calls), return_exceptions=True)
        results: list[bool | Exception] = [False] * len(events)
        for indexes, outcome in zip(by_shard.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                for i in indexes:
                    results[i] = outcome
            else:
                for i, flag in zip(indexes, outcome, strict=True):
                    results[i] = bool(flag)
        return results

    def _calls(
        self, events: Sequence[PreparedEvent], stream: bool
    ) -> tuple[dict[int, list[int]], list[Call]]:
        """Group events by shard: one script call (keys, args) per shard."""
        by_shard: dict[int, list[int]] = defaultdict(list)
        for index, event in enumerate(events):
            by_shard[event.shard].append(index)
        calls: list[Call] = []
        for shard, indexes in by_shard.items():
            keys: list[str] = [self.keys.stream(shard)]
            args: list[str | bytes | int] = [len(indexes), 1 if stream else 0]
            for i in indexes:
                keys.extend(events[i].keys)
                args.extend(events[i].args)
            calls.append((keys, args))
        return by_shard, calls

    async def minute_stats(
        self, event_type: str, minutes: Sequence[datetime]
    ) -> list[tuple[int, int]]:
        """(count, unique users) of each minute, summed over the disjoint user shards.

        One script call per shard reads all the minutes: on a cluster, a pipeline of
        single GET/SCARD commands costs the client ~0.1 ms each, 16 x more with 16 shards.
        """
        calls: list[Call] = []
        for shard in range(self.keys.shards):
            keys: list[str] = []
            for minute in minutes:
                keys.append(self.keys.count(shard, event_type, Interval.MINUTE, minute))
                keys.append(self.keys.users(shard, event_type, Interval.MINUTE, minute))
            calls.append((keys, []))
        async with engine_errors():
            replies = await call_per_shard(self.client, self._minute_stats_script, calls)
        out = [(0, 0)] * len(minutes)
        for reply in replies:
            for m in range(len(minutes)):
                count, users = out[m]
                out[m] = (count + int(reply[2 * m]), users + int(reply[2 * m + 1]))
        return out

    async def stream_length(self) -> int:
        """Events in all shards' streams (not yet trimmed by the archiver)."""
        async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
            for shard in range(self.keys.shards):
                pipe.xlen(self.keys.stream(shard))
            return sum(await pipe.execute())

    async def engine_info(self) -> dict[str, Any]:
        """Reachability and durability facts for /health/ready."""
        if isinstance(self.client, RedisCluster):
            async with engine_errors():
                return await cluster_info(self.client)
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
